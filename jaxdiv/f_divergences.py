r"""KL's relatives between categoricals given as logits: JS, TV, Hellinger, Renyi, Jeffreys, any f.

Same signature and conventions as :func:`jaxdiv.kl_divergence`: ``P =
softmax(p_logits)`` first, ``Q = softmax(q_logits)`` second; ``axis``,
``where`` and broadcasting as there; logits may be ``-inf`` (zero
probability); values in ``result_type(dtype, float32)``.

Every value is a row sum of non-negative per-class terms evaluated from the
accurate log ratio :math:`\ell = \log P - \log Q` (series near
:math:`\ell = 0`), so identical inputs give exactly 0 and nearly identical ones
keep float32 relative accuracy down to divergences of 1e-10 and below. The
symmetric ones (JS, TV, Hellinger, Jeffreys) are evaluated on a canonical order
of the pair, so ``f(p, q) == f(q, p)`` bit for bit; the bounded ones stay in
their bounds after rounding.

Gradients are closed forms (one custom JVP rule for the family, see
``jaxdiv._termwise``): reverse and forward mode and second order work, and
are NaN-free where the value is finite. A row whose value is ``+inf`` has a
zero gradient; a row where P has no support (for the symmetric divergences: P
or Q) is 0 with a zero gradient; NaN or ``+inf`` inputs give NaN in their row.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxdiv import _checks, _terms
from jaxdiv._dispatch import eager_jit
from jaxdiv._numerics import any_class, check_axis_name, safe_sqrt
from jaxdiv._pallas import choose
from jaxdiv._termwise import LOGITS, divergence, divergence_one_pass
from jaxdiv.categorical import _kl

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "f_divergence",
    "hellinger_distance",
    "jeffreys_divergence",
    "js_distance",
    "js_divergence",
    "renyi_divergence",
    "total_variation",
]


def _pair(p_logits, q_logits, axis, where, axis_name=None):
    check_axis_name(axis_name)
    (p, q), _ = _checks.logits(
        (p_logits, q_logits), ("p_logits", "q_logits"), axis=axis, where=where, broadcast=False
    )
    return p, q


def _family(terms, p, q, params=(), axis_name=None, implementation="xla") -> Array:
    """``divergence(LOGITS, terms, ...)``, in the Pallas kernel when asked for and possible."""

    def one_pass():
        if axis_name is not None:
            raise NotImplementedError("the Pallas kernels read whole rows; axis_name splits them")
        return divergence_one_pass(terms, p, q, params)

    return choose(implementation, one_pass, lambda: divergence(LOGITS, terms, p, q, params, axis_name))


def _js(p_logits, q_logits, beta, axis, where, axis_name=None, implementation="xla") -> Array:
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    weights = tuple(jnp.asarray(w, p.dtype) for w in _checks.mixture_weights(beta))
    return _family(_terms.JENSEN_SHANNON, p, q, weights, axis_name, implementation)


@eager_jit
def js_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    beta: float = 0.5,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    base: Optional[float] = None,
    implementation: str = "xla",
) -> Array:
    r"""Jensen-Shannon divergence, or its generalised-:math:`\beta` form.

    .. math::
      JS_\beta(P, Q) = \beta\, KL(P \| M) + (1 - \beta)\, KL(Q \| M), \quad
      M = \beta P + (1 - \beta) Q.

    :math:`\beta = 1/2` (the default) is the Jensen-Shannon divergence,
    symmetric and at most :math:`\log 2`; in general
    :math:`0 \le JS_\beta \le h(\beta) = -\beta\log\beta - (1-\beta)\log(1-\beta)`,
    finite even for disjoint supports, with a finite gradient there too. The
    endpoints are 0, and :math:`JS_\beta / \beta \to KL(P \| Q)` as
    :math:`\beta \to 0`, :math:`JS_\beta / (1 - \beta) \to KL(Q \| P)` as
    :math:`\beta \to 1`: the generalised JSD of on-policy distillation
    (Agarwal et al., 2024) interpolates between forward and reverse KL.
    ``js_divergence(p, q, beta=b) == js_divergence(q, p, beta=1 - b)``.

    Args:
      p_logits: logits of P, ``[..., C, ...]``; any real value or ``-inf``.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      beta: the weight of P in the mixture, in ``[0, 1]`` (a scalar; it may be
        traced, but is not differentiated).
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask removing classes from both distributions.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it (see
        :func:`jaxdiv.kl_divergence`). None: whole rows.
      implementation: ``"xla"`` (default) or ``"pallas"``: a Pallas kernel on
        GPU and TPU that sweeps each row twice (the normalisers, then the
        terms) and keeps per-row statistics only; the XLA path on the CPU and
        with ``axis_name``. Reverse-mode differentiation only.

    Returns:
      the divergence, class axis removed. Its square root is
      :func:`js_distance`.

    Gradients: ``d/dp = beta P (log(P/M) - KL(P || M))``, and likewise for q;
    0 where a probability is 0.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p = jnp.log(jnp.array([1.0, 0.0]))
      >>> q = jnp.log(jnp.array([0.0, 1.0]))
      >>> print(f"{jaxdiv.js_divergence(p, q, base=2):.6f}")  # disjoint: 1 bit
      1.000000
    """
    return _checks.in_base(_js(p_logits, q_logits, beta, axis, where, axis_name, implementation), base)


@eager_jit
def js_distance(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    base: Optional[float] = None,
    implementation: str = "xla",
) -> Array:
    r"""Jensen-Shannon distance :math:`\sqrt{JS(P, Q)}`, a metric on distributions.

    Equal to ``scipy.spatial.distance.jensenshannon(P, Q, base)``. Its gradient
    at identical inputs is 0 (the zero subgradient, not ``inf * 0``).

    Args:
      p_logits: logits of P, ``[..., C, ...]``; ``-inf`` is zero probability.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.
      implementation: ``"xla"`` (default) or ``"pallas"`` (one-pass kernel on
        GPU and TPU, see :func:`kl_divergence`).

    Returns:
      the distance, with the class axis removed, in ``result_type(dtype, float32)``;
      at most :math:`\sqrt{\log 2}` (1 in bits); NaN in rows holding NaN or ``+inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p, q = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([1.0, 0.0]))
      >>> print(f"{jaxdiv.js_distance(p, q, base=2):.6f}")
      0.557923
    """
    js = _js(p_logits, q_logits, 0.5, axis, where, axis_name, implementation)
    return safe_sqrt(_checks.in_base(js, base))


@eager_jit
def total_variation(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Total variation distance :math:`\tfrac12 \sum_i |P_i - Q_i|`, in ``[0, 1]``.

    Near equality each :math:`|P_i - Q_i|` is :math:`P_i |e^{-\ell_i} - 1|`
    from the accurate log ratio, not a difference of two rounded
    probabilities.

    Gradient: ``d/dp = sign(P - Q) P / 2`` through the softmax, with the zero
    subgradient where ``P_i = Q_i``.

    Args:
      p_logits: logits of P, ``[..., C, ...]``; ``-inf`` is zero probability.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.
      implementation: ``"xla"`` (default) or ``"pallas"`` (one-pass kernel on
        GPU and TPU, see :func:`kl_divergence`).

    Returns:
      TV in ``[0, 1]``, with the class axis removed, in ``result_type(dtype, float32)``;
      NaN in rows holding NaN or ``+inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p, q = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
      >>> print(f"{jaxdiv.total_variation(p, q):.6f}")
      0.400000
    """
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    return _family(_terms.TOTAL_VARIATION, p, q, (), axis_name, implementation)


@eager_jit
def hellinger_distance(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    squared: bool = False,
    implementation: str = "xla",
) -> Array:
    r"""Hellinger distance :math:`\sqrt{\tfrac12 \sum_i (\sqrt{P_i} - \sqrt{Q_i})^2}`, in ``[0, 1]``.

    Computed as the sum of squares, never as :math:`1 - \sum_i \sqrt{P_i Q_i}`
    (which cancels to rounding noise near equality). ``squared=True`` returns
    :math:`H^2 = 1 - BC(P, Q)`, where ``BC`` is the Bhattacharyya coefficient;
    the Renyi divergence of order 1/2 is :math:`-2 \log(1 - H^2)`.

    The gradient of the distance at identical inputs is 0 (zero subgradient).

    Args:
      p_logits: logits of P, ``[..., C, ...]``; ``-inf`` is zero probability.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      squared: return :math:`H^2` instead of :math:`H`.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.
      implementation: ``"xla"`` (default) or ``"pallas"`` (one-pass kernel on
        GPU and TPU, see :func:`kl_divergence`).

    Returns:
      H (or :math:`H^2`) in ``[0, 1]``, with the class axis removed, in
      ``result_type(dtype, float32)``; NaN in rows holding NaN or ``+inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p, q = jnp.log(jnp.array([1.0, 0.0])), jnp.log(jnp.array([0.0, 1.0]))
      >>> print(f"{jaxdiv.hellinger_distance(p, q):.6f}")  # disjoint supports
      1.000000
    """
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    h2 = _family(_terms.HELLINGER, p, q, (), axis_name, implementation)
    return h2 if squared else safe_sqrt(h2)


@eager_jit
def renyi_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    alpha: float,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    base: Optional[float] = None,
) -> Array:
    r"""Renyi divergence of order :math:`\alpha \in (0, \infty)`.

    .. math::
      D_\alpha(P \| Q) = \frac{1}{\alpha - 1} \log \sum_i P_i^\alpha Q_i^{1-\alpha},

    evaluated as :math:`\log(1 + (\alpha-1) F) / (\alpha - 1)` with
    :math:`F = \sum_i P_i\,[\varphi(-\ell_i) + \varphi((\alpha-1)\ell_i)/(\alpha-1)]`
    a sum of non-negative terms, :math:`\varphi(x) = e^x - 1 - x`. At
    :math:`\alpha = 1` this is exactly :math:`KL(P \| Q)`, and it tends to it
    continuously (no 0/0 near 1). :math:`\alpha = 1/2` gives
    :math:`-2 \log BC(P, Q)` (Bhattacharyya); :math:`\alpha = 2` gives
    :math:`\log(1 + \chi^2(P \| Q))`. Non-decreasing in :math:`\alpha`.

    Zero probabilities: classes with ``P_i = 0`` contribute nothing; where
    ``Q_i = 0 < P_i`` the value is ``+inf`` for :math:`\alpha \ge 1`, and for
    :math:`\alpha < 1` only disjoint supports give ``+inf``.

    Args:
      p_logits: logits of P.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      alpha: the order, a positive scalar (may be traced; not differentiated).
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.

    Returns:
      :math:`D_\alpha`, with the class axis removed, in ``result_type(dtype, float32)``;
      ``+inf`` as above; 0 where P has no support; NaN in rows holding NaN or ``+inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p = jnp.log(jnp.array([0.5, 0.5]))
      >>> q = jnp.log(jnp.array([0.25, 0.75]))
      >>> print(f"{jaxdiv.renyi_divergence(p, q, 2.0):.6f}")  # log(1 + chi^2) = log(4/3)
      0.287682
      >>> bool(jaxdiv.renyi_divergence(p, q, 1.0) == jaxdiv.renyi_divergence(p, q, 1.0))
      True
    """
    alpha = _checks.scalar_parameter(alpha, "alpha", 0.0, jnp.inf, open_low=True, open_high=True)
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    alpha = jnp.asarray(alpha, p.dtype)
    value = divergence(LOGITS, _terms.RENYI, p, q, (alpha,), axis_name)
    return _checks.in_base(value, base)


@eager_jit
def jeffreys_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    base: Optional[float] = None,
) -> Array:
    r"""Jeffreys (symmetrised KL) divergence :math:`KL(P \| Q) + KL(Q \| P)`.

    Symmetric bit for bit; ``+inf`` unless P and Q share their support. Reverse
    KL needs no name of its own: it is ``kl_divergence(q_logits, p_logits)``.

    Args:
      p_logits: logits of P, ``[..., C, ...]``; ``-inf`` is zero probability.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      base: logarithm base of the result (``2`` for bits); nats by default.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.

    Returns:
      the sum of both KLs, with the class axis removed, in ``result_type(dtype, float32)``;
      ``+inf`` unless the supports agree; 0 where P or Q has no support.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> p, q = jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0])
      >>> bool(jaxdiv.jeffreys_divergence(p, q) == jaxdiv.jeffreys_divergence(q, p))
      True
    """
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    # A row where either side has no support is 0, as for every symmetric divergence.
    mass = any_class(p > -jnp.inf, axis_name) & any_class(q > -jnp.inf, axis_name)
    return _checks.in_base(jnp.where(mass, _kl(p, q, axis_name) + _kl(q, p, axis_name), 0.0), base)


@eager_jit
def f_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    f: Callable[[Array], Array],
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    axis_name: Optional[str] = None,
    slope_at_infinity: float = jnp.inf,
) -> Array:
    r"""The f-divergence :math:`D_f(P \| Q) = \sum_i Q_i f(P_i / Q_i)` of a convex ``f``.

    ``f`` maps an array of ratios ``t = P_i / Q_i`` to an array of the same
    shape, elementwise, with :math:`f(1) = 0`. Conventions at zero probability:

    * ``P_i = 0 < Q_i``: the term is :math:`Q_i f(0)`, so ``f`` must accept
      ``t = 0`` (write :math:`t \log t` as ``jax.scipy.special.xlogy(t, t)``);
    * ``Q_i = 0 < P_i``: the term is :math:`P_i f'(\infty)`, the slope
      :math:`\lim_{t\to\infty} f(t)/t` given as ``slope_at_infinity`` (``+inf``,
      the default, for KL-like ``f``; 1/2 for TV, 1 for squared Hellinger,
      :math:`\log 2` for JS);
    * ``P_i = Q_i = 0``: nothing.

    The ratios come from the accurate log ratio; the sum is only as accurate as
    ``f`` is near :math:`t = 1`: adding :math:`c(t - 1)` to ``f`` changes no
    value but, with :math:`c = -f'(1)`, removes the cancellation between terms
    for nearly identical distributions. The gradient uses ``f'`` from
    ``jax.jvp``, so ``f`` must be differentiable where ``P_i > 0``.

    Args:
      p_logits: logits of P, ``[..., C, ...]``; ``-inf`` is zero probability.
      q_logits: logits of Q; broadcasts against ``p_logits``.
      f: the generator, a function from an array of ratios to an array of
        the same shape (elementwise, convex, :math:`f(1) = 0`).
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the logits; False removes a
        class from both P and Q.
      slope_at_infinity: :math:`\lim_{t\to\infty} f(t)/t`, the weight of
        P's mass where Q has none.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis: the per-row statistics are combined across it.

    Returns:
      :math:`D_f`, with the class axis removed, in ``result_type(dtype, float32)``;
      NaN in rows holding NaN or ``+inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdiv
      >>> from jax.scipy.special import xlogy
      >>> p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
      >>> q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
      >>> kl = jaxdiv.f_divergence(p, q, lambda t: xlogy(t, t) - (t - 1))
      >>> print(f"{kl:.6f}")  # = kl_divergence(p, q) = log 2
      0.693147
      >>> tv = jaxdiv.f_divergence(p, q, lambda t: 0.5 * jnp.abs(t - 1), slope_at_infinity=0.5)
      >>> print(f"{tv:.6f}")
      0.500000
    """
    if not callable(f):
        raise TypeError(f"f must be a callable mapping ratios P/Q to values, got {f!r}.")
    p, q = _pair(p_logits, q_logits, axis, where, axis_name)
    return divergence(LOGITS, _terms.f_terms(f, slope_at_infinity), p, q, axis_name=axis_name)
