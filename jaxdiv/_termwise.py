r"""Divergences that are sums of per-class terms, differentiated by one closed form.

Jensen-Shannon, total variation, Hellinger, Renyi and user f-divergences on
logits, and the whole family on probabilities, share one shape:

.. math::
  D(P, Q) = \sum_i t(P_i, Q_i, \ell_i), \qquad \ell_i = \log P_i - \log Q_i.

A divergence supplies its term ``t`` and the closed forms
:math:`a = \partial t / \partial \log P` and :math:`b = \partial t / \partial \log Q`
(:class:`Terms`); this module builds the inputs accurately (:class:`Pair`),
sums the terms block of rows by block of rows, and turns ``a`` and ``b`` into
gradients through the softmax (or normalisation) Jacobian,

.. math::
  \frac{\partial D}{\partial p_j} = a_j - P_j \sum_i a_i,

in one custom JVP rule that keeps only per-row statistics for the backward
pass. The log ratio :math:`\ell` is formed from the raw inputs and an accurate
normaliser difference (:func:`jaxdiv._numerics.log_ratio`), so terms written
with short series near :math:`\ell = 0` stay accurate for nearly identical
distributions.

Conventions: a row whose value is ``+inf`` has a zero gradient (the value is
locally constant); a row holding NaN or ``+inf`` inputs gives NaN; a row where
P (for symmetric divergences: P or Q) has no mass gives 0 with zero gradient.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxdiv._numerics import (
    LogRatio,
    difference,
    finite_or_zero,
    invalid,
    log_normaliser,
    log_ratio,
    map_rows,
    recompute_in_backward,
    row_stats,
    row_sum,
)

Array = jax.Array


class Pair(NamedTuple):
    """Per-class inputs of a term; all ``[..., C]``."""

    p: Array          # P_i, 0 outside the support
    q: Array          # Q_i
    log_p: Array      # log P_i, -inf where P_i = 0
    log_q: Array      # log Q_i
    log_ratio: Array  # log P_i - log Q_i to full accuracy; +inf where Q_i = 0 < P_i,
                      # -inf where P_i = 0 < Q_i, 0 where both are 0


class Terms(NamedTuple):
    """One divergence as per-class terms; ``params`` is a tuple of ``[..., 1]`` arrays."""

    term: Callable[[Pair, tuple], Array]
    d_log_p: Callable[[Pair, tuple], Array]
    d_log_q: Callable[[Pair, tuple], Array]
    # D(P, Q) = D(Q, P) once params are mirrored; evaluated in a canonical
    # order of (P, Q) so that the computed value is symmetric bit for bit.
    symmetric: bool = False
    mirror: Optional[Callable[[tuple], tuple]] = None
    # the largest value, enforced after rounding (None: unbounded).
    upper: Optional[Callable[[tuple], Array]] = None


# ----------------------------------------------------------- building a Pair


def _log_ratio_field(p: Array, q: Array, log_p_over_q: Array) -> Array:
    both = (p > 0) & (q > 0)
    ones_sided = jnp.where(p > 0, jnp.inf, jnp.where(q > 0, -jnp.inf, 0.0))
    return jnp.where(both, log_p_over_q, ones_sided)


def _logits_pair(x: Array, y: Array, s: LogRatio) -> Pair:
    # finite_or_zero: a row without mass has log_sum = -inf; its terms are discarded.
    log_p = (x - s.shift_p[..., None]) - finite_or_zero(s.log_sum_p)[..., None]
    log_q = (y - s.shift_q[..., None]) - finite_or_zero(s.log_sum_q)[..., None]
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    both = (p > 0) & (q > 0)
    # log Q - log P = ((q - p) - c) - gap, see log_ratio.
    log_q_over_p = (difference(y, x, both) - s.shift[..., None]) - s.gap[..., None]
    return Pair(p, q, log_p, log_q, _log_ratio_field(p, q, -log_q_over_p))


class _ProbStats(NamedTuple):
    shift_p: Array       # log max x
    log_sum_p: Array     # log sum x / max x, in the log1p form; -inf for an all-zero row
    shift_q: Array
    log_sum_q: Array
    log_scale: Array     # log(sum x / sum y), accurate when the sums are close
    bad: Array           # a negative, NaN or +inf entry


def _prob_stats(x: Array, y: Array) -> _ProbStats:
    # log_normaliser of log(x) gives log(x_i / sum x) without rounding sum x
    # first, so confident distributions keep an accurate log P near 0.
    norm_p, norm_q = log_normaliser(jnp.log(x)), log_normaliser(jnp.log(y))
    sum_q = row_sum(y)
    excess = row_sum(x - y)   # exact differences, so their sum is accurate
    safe_q = jnp.where(sum_q > 0, sum_q, 1.0)
    log_scale = jnp.log1p(excess / safe_q)
    negative = jnp.min(jnp.minimum(x, y), axis=-1, initial=0.0) < 0
    bad = negative | invalid(norm_p.log_sum) | invalid(norm_q.log_sum)
    return _ProbStats(
        norm_p.shift, norm_p.log_sum, norm_q.shift, norm_q.log_sum, log_scale, bad
    )


def _probs_pair(x: Array, y: Array, s: _ProbStats) -> Pair:
    log_p = (jnp.log(x) - s.shift_p[..., None]) - finite_or_zero(s.log_sum_p)[..., None]
    log_q = (jnp.log(y) - s.shift_q[..., None]) - finite_or_zero(s.log_sum_q)[..., None]
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    both = (x > 0) & (y > 0)
    safe_y = jnp.where(both, y, 1.0)
    log_p_over_q = jnp.log1p(difference(x, y, both) / safe_y) - s.log_scale[..., None]
    return Pair(p, q, log_p, log_q, _log_ratio_field(p, q, log_p_over_q))


class _Space(NamedTuple):
    """How a pair of input arrays becomes a :class:`Pair`, and how gradients map back."""

    stats: Callable
    pair: Callable
    has_p: Callable
    has_q: Callable
    invalid: Callable
    # d/d(input) from d/d(log input); logits are log inputs already.
    chain: Callable


def _divide_by_input(coef: Array, x: Array) -> Array:
    # d log x / dx = 1/x; at x = 0 the zero gradient of jax.scipy.special.rel_entr.
    positive = x > 0
    return jnp.where(positive, coef / jnp.where(positive, x, 1.0), 0.0)


LOGITS = _Space(
    stats=log_ratio,
    pair=_logits_pair,
    has_p=lambda s: s.log_sum_p > -jnp.inf,
    has_q=lambda s: s.log_sum_q > -jnp.inf,
    invalid=lambda s: jnp.isnan(s.kl),
    chain=lambda coef, x: coef,
)

PROBS = _Space(
    stats=_prob_stats,
    pair=_probs_pair,
    has_p=lambda s: s.log_sum_p > -jnp.inf,
    has_q=lambda s: s.log_sum_q > -jnp.inf,
    invalid=lambda s: s.bad,
    chain=_divide_by_input,
)


# ------------------------------------------------------------- the row pass


def _canonical_swap(x: Array, y: Array) -> Array:
    """Per row, whether ``(y, x)`` precedes ``(x, y)`` lexicographically.

    Evaluating a symmetric divergence on the ordered pair makes ``D(P, Q)`` and
    ``D(Q, P)`` the same computation, hence equal bit for bit.
    """
    if x.shape[-1] == 0:
        return jnp.zeros(x.shape[:-1], bool)
    # The first differing class: a min over indices, much cheaper than argmax.
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    first = jnp.min(jnp.where(x != y, index, x.shape[-1] - 1), axis=-1)[..., None]
    return (jnp.take_along_axis(x, first, -1) > jnp.take_along_axis(y, first, -1))[..., 0]


def _orient(x: Array, y: Array, swap: Optional[Array]) -> tuple[Array, Array]:
    if swap is None:
        return x, y
    s = swap[..., None]
    return jnp.where(s, y, x), jnp.where(s, x, y)


def _row_params(terms: Terms, params: tuple, swap: Optional[Array]) -> tuple:
    """Parameters per row (mirrored where swapped), shaped ``[..., 1]`` for the terms."""
    if swap is not None and terms.mirror is not None:
        params = tuple(
            jnp.where(swap, b, a) for a, b in zip(params, terms.mirror(params))
        )
    return tuple(jnp.asarray(v)[..., None] for v in params)


class _Rows(NamedTuple):
    value: Array
    stats: NamedTuple
    swap: Optional[Array]
    coef_x: Optional[Array] = None   # dD/dx, [..., C]
    coef_y: Optional[Array] = None


def _has_mass(space: _Space, terms: Terms, stats) -> Array:
    mass = space.has_p(stats)
    return mass & space.has_q(stats) if terms.symmetric else mass


def _rows(space: _Space, terms: Terms, params: tuple, x: Array, y: Array, grads: bool) -> _Rows:
    """The value of a block of rows and, with ``grads``, its gradient coefficients.

    The coefficients are formed here, inside the block, where the pair and
    its branches are still in cache; outside, each would be a pass over memory.
    """
    x_in, y_in = x, y
    swap = _canonical_swap(x, y) if terms.symmetric else None
    x, y = _orient(x, y, swap)
    row_params = _row_params(terms, params, swap)
    stats = space.stats(x, y)
    pair = space.pair(x, y, stats)
    value = jnp.maximum(row_sum(terms.term(pair, row_params)), 0.0)
    if terms.upper is not None:
        bound = jnp.asarray(terms.upper(row_params))
        value = jnp.minimum(value, bound[..., 0] if bound.ndim else bound)
    mass = _has_mass(space, terms, stats)
    value = jnp.where(mass, value, 0.0)
    value = jnp.where(space.invalid(stats), jnp.nan, value)
    if not grads:
        return _Rows(value, stats, swap)
    # dD/dx_j = a_j - P_j sum(a); a +inf value is locally constant and a row
    # without mass contributes nothing, so both get a zero gradient.
    live = (jnp.isfinite(value) & mass)[..., None]
    d_log_p = terms.d_log_p(pair, row_params)
    d_log_q = terms.d_log_q(pair, row_params)
    sum_a = jnp.where(live, row_sum(d_log_p)[..., None], 0.0)
    sum_b = jnp.where(live, row_sum(d_log_q)[..., None], 0.0)
    coef_a = jnp.where(live, d_log_p - pair.p * sum_a, 0.0)
    coef_b = jnp.where(live, d_log_q - pair.q * sum_b, 0.0)
    coef_x, coef_y = _orient(coef_a, coef_b, swap)
    return _Rows(value, stats, swap, space.chain(coef_x, x_in), space.chain(coef_y, y_in))


def divergence(space: _Space, terms: Terms, x: Array, y: Array, params: tuple = ()) -> Array:
    """``D(x, y)`` over the last axis of prepared ``[..., C]`` arrays."""
    return _build(space, terms)(x, y, tuple(params))


def _inner(coef: Array, tangent) -> Array:
    """Row-wise ``<coef, tangent>`` over the class axis, skipping symbolic zeros."""
    if isinstance(tangent, SymbolicZero):
        return jnp.zeros(coef.shape[:-1], coef.dtype)
    return row_sum(coef * tangent)


@functools.lru_cache(maxsize=64)
def _build(space: _Space, terms: Terms):
    """The custom-JVP function for one divergence in one input space."""

    @jax.custom_jvp
    def value(x, y, params):
        return map_rows(lambda a, b: _rows(space, terms, params, a, b, False).value, x, y)

    # Closed form: dD/dx_j = a_j - P_j sum(a) with a = dt/dlog P (and likewise
    # for y); autodiff through the terms' branches would leak NaN at zero
    # probability and keep [..., C] temporaries for the backward pass.
    def value_jvp(primals, tangents):
        x, y, params = primals
        dx, dy, dparams = tangents
        if not all(isinstance(t, SymbolicZero) for t in dparams):
            raise NotImplementedError(
                "jaxdiv does not differentiate divergences with respect to their "
                "parameters (alpha, beta); pass them through jax.lax.stop_gradient."
            )
        dx = jnp.zeros_like(x) if isinstance(dx, SymbolicZero) else dx
        dy = jnp.zeros_like(y) if isinstance(dy, SymbolicZero) else dy

        # The tangent is formed inside each block, so that reverse mode
        # transposes it block by block too: the gradient arrays are written
        # straight from cache-resident coefficients, which are never stored.
        @jax.checkpoint
        def block(a, b, da, db):
            rows = _rows(space, terms, params, a, b, True)
            return rows.value, rows.stats, _inner(rows.coef_x, da) + _inner(rows.coef_y, db)

        value, stats, tangent = map_rows(block, x, y, dx, dy)
        value, stats = row_stats((value, stats))
        # NaN inputs poison their own row's gradient, linearly.
        return value, tangent * jnp.where(space.invalid(stats), jnp.nan, 1.0)

    value.defjvp(value_jvp, symbolic_zeros=True)
    return recompute_in_backward(value)
