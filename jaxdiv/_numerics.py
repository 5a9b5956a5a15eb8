"""The few safe primitives every divergence in jaxdiv is built from.

Everything here works on the last axis of its inputs and is written so that
``-inf`` (zero probability) never produces NaN, neither in the value nor in any
derivative taken through it (the "double where" rule: an unselected branch of a
``where`` is fed harmless values, because its cotangent is zero but ``0 * inf``
is not).

The class-axis reductions go through :func:`row_max` and :func:`row_sum`, the
single place a sharded class axis (``axis_name`` inside ``shard_map``) would
swap in ``lax.pmax`` / ``lax.psum``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# Above this |x| the direct forms of phi and psi lose less than their series'
# truncation; both series are cut where the next term is below 1e-9 relative
# (float32; float64 inputs take more terms, see _wide).
_PHI_SERIES_RADIUS = 0.5
_PSI_SERIES_RADIUS = 0.25


def row_max(x: jax.Array) -> jax.Array:
    """Max over the last axis; ``-inf`` for an empty axis."""
    return jnp.max(x, axis=-1, initial=-jnp.inf)


def row_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis."""
    return jnp.sum(x, axis=-1)


def finite_or_zero(x: jax.Array) -> jax.Array:
    """``x`` where finite, else 0: a safe shift for rows whose maximum is ``-inf``."""
    return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def _wide(x: jax.Array) -> bool:
    """float64 input: the series below take more terms to stay within its rounding."""
    return x.dtype == jnp.float64


def _phi_over_x_squared(x: jax.Array) -> jax.Array:
    """Horner form of sum_{k>=0} x^k / (k+2)!, through x^7 (x^12 in float64), for |x| <= 1/2."""
    last = 12 if _wide(x) else 7
    acc = jnp.full_like(x, 1 / math.factorial(last + 2))
    for k in range(last - 1, -1, -1):
        acc = acc * x + 1 / math.factorial(k + 2)
    return acc


def phi_series(x: jax.Array) -> jax.Array:
    r"""Taylor series of :math:`\varphi(x) = e^x - 1 - x`, accurate for :math:`|x| \le 1/2`."""
    return _phi_over_x_squared(x) * x * x


def phi_over_x_series(x: jax.Array) -> jax.Array:
    r""":math:`\varphi(x) / x = (e^x - 1 - x) / x` by its series, for :math:`|x| \le 1/2` (0 at 0)."""
    return _phi_over_x_squared(x) * x


def expm1_series(x: jax.Array) -> jax.Array:
    r""":math:`e^x - 1` by its series, for :math:`|x| \le 1/2`: no transcendental call."""
    return x + phi_series(x)


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0``."""
    return jnp.sqrt(x)


# sqrt'(0) is infinite; at 0 (a distance between identical inputs, where the
# inner gradient is 0 too) the zero subgradient is used instead of inf * 0 = NaN.
@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = y > 0
    return y, dx * jnp.where(positive, 0.5 / jnp.where(positive, y, 1.0), 0.0)


@jax.custom_jvp
def expm1mx(x: jax.Array) -> jax.Array:
    r""":math:`\varphi(x) = e^x - 1 - x`, with full relative accuracy near 0.

    ``expm1(x) - x`` cancels to noise for small ``x`` (it returns 0 below ~1e-4 in
    float32); a short series replaces it there. ``phi(+-inf) = +inf``; ``phi`` is
    ``>= 0`` everywhere, with ``phi(0) = 0`` exactly.
    """
    small = jnp.abs(x) < _PHI_SERIES_RADIUS
    series = phi_series(jnp.where(small, x, jnp.zeros_like(x)))
    infinite = x == jnp.inf
    x_direct = jnp.where(small | infinite, jnp.ones_like(x), x)
    direct = jnp.where(infinite, jnp.inf, jnp.expm1(x_direct) - x_direct)
    return jnp.maximum(jnp.where(small, series, direct), 0)


# Closed form phi'(x) = expm1(x) (0 at +inf, where phi stays +inf): autodiff through
# the series/direct selects keeps both branches' intermediates alive, 8x the memory.
@expm1mx.defjvp
def _expm1mx_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    slope = jnp.where(x == jnp.inf, jnp.zeros_like(x), jnp.expm1(x))
    return expm1mx(x), slope * dx


def expm1mx_finite(x: jax.Array) -> jax.Array:
    r""":func:`expm1mx` for finite ``x``, written without compares or selects.

    XLA:CPU fuses this form into a following reduction (its fused reductions
    accept min/max/abs/exp but no compare or select), so an elementwise-then-sum
    divergence runs as one pass. The series is evaluated at ``x`` clipped to its
    radius and replaced, outside it, by the direct form through an exact 0/1
    weight. Infinite ``x`` gives NaN: callers fall back to :func:`expm1mx`.
    Its autodiff is NaN-free (no branch divides by zero or overflows).
    """
    radius = _PHI_SERIES_RADIUS
    clipped = x * (radius / jnp.maximum(jnp.abs(x), radius))
    outside = jnp.minimum(1.0, 1e30 * jnp.maximum(jnp.abs(x) - radius, 0.0))
    series = phi_series(clipped)
    return series + outside * ((jnp.expm1(x) - x) - series)


def neg_log1pmx(s: jax.Array) -> jax.Array:
    r""":math:`\psi(s) = s - \log(1 + s)` for :math:`s > -1`, accurate near 0.

    The negative of ``scipy.special.log1pmx``.

    ``psi`` is ``>= 0`` with ``psi(0) = 0`` exactly; it is the correction that
    turns a sum of per-class terms into a divergence once the normalisers of the
    two distributions differ.
    """
    small = jnp.abs(s) < _PSI_SERIES_RADIUS
    z = jnp.where(small, s, jnp.zeros_like(s))
    # s^2/2 - s^3/3 + s^4/4 - ..., through s^16 (next term < 1e-9 relative;
    # float64: through s^28, < 1e-16).
    acc = jnp.zeros_like(z)
    for k in range(28 if _wide(s) else 16, 1, -1):
        acc = acc * z + ((-1) ** k) / k
    series = acc * z * z
    s_direct = jnp.where(small, jnp.ones_like(s), s)
    direct = s_direct - jnp.log1p(s_direct)
    return jnp.maximum(jnp.where(small, series, direct), 0)


def _atanh_series_over_u(u: jax.Array, first: int) -> jax.Array:
    """sum_{k>=0} u^(2k) / (2k + first), through u^12 (u^24 in float64): 1e-9 (1e-16) relative for |u| <= 1/4."""
    u2 = u * u
    last = 12 if _wide(u) else 6
    acc = jnp.full_like(u, 1.0 / (first + 2 * last))
    for k in range(last - 1, -1, -1):
        acc = acc * u2 + 1.0 / (first + 2 * k)
    return acc


def log1p_near(s: jax.Array) -> jax.Array:
    r""":math:`\log(1 + s)` for :math:`s \in [-0.4, 2/3]`, as :math:`2\,\mathrm{atanh}(s / (2 + s))` by series.

    One division and a short polynomial, no compare or select, so it fuses.
    """
    u = s / (2.0 + s)
    return 2.0 * u * _atanh_series_over_u(u, 1)


def neg_log1pmx_near(s: jax.Array) -> jax.Array:
    r""":math:`\psi(s) = s - \log(1 + s)` for :math:`s \in [-0.4, 2/3]`, accurate near 0.

    With :math:`u = s / (2 + s)`, :math:`\psi = s^2 / (2 + s) - 2(u^3/3 + u^5/5 + \dots)`;
    neither part cancels the other on this interval.
    """
    u = s / (2.0 + s)
    return s * u - 2.0 * u * u * u * _atanh_series_over_u(u, 3)


class LogNormaliser(NamedTuple):
    """Row statistics of ``logits`` for ``log_softmax``, see :func:`log_normaliser`."""

    shift: jax.Array      # row max, 0 for a row with no finite logit  [...]
    centred: jax.Array    # logits - shift (<= 0, -inf stays -inf)     [..., C]
    exp_centred: jax.Array  # exp(centred), in [0, 1]                  [..., C]
    log_sum: jax.Array    # log sum exp(centred); -inf for an empty row [...]


def log_normaliser(logits: jax.Array) -> LogNormaliser:
    r"""Stable pieces of :math:`\log\sum_i e^{x_i} = m + \log(1 + \sum_{i \ne i^*} e^{x_i - m})`.

    The ``log1p`` form (Blanchard, Higham & Higham, 2021) keeps tiny entropies and
    confident cross-entropies accurate: the arg-max term, exactly 1, is left out of
    the sum instead of being added and then cancelled by the logarithm. Ties at the
    maximum are counted exactly.
    """
    shift = finite_or_zero(row_max(logits))
    centred = logits - shift[..., None]
    exp_centred = jnp.exp(centred)
    at_max = centred == 0
    rest = row_sum(jnp.where(at_max, jnp.zeros_like(exp_centred), exp_centred))
    ties = row_sum(at_max.astype(logits.dtype)) - 1
    log_sum = jnp.log1p(rest + ties)   # ties = -1 only when the row has no mass
    return LogNormaliser(shift, centred, exp_centred, log_sum)


# A block of rows is sized to stay cache-resident: XLA:CPU cannot fuse the
# selects of the stable formulas into its reductions, so each intermediate is
# materialised, and materialising whole [rows, C] arrays costs several passes
# over memory. Measured on a 2-core x86: 2^18-2^19 elements per block is fastest.
_BLOCK_ELEMENTS = 1 << 19


def map_rows(fn, *arrays):
    """``fn(*arrays)`` evaluated block of rows by block of rows.

    ``fn`` maps row-major arrays whose leading dimensions are the batch (the
    class axis, if any, last) to a pytree of per-row statistics. The batch shape
    is that of ``arrays[0]`` without its last axis.
    """
    batch = arrays[0].shape[:-1]
    rows = math.prod(batch)
    flat = tuple(a.reshape((rows,) + a.shape[len(batch):]) for a in arrays)
    num_classes = max(arrays[0].shape[-1], 1)
    block = max(1, min(rows, _BLOCK_ELEMENTS // num_classes))
    if block >= rows:
        out = fn(*flat)
    else:
        out = jax.lax.map(lambda xs: fn(*xs), flat, batch_size=block)
    return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)


_ROW_STATS = "jaxdiv_row_stats"


def recompute_in_backward(fn):
    """Under reverse mode, keep only what :func:`row_stats` marks; recompute the rest.

    Wrapped around a function with a custom JVP rule, this makes the backward pass
    re-read the inputs instead of holding ``[..., C]`` temporaries (probabilities,
    coefficients) between the forward and the backward pass.
    """
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(_ROW_STATS))


def row_stats(stats):
    """Mark per-row statistics as the residuals kept for the backward pass."""
    return jax.tree.map(lambda s: checkpoint_name(s, _ROW_STATS), stats)


@jax.custom_jvp
def log1p_scaled(total: jax.Array, h: jax.Array) -> jax.Array:
    """``log1p(h * total) / h``, equal to ``total`` at ``h = 0``."""
    z = jnp.maximum(h * total, -1.0)
    zero = z == 0
    ratio = jnp.where(zero, 1.0, jnp.log1p(z) / jnp.where(zero, 1.0, z))
    return jnp.where(jnp.isinf(total), jnp.inf, total * ratio)


# Closed form d/dtotal = 1 / (1 + h total); the quotient's own autodiff cancels
# catastrophically for tiny h * total.
@log1p_scaled.defjvp
def _log1p_scaled_jvp(primals, tangents):
    total, h = primals
    d_total, d_h = tangents
    value = log1p_scaled(total, h)
    denom = 1.0 + h * total
    live = jnp.isfinite(value) & (denom > 0)
    return value, d_total * jnp.where(live, 1.0 / jnp.where(live, denom, 1.0), 0.0)


# ------------------------------------------------------------------ log P / Q


def support(exp_centred: jax.Array) -> jax.Array:
    """The classes where P is nonzero in the working precision.

    A logit whose probability underflows (say -1e4 next to 0) is treated exactly
    like ``-inf``, so clipping ``-inf`` to a large negative number changes nothing.
    """
    return exp_centred > 0


def difference(q: jax.Array, p: jax.Array, read: jax.Array) -> jax.Array:
    """``q - p`` where ``read``, 0 elsewhere, without forming ``-inf - -inf``."""
    return jnp.where(read, q, 0.0) - jnp.where(read, p, 0.0)


def invalid(row_stat: jax.Array) -> jax.Array:
    """NaN or ``+inf`` in a row statistic that is finite for valid logits.

    Normaliser sums of ``exp(x - max x)`` are at most the class count, and NaN or
    ``+inf`` in any read logit propagates into them, so checking them costs no
    pass over the classes.
    """
    return ~(row_stat < jnp.inf)


class LogRatio(NamedTuple):
    """Row statistics of a pair of logit arrays, see :func:`log_ratio`."""

    kl: jax.Array         # KL(P || Q); NaN for a row holding NaN or +inf
    shift_p: jax.Array    # max p (0 for a row without support)
    log_sum_p: jax.Array  # log sum exp(p - shift_p); -inf for a row without support
    shift_q: jax.Array    # max q (0 for a row without support)
    log_sum_q: jax.Array  # log sum exp(q - shift_q); -inf for a row without support
    shift: jax.Array      # c = max_{supp P} q - max p
    gap: jax.Array        # (lse_q - lse_p) - c, so log Q - log P = ((q - p) - c) - gap

    @property
    def lse_p(self) -> jax.Array:
        return self.shift_p + self.log_sum_p

    @property
    def lse_q(self) -> jax.Array:
        return self.shift_q + self.log_sum_q


def log_ratio(p: jax.Array, q: jax.Array) -> LogRatio:
    r"""Row statistics that give :math:`\log P - \log Q` to full accuracy, and :math:`KL(P \| Q)`.

    The difference of the two log-normalisers is the delicate part: computed as
    ``lse(q) - lse(p)`` it carries an absolute error of a rounding of the
    normalisers, which is the whole value of a divergence between nearly
    identical distributions. Here it is ``c + log1p(s) + softplus(x)``: with
    :math:`a = p - \max p`, :math:`b = q - \max_{\mathrm{supp} P} q`,
    :math:`r = (q - p) - c` (formed from the raw logits, so it is exact for
    nearby values) and :math:`c = \max_{\mathrm{supp} P} q - \max p`,
    :math:`s = \sum_{\mathrm{supp} P} P\,\mathrm{expm1}(r)` is a sum of terms as
    small as the differences themselves, and :math:`x` is the log ratio of Q's
    mass off and on the support of P.

    KL comes with it at no extra exponential:

    .. math::
      KL = \sum P \varphi(r) - \psi(s) + \mathrm{softplus}(x),

    where :math:`P\varphi(r) = (e^b - e^a(1 + r)) / S_p` away from 0.
    """
    shift_p = finite_or_zero(row_max(p))
    e_a = jnp.exp(p - shift_p[..., None])
    supp = support(e_a)
    max_q_on = row_max(jnp.where(supp, q, -jnp.inf))
    shift_on, shift_all = finite_or_zero(max_q_on), finite_or_zero(row_max(q))
    q_on_supp_finite = supp & (q > -jnp.inf)

    e_b = jnp.exp(q - jnp.where(supp, shift_on[..., None], shift_all[..., None]))
    c = shift_on - shift_p
    r = jnp.where(q_on_supp_finite, difference(q, p, q_on_supp_finite) - c[..., None], 0.0)
    small = jnp.abs(r) < _PHI_SERIES_RADIUS
    phi = phi_series(jnp.where(small, r, 0.0))
    zero = jnp.zeros_like(e_a)
    # e^a * phi(r) and e^a * expm1(r), directly from e^b = e^a e^r when r is not small.
    # Q_i = 0 < P_i contributes +inf; folding it in here saves a pass.
    v = jnp.where(small, e_a * phi, e_b - e_a * (1 + r))
    v = jnp.where(supp, jnp.where(q_on_supp_finite, v, jnp.inf), zero)
    # Q_i = 0 < P_i contributes P_i * expm1(-inf) = -P_i.
    u = jnp.where(q_on_supp_finite, jnp.where(small, e_a * (r + phi), e_b - e_a), -e_a)

    sum_p = row_sum(e_a)
    sum_on = row_sum(jnp.where(supp, e_b, zero))
    sum_off = row_sum(jnp.where(supp, zero, e_b))
    has_p, has_on, has_off = sum_p > 0, sum_on > 0, sum_off > 0
    # NaN or +inf in p or q makes a normaliser sum non-finite (all other terms are <= 1).
    bad = invalid(sum_p) | invalid(sum_on + sum_off)
    sum_p = jnp.where(has_p, sum_p, 1.0)
    s = jnp.where(has_on, row_sum(u) / sum_p, 0.0)
    # x = log(Q mass off supp P / Q mass on it), -inf when nothing is off.
    x = jnp.where(
        has_on & has_off,
        (shift_all - shift_on)
        + jnp.log(jnp.where(has_off, sum_off, 1.0))
        - jnp.log(jnp.where(has_on, sum_on, 1.0)),
        -jnp.inf,
    )
    kl = jnp.maximum(row_sum(v) / sum_p - neg_log1pmx(s) + jax.nn.softplus(x), 0.0)
    kl = jnp.where(has_p, kl, 0.0)
    kl = jnp.where(bad, jnp.nan, kl)

    log_sum_p = jnp.where(has_p, jnp.log(sum_p), -jnp.inf)
    # Q's normaliser relative to shift_all: the on-support part is rescaled.
    scale_on = jnp.where(jnp.isfinite(max_q_on), jnp.exp(shift_on - shift_all), 0.0)
    sum_q = sum_off + sum_on * scale_on
    log_sum_q = jnp.where(sum_q > 0, jnp.log(jnp.where(sum_q > 0, sum_q, 1.0)), -jnp.inf)
    gap = jnp.log1p(s) + jax.nn.softplus(x)
    return LogRatio(kl, shift_p, log_sum_p, shift_all, log_sum_q, c, gap)
