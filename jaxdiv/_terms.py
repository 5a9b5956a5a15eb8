r"""The per-class terms of each divergence, with their closed-form derivatives.

Every term is a function of a :class:`~jaxdiv._termwise.Pair` (``P``, ``Q``,
their logs and the accurate log ratio :math:`\ell = \log P - \log Q`) and is
non-negative, so row sums never cancel. Near :math:`\ell = 0` each one is
written through :math:`e^{\pm\ell} - 1` by series (no cancellation between
``P`` and ``Q``); away from it, through ``P`` and ``Q`` themselves (no overflow
for any log ratio). ``a`` and ``b`` are the derivatives of the term with
respect to :math:`\log P_i` and :math:`\log Q_i`.

Zero probabilities follow one rule: the term takes its limit (so Jensen-Shannon
stays finite on disjoint supports, and KL is ``+inf`` where Q_i = 0 < P_i).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiv._numerics import (
    _PHI_SERIES_RADIUS,
    expm1_series,
    log1p_near,
    log1p_scaled,
    neg_log1pmx_near,
    phi_over_x_series,
    phi_series,
    row_max,
    row_sum,
)
from jaxdiv._termwise import Pair, Terms

Array = jax.Array


def _near(x: Array, radius: float = _PHI_SERIES_RADIUS) -> tuple[Array, Array]:
    """Where the series apply, and ``x`` there (0 elsewhere, a harmless value)."""
    near = jnp.abs(x) < radius
    return near, jnp.where(near, x, 0.0)


def _xlog(x: Array, log_y: Array) -> Array:
    """``x * log_y``, 0 where ``x = 0`` whatever ``log_y`` is (0 log 0 = 0)."""
    positive = x > 0
    return jnp.where(positive, x * jnp.where(positive, log_y, 0.0), 0.0)


def _off_support(t: Pair, slope: Array, where_p_zero: Array) -> Array:
    """``P_i * slope`` where ``Q_i = 0 < P_i``, else ``where_p_zero``.

    The slope may be ``+inf``; it is multiplied only where selected, so that no
    ``0 * inf`` reaches a derivative of the unselected entries.
    """
    q_zero = (t.q == 0) & (t.p > 0)
    return jnp.where(q_zero, t.p * jnp.where(q_zero, slope, 0.0), where_p_zero)


def _finite_ratio(t: Pair) -> Array:
    """The log ratio where both probabilities are positive, 0 elsewhere."""
    both = (t.p > 0) & (t.q > 0)
    return jnp.where(both, t.log_ratio, 0.0)


# ------------------------------------------------------------ Kullback-Leibler
# t = P log(P/Q) - P + Q = P phi(-l): the added Q - P sums to zero and makes
# every term non-negative and O(l^2).


def _kl_term(t: Pair, params) -> Array:
    near, ell = _near(t.log_ratio)
    return jnp.where(near, t.p * phi_series(-ell), (t.q - t.p) + _xlog(t.p, t.log_ratio))


KL = Terms(
    term=_kl_term,
    d_log_p=lambda t, params: _xlog(t.p, t.log_ratio),
    d_log_q=lambda t, params: t.q - t.p,
)

# -------------------------------------------------------------- cross-entropy

CROSS_ENTROPY = Terms(
    term=lambda t, params: _xlog(t.p, -t.log_q),
    d_log_p=lambda t, params: _xlog(t.p, -t.log_q),
    d_log_q=lambda t, params: -t.p,
)

# ------------------------------------------------------------- Jensen-Shannon
# With M = wp P + wq Q, JS = wp KL(P || M) + wq KL(Q || M). Adding
# wp (M - P) + wq (M - Q) = 0 to each class gives the non-negative terms
#   wp P psi(wq (Q/P - 1)) + wq Q psi(wp (P/Q - 1)),  psi(s) = s - log1p(s),
# which are O(l^2) with no cancellation near l = 0, nor for weights near 0 or 1.


def _log_mixture(t: Pair, wp: Array, wq: Array) -> Array:
    m = wp * t.p + wq * t.q
    return jnp.log(jnp.where(m > 0, m, 1.0))


def _swap_pair(t: Pair) -> Pair:
    return Pair(t.q, t.p, t.log_q, t.log_p, -t.log_ratio)


def _js_side(t: Pair, w_other: Array, log_m: Array) -> tuple[Array, Array]:
    """``P psi(x)`` and ``log(M / P) = log1p(x)`` for ``x = w_other (Q/P - 1)``.

    Where ``x`` lies in [-0.4, 2/3] both come from series (no cancellation, for
    any weights); elsewhere ``P psi(x) = (M - P) - P log(M / P)`` has none to fear.
    """
    near, ell = _near(t.log_ratio)
    positive = t.p > 0
    ratio = t.q / jnp.where(positive, t.p, 1.0)
    q_over_p = jnp.where(near, expm1_series(-ell), jnp.where(positive, ratio - 1.0, jnp.inf))
    x = w_other * q_over_p
    series = (x >= -0.4) & (x <= 2.0 / 3.0)
    xs = jnp.where(series, x, 0.0)
    log_m_over_p = jnp.where(series, log1p_near(xs), log_m - t.log_p)
    direct = w_other * (t.q - t.p) - _xlog(t.p, log_m_over_p)
    return jnp.where(series, t.p * neg_log1pmx_near(xs), direct), log_m_over_p


def _js_term(t: Pair, params) -> Array:
    wp, wq = params
    log_m = _log_mixture(t, wp, wq)
    side_p, _ = _js_side(t, wq, log_m)
    side_q, _ = _js_side(_swap_pair(t), wp, log_m)
    return wp * side_p + wq * side_q


def _js_d_log_p(t: Pair, params) -> Array:
    wp, wq = params
    _, log_m_over_p = _js_side(t, wq, _log_mixture(t, wp, wq))
    return -wp * _xlog(t.p, log_m_over_p)


def _js_d_log_q(t: Pair, params) -> Array:
    wp, wq = params
    return _js_d_log_p(_swap_pair(t), (wq, wp))


def _binary_entropy(params) -> Array:
    wp, wq = params
    return -(_xlog(wp, jnp.log(wp)) + _xlog(wq, jnp.log(wq)))


JENSEN_SHANNON = Terms(
    term=_js_term,
    d_log_p=_js_d_log_p,
    d_log_q=_js_d_log_q,
    symmetric=True,
    mirror=lambda params: params[::-1],
    upper=_binary_entropy,
)

# ------------------------------------------------------------ total variation
# |P - Q| / 2 = P |Q/P - 1| / 2, with Q/P - 1 by series near l = 0.


def _tv_term(t: Pair, params) -> Array:
    near, ell = _near(t.log_ratio)
    return 0.5 * jnp.where(near, t.p * jnp.abs(expm1_series(-ell)), jnp.abs(t.p - t.q))


def _sign(x: Array) -> Array:
    # jnp.sign itself: Mosaic's lowering of it asks for the TPU's generation,
    # which a lowering without a TPU attached cannot give.
    return jnp.where(x > 0, 1.0, jnp.where(x < 0, -1.0, 0.0 * x))


TOTAL_VARIATION = Terms(
    term=_tv_term,
    # sign(l) is 0 where P_i = Q_i: the zero subgradient.
    d_log_p=lambda t, params: 0.5 * _sign(t.log_ratio) * t.p,
    d_log_q=lambda t, params: -0.5 * _sign(t.log_ratio) * t.q,
    symmetric=True,
    upper=lambda params: 1.0,
)

# ------------------------------------------------------------------ Hellinger
# (sqrt P - sqrt Q)^2 / 2 = P (sqrt(Q/P) - 1)^2 / 2, never 1 - sum sqrt(PQ).


def _sqrt_prob(log_p: Array) -> Array:
    # exp(log P / 2), not sqrt(P): its derivative at P = 0 is 0, not inf.
    return jnp.exp(0.5 * log_p)


def _hellinger_term(t: Pair, params) -> Array:
    near, ell = _near(t.log_ratio, 2 * _PHI_SERIES_RADIUS)
    root_q_over_p = expm1_series(-0.5 * ell)
    far = _sqrt_prob(t.log_p) - _sqrt_prob(t.log_q)
    return 0.5 * jnp.where(near, t.p * root_q_over_p**2, far * far)


def _hellinger_d_log_p(t: Pair, params) -> Array:
    near, ell = _near(t.log_ratio, 2 * _PHI_SERIES_RADIUS)
    root_p = _sqrt_prob(t.log_p)
    return 0.5 * jnp.where(
        near, -t.p * expm1_series(-0.5 * ell), root_p * (root_p - _sqrt_prob(t.log_q))
    )


HELLINGER = Terms(
    term=_hellinger_term,
    d_log_p=_hellinger_d_log_p,
    d_log_q=lambda t, params: _hellinger_d_log_p(_swap_pair(t), params),
    symmetric=True,
    upper=lambda params: 1.0,
)

# ---------------------------------------------------------------------- Renyi
# F = (sum P^a Q^(1-a) - 1) / (a - 1), so that D_a = log1p((a - 1) F) / (a - 1).
# With h = a - 1 the terms (P^a Q^(1-a) - Q - a (P - Q)) / h are
#   P phi(-l) + P phi(h l) / h,
# the KL term plus a correction that vanishes as a -> 1 (no division by h there).


def _renyi_slope(h: Array) -> Array:
    """The term per unit P where Q_i = 0 < P_i: +inf for a >= 1, a / (1 - a) below."""
    return jnp.where(h >= 0, jnp.inf, -1.0 / jnp.where(h < 0, h, -1.0) - 1.0)


def _renyi_params(params):
    """``(alpha, redo, shift, log_total)``: ``redo`` marks the rows whose value came
    from the log-space sum (:func:`renyi_in_log_space`), whose gradient uses its
    ``shift`` and ``log_total``."""
    alpha, *rest = params
    return (alpha, *rest) if rest else (alpha, False, 0.0, 0.0)


def _both_in_log_space(t: Pair) -> Array:
    # P^a Q^(1-a) can be moderate where P or Q underflows (log P = -3e38).
    return (t.log_p > -jnp.inf) & (t.log_q > -jnp.inf)


def _renyi_g(t: Pair, h: Array) -> Array:
    """``g`` with ``h g = log(P^a Q^(1-a))``, on ``D``'s own scale, where both are positive.

    For |h| < 1, ``log P / h`` alone can overflow where ``g`` does not: there ``g``
    is ``(log P + h (log P - log Q)) / h``, whose numerator cannot overflow (for
    h < 0 it is ``a log P + (1 - a) log Q``). Not left to an FMA the compiler may
    or may not contract (without one, XLA:CPU at -O0 gave +inf here).
    """
    both = _both_in_log_space(t)
    lp, lq = jnp.where(both, t.log_p, 0.0), jnp.where(both, t.log_q, 0.0)
    safe_h = jnp.where(h == 0, 1.0, h)
    return jnp.where(jnp.abs(h) < 1, (lp + h * (lp - lq)) / safe_h, lp / safe_h + (lp - lq))


def _renyi_weight(t: Pair, params) -> tuple[Array, Array, Array]:
    """``(P^a Q^(1-a) / S, h, redo)``: ``S = 1`` in the usual rows, ``S = e^(h D)`` in
    the log-space rows, where the weights are normalised (they sum to 1)."""
    alpha, redo, shift, log_total = _renyi_params(params)
    h = alpha - 1.0
    both = _both_in_log_space(t)
    usual = t.log_p + h * _finite_ratio(t)
    # Formed as the value's own sum was, from g - shift: e^(h D) overflows where D
    # is near the dtype's largest value, and g - D loses g's differences there.
    # Recomputed in another kernel (a multiply-add contracted or not), g can be
    # an ulp apart, 2e31 at 3e38: differences within two ulps of the shift are
    # rounding, so 0, and h d <= 0 by the choice of the shift.
    d = _renyi_g(t, h) - shift
    d = jnp.where(jnp.abs(d) <= 2 * jnp.finfo(d.dtype).eps * jnp.abs(shift), 0.0, d)
    in_log_space = jnp.minimum(h * d, 0.0) - log_total
    return jnp.where(both, jnp.exp(jnp.where(redo, in_log_space, usual)), 0.0), h, redo


def _p_expm1_over_h(t: Pair, ell: Array, h: Array, weight: Array, redo) -> Array:
    """``P expm1(h l) / h`` for positive P and Q (``P l`` at ``h = 0``); in the
    log-space rows ``(w - P) / h``, the normalised weight ``w`` for ``P e^(h l)``."""
    near, z = _near(h * ell)
    near = near & ~jnp.asarray(redo)
    safe_h = jnp.where(h == 0, 1.0, h)
    return jnp.where(near, t.p * ell * (1.0 + phi_over_x_series(z)), (weight - t.p) / safe_h)


def _renyi_term(t: Pair, params) -> Array:
    alpha = _renyi_params(params)[0]
    h = alpha - 1.0
    ell = _finite_ratio(t)
    both = (t.p > 0) & (t.q > 0)
    near = (jnp.abs(ell) < _PHI_SERIES_RADIUS) & (jnp.abs(h * ell) < _PHI_SERIES_RADIUS)
    small = jnp.where(near, ell, 0.0)
    series = t.p * (phi_series(-small) + small * phi_over_x_series(h * small))
    # P phi(-l) + P phi(h l) / h = (Q - P) + P expm1(h l) / h: away from l = 0
    # the P l parts cancel analytically instead of in rounding.
    weight = jnp.exp(t.log_p + h * ell)
    direct = (t.q - t.p) + _p_expm1_over_h(t, ell, h, weight, False)
    inner = jnp.where(near, series, direct)
    return jnp.where(both, inner, _off_support(t, _renyi_slope(h), t.q))


# In a log-space row, D = log S / h with S = sum P^a Q^(1-a): dD/dlog P = a w / h and
# dD/dlog Q = -w for the normalised weights w; the terms' derivatives below are
# those less (a P / h, -Q), whose sums vanish (the weights sum to 1), so that the
# usual softmax Jacobian (a_j - P_j sum a) gives the gradient without a row sum.


def _renyi_both(t: Pair, redo) -> Array:
    # A log-space row's weights are formed from log P and log Q alone.
    return jnp.where(redo, _both_in_log_space(t), (t.p > 0) & (t.q > 0))


def _renyi_d_log_p(t: Pair, params) -> Array:
    # a P (e^(h l) - 1) / h
    weight, h, redo = _renyi_weight(t, params)
    alpha = h + 1.0
    both = _renyi_both(t, redo)
    inner = alpha * _p_expm1_over_h(t, _finite_ratio(t), h, weight, redo)
    # Q_i = 0 < P_i: the term P a / (1 - a) (a < 1; a >= 1 gives D = +inf), whose
    # derivative is itself, in a log-space row too (there w = 0 and -a P / h is it).
    return jnp.where(both, inner, _off_support(t, _renyi_slope(h), 0.0))


def _renyi_d_log_q(t: Pair, params) -> Array:
    # Q - P^a Q^(1-a) = -Q expm1(a l)
    weight, h, redo = _renyi_weight(t, params)
    alpha = h + 1.0
    ell = _finite_ratio(t)
    both = _renyi_both(t, redo)
    near, z = _near(alpha * ell)
    near = near & ~jnp.asarray(redo)
    inner = jnp.where(near, -t.q * expm1_series(z), t.q - weight)
    return jnp.where(both, inner, t.q)


def _any(x: Array) -> Array:
    return row_max(x.astype(jnp.float32)) > 0


def renyi_from_sum(total: Array, params) -> tuple[Array, Array, Array]:
    """``D_a = log1p((a - 1) F) / (a - 1)`` from the row sums ``F`` of the terms, with
    ``dD/dF`` and the rows to recompute in log space (:func:`renyi_in_log_space`).

    For far-apart distributions ``F`` overflows (``a > 1``: the terms
    ``P (P/Q)^(a-1)``) or ``1 + (a - 1) F`` cancels (``a < 1``) while ``D_a``
    itself is moderate: those rows are recomputed.
    """
    alpha = _renyi_params(params)[0]
    h = alpha - 1.0
    value, slope = jax.jvp(lambda f: log1p_scaled(f, h), (total,), (jnp.ones_like(total),))
    # 1 + h F is sum P^a Q^(1-a); below 1/2 it is better summed in log space.
    overflow = jnp.isinf(value) | ((h < 0) & (h * total <= -0.5))
    redo = overflow & (h != 0)
    # The log-space rows' own derivative is taken with respect to D (slope 1).
    return value, jnp.where(redo, 1.0, slope), redo


def renyi_in_log_space(t: Pair, params, redo: Array) -> tuple[Array, tuple[Array, Array]]:
    """``D_a = logsumexp(h g) / h`` of the rows ``redo`` (``[...]``), from the
    log-probabilities, with the ``shift`` and ``log(total)`` it was summed with.

    Taken on ``D``'s own scale (:func:`_renyi_g`): a value that fits in float32
    survives even where ``h g = log(P^a Q^(1-a))`` overflows (``log P - log Q``
    never does: both are <= 0).
    """
    alpha = _renyi_params(params)[0]
    h = alpha - 1.0
    has_p, has_q = t.log_p > -jnp.inf, t.log_q > -jnp.inf
    both = redo[..., None] & has_p & has_q
    # Q_i = 0 < P_i: the value is +inf for a > 1 (a locally constant one).
    structural = _any(has_p & ~has_q) & (h[..., 0] > 0)
    g = _renyi_g(t, h)
    # g = +inf: for a > 1 the value overflows too (D_a >= max g); for a < 1
    # that term adds nothing (h g = -inf), as g = -inf does for a > 1.
    infinite = _any(both & (g == jnp.inf)) & (h[..., 0] > 0)
    # (Where infinite, the value is +inf whatever the other terms.)
    used = both & jnp.isfinite(g)
    # h g is largest at the largest g for a > 1 and at the smallest for a < 1;
    # the shift cancels from the value: no derivative through it (nor a pmax).
    sign = jnp.where(h > 0, 1.0, -1.0)
    top = row_max(jnp.where(used, sign * jax.lax.stop_gradient(g), -jnp.inf))
    overlap = top > -jnp.inf
    shift = jnp.where(overlap, sign[..., 0] * top, 0.0)
    total_e = row_sum(jnp.where(used, jnp.exp(h * (jnp.where(used, g, 0.0) - shift[..., None])), 0.0))
    safe_h = jnp.where(h == 0, 1.0, h)[..., 0]
    log_total = jnp.log(jnp.where(overlap, total_e, 1.0))
    # No overlap: sum P^a Q^(1-a) = 0, so D_a = +inf for every order.
    scaled = jnp.where(overlap, shift + log_total / safe_h, jnp.inf)
    scaled = jnp.where(infinite, jnp.inf, scaled)
    # (At a = 1 an infinite value is KL's own +inf.)
    return jnp.where(structural, jnp.inf, scaled), (shift, log_total)


# A Q without mass is no distribution: sum P^a Q^(1-a) = 0 for every order.
RENYI = Terms(
    term=_renyi_term, d_log_p=_renyi_d_log_p, d_log_q=_renyi_d_log_q, empty_q=jnp.inf,
    from_sum=renyi_from_sum, redo=renyi_in_log_space,
)


# ------------------------------------------------------ user f-divergences
# D_f = sum_{Q_i > 0} Q_i f(P_i / Q_i) + f'(inf) sum_{Q_i = 0} P_i.


def _f_parts(f, t: Pair):
    live_q = t.q > 0
    ratio = jnp.exp(jnp.where(live_q, t.log_ratio, 0.0))   # 0 where P_i = 0 < Q_i
    safe = jnp.where(t.p > 0, ratio, 1.0)
    f_ratio = f(ratio)
    _, f_prime = jax.jvp(f, (safe,), (jnp.ones_like(safe),))
    return live_q, f_ratio, jnp.where(t.p > 0, f_prime, 0.0)


def _f_term(f, slope, t: Pair, params) -> Array:
    live_q, f_ratio, _ = _f_parts(f, t)
    return jnp.where(live_q, t.q * f_ratio, _off_support(t, slope, 0.0))


def _f_d_log_p(f, slope, t: Pair, params) -> Array:
    live_q, _, f_prime = _f_parts(f, t)
    return jnp.where(live_q, t.p * f_prime, _off_support(t, slope, 0.0))


def _f_d_log_q(f, slope, t: Pair, params) -> Array:
    live_q, f_ratio, f_prime = _f_parts(f, t)
    return jnp.where(live_q, t.q * f_ratio - t.p * f_prime, 0.0)


def f_terms(f, slope_at_infinity) -> Terms:
    """Terms of the f-divergence of a user's elementwise convex ``f``."""
    return Terms(
        term=functools.partial(_f_term, f, slope_at_infinity),
        d_log_p=functools.partial(_f_d_log_p, f, slope_at_infinity),
        d_log_q=functools.partial(_f_d_log_q, f, slope_at_infinity),
    )
