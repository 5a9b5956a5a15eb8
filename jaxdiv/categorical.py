r"""Divergences between categorical distributions given as logits.

Every function here takes unnormalised log-probabilities (logits): any real value,
or ``-inf`` for a class with zero probability. ``P = softmax(p_logits)`` is the
reference (target) distribution and comes first, ``Q = softmax(q_logits)`` is the
model and comes second, as in ``scipy.stats.entropy(pk, qk)``.

Conventions shared by all functions (the documentation's *Conventions* page has the full table):

* ``where`` (boolean, broadcastable to the logits) removes classes from *both*
  distributions: masked logits are never read and get an exactly-zero gradient.
* A class with ``P_i = 0`` contributes nothing, whatever ``Q_i`` is
  (``0 log 0 = 0 log(0/0) = 0``). ``P_i > 0 = Q_i`` makes KL and cross-entropy
  ``+inf``, never NaN.
* A row where ``P`` has no support (all ``-inf`` or all masked) gives 0 with a
  zero gradient.
* NaN or ``+inf`` in a read logit gives NaN for that row only.
* Values are returned in ``result_type(input dtype, float32)``; 16-bit inputs are
  computed in float32 and their gradients come back in the input dtype.

Gradients are closed forms (custom JVP rules, so ``grad``, ``jvp``, ``jacfwd`` and
second order all work). Between the forward and the backward pass only the
inputs and a few statistics per row are kept: the ``[..., C]`` intermediates are
recomputed, which costs one pass and saves two or three arrays of logits' size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxdiv import _checks
from jaxdiv._dispatch import eager_jit
from jaxdiv import _online
from jaxdiv._labels import label_stats, label_stats_one_pass
from jaxdiv._pallas import RowPass, choose, cotangent_times, differentiable, tiles_only
from jaxdiv._numerics import (
    LogRatio,
    finite_or_zero,
    invalid,
    log_normaliser,
    log_ratio,
    map_rows,
    any_class,
    check_axis_name,
    custom_jvp_over_classes,
    promote,
    row_stats,
    row_sum,
    shifted_difference,
    support,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "kl_divergence",
    "cross_entropy",
    "entropy",
    "cross_entropy_with_integer_labels",
    "validate_labels",
    "bernoulli_kl_divergence",
]


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _inner(coef: Array, tangent) -> Array:
    """Row-wise ``<coef, tangent>`` over the class axis, skipping symbolic zeros."""
    if _is_zero(tangent):
        return jnp.zeros(coef.shape[:-1], coef.dtype)
    return row_sum(coef * tangent)


# --------------------------------------------------------------------------- KL


def _softmax(x: Array, lse: Array) -> Array:
    """``exp(x - lse)``; all zeros for a row without support (``lse = -inf``)."""
    return jnp.exp(x - finite_or_zero(lse)[..., None])


def _softmax_apart(x: Array, lse: Array) -> Array:
    """:func:`_softmax` written as ``exp(x + (-lse))``, equal in IEEE arithmetic.

    For a second gradient that needs P: XLA does not merge the two forms, so
    each gradient's pass computes its own exp (one more per class), where a
    shared P would be held as a whole ``[..., C]`` float32 temporary.
    """
    return jnp.exp(x + (-finite_or_zero(lse))[..., None])


def _has_mass(lse: Array) -> Array:
    return (lse > -jnp.inf)[..., None]


def _tempered(x: Array, scale: Optional[Array], valid: Optional[Array]) -> Array:
    """``scale * x``, with the rows where ``valid`` is False emptied (all ``-inf``).

    ``-inf`` entries stay ``-inf`` without forming ``0 * -inf`` in the
    derivative with respect to ``scale`` (a learned temperature).
    """
    if scale is not None:
        finite = x > -jnp.inf
        x = jnp.where(finite, jnp.where(finite, x, 0.0) * scale, x)
    return x if valid is None else jnp.where(valid[..., None], x, -jnp.inf)


def _tempered_stats(p: Array, q: Array, scale, valid) -> LogRatio:
    def read(a, b, v=None):
        return _tempered(promote(a), scale, v), _tempered(promote(b), scale, v)

    # Stored arrays in, each pass reads them (see log_ratio's read).
    return map_rows(lambda *xs: log_ratio(*xs, read=read), p, q, *([] if valid is None else [valid]),
                    widen=False)


def _scaled_kl_value(p: Array, q: Array, scale: Optional[Array], valid: Optional[Array]) -> Array:
    """KL between ``softmax(scale * p)`` and ``softmax(scale * q)``, 0 at rows where ``valid`` is False.

    The scale (an inverse temperature, not differentiated) and the row mask are
    applied inside each row block, so tempered or masked logits are never
    materialised, and masked rows are never read.
    """
    return _tempered_stats(p, q, scale, valid).kl


def _kl_coefficients(p: Array, q: Array, stats) -> tuple[Array, Array]:
    """``(dKL/dp, dKL/dq)`` from the row statistics of :func:`log_ratio` (or the one-pass kernel's)."""
    probs_p = _softmax(p, stats.lse_p)
    probs_p_own = _softmax_apart(p, stats.lse_p)
    read = support(probs_p_own) & (q > -jnp.inf)
    finite = jnp.isfinite(stats.kl)[..., None]
    kl = jnp.where(finite, stats.kl[..., None], 0.0)
    log_q_over_p = shifted_difference(q, p, stats.shift_on, stats.shift_p, read) - stats.gap[..., None]
    log_q_over_p = jnp.where(read, log_q_over_p, 0.0)
    # A +inf KL stays +inf under any finite change of p_logits: its p-gradient is 0.
    coef_p = jnp.where(read & finite, -probs_p_own * (log_q_over_p + kl), 0.0)
    # d/dq of sum(P) lse(q) - <P, q>: Q - P, and 0 where P has no mass.
    coef_q = jnp.where(_has_mass(stats.lse_p), _softmax(q, stats.lse_q) - probs_p, 0.0)
    return coef_p, coef_q


# Closed forms: dKL/dq = Q - P, dKL/dp = -P (log Q - log P + KL); autodiff through
# the branches of log_ratio would be slower and leaks NaN at -inf.
def _kl_jvp(primals, tangents):
    p_in, q_in, scale, valid = primals
    dp, dq, dscale = tangents[:3]
    # The row blocks widen 16-bit inputs themselves; the whole-array tangent's
    # widening fuses into its elementwise pass.
    stats = row_stats(_tempered_stats(p_in, q_in, scale, valid))
    p_raw, q_raw = promote(p_in), promote(q_in)
    p, q = _tempered(p_raw, scale, valid), _tempered(q_raw, scale, valid)
    coef_p, coef_q = _kl_coefficients(p, q, stats)
    tangent = _inner(coef_p, dp) + _inner(coef_q, dq)
    if scale is None:
        return stats.kl, tangent
    tangent = tangent * scale
    if not _is_zero(dscale):
        tangent = tangent + _temperature_slope(p_in, q_in, scale, valid, stats) * dscale
    return stats.kl, tangent


def _temperature_slope(p: Array, q: Array, scale: Array, valid: Optional[Array], stats) -> Array:
    """d/ds KL(softmax(s p), softmax(s q)) = <coef_p, p> + <coef_q, q>; -inf logits do not move.

    Row sums over the coefficients, so computed in row blocks: XLA:CPU would
    otherwise hold both coefficients as whole ``[..., C]`` arrays (the tangent
    of the logits, elementwise, fuses without them).
    """
    leaves, tree = jax.tree.flatten(stats)
    masked = valid is not None

    def rows(a, b, *rest):
        v = rest[0] if masked else None
        coef_a, coef_b = _kl_coefficients(
            _tempered(a, scale, v), _tempered(b, scale, v), jax.tree.unflatten(tree, rest[masked:]))
        finite_a, finite_b = a > -jnp.inf, b > -jnp.inf
        slope = row_sum(jnp.where(finite_a, coef_a * jnp.where(finite_a, a, 0.0), 0.0))
        return slope + row_sum(jnp.where(finite_b, coef_b * jnp.where(finite_b, b, 0.0), 0.0))

    return map_rows(rows, p, q, *((valid,) if masked else ()), *leaves)


# _scaled_kl(axis_name)(p, q, scale, valid)
_scaled_kl = custom_jvp_over_classes(_scaled_kl_value, _kl_jvp)


def _kl(p: Array, q: Array, axis_name=None) -> Array:
    return _scaled_kl(axis_name)(p, q, None, None)


# ------------------------------------------------------ cross-entropy, entropy


class _XentStats(NamedTuple):
    value: Array       # H(P, Q), or H(P) when q is p
    lse_p: Array       # log-normaliser of P, -inf for a row without support
    lse_q: Array       # log-normaliser of Q, -inf for a row without support


def _log_sum_exp(norm) -> Array:
    """``log sum exp(x)`` from :func:`log_normaliser`."""
    return norm.shift + norm.log_sum


def _xent_rows(p: Array, q: Array) -> _XentStats:
    r""":math:`H(P, Q) = L_q + \sum_{\mathrm{supp} P} P_i (\max q - q_i)`, a sum of non-negative parts.

    With :math:`L_q = \mathrm{log1p}(\sum_{j \ne \arg\max} e^{q_j - \max q})`
    (the accurate log-normaliser), :math:`-\log Q_i = L_q + (\max q - q_i)`
    and both parts are :math:`\ge 0`, so confident predictions (CE ~ 1e-7) and
    tiny entropies keep full relative accuracy instead of cancelling
    ``lse(q) - <P, q>``. Written this way, :math:`L_q` and the weighted sum
    come out of the same pass over the inputs.
    """
    norm_p = log_normaliser(p)
    norm_q = norm_p if q is p else log_normaliser(q)
    supp = support(norm_p.exp_centred)
    read = supp & (q > -jnp.inf)
    # max q - q_i >= 0 where read, +inf where Q_i = 0 < P_i.
    gap = jnp.where(read, -jnp.where(read, norm_q.centred, 0.0), jnp.where(supp, jnp.inf, 0.0))
    has_p = norm_p.log_sum > -jnp.inf
    mass = jnp.exp(jnp.where(has_p, norm_p.log_sum, 0.0))
    value = finite_or_zero(norm_q.log_sum) + row_sum(norm_p.exp_centred * gap) / mass
    value = jnp.where(has_p, value, 0.0)
    value = jnp.where(invalid(norm_p.log_sum) | invalid(norm_q.log_sum), jnp.nan, value)
    return _XentStats(value, _log_sum_exp(norm_p), _log_sum_exp(norm_q))


def _xent_coef_p(p: Array, neg_log_q: Array, stats: _XentStats, read: Array) -> Array:
    """d H / d p = P (-log Q - H), 0 where P = 0 or H is +inf (then constant in p)."""
    finite = jnp.isfinite(stats.value)[..., None]
    value = jnp.where(finite, stats.value[..., None], 0.0)
    neg_log_q = jnp.where(read, neg_log_q, 0.0)
    return jnp.where(read & finite, _softmax(p, stats.lse_p) * (neg_log_q - value), 0.0)


def _cross_entropy_value(p: Array, q: Array) -> Array:
    return map_rows(_xent_rows, p, q).value


def _xent_coefficients(p: Array, q: Array, stats: _XentStats) -> tuple[Array, Array]:
    read = support(_softmax(p, stats.lse_p)) & (q > -jnp.inf)
    coef_p = _xent_coef_p(p, stats.lse_q[..., None] - jnp.where(read, q, 0.0), stats, read)
    coef_q = jnp.where(_has_mass(stats.lse_p), _softmax(q, stats.lse_q) - _softmax_apart(p, stats.lse_p), 0.0)
    return coef_p, coef_q


# Closed forms: dH(P,Q)/dq = Q - P, dH(P,Q)/dp = P (-log Q - H(P,Q)).
def _cross_entropy_jvp(primals, tangents):
    p, q = primals
    dp, dq = tangents
    stats = row_stats(map_rows(_xent_rows, p, q))
    coef_p, coef_q = _xent_coefficients(promote(p), promote(q), stats)
    return stats.value, _inner(coef_p, dp) + _inner(coef_q, dq)


_cross_entropy = custom_jvp_over_classes(_cross_entropy_value, _cross_entropy_jvp)


def _entropy_value(p: Array) -> Array:
    return map_rows(lambda x: _xent_rows(x, x), p).value


def _entropy_coefficient(p: Array, stats: _XentStats) -> Array:
    read = support(_softmax(p, stats.lse_p))
    return _xent_coef_p(p, stats.lse_p[..., None] - jnp.where(read, p, 0.0), stats, read)


# Closed form: dH/dp = P (-log P - H); autodiff would read log P at P = 0.
def _entropy_jvp(primals, tangents):
    (p,), (dp,) = primals, tangents
    stats = row_stats(map_rows(lambda x: _xent_rows(x, x), p))
    return stats.value, _inner(_entropy_coefficient(promote(p), stats), dp)


_entropy = custom_jvp_over_classes(_entropy_value, _entropy_jvp)


# ---------------------------------------------- one pass over the logits (Pallas)


def _temper_tile(x: Array, scale: Array, valid: Array) -> Array:
    """:func:`_tempered` on a tile, with per-row ``scale`` and ``valid`` (``[rows, 1]``)."""
    return _tempered(x, scale, valid[..., 0] > 0)


def _kl_step(state, tiles, cols, args, classes):
    if args:
        tiles = [_temper_tile(t, *args) for t in tiles]
    return _online.kl_update(state, *tiles)


def _kl_rows(p: Array, q: Array, *args) -> LogRatio:
    def read(a, b, c=None, v=None):
        a, b = promote(a), promote(b)
        if c is None:
            return a, b
        c, v = promote(c)[..., None], v[..., None]
        return _temper_tile(a, c, v), _temper_tile(b, c, v)

    return map_rows(lambda *xs: log_ratio(*xs, read=read), p, q, *args, widen=False)


def _kl_backward(arrays, args, results, cotangents):
    g = cotangents.kl[..., None]
    p_raw, q_raw = (promote(a) for a in arrays)
    if args:
        scale, valid = (a[..., None] for a in args)
        p, q = _temper_tile(p_raw, scale, valid), _temper_tile(q_raw, scale, valid)
    else:
        p, q = p_raw, q_raw
    coef_p, coef_q = _kl_coefficients(p, q, results)
    grads = tuple(cotangent_times(g, c * (scale if args else 1.0)).astype(a.dtype)
                  for a, c in zip(arrays, (coef_p, coef_q)))
    if not args:
        return grads, ()
    # d/ds KL(softmax(s p), softmax(s q)) = <coef_p, p> + <coef_q, q>; -inf logits do not move.
    slope = sum(row_sum(jnp.where(x > -jnp.inf, c * jnp.where(x > -jnp.inf, x, 0.0), 0.0))
                for x, c in ((p_raw, coef_p), (q_raw, coef_q)))
    return grads, (cotangent_times(g[..., 0], slope), jnp.zeros_like(args[1]))


_KL_PASS = RowPass(_online.kl_init, _kl_step, _online.kl_finish, _kl_rows)
_kl_one_pass = differentiable(_KL_PASS, _kl_backward)


def _scaled_kl_one_pass(p: Array, q: Array, scale: Optional[Array], valid: Optional[Array]) -> Array:
    """:func:`_scaled_kl` (KL of ``softmax(scale * .)``, 0 at rows where ``valid`` is False) in one pass."""
    p, q = jnp.broadcast_arrays(p, q)
    if scale is None and valid is None:
        return _kl_one_pass((p, q), ())[0]
    batch = p.shape[:-1]
    dtype = jnp.result_type(p.dtype, jnp.float32)
    scale = jnp.broadcast_to(jnp.ones((), dtype) if scale is None else jnp.asarray(scale, dtype), batch)
    valid = jnp.ones(batch, dtype) if valid is None else jnp.broadcast_to(valid, batch).astype(dtype)
    return _kl_one_pass((p, q), (scale, valid))[0]


def _cross_entropy_backward(arrays, args, results, cotangents):
    p, q = (promote(a) for a in arrays)
    coefs = _xent_coefficients(p, q, _XentStats(*results))
    g = cotangents[0][..., None]
    return tuple(cotangent_times(g, c).astype(a.dtype) for a, c in zip(arrays, coefs)), ()


_cross_entropy_one_pass = differentiable(
    RowPass(_online.cross_entropy_init, tiles_only(_online.cross_entropy_update),
            _online.cross_entropy_finish, lambda p, q: tuple(map_rows(_xent_rows, p, q))),
    _cross_entropy_backward)


def _entropy_backward(arrays, args, results, cotangents):
    (x,) = arrays
    coef = _entropy_coefficient(promote(x), _XentStats(results[0], results[1], results[1]))
    return (cotangent_times(cotangents[0][..., None], coef).astype(x.dtype),), ()


_entropy_one_pass = differentiable(
    RowPass(_online.entropy_init, tiles_only(_online.entropy_update), _online.entropy_finish,
            lambda x: tuple(map_rows(lambda x: _xent_rows(x, x), x))[:2]),
    _entropy_backward)


def _pallas_only(axis_name) -> None:
    if axis_name is not None:
        raise NotImplementedError("the Pallas kernels read whole rows; axis_name splits them")


# ------------------------------------------------------------------ public API


@eager_jit
def kl_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    base: Optional[float] = None,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Kullback-Leibler divergence :math:`KL(P \| Q)` between two categoricals given as logits.

    .. math::
      KL(P \| Q) = \sum_i P_i \log \frac{P_i}{Q_i}, \quad
      P = \mathrm{softmax}(p), \; Q = \mathrm{softmax}(q),

    with :math:`0 \log(0 / Q_i) = 0` and :math:`P_i \log(P_i / 0) = +\infty`.
    Evaluated without cancellation, so nearly identical distributions (KL down to
    1e-12 and below) keep full float32 relative accuracy, ``kl(x, x) == 0.0``
    exactly, and the result is never negative.

    Args:
      p_logits: logits of the reference distribution P, ``[..., C, ...]``; any
        real value or ``-inf`` (zero probability).
      q_logits: logits of the model Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis (each device holding a contiguous slice of the classes, in
        order): the per-row statistics are combined across it with
        ``lax.pmax`` / ``lax.psum`` of per-row scalars. None: whole rows.
      implementation: ``"xla"`` (default) or ``"pallas"``: one pass over the
        logits in a Pallas kernel on GPU (Triton) and TPU (Mosaic), the XLA
        path on the CPU and wherever a kernel does not apply (float64,
        ``axis_name``). Reverse-mode differentiation only (``grad``, ``vjp``).

    Returns:
      KL in nats, with the class axis removed, in ``result_type(dtype, float32)``.
      ``+inf`` where P has mass Q lacks; 0 where P has no support; NaN in rows
      holding NaN or ``+inf``.

    Gradients: ``d/dq = Q - P`` (finite even where KL is ``+inf``) and
    ``d/dp = P * (log P - log Q - KL)``, exactly 0 where ``P_i = 0``; where KL is
    ``+inf`` the ``p`` gradient is 0 (KL stays ``+inf`` under any finite change
    of ``p``).

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
      >>> q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
      >>> print(f"{jaxdiv.kl_divergence(p, q):.6f}")  # log 2
      0.693147
      >>> float(jaxdiv.kl_divergence(q, p))  # Q has mass where P has none
      inf
    """
    check_axis_name(axis_name)
    (p, q), _ = _checks.logits(
        (p_logits, q_logits), ("p_logits", "q_logits"), axis=axis, where=where, broadcast=False
    )

    def one_pass():
        _pallas_only(axis_name)
        return _scaled_kl_one_pass(p, q, None, None)

    return _checks.in_base(choose(implementation, one_pass, lambda: _kl(p, q, axis_name)), base)


@eager_jit
def cross_entropy(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    base: Optional[float] = None,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Cross-entropy :math:`H(P, Q) = -\sum_i P_i \log Q_i = H(P) + KL(P \| Q)`.

    The soft-label cross-entropy: ``p_logits`` are the target's logits (use
    ``log(target_probs)``, with ``-inf`` for zero targets), ``q_logits`` the
    model's. :math:`0 \log 0 = 0`; :math:`P_i > 0 = Q_i` gives ``+inf``.

    Args:
      p_logits: logits of the target distribution P, ``[..., C, ...]``.
      q_logits: logits of the model Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask removing classes from both distributions.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis (each device holding a contiguous slice of the classes, in
        order): the per-row statistics are combined across it with
        ``lax.pmax`` / ``lax.psum`` of per-row scalars. None: whole rows.
      implementation: ``"xla"`` (default) or ``"pallas"``: one pass over the
        logits in a Pallas kernel on GPU (Triton) and TPU (Mosaic), the XLA
        path on the CPU and wherever a kernel does not apply (float64,
        ``axis_name``). Reverse-mode differentiation only (``grad``, ``vjp``).

    Returns:
      Cross-entropy in nats, class axis removed, ``result_type(dtype, float32)``.

    Gradients: ``d/dq = Q - P``, ``d/dp = P * (-log Q - H(P, Q))`` (0 where
    ``P_i = 0``, and 0 where the value is ``+inf``).

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p = jnp.log(jnp.array([1.0, 0.0]))
      >>> print(f"{jaxdiv.cross_entropy(p, jnp.array([0.0, 0.0])):.6f}")  # log 2
      0.693147
    """
    check_axis_name(axis_name)
    (p, q), _ = _checks.logits(
        (p_logits, q_logits), ("p_logits", "q_logits"), axis=axis, where=where, broadcast=False
    )

    def one_pass():
        _pallas_only(axis_name)
        return _cross_entropy_one_pass(tuple(jnp.broadcast_arrays(p, q)), ())[0]

    value = choose(implementation, one_pass, lambda: _cross_entropy(axis_name)(p, q))
    return _checks.in_base(value, base)


@eager_jit
def entropy(
    logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    base: Optional[float] = None,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Shannon entropy :math:`H(P) = -\sum_i P_i \log P_i` of ``P = softmax(logits)``.

    Accurate for tiny entropies (confident distributions): every term
    :math:`-P_i \log P_i` is non-negative and computed to a rounding.

    Args:
      logits: ``[..., C, ...]``, any real value or ``-inf``.
      axis: the class axis.
      where: optional boolean mask removing classes.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis (each device holding a contiguous slice of the classes, in
        order): the per-row statistics are combined across it with
        ``lax.pmax`` / ``lax.psum`` of per-row scalars. None: whole rows.
      implementation: ``"xla"`` (default) or ``"pallas"``: one pass over the
        logits in a Pallas kernel on GPU (Triton) and TPU (Mosaic), the XLA
        path on the CPU and wherever a kernel does not apply (float64,
        ``axis_name``). Reverse-mode differentiation only (``grad``, ``vjp``).

    Returns:
      Entropy in nats, class axis removed; 0 for a row with no support.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> print(f"{jaxdiv.entropy(jnp.full(4, -1e9)):.6f}")  # log 4
      1.386294
    """
    check_axis_name(axis_name)
    (p,), _ = _checks.logits((logits,), ("logits",), axis=axis, where=where)

    def one_pass():
        _pallas_only(axis_name)
        return _entropy_one_pass((p,), ())[0]

    return _checks.in_base(choose(implementation, one_pass, lambda: _entropy(axis_name)(p)), base)


@eager_jit
def cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    base: Optional[float] = None,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Cross-entropy of integer labels, :math:`-\log \mathrm{softmax}(x)_y`.

    Args:
      logits: model logits ``[..., C, ...]``.
      labels: integer class indices with the logits' shape minus the class axis
        (or broadcastable to it).
      axis: the class axis of ``logits``.
      where: optional boolean mask over the logits removing classes from the
        softmax; a label on a masked class gives ``+inf``, a row with every
        class masked gives 0 (padding) with a zero gradient.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis (each device holding a contiguous slice of the classes, in
        order): the per-row statistics are combined across it with
        ``lax.pmax`` / ``lax.psum`` of per-row scalars. None: whole rows.
      implementation: ``"xla"`` (default) or ``"pallas"``: one pass over the
        logits in a Pallas kernel on GPU (Triton) and TPU (Mosaic), the XLA
        path on the CPU and wherever a kernel does not apply (float64,
        ``axis_name``). Reverse-mode differentiation only (``grad``, ``vjp``).

    Returns:
      ``-log Q_y`` per row, ``result_type(dtype, float32)`` (a bfloat16 model
      gets a float32 loss, not one rounded to the bfloat16 grid). A label outside
      ``[0, C)`` gives NaN for its row (values cannot raise under ``jit``; call
      :func:`validate_labels` for an exception).

    Gradient: ``softmax(logits) - onehot(label)``, exactly 0 at masked classes.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> logits = jnp.array([[2.0, 0.0, -jnp.inf], [0.0, 0.0, 0.0]])
      >>> loss = jaxdiv.cross_entropy_with_integer_labels(logits, jnp.array([0, 2]))
      >>> print(loss.round(6))  # -log softmax: [-log(e^2 / (e^2 + 1)), log 3]
      [0.126928 1.098612]
    """
    check_axis_name(axis_name)
    (x,), mask = _checks.class_arrays(
        (logits,), ("logits",), axis=axis, where=where, fill=-jnp.inf, widen=False)
    batch_shape = x.shape[:-1]
    labels = _checks.integer_labels(labels, batch_shape, jnp.shape(logits))
    # A row with every class masked is padding: 0 with a zero gradient, as for
    # every divergence (a label on a masked class among unmasked ones is +inf).
    valid = None if mask is None else any_class(mask, axis_name)

    def one_pass():
        _pallas_only(axis_name)
        return label_stats_one_pass(x, labels, valid=valid).nll

    def xla():
        return label_stats(x, labels, valid=valid, axis_name=axis_name).nll

    return _checks.in_base(choose(implementation, one_pass, xla), base)


def validate_labels(labels: ArrayLike, num_classes: int) -> Array:
    """Raise ``ValueError`` unless every label lies in ``[0, num_classes)``.

    An eager check for users who prefer an exception to the NaN that an
    out-of-range label produces under ``jit``.

    Args:
      labels: integer class indices, any shape; concrete (not traced).
      num_classes: the number of classes ``C``.

    Returns:
      ``labels`` unchanged, as an array.

    Example:
      >>> import jaxdiv
      >>> jaxdiv.validate_labels([0, 3], num_classes=3)
      Traceback (most recent call last):
        ...
      ValueError: labels must lie in [0, 3); got 1 out of range, e.g. 3 at index (1,).
    """
    values = np.asarray(labels)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {values.dtype}.")
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got {int(bad.sum())} out of "
            f"range, e.g. {values[first]} at index {first}."
        )
    return labels


def _two_class_logits(logit: Array) -> Array:
    """Logits of ``[sigma(a), sigma(-a)]`` as ``[min(a, 0), -max(a, 0)]``.

    Exact, finite except for an infinite ``a`` (a probability of 0 or 1 becomes a
    ``-inf`` logit, never ``+inf``), and the difference of two of them is the
    exact difference of the logits, which the KL kernel needs near equality.
    """
    return jnp.stack([jnp.minimum(logit, 0.0), -jnp.maximum(logit, 0.0)], axis=-1)


@eager_jit
def bernoulli_kl_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    where: Optional[ArrayLike] = None,
    base: Optional[float] = None,
) -> Array:
    r"""KL divergence between Bernoulli distributions given by logits, element by element.

    .. math::
      KL(\mathrm{Bern}(p) \| \mathrm{Bern}(q)) = p \log\frac{p}{q} + (1 - p)\log\frac{1 - p}{1 - q},
      \quad p = \sigma(a), \; q = \sigma(b).

    The two-class case of :func:`kl_divergence` (its kernel, on the logits
    ``[min(a, 0), -max(a, 0)]``), so it inherits its conventions: logits of
    ``+-inf`` (probabilities 1 and 0) give exact values and finite gradients
    (distrax gives NaN at p = 0), ``+inf`` where p has mass q lacks, exactly 0
    for equal inputs, full accuracy for nearly equal ones.

    Args:
      p_logits: logits :math:`a` of the reference Bernoulli, any shape.
      q_logits: logits :math:`b`, broadcastable against ``p_logits``.
      where: boolean mask over elements; masked elements give 0.
      base: logarithm base of the result; nats by default.

    Returns:
      The KL of every element, the broadcast shape, in ``result_type(dtype, float32)``;
      ``+inf`` where ``p = 1 > q = 0`` or ``p = 0 < q = 1``; NaN where a logit is NaN.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> print(jaxdiv.bernoulli_kl_divergence(jnp.array([jnp.inf, 0.0]), 0.0))  # log 2, 0
      [0.6931472 0.       ]
    """
    a = _checks.float_array(p_logits, "p_logits")
    b = _checks.float_array(q_logits, "q_logits")
    where = _checks.mask(where)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape, () if where is None else where.shape)
    except ValueError:
        raise ValueError(
            f"expected shapes that broadcast, got p_logits shape {tuple(a.shape)}, "
            f"q_logits shape {tuple(b.shape)}"
            + ("" if where is None else f", where shape {tuple(where.shape)}") + "."
        ) from None
    dtype = jnp.result_type(a, b)
    p = _two_class_logits(jnp.broadcast_to(a.astype(dtype), shape))
    q = _two_class_logits(jnp.broadcast_to(b.astype(dtype), shape))
    if where is not None:
        keep = jnp.broadcast_to(where, shape)[..., None]
        p, q = jnp.where(keep, p, -jnp.inf), jnp.where(keep, q, -jnp.inf)
    return _checks.in_base(_kl(p, q), base)
