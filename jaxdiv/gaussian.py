r"""Divergences between Gaussian distributions, as plain batched array functions.

Diagonal Gaussians are given by a mean and a log-variance (or a scale, see the
``*_scale`` functions); full-covariance Gaussians by a mean and a lower-
triangular Cholesky factor ``L`` with ``Sigma = L L^T``. The event dimension is
the last axis (``axis`` for the diagonal functions) and is summed over; every
other axis broadcasts, so a batch of posteriors can be compared with one prior,
per-dimension priors, and so on. A univariate Gaussian is an event of size 1.

Every divergence is arranged as a sum of non-negative terms, using
:math:`\varphi(d) = e^d - 1 - d` (``jaxdiv._numerics.expm1mx``, exact near 0),
so that nearly identical Gaussians keep full float32 relative accuracy, equal
ones give exactly ``0.0``, and nothing is negative after rounding. Large
log-variances give ``+inf`` where the true value does not fit the dtype, never
NaN; a zero variance in ``q`` (log-variance ``-inf``) gives ``+inf``.

16-bit inputs are computed in float32; values come back in
``result_type(dtype, float32)``.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxdiv import _checks
from jaxdiv._dispatch import eager_jit
from jaxdiv._numerics import (
    expm1mx, expm1mx_finite, is_16_bit, map_rows, promote, recompute_in_backward, row_stats,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "kl_divergence",
    "kl_standard_normal",
    "kl_divergence_scale",
    "cross_entropy",
    "entropy",
    "kl_divergence_tril",
    "cross_entropy_tril",
    "entropy_tril",
]

_LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------ safe elementwise


def _log_ratio(log_a: Array, log_b: Array) -> Array:
    """``log_a - log_b``, and 0 where they are equal (also both ``-inf``: point masses)."""
    same = log_a == log_b
    return jnp.where(same, 0.0, log_a) - jnp.where(same, 0.0, log_b)


def _scaled_square(diff: Array, log_var: Array) -> Array:
    """``diff**2 / exp(log_var)`` without ``0 * inf``: 0 where ``diff == 0``."""
    nonzero = diff != 0
    safe_diff = jnp.where(nonzero, diff, 1.0)
    value = jnp.exp(2 * jnp.log(jnp.abs(safe_diff)) - log_var)
    return jnp.where(nonzero, value, 0.0)


def _event_sum(terms: Array, axis: int, where: Optional[Array]) -> Array:
    if where is not None:
        terms = jnp.where(where, terms, 0.0)
    return jnp.sum(terms, axis=axis)


def _fused_or_safe(fused, safe, args):
    """``sum(fused(*args), -1)`` when every result is finite, else the same with ``safe``.

    ``fused`` is the same closed form written without selects, so that XLA:CPU
    runs the elementwise terms and the event sum as one pass; it is exact for
    finite inputs. Infinite or NaN parameters and overflow take the select-based
    ``safe`` path (a batch-level ``lax.cond``), which defines every edge case.
    The safe path runs in row blocks (:func:`map_rows`): its selects would
    hold whole ``[..., d]`` temporaries on the CPU. So does the fused path for
    16-bit ``args``, which the blocks widen as they read them, or a broadcast
    one (the standard normal's scalar prior): XLA:CPU would widen them whole,
    and, in the gradient's program, broadcast a scalar in full.
    """
    if all(a.shape == args[0].shape and not is_16_bit(a) for a in args):
        value = jnp.sum(fused(*args), axis=-1)   # one whole-array pass: 2x faster than blocks
    else:
        value = map_rows(lambda *a: jnp.sum(fused(*a), axis=-1), *args)
    if value.size == 0:
        return value
    return jax.lax.cond(
        jnp.all(jnp.isfinite(value)),
        lambda: value,
        lambda: map_rows(lambda *a: jnp.sum(safe(*a), axis=-1), *args),
    )


_LOG_2 = math.log(2.0)


def _half_expm1mx(d: Array) -> Array:
    """``phi(d) / 2``, finite up to the dtype's largest value (``phi(d)`` alone overflows first)."""
    large = (d > 80.0) & (d < jnp.inf)
    d_large = jnp.where(large, d, 80.0)
    half = jnp.where(large, jnp.exp(d_large - _LOG_2) - 0.5 * (1.0 + d_large), 0.5 * expm1mx(jnp.where(large, 0.0, d)))
    return jnp.where(d == jnp.inf, jnp.inf, half)


def _kl_terms(mp, vp, mq, vq):
    """The halved KL terms: the event sum of these is the KL, with no overflow before the halving."""
    return _half_expm1mx(_log_ratio(vp, vq)) + _scaled_square(mp - mq, vq + _LOG_2)


def _kl_terms_fused(mp, vp, mq, vq):
    return expm1mx_finite(vp - vq) + jnp.square((mp - mq) * jnp.exp(-0.5 * vq))


def _event_kernel(fused, safe, coefficients, *, clamp=False):
    """A divergence summed over the last (event) axis, with a closed-form gradient.

    The value is ``sum(fused)``, or ``sum(safe)`` where that is not finite (see
    :func:`_fused_or_safe`), clamped at 0 for a divergence (``clamp``);
    ``coefficients(*params)`` gives the derivative of the summed terms by each
    parameter, elementwise. Autodiff through the batch-level ``cond`` would
    keep the residuals of both branches, and through the safe terms' selects
    would hold each ``[..., d]`` intermediate between the passes.
    """
    @jax.custom_jvp
    def kernel(*params):
        total = _fused_or_safe(fused, safe, params)
        return jnp.maximum(total, 0.0) if clamp else total

    def kernel_jvp(primals, tangents):
        value = row_stats(kernel(*primals))
        # An infinite value (a zero variance in Q, an overflow) is locally
        # constant: its gradient is 0, as for every categorical kernel.
        live = jnp.isfinite(value)[..., None]
        tangent = jnp.zeros_like(value)
        for coef, t in zip(coefficients(*(promote(a) for a in primals)), tangents):
            if not isinstance(t, SymbolicZero):   # e.g. the fixed prior of kl_standard_normal
                coef = jnp.where(live, jnp.broadcast_to(coef, t.shape), 0.0)
                tangent = tangent + jnp.sum(coef * t, axis=-1)
        return value, tangent

    kernel.defjvp(kernel_jvp, symbolic_zeros=True)
    return recompute_in_backward(kernel)


def _kl_coefficients(mp, vp, mq, vq):
    """d/dmu_p = -d/dmu_q = dmu e^{-v_q}, d/dv_p = expm1(d)/2, d/dv_q = -expm1(d)/2 - dmu^2 e^{-v_q}/2."""
    half_expm1 = 0.5 * jnp.expm1(_log_ratio(vp, vq))
    diff = mp - mq
    nonzero = diff != 0
    vq_read = jnp.where(nonzero, vq, 0.0)
    coef_mean = jnp.where(nonzero, jnp.where(nonzero, diff, 1.0) * jnp.exp(-vq_read), 0.0)
    # The q-side coefficients repeat the p-side ones in forms XLA does not merge
    # (x * -1 for -x, a + (-b) for a - b; equal in IEEE arithmetic): each
    # gradient's pass computes its own exp, where a shared one would be held as
    # a whole [..., d] float32 array (see categorical._kl_coefficients).
    coef_mean_q = jnp.where(nonzero, jnp.where(nonzero, -diff, 1.0) * jnp.exp(vq_read * -1.0), 0.0)
    same = vp == vq
    half_expm1_q = 0.5 * jnp.expm1(jnp.where(same, 0.0, vp) + (-jnp.where(same, 0.0, vq)))
    coef_vq = -half_expm1_q - 0.5 * _scaled_square(diff, vq)
    return coef_mean, half_expm1, coef_mean_q, coef_vq


# KL of diagonal Gaussians whose event axis is the last one.
_diag_kl = _event_kernel(lambda *a: 0.5 * _kl_terms_fused(*a), _kl_terms, _kl_coefficients, clamp=True)


def _prepare_diag(arrays, names, axis, where, widen=True):
    """Promote, broadcast and mask diagonal-Gaussian parameters (masked entries read as 0).

    ``widen=False`` keeps 16-bit parameters for a kernel that widens them as it reads.
    """
    arrays = [_checks.float_array(a, n, widen=widen) for a, n in zip(arrays, names)]
    dtype = jnp.result_type(*arrays)
    arrays = [a.astype(dtype) for a in arrays]
    try:
        shape = jnp.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        described = ", ".join(f"{n} shape {tuple(a.shape)}" for n, a in zip(names, arrays))
        raise ValueError(
            f"expected Gaussian parameters that broadcast against each other (the same "
            f"event size along axis {axis}), got {described}."
        ) from None
    if len(shape) == 0:
        raise ValueError("expected parameters with an event axis, got scalars; use shape [1] "
                         "for a univariate Gaussian.")
    axis = _checks.normalize_axis(axis, len(shape), f"shape {shape}")
    where = _checks.mask(where)
    if where is not None:
        where = jnp.broadcast_to(where, shape)
        # Masked entries are never read: they become a standard normal, whose KL
        # terms are exactly 0 (and whose gradient the select sends nowhere).
        arrays = [jnp.where(where, a, 0.0) for a in arrays]
    arrays = [jnp.broadcast_to(a, shape) for a in arrays]
    return arrays, axis, where


# -------------------------------------------------------------------- diagonal


@eager_jit
def kl_divergence(
    mean_p: ArrayLike,
    log_var_p: ArrayLike,
    mean_q: ArrayLike,
    log_var_q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""KL divergence between diagonal Gaussians given by mean and log-variance.

    .. math::
      KL(P \| Q) = \frac{1}{2} \sum_i \Big[\varphi(v^p_i - v^q_i)
                   + (\mu^p_i - \mu^q_i)^2 e^{-v^q_i}\Big],
      \qquad \varphi(d) = e^d - 1 - d,

    with :math:`v = \log\sigma^2`. Both terms are non-negative and accurate
    for nearly equal Gaussians (``phi`` uses a series near 0).

    Args:
      mean_p, log_var_p: parameters of P, ``[..., d]``.
      mean_q, log_var_q: parameters of Q; everything broadcasts.
      axis: the event axis, summed over.
      where: optional boolean mask over event entries (variable-length
        latents); masked entries are not read and get a zero gradient.

    Returns:
      KL in nats, event axis removed. ``+inf`` where the true value overflows
      or Q has zero variance (``log_var_q = -inf``) and P does not.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> print(gaussian.kl_divergence(jnp.zeros(2), jnp.zeros(2), jnp.ones(2), jnp.zeros(2)))
      1.0
    """
    (mp, vp, mq, vq), axis, where = _prepare_diag(
        (mean_p, log_var_p, mean_q, log_var_q),
        ("mean_p", "log_var_p", "mean_q", "log_var_q"),
        axis,
        where,
        widen=False,
    )
    return _diag_kl(*(jnp.moveaxis(a, axis, -1) for a in (mp, vp, mq, vq)))


@eager_jit
def kl_standard_normal(
    mean: ArrayLike,
    log_var: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""The VAE term :math:`KL(N(\mu, e^{v}) \| N(0, I)) = \frac12 \sum_i [\varphi(v_i) + \mu_i^2]`.

    The usual ``-0.5 * sum(1 + v - mu**2 - exp(v))`` is the same quantity, but
    cancels to noise when the posterior is near the prior and overflows for
    large ``v``; here both terms are non-negative and exact near 0.

    Args:
      mean: the posterior mean :math:`\mu`, ``[..., d]``.
      log_var: its log-variance :math:`v`; broadcasts against ``mean``.
      axis: the event axis, summed over.
      where: optional boolean mask over event entries (variable-length
        latents); masked entries are not read and get a zero gradient.

    Returns:
      KL in nats, event axis removed, in ``result_type(dtype, float32)``;
      ``+inf`` where the true value overflows.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> float(gaussian.kl_standard_normal(jnp.zeros(8), jnp.zeros(8)))
      0.0
    """
    (m, v), axis, where = _prepare_diag((mean, log_var), ("mean", "log_var"), axis, where, widen=False)
    m, v = jnp.moveaxis(m, axis, -1), jnp.moveaxis(v, axis, -1)
    zero = jnp.zeros((), m.dtype)   # a scalar prior broadcasts for free
    return _diag_kl(m, v, zero, zero)


@eager_jit
def kl_divergence_scale(
    mean_p: ArrayLike,
    scale_p: ArrayLike,
    mean_q: ArrayLike,
    scale_q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""KL divergence between diagonal Gaussians given by mean and standard deviation.

    .. math::
      KL = \frac12 \sum_i \Big[\varphi\big(2 \log(\sigma^p_i / \sigma^q_i)\big)
           + \big((\mu^p_i - \mu^q_i) / \sigma^q_i\big)^2\Big],

    with :math:`\log(\sigma^p/\sigma^q) = \mathrm{log1p}((\sigma^p - \sigma^q)/\sigma^q)`,
    exact for nearly equal scales. Scales must be positive; a zero ``scale_q``
    gives ``+inf`` (and 0 together with a zero ``scale_p`` and equal means), a
    negative or NaN scale NaN in its row (with a zero gradient there).

    Args:
      mean_p, scale_p: mean and standard deviation of P, ``[..., d]``.
      mean_q, scale_q: those of Q; everything broadcasts.
      axis: the event axis, summed over.
      where: optional boolean mask over event entries (variable-length
        latents); masked entries are not read and get a zero gradient.

    Returns:
      KL in nats, event axis removed, in ``result_type(dtype, float32)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> print(f"{gaussian.kl_divergence_scale(0.0 * jnp.ones(1), jnp.ones(1), jnp.ones(1), jnp.ones(1)):.2f}")
      0.50
    """
    (mp, sp, mq, sq), axis, where = _prepare_diag(
        (mean_p, scale_p, mean_q, scale_q), ("mean_p", "scale_p", "mean_q", "scale_q"), axis, where,
        widen=False,
    )
    if where is not None:
        # Masked entries read as a standard normal (scale 1), whose terms are 0.
        sp, sq = (jnp.where(where, s, jnp.ones((), s.dtype)) for s in (sp, sq))
    return _scale_kl(*(jnp.moveaxis(a, axis, -1) for a in (mp, sp, mq, sq)))


def _scale_kl_terms(mp, sp, mq, sq):
    """Halved KL terms from scales: ``phi(2 log(sp/sq))/2 + ((mp - mq)/sq)^2/2``, elementwise."""
    same = sp == sq
    ok = ~same & (sq > 0)
    sq_safe, sp_safe = jnp.where(ok, sq, 1.0), jnp.where(ok, sp, 1.0)
    # log(sp/sq) = log1p((sp - sq)/sq): exact for nearly equal scales; -inf at sp = 0.
    log_ratio = jnp.where(ok, jnp.log1p((sp_safe - sq_safe) / sq_safe), jnp.where(same, 0.0, jnp.inf))
    # A negative or NaN scale is no Gaussian: NaN, not the +inf of a zero scale_q.
    log_ratio = jnp.where((sp >= 0) & (sq >= 0), log_ratio, jnp.nan)
    diff = mp - mq
    nonzero = diff != 0
    mean_term = jnp.where(
        nonzero & (sq > 0),
        jnp.square(jnp.where(nonzero, diff, 0.0) / jnp.where(sq > 0, sq, 1.0)),
        jnp.where(nonzero, jnp.inf, 0.0),
    )
    return _half_expm1mx(2 * log_ratio) + 0.5 * mean_term


def _scale_kl_terms_fused(mp, sp, mq, sq):
    # Finite for positive scales; a zero scale (or an overflow) gives NaN or inf: the safe terms.
    # The sqrt is NaN for a negative scale, which the rest reads like |scale| (both negative).
    return 0.5 * (expm1mx_finite(2.0 * jnp.log1p((sp - sq) / sq)) + jnp.square((mp - mq) / sq)
                  + 0.0 * jnp.sqrt(jnp.minimum(sp, sq)))


def _scale_coefficients(mp, sp, mq, sq):
    """d/dsp = expm1(2l)/sp, d/dsq = -expm1(2l)/sq - dmu^2/sq^3, d/dmp = -d/dmq = dmu/sq^2.

    0 where a scale is 0 (equal point masses, a finite value: the zero
    subgradient, where autodiff forms 0 * inf).
    """
    ok = (sp > 0) & (sq > 0)
    sp, sq = jnp.where(ok, sp, 1.0), jnp.where(ok, sq, 1.0)
    diff, diff_q = jnp.where(ok, mp - mq, 0.0), jnp.where(ok, mq - mp, 0.0)
    ratio = sp / sq
    # The d/dsq coefficient is written through 1/sq, a quotient no other
    # coefficient uses: XLA holds a quotient two gradients' passes share as a
    # whole [..., d] array between them.
    inv_q = 1.0 / sq
    ratio_q = sp * inv_q
    # dmu/sq times 1/sq: dmu / sq^2 underflows to 0/0 for scales below 1e-19 in
    # float32, and XLA rewrites dmu / sq / sq so. (The mean gradients then
    # share 1/sq, held as one [..., d] array: docs/limits.md.)
    return ((diff / sq) * (1.0 / sq), (ratio - 1.0) * (ratio + 1.0) / sp,
            (diff_q / sq) * (1.0 / sq),
            -((ratio_q - 1.0) * (ratio_q + 1.0) + jnp.square(diff * inv_q)) * inv_q)


# KL of diagonal Gaussians given by scales, event axis last.
_scale_kl = _event_kernel(_scale_kl_terms_fused, _scale_kl_terms, _scale_coefficients, clamp=True)


@eager_jit
def cross_entropy(
    mean_p: ArrayLike,
    log_var_p: ArrayLike,
    mean_q: ArrayLike,
    log_var_q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""Cross-entropy :math:`H(P, Q) = -E_P[\log q] = H(P) + KL(P \| Q)` of diagonal Gaussians.

    .. math::
      H(P, Q) = \frac12 \sum_i \Big[\log 2\pi + v^q_i + e^{v^p_i - v^q_i}
                + (\mu^p_i - \mu^q_i)^2 e^{-v^q_i}\Big]

    (a differential cross-entropy: it can be negative).

    Args:
      mean_p, log_var_p: parameters of P, ``[..., d]``.
      mean_q, log_var_q: parameters of Q; everything broadcasts.
      axis: the event axis, summed over.
      where: optional boolean mask over event entries (variable-length
        latents); masked entries are not read and get a zero gradient.

    Returns:
      H(P, Q) in nats, event axis removed, in ``result_type(dtype, float32)``;
      ``+inf`` where Q has zero variance (``log_var_q = -inf``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> z = jnp.zeros(1)
      >>> print(f"{gaussian.cross_entropy(z, z, z, z):.6f}")  # = entropy: 0.5 log(2 pi e)
      1.418939
    """
    (mp, vp, mq, vq), axis, where = _prepare_diag(
        (mean_p, log_var_p, mean_q, log_var_q),
        ("mean_p", "log_var_p", "mean_q", "log_var_q"),
        axis,
        where,
        widen=False,
    )
    params = [jnp.moveaxis(a, axis, -1) for a in (mp, vp, mq, vq)]
    if where is None:
        return _diag_xent(*params)
    # Masked entries read as a standard normal, whose cross-entropy terms are not 0: weighted out.
    keep = jnp.moveaxis(where, axis, -1).astype(promote(params[0]).dtype)
    return _masked_xent(*params, keep)


def _xent_terms(mp, vp, mq, vq):
    """Halved cross-entropy terms; a point mass Q (``vq = -inf``) gives +inf, or -inf
    for the same point mass P."""
    finite_q = vq > -jnp.inf
    vq_safe = jnp.where(finite_q, vq, 0.0)
    terms = _LOG_2PI + vq_safe + jnp.exp(_log_ratio(vp, vq_safe)) + _scaled_square(mp - mq, vq_safe)
    same_point = (vp == -jnp.inf) & (mp == mq)
    return 0.5 * jnp.where(finite_q, terms, jnp.where(same_point, -jnp.inf, jnp.inf))


def _xent_terms_fused(mp, vp, mq, vq):
    return 0.5 * (_LOG_2PI + vq + jnp.exp(vp - vq) + jnp.square((mp - mq) * jnp.exp(-0.5 * vq)))


def _xent_coefficients(mp, vp, mq, vq):
    """H(P, Q) = H(P) + KL(P || Q), and dH(P)/dv_p = 1/2: the KL's coefficients, 1/2
    added to d/dv_p (e^{v_p - v_q}/2)."""
    coef_mean, half_expm1, coef_mean_q, coef_vq = _kl_coefficients(mp, vp, mq, vq)
    return coef_mean, half_expm1 + 0.5, coef_mean_q, coef_vq


# Cross-entropy of diagonal Gaussians, event axis last; and with a 0/1 weight
# per entry (a product, not a select, so that XLA:CPU fuses it into the sum).
_diag_xent = _event_kernel(_xent_terms_fused, _xent_terms, _xent_coefficients)
_masked_xent = _event_kernel(
    lambda mp, vp, mq, vq, keep: keep * _xent_terms_fused(mp, vp, mq, vq),
    lambda mp, vp, mq, vq, keep: jnp.where(keep > 0, _xent_terms(mp, vp, mq, vq), 0.0),
    lambda mp, vp, mq, vq, keep: tuple(keep * c for c in _xent_coefficients(mp, vp, mq, vq)),
)


@eager_jit
def entropy(
    log_var: ArrayLike, *, axis: int = -1, where: Optional[ArrayLike] = None
) -> Array:
    r"""Differential entropy :math:`\frac12 \sum_i [\log(2\pi e) + v_i]` of a diagonal Gaussian.

    Args:
      log_var: the log-variance :math:`v`, ``[..., d]``.
      axis: the event axis, summed over.
      where: optional boolean mask over event entries (variable-length
        latents); masked entries are not read and get a zero gradient.

    Returns:
      H(P) in nats, event axis removed, in ``result_type(dtype, float32)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> print(f"{gaussian.entropy(jnp.zeros(1)):.6f}")  # 0.5 log(2 pi e)
      1.418939
    """
    (v,), axis, where = _prepare_diag((log_var,), ("log_var",), axis, where)
    return 0.5 * _event_sum(_LOG_2PI + 1.0 + v, axis, where)


# ------------------------------------------------------------- full covariance


def _prepare_tril(mean_p, scale_tril_p, mean_q=None, scale_tril_q=None):
    names = ("mean_p", "scale_tril_p", "mean_q", "scale_tril_q")
    given = [(n, a) for n, a in zip(names, (mean_p, scale_tril_p, mean_q, scale_tril_q)) if a is not None]
    arrays = [_checks.float_array(a, n) for n, a in given]
    dtype = jnp.result_type(*arrays)
    arrays = [a.astype(dtype) for a in arrays]
    described = ", ".join(f"{n} shape {tuple(a.shape)}" for (n, _), a in zip(given, arrays))
    means, factors = arrays[0::2], arrays[1::2]
    for m, f in zip(means, factors):
        if m.ndim < 1 or f.ndim < 2 or f.shape[-1] != f.shape[-2] or f.shape[-1] != m.shape[-1]:
            raise ValueError(
                f"expected means [..., d] and square lower-triangular factors [..., d, d] "
                f"with the same d, got {described}."
            )
    if len({m.shape[-1] for m in means}) > 1:
        raise ValueError(f"expected the same event size d for P and Q, got {described}.")
    batches = [m.shape[:-1] for m in means] + [f.shape[:-2] for f in factors]
    try:
        np.broadcast_shapes(*batches)
    except ValueError:
        raise ValueError(
            f"expected batch dimensions (all but the event axes) that broadcast against "
            f"each other, got {described}."
        ) from None
    return arrays


def _singular_or_same(mp, lp, mq, lq, value: Array) -> Array:
    """``value`` with the conventions the solves cannot give: equal Gaussians are exactly 0
    apart, and a singular ``scale_tril_q`` (a zero on its diagonal) makes Q degenerate: ``+inf``."""
    same = jnp.all(lp == lq, axis=(-2, -1)) & jnp.all(mp == mq, axis=-1)
    singular = jnp.any(jnp.diagonal(lq, axis1=-2, axis2=-1) == 0, axis=-1)
    return jnp.where(same, 0.0, jnp.where(singular, jnp.inf, value))


def _nonsingular(scale_tril: Array) -> Array:
    """``scale_tril`` with a singular factor replaced by the identity, so the solves stay finite
    (and NaN-free under autodiff) in the batch entries that :func:`_singular_or_same` overrides."""
    singular = jnp.any(jnp.diagonal(scale_tril, axis1=-2, axis2=-1) == 0, axis=-1)
    eye = jnp.eye(scale_tril.shape[-1], dtype=scale_tril.dtype)
    return jnp.where(singular[..., None, None], eye, scale_tril)


def _log_abs_diag(scale_tril: Array) -> Array:
    return jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1)))


def _solve(scale_tril_q: Array, b: Array) -> Array:
    """``L_q^{-1} b`` by a triangular solve (never an explicit inverse)."""
    shape = jnp.broadcast_shapes(scale_tril_q.shape[:-2], b.shape[:-2])
    return jax.scipy.linalg.solve_triangular(
        jnp.broadcast_to(scale_tril_q, shape + scale_tril_q.shape[-2:]),
        jnp.broadcast_to(b, shape + b.shape[-2:]),
        lower=True,
    )


@eager_jit
def kl_divergence_tril(
    mean_p: ArrayLike, scale_tril_p: ArrayLike, mean_q: ArrayLike, scale_tril_q: ArrayLike
) -> Array:
    r"""KL divergence between full-covariance Gaussians given by Cholesky factors.

    With :math:`M = L_q^{-1} L_p` and :math:`z = L_q^{-1}(\mu_p - \mu_q)` (triangular
    solves),

    .. math::
      KL = \frac12 \Big[\sum_{i > j} M_{ij}^2 + \sum_i \varphi(2 \log|M_{ii}|) + \|z\|^2\Big],

    which is :math:`\frac12[\mathrm{tr}(\Sigma_q^{-1}\Sigma_p) + \|z\|^2 - d +
    \log\det\Sigma_q - \log\det\Sigma_p]` rearranged into non-negative terms; with
    diagonal factors it is exactly :func:`kl_divergence`.

    Args:
      mean_p, mean_q: ``[..., d]``.
      scale_tril_p, scale_tril_q: lower-triangular ``[..., d, d]`` (the upper
        triangle is ignored); leading dimensions broadcast.

    Returns:
      KL in nats, ``[...]``, in ``result_type(dtype, float32)``; ``+inf`` where
      ``scale_tril_q`` is singular (a zero on its diagonal) and P is not.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> eye = jnp.eye(2)
      >>> print(gaussian.kl_divergence_tril(jnp.zeros(2), eye, jnp.ones(2), eye))
      1.0
    """
    mp, lp, mq, lq = _prepare_tril(mean_p, scale_tril_p, mean_q, scale_tril_q)
    lp, lq_given = jnp.tril(lp), jnp.tril(lq)
    lq = _nonsingular(lq_given)
    m = _solve(lq, lp)
    z = _solve(lq, (mp - mq)[..., None])[..., 0]
    log_diag_ratio = _log_ratio(_log_abs_diag(lp), _log_abs_diag(lq))
    off_diagonal = jnp.tril(m, -1)
    terms = (
        0.5 * jnp.sum(off_diagonal**2, axis=(-2, -1))
        + jnp.sum(_half_expm1mx(2 * log_diag_ratio), axis=-1)
        + 0.5 * jnp.sum(z**2, axis=-1)
    )
    return _singular_or_same(mp, lp, mq, lq_given, jnp.maximum(terms, 0.0))


@eager_jit
def cross_entropy_tril(
    mean_p: ArrayLike, scale_tril_p: ArrayLike, mean_q: ArrayLike, scale_tril_q: ArrayLike
) -> Array:
    r"""Cross-entropy of full-covariance Gaussians given by Cholesky factors.

    .. math::
      H(P, Q) = \frac12\big[d \log 2\pi + \log\det\Sigma_q
                + \mathrm{tr}(\Sigma_q^{-1}\Sigma_p) + \|z\|^2\big],
      \qquad z = L_q^{-1}(\mu_p - \mu_q).

    Args:
      mean_p, mean_q: ``[..., d]``.
      scale_tril_p, scale_tril_q: lower-triangular ``[..., d, d]`` (the upper
        triangle is ignored); leading dimensions broadcast.

    Returns:
      H(P, Q) in nats, ``[...]``, in ``result_type(dtype, float32)``; ``+inf``
      where ``scale_tril_q`` is singular.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> eye = jnp.eye(2)
      >>> print(f"{gaussian.cross_entropy_tril(jnp.zeros(2), eye, jnp.zeros(2), 2 * eye):.6f}")
      3.474171
    """
    mp, lp, mq, lq = _prepare_tril(mean_p, scale_tril_p, mean_q, scale_tril_q)
    lp, lq_given = jnp.tril(lp), jnp.tril(lq)
    lq = _nonsingular(lq_given)
    m = _solve(lq, lp)
    z = _solve(lq, (mp - mq)[..., None])[..., 0]
    d = mp.shape[-1]
    value = 0.5 * (
        d * _LOG_2PI
        + 2 * jnp.sum(_log_abs_diag(lq), axis=-1)
        + jnp.sum(m**2, axis=(-2, -1))
        + jnp.sum(z**2, axis=-1)
    )
    # A degenerate Q: +inf (a density against a point mass), as for the diagonal form.
    singular = jnp.any(jnp.diagonal(lq_given, axis1=-2, axis2=-1) == 0, axis=-1)
    return jnp.where(singular, jnp.inf, value)


@eager_jit
def entropy_tril(scale_tril: ArrayLike) -> Array:
    r"""Differential entropy :math:`H = \frac12 d \log(2\pi e) + \sum_i \log|L_{ii}|` of a full-covariance Gaussian.

    Args:
      scale_tril: the Cholesky factor :math:`L`, lower-triangular ``[..., d, d]``.

    Returns:
      H in nats, ``[...]``, in ``result_type(dtype, float32)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import gaussian
      >>> print(f"{gaussian.entropy_tril(jnp.eye(1)):.6f}")
      1.418939
    """
    factor = _checks.float_array(scale_tril, "scale_tril")
    if factor.ndim < 2 or factor.shape[-1] != factor.shape[-2]:
        raise ValueError(
            f"expected a square lower-triangular factor [..., d, d], got scale_tril shape "
            f"{tuple(factor.shape)}."
        )
    d = factor.shape[-1]
    return 0.5 * d * (_LOG_2PI + 1.0) + jnp.sum(_log_abs_diag(factor), axis=-1)
