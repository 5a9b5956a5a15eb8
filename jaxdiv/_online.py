r"""Per-row statistics accumulated tile by tile: KL, cross-entropies and entropy in one pass.

A kernel that reads each row once sees its classes as a sequence of column
tiles and cannot know a row's maximum before the end. Every statistic here is
therefore kept relative to running maxima and rescaled when a maximum grows
(the online softmax of Milakov & Gimelshein, 2018), once per tile and row, never
per element. The rescalings are chosen so that nothing cancels: the
accumulators that the exact whole-row formulas of :mod:`jaxdiv._numerics` need
(the tie-exact ``log1p`` normaliser, KL's :math:`\sum P\varphi(r)` against a
moving offset) come out with the same accuracy as a whole-row pass.

Each statistic is a triple of functions on per-row state (arrays ``[rows, 1]``):
``init(rows)``, ``update(state, *tiles)`` for float32 tiles ``[rows, cols]``
whose columns past the end of the row hold ``-inf``, and ``finish(state)``,
which returns the value and the per-row residuals of its gradient. They are
plain ``jax.numpy``: the Pallas drivers of :mod:`jaxdiv._pallas` run them on GPU
and TPU tiles, and one call on the whole row is the same statistic.

State arrays hold float32 only (a flag is 0 or 1), so every backend's loop
carries them alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiv._numerics import (
    _LOG_SMALLEST_NORMAL,
    _PHI_SERIES_RADIUS,
    LogRatio,
    neg_log1pmx,
    phi_series,
    two_sum,
)

Array = jax.Array

_NEG_INF = -math.inf
# Where exp(x - max) is a normal float32 number (the support, as in _numerics).
_SUPPORT = _LOG_SMALLEST_NORMAL[0]


def _rowmax(x: Array) -> Array:
    return jnp.max(x, axis=-1, keepdims=True)


def _rowsum(x: Array) -> Array:
    return jnp.sum(x, axis=-1, keepdims=True)


def _finite_shift(m: Array) -> Array:
    """A running maximum as a shift: 0 while it is ``-inf`` (nothing seen yet)."""
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _rescale(old: Array, new: Array) -> Array:
    """``exp(old - new)`` for a maximum that grew from ``old`` to ``new``; 0 from ``-inf``."""
    return jnp.where(old > _NEG_INF, jnp.exp(_finite_shift(old) - _finite_shift(new)), 0.0)


def _invalid(*tiles: Array) -> Array:
    """1 where a row's tile holds NaN or ``+inf``, else 0."""
    bad = [_rowmax(jnp.where(jnp.isnan(t) | (t == jnp.inf), 1.0, 0.0)) for t in tiles]
    return bad[0] if len(bad) == 1 else jnp.maximum(*bad)


def _zeros(rows: int) -> Array:
    return jnp.zeros((rows, 1), jnp.float32)


def _neg_inf(rows: int) -> Array:
    return jnp.full((rows, 1), _NEG_INF, jnp.float32)


# ---------------------------------------------------------------- normaliser


class Normaliser(NamedTuple):
    """``log sum exp`` of a row as ``m + log1p(rest + ties - 1)``, ties at the maximum counted exactly."""

    m: Array      # running maximum, -inf before any finite logit
    rest: Array   # sum of exp(x - m) over x < m
    ties: Array   # how many x == m
    bad: Array    # 1 once NaN or +inf was read


def normaliser_init(rows: int) -> Normaliser:
    return Normaliser(_neg_inf(rows), _zeros(rows), _zeros(rows), _zeros(rows))


def normaliser_update(st: Normaliser, x: Array) -> tuple[Normaliser, Array, Array]:
    """The state after tile ``x``, with the tile's centred logits and their ``exp``.

    The arg-max term (exactly 1) is never added to ``rest``: when the maximum
    grows, the old ties join ``rest`` at their rescaled value, and the new
    maximum's ties are counted, so ``log1p`` sees only the small terms.
    """
    m = jnp.maximum(st.m, _rowmax(x))
    c = x - _finite_shift(m)
    e = jnp.exp(c)
    at_max = c == 0
    grew = m > st.m
    old = jnp.where(grew, (st.rest + st.ties) * _rescale(st.m, m), st.rest)
    rest = old + _rowsum(jnp.where(at_max, 0.0, e))
    ties = jnp.where(grew, 0.0, st.ties) + _rowsum(jnp.where(at_max, 1.0, 0.0))
    return Normaliser(m, rest, ties, jnp.maximum(st.bad, _invalid(x))), c, e


def log_sum(st: Normaliser) -> Array:
    """``log sum exp(x - m)``: ``-inf`` for a row without support."""
    return jnp.log1p(st.rest + (st.ties - 1.0))


def total(st: Normaliser) -> Array:
    """``sum exp(x - m)``, 1 for a row without support (a safe divisor)."""
    s = st.rest + st.ties
    return jnp.where(s > 0, s, 1.0)


def log_sum_exp(st: Normaliser) -> Array:
    return _finite_shift(st.m) + log_sum(st)


# ------------------------------------------------------------------- entropy


class Entropy(NamedTuple):
    norm: Normaliser
    w: Array      # sum of exp(c) * (-c), c = x - m; rescaled as m grows


def entropy_init(rows: int) -> Entropy:
    return Entropy(normaliser_init(rows), _zeros(rows))


def entropy_update(st: Entropy, x: Array) -> Entropy:
    # Both parts of the rescaled sum are >= 0: when m grows by d,
    # sum e^(c-d) (d - c) = e^-d (w + d * total).
    norm, c, e = normaliser_update(st.norm, x)
    d = _finite_shift(norm.m) - _finite_shift(st.norm.m)
    old = jnp.where(st.norm.m > _NEG_INF,
                    _rescale(st.norm.m, norm.m) * (st.w + d * (st.norm.rest + st.norm.ties)), 0.0)
    w = old + _rowsum(jnp.where(e > 0, e * -c, 0.0))
    return Entropy(norm, w)


def entropy_finish(st: Entropy) -> tuple[Array, Array]:
    """``(H, lse)``, ``[rows, 1]`` each: ``H = log1p(...) + sum P (m - x)``, 0 without support, NaN for invalid rows."""
    has = st.norm.rest + st.norm.ties > 0
    value = jnp.where(has, log_sum(st.norm) + st.w / total(st.norm), 0.0)
    value = jnp.where(st.norm.bad > 0, jnp.nan, value)
    return value, log_sum_exp(st.norm)


# ------------------------------------------------------------- cross-entropy


class CrossEntropy(NamedTuple):
    norm_p: Normaliser
    norm_q: Normaliser
    w: Array      # sum over P's support with finite q of exp(p - m_p) * (m_q - q)
    s_pq: Array   # sum of exp(p - m_p) over the same classes
    m_inf: Array  # max p over the classes where q = -inf


def cross_entropy_init(rows: int) -> CrossEntropy:
    return CrossEntropy(normaliser_init(rows), normaliser_init(rows), _zeros(rows), _zeros(rows),
                        _neg_inf(rows))


def cross_entropy_update(st: CrossEntropy, p: Array, q: Array) -> CrossEntropy:
    norm_p, _, e_p = normaliser_update(st.norm_p, p)
    norm_q, c_q, _ = normaliser_update(st.norm_q, q)
    # When m_p grows the weights shrink by one factor; when m_q grows by d every
    # m_q - q grows by d: w' = a (w + d s_pq), a sum of non-negative parts.
    a = _rescale(st.norm_p.m, norm_p.m)
    d = _finite_shift(norm_q.m) - _finite_shift(st.norm_q.m)
    w = jnp.where(st.s_pq > 0, a * (st.w + d * st.s_pq), 0.0)
    read = (e_p > 0) & (q > _NEG_INF)
    w = w + _rowsum(jnp.where(read, e_p * -c_q, 0.0))
    s_pq = a * st.s_pq + _rowsum(jnp.where(read, e_p, 0.0))
    m_inf = jnp.maximum(st.m_inf, _rowmax(jnp.where(q == _NEG_INF, p, _NEG_INF)))
    return CrossEntropy(norm_p, norm_q, w, s_pq, m_inf)


def _p_lacks_q(m_inf: Array, norm_p: Normaliser) -> Array:
    """Whether P has mass (a normal number) where Q is exactly 0."""
    return (m_inf > _NEG_INF) & (m_inf - _finite_shift(norm_p.m) > _SUPPORT)


def cross_entropy_finish(st: CrossEntropy) -> tuple[Array, Array, Array]:
    """``(H(P, Q), lse_p, lse_q)``; ``H = L_q + sum P (m_q - q)``, +inf where P > 0 = Q."""
    has_p = st.norm_p.rest + st.norm_p.ties > 0
    value = log_sum(st.norm_q) + st.w / total(st.norm_p)
    value = jnp.where(_p_lacks_q(st.m_inf, st.norm_p), jnp.inf, value)
    value = jnp.where(has_p, value, 0.0)
    value = jnp.where(jnp.maximum(st.norm_p.bad, st.norm_q.bad) > 0, jnp.nan, value)
    return value, log_sum_exp(st.norm_p), log_sum_exp(st.norm_q)


# ------------------------------------------------------- integer-label cross-entropy


class LabelCrossEntropy(NamedTuple):
    norm: Normaliser
    picked: Array   # the label's logit once its tile was read
    found: Array    # 1 once the label's column was read
    count: Array    # classes with a finite logit
    centred: Array  # sum of (x - m) over them (<= 0), for label smoothing


def label_init(rows: int) -> LabelCrossEntropy:
    return LabelCrossEntropy(normaliser_init(rows), _zeros(rows), _zeros(rows), _zeros(rows),
                             _zeros(rows))


def label_update(st: LabelCrossEntropy, x: Array, cols: Array, labels: Array,
                 classes: int) -> LabelCrossEntropy:
    """``cols``: the tile's class indices ``[1, cols]`` (past ``classes`` in the last tile);
    ``labels``: ``[rows, 1]`` int32."""
    norm, c, _ = normaliser_update(st.norm, x)
    hit = (cols == labels) & (cols < classes)
    picked = st.picked + _rowsum(jnp.where(hit, x, 0.0))
    found = jnp.maximum(st.found, _rowmax(jnp.where(hit, 1.0, 0.0)))
    # When m grows by d every x - m shrinks by d: both parts are <= 0.
    read = x > _NEG_INF
    grown = _finite_shift(norm.m) - _finite_shift(st.norm.m)
    centred = jnp.where(st.count > 0, st.centred - grown * st.count, 0.0)
    centred = centred + _rowsum(jnp.where(read, c, 0.0))
    count = st.count + _rowsum(jnp.where(read, 1.0, 0.0))
    return LabelCrossEntropy(norm, picked, found, count, centred)


def label_finish(st: LabelCrossEntropy) -> tuple[Array, Array, Array, Array, Array]:
    """``(-log Q_y, lse, uniform, top1, count)``, ``[rows, 1]`` each.

    ``-log Q_y = L + (m - x_y)``: +inf for ``x_y = -inf``, NaN for a label out
    of range or an invalid row; ``uniform`` is the cross-entropy against the
    uniform distribution over the finite classes, ``L - sum (x - m) / n``
    (label smoothing's part); ``top1`` is 1 where the label is an arg max.
    """
    lacks = st.picked == _NEG_INF
    log_sum_ = log_sum(st.norm)
    value = jnp.where(lacks, jnp.inf, log_sum_ + (_finite_shift(st.norm.m) - st.picked))
    ok = (st.found > 0) & (st.norm.bad == 0)
    value = jnp.where(ok, value, jnp.nan)
    has = st.count > 0
    uniform = jnp.where(has, (st.count * jnp.where(has, log_sum_, 0.0) - st.centred)
                        / jnp.maximum(st.count, 1.0), 0.0)
    uniform = jnp.where(st.norm.bad == 0, uniform, jnp.nan)
    top1 = jnp.where(ok & ~lacks & (st.picked == st.norm.m), 1.0, 0.0)
    return value, log_sum_exp(st.norm), uniform, top1, st.count


# ------------------------------------------------------------------------- KL


class KL(NamedTuple):
    r"""Running sums of :func:`jaxdiv._numerics.log_ratio`'s KL against moving shifts.

    With :math:`a = p - m_p`, :math:`b = q - m_{on}` and :math:`r = b - a` on
    the (running) support of P, the sums are :math:`V = \sum e^a \varphi(r)`,
    :math:`U = \sum e^a \mathrm{expm1}(r)` and :math:`S = \sum e^a` over
    classes with finite ``q``. When the shifts grow, the weights shrink by one
    factor :math:`\alpha` and every :math:`r` decreases by one per-row amount
    :math:`\delta`; since :math:`\varphi(r - \delta) = e^{-\delta}\varphi(r) +
    \varphi(-\delta) + \mathrm{expm1}(-\delta)\,r`, the carried sums are
    :math:`V' = \alpha(e^{-\delta}V + \varphi(-\delta)S + \mathrm{expm1}(-\delta)(U - V))`
    and :math:`U' = \alpha(e^{-\delta}U + \mathrm{expm1}(-\delta)S)`, each
    factor formed without cancellation or overflow (a series for small
    :math:`\delta`). ``U`` is its own sum, not ``V + R``: those two cancel
    when the ``r`` are large. A class that falls out of P's support when ``m_p`` grows
    keeps its (now negligible) weight: the KL formula holds for any set of
    classes that contains the support.
    """

    m_p: Array     # running max p
    s_p: Array     # sum of exp(p - m_p)
    m_on: Array    # running max of q on P's support
    s_on: Array    # sum of exp(q - m_on) on P's support
    m_off: Array   # running max of q off P's support
    s_off: Array   # sum of exp(q - m_off) off P's support
    v: Array       # sum e^a phi(r) over support classes with finite q
    u: Array       # sum e^a expm1(r) over the same classes
    s_pq: Array    # sum e^a over the same classes
    s_inf: Array   # sum e^a over P's support where q = -inf (there expm1(r) = -1)
    m_inf: Array   # max p where q = -inf
    bad: Array     # 1 once NaN or +inf was read


def kl_init(rows: int) -> KL:
    z, n = _zeros(rows), _neg_inf(rows)
    return KL(n, z, n, z, n, z, z, z, z, z, n, z)


def _carried(st: "KL", alpha: Array, e_on: Array, delta: Array) -> tuple[Array, Array]:
    """``(V', U')``: the old sums against the new shifts (see :class:`KL`).

    For small ``delta`` from the series of ``phi(-delta)``; otherwise as the
    direct per-class forms ``e^b - e^a (1 + r)`` and ``e^b - e^a`` summed,
    with ``sum e^b = s_on``: computing ``e_on (U + S)`` instead would cancel
    when Q's mass there is small, and ``e^-delta`` alone could overflow.
    """
    small = jnp.abs(delta) < _PHI_SERIES_RADIUS
    d = jnp.where(small, delta, 0.0)
    phi = phi_series(-d)
    expm1 = phi - d
    v_small = e_on * st.v + alpha * (phi * st.s_pq + expm1 * (st.u - st.v))
    u_small = e_on * st.u + alpha * expm1 * st.s_pq
    q_mass = e_on * st.s_on
    # alpha = 0 (P's old weights underflowed) leaves Q's mass, whatever delta is.
    p_part = jnp.where(alpha > 0, alpha * ((st.v - st.u) - (1.0 - delta) * st.s_pq), 0.0)
    v_big = q_mass + p_part
    u_big = q_mass - alpha * st.s_pq
    return jnp.where(small, v_small, v_big), jnp.where(small, u_small, u_big)


def kl_update(st: KL, p: Array, q: Array) -> KL:
    m_p = jnp.maximum(st.m_p, _rowmax(p))
    shift_p = _finite_shift(m_p)
    a = p - shift_p
    supp = a > _SUPPORT
    e_a = jnp.where(supp, jnp.exp(a), 0.0)
    q_on = jnp.where(supp, q, _NEG_INF)
    m_on = jnp.maximum(st.m_on, _rowmax(q_on))
    m_off = jnp.maximum(st.m_off, _rowmax(jnp.where(supp, _NEG_INF, q)))
    shift_on = _finite_shift(m_on)
    read = supp & (q > _NEG_INF)

    # Carry the old sums over to the new shifts: the weights e^a shrink by
    # alpha = e^-(growth of m_p) and every r decreases by delta, the growth of
    # the offset m_on - m_p.
    # Each growth is rounded when a maximum jumps by more than a factor of 2,
    # and r may be as small as 1e-8: their difference takes the rounding errors along.
    alpha = _rescale(st.m_p, m_p)
    grow_on, grow_on_error = two_sum(shift_on, -_finite_shift(st.m_on))
    grow_p, grow_p_error = two_sum(shift_p, -_finite_shift(st.m_p))
    delta = grow_on - grow_p
    delta = delta + jnp.where(jnp.isfinite(delta), grow_on_error - grow_p_error, 0.0)
    has_old = st.s_pq > 0
    delta = jnp.where(has_old, delta, 0.0)
    e_on = _rescale(st.m_on, m_on)      # alpha * e^-delta
    v, u = _carried(st, alpha, e_on, delta)
    v, u = jnp.where(has_old, v, 0.0), jnp.where(has_old, u, 0.0)

    # This tile's terms, as in log_ratio: r from whichever form of q - p rounds less.
    # In the raw form the offset is exact (a rounded offset would be common to
    # one tile's r only, and KL is invariant to an offset common to all r).
    b = q - shift_on
    offset, offset_error = two_sum(shift_on, -shift_p)
    raw = read & (jnp.abs(offset) <= jnp.abs(a) + jnp.abs(b))
    raw_r = ((jnp.where(raw, q, 0.0) - jnp.where(raw, p, 0.0)) - offset) - offset_error
    r = jnp.where(raw, raw_r, jnp.where(read, b, 0.0) - jnp.where(read, a, 0.0))
    r = jnp.where(read, r, 0.0)
    # One exponential of q per class, against the shift of the sum it joins.
    e_q = jnp.exp(q - jnp.where(supp, shift_on, _finite_shift(m_off)))
    e_b = jnp.where(read, e_q, 0.0)
    small = jnp.abs(r) < _PHI_SERIES_RADIUS
    phi = phi_series(jnp.where(small, r, 0.0))
    v = v + _rowsum(jnp.where(read, jnp.where(small, e_a * phi, e_b - e_a * (1.0 + r)), 0.0))
    u = u + _rowsum(jnp.where(read, jnp.where(small, e_a * (r + phi), e_b - e_a), 0.0))
    s_pq = alpha * st.s_pq + _rowsum(jnp.where(read, e_a, 0.0))
    s_inf = alpha * st.s_inf + _rowsum(jnp.where(supp & (q == _NEG_INF), e_a, 0.0))

    s_p = alpha * st.s_p + _rowsum(e_a)
    s_on = st.s_on * _rescale(st.m_on, m_on) + _rowsum(e_b)
    s_off = st.s_off * _rescale(st.m_off, m_off) + _rowsum(jnp.where(supp, 0.0, e_q))
    m_inf = jnp.maximum(st.m_inf, _rowmax(jnp.where(q == _NEG_INF, p, _NEG_INF)))
    bad = jnp.maximum(st.bad, _invalid(p, q))
    return KL(m_p, s_p, m_on, s_on, m_off, s_off, v, u, s_pq, s_inf, m_inf, bad)


def kl_finish(st: KL) -> LogRatio:
    r""":math:`KL = V/S_p - \psi(s) + \mathrm{softplus}(x)`, :math:`s = U/S_p`: the statistics of ``log_ratio``."""
    has_p = st.s_p > 0
    s_p = jnp.where(has_p, st.s_p, 1.0)
    has_on = st.s_on > 0
    # Q_i = 0 < P_i contributes P_i expm1(-inf) = -P_i: the value is then +inf,
    # but log Q - log P (the gap) stays exact for the rest of the family.
    s = jnp.where(has_on, (st.u - st.s_inf) / s_p, 0.0)
    x = jnp.where(
        has_on & (st.s_off > 0),
        (_finite_shift(st.m_off) - _finite_shift(st.m_on))
        + jnp.log(jnp.where(st.s_off > 0, st.s_off, 1.0))
        - jnp.log(jnp.where(has_on, st.s_on, 1.0)),
        _NEG_INF,
    )
    kl = jnp.maximum(st.v / s_p - neg_log1pmx(s) + jax.nn.softplus(x), 0.0)
    # V = +inf: Q's maximum on the support outgrew an earlier one by more than float32 holds.
    kl = jnp.where(_p_lacks_q_kl(st) | (x == jnp.inf) | (st.v == jnp.inf), jnp.inf, kl)
    kl = jnp.where(has_p, kl, 0.0)
    kl = jnp.where(st.bad > 0, jnp.nan, kl)

    log_sum_p = jnp.where(has_p, jnp.log(s_p), _NEG_INF)
    # Q's normaliser from its two parts, each against its own maximum.
    m_q = jnp.maximum(st.m_on, st.m_off)
    s_q = st.s_on * _rescale(st.m_on, m_q) + st.s_off * _rescale(st.m_off, m_q)
    log_sum_q = jnp.where(s_q > 0, jnp.log(jnp.where(s_q > 0, s_q, 1.0)), _NEG_INF)
    gap = jnp.log1p(s) + jax.nn.softplus(x)
    return LogRatio(kl, _finite_shift(st.m_p), log_sum_p, _finite_shift(m_q), log_sum_q,
                    _finite_shift(st.m_on), gap)


def _p_lacks_q_kl(st: KL) -> Array:
    return (st.m_inf > _NEG_INF) & (st.m_inf - _finite_shift(st.m_p) > _SUPPORT)


def run_whole_rows(init, update, finish, *tiles: Array):
    """One statistic on whole rows ``[rows, C]`` (a single tile)."""
    return _squeeze(finish(update(init(tiles[0].shape[0]), *tiles)))


def run_in_tiles(init, update, finish, *arrays: Array, tile: int):
    """The statistic over column tiles of ``tile`` classes, in plain JAX (a reference for the kernels)."""
    rows, classes = arrays[0].shape
    st = init(rows)
    for start in range(0, classes, tile):
        chunk = [a[:, start:start + tile] for a in arrays]
        width = chunk[0].shape[1]
        if width < tile:
            chunk = [jnp.pad(c, ((0, 0), (0, tile - width)), constant_values=_NEG_INF) for c in chunk]
        st = update(st, *chunk)
    return _squeeze(finish(st))


def _squeeze(out):
    return jax.tree.map(lambda t: t[:, 0], out)

