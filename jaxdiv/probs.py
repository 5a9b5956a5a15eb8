r"""The divergence family for probability vectors, histograms and counts.

Inputs are non-negative arrays (probabilities, or unnormalised counts) with a
class axis; each is normalised along ``axis`` (``P = p / sum(p)``), so counts
and probabilities are interchangeable. Exact zeros are allowed and follow the
conventions of the logits functions (``0 log 0 = 0``; ``P_i > 0 = Q_i`` makes
KL and cross-entropy ``+inf``). ``eps`` adds a pseudo-count to every class
before normalising (additive smoothing), the usual cure for support mismatch
in histograms: with counts it is in counts, with probability vectors it is a
probability mass per class. ``where`` removes classes from both inputs.

Values are computed from the same per-class terms as :mod:`jaxdiv.f_divergences`,
with the log ratio formed as ``log1p((p - q) / q)`` and an accurate ratio of the
two sums, so nearly identical histograms keep full relative accuracy.

Gradients are with respect to the given (unnormalised) arrays. Where an entry
is 0 its gradient is 0 -- the convention of ``jax.scipy.special.rel_entr`` at
``x = 0``, where the one-sided derivative of ``x log x`` is ``-inf`` -- and a
row whose value is ``+inf`` has a zero gradient; no gradient is NaN for valid
input. A negative, NaN or ``+inf`` entry makes its row NaN (values cannot
raise under ``jit``).

Example:
  >>> import jax.numpy as jnp
  >>> from jaxdiv import probs
  >>> counts_a = jnp.array([10.0, 0.0, 30.0])
  >>> counts_b = jnp.array([20.0, 10.0, 10.0])
  >>> print(f"{probs.kl_divergence(counts_a, counts_b, base=2):.6f}")  # scipy.stats.entropy
  0.938722
  >>> float(probs.kl_divergence(counts_b, counts_a))  # b has mass where a has none
  inf
  >>> print(f"{probs.kl_divergence(counts_b, counts_a, eps=1.0):.6f}")  # smoothed
  0.664163
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxdiv import _checks, _terms
from jaxdiv._dispatch import eager_jit
from jaxdiv._numerics import safe_sqrt
from jaxdiv._termwise import PROBS, Terms, divergence

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "cross_entropy",
    "entropy",
    "hellinger_distance",
    "js_distance",
    "js_divergence",
    "kl_divergence",
    "renyi_divergence",
    "total_variation",
]


def _pairwise(terms: Terms, p, q, params, axis, where, eps) -> Array:
    p, q = _checks.probabilities((p, q), ("p", "q"), axis=axis, where=where, eps=eps)
    params = tuple(jnp.asarray(v, p.dtype) for v in params)
    return divergence(PROBS, terms, p, q, params)


@eager_jit
def kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r""":math:`KL(P \| Q) = \sum_i P_i \log(P_i / Q_i)` of normalised ``p`` and ``q``.

    ``scipy.stats.entropy(p, q, base=base, axis=axis)``, differentiable; exact
    for any positive totals (counts against probabilities included).

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      KL, with the class axis removed, in ``result_type(dtype, float32)``.
      ``+inf`` where ``P_i > 0 = Q_i`` (use ``eps`` to smooth); 0 where P
      has no support; NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> a, b = jnp.array([3, 0, 1]), jnp.array([1e8, 2.0, 5.0])  # counts, any totals
      >>> print(f"{probs.kl_divergence(a, b):.4f}")  # scipy.stats.entropy(a, b)
      3.6405
    """
    return _checks.in_base(_pairwise(_terms.KL, p, q, (), axis, where, eps), base)


@eager_jit
def cross_entropy(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r""":math:`H(P, Q) = -\sum_i P_i \log Q_i = H(P) + KL(P \| Q)` of normalised ``p`` and ``q``.

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      H(P, Q), with the class axis removed, in ``result_type(dtype, float32)``.
      ``+inf`` where ``P_i > 0 = Q_i``; NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.cross_entropy(jnp.array([1.0, 1.0]), jnp.array([1.0, 3.0]), base=2):.6f}")
      1.207519
    """
    return _checks.in_base(
        _pairwise(_terms.CROSS_ENTROPY, p, q, (), axis, where, eps), base
    )


@eager_jit
def entropy(
    p: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r"""Shannon entropy :math:`-\sum_i P_i \log P_i` of normalised ``p``.

    ``scipy.stats.entropy(p, base=base, axis=axis)``, differentiable.

    Args:
      p: probabilities, a histogram or counts ``[..., C, ...]``, normalised
        along ``axis``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      H(P), with the class axis removed, in ``result_type(dtype, float32)``.
      0 for a one-hot row; NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.entropy(jnp.array([1.0, 1.0, 2.0]), base=2):.6f}")
      1.500000
    """
    (x,) = _checks.probabilities((p,), ("p",), axis=axis, where=where, eps=eps)
    return _checks.in_base(divergence(PROBS, _terms.CROSS_ENTROPY, x, x), base)


@eager_jit
def js_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    beta: float = 0.5,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r"""Jensen-Shannon divergence (generalised by ``beta``), see :func:`jaxdiv.js_divergence`.

    .. math::
      JS_\beta(P, Q) = \beta KL(P \| M) + (1 - \beta) KL(Q \| M), \quad M = \beta P + (1 - \beta) Q.

    ``scipy.spatial.distance.jensenshannon(p, q, base) ** 2`` at ``beta=0.5``;
    finite (at most log 2) for disjoint supports.

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      beta: the mixture weight of P, in ``(0, 1)``; traced values outside give NaN.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      JS, with the class axis removed, in ``result_type(dtype, float32)``.
      NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.js_divergence(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), base=2):.6f}")
      1.000000
    """
    weights = _checks.mixture_weights(beta)
    value = _pairwise(_terms.JENSEN_SHANNON, p, q, weights, axis, where, eps)
    return _checks.in_base(value, base)


@eager_jit
def js_distance(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r"""Jensen-Shannon distance :math:`\sqrt{JS(P, Q)}`, a metric.

    ``scipy.spatial.distance.jensenshannon(p, q, base)``, differentiable (the
    gradient at ``P = Q`` is 0, a subgradient).

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      the JS distance, with the class axis removed, in ``result_type(dtype, float32)``.
      NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.js_distance(jnp.array([1.0, 2.0, 3.0]), jnp.array([3.0, 2.0, 1.0])):.6f}")
      0.295310
    """
    value = _pairwise(_terms.JENSEN_SHANNON, p, q, (0.5, 0.5), axis, where, eps)
    return safe_sqrt(_checks.in_base(value, base))


@eager_jit
def total_variation(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
) -> Array:
    r"""Total variation :math:`\tfrac12 \sum_i |P_i - Q_i|` of normalised ``p`` and ``q``, in ``[0, 1]``.

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).

    Returns:
      TV, with the class axis removed, in ``result_type(dtype, float32)``.
      NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.total_variation(jnp.array([1, 1]), jnp.array([1.0, 3.0])):.6f}")
      0.250000
    """
    return _pairwise(_terms.TOTAL_VARIATION, p, q, (), axis, where, eps)


@eager_jit
def hellinger_distance(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    squared: bool = False,
) -> Array:
    r"""Hellinger distance :math:`\sqrt{\tfrac12 \sum_i (\sqrt{P_i} - \sqrt{Q_i})^2}`, in ``[0, 1]``.

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      squared: return :math:`H^2 = 1 - \sum_i \sqrt{P_i Q_i}` instead.

    Returns:
      H (or H^2), with the class axis removed, in ``result_type(dtype, float32)``.
      NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.hellinger_distance(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]), squared=True):.6f}")
      0.292893
    """
    h2 = _pairwise(_terms.HELLINGER, p, q, (), axis, where, eps)
    return h2 if squared else safe_sqrt(h2)


@eager_jit
def renyi_divergence(
    p: ArrayLike,
    q: ArrayLike,
    alpha: float,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    eps: float = 0.0,
    base: Optional[float] = None,
) -> Array:
    r"""Renyi divergence of order ``alpha``, see :func:`jaxdiv.renyi_divergence`.

    .. math::
      D_\alpha(P \| Q) = \frac{1}{\alpha - 1} \log \sum_i P_i^\alpha Q_i^{1 - \alpha},

    KL at :math:`\alpha = 1` (continuous there).

    Args:
      p: the reference P, ``[..., C, ...]``: probabilities, a histogram or counts
        (any non-negative numbers, integers included), normalised along ``axis``.
      q: the model Q, the same kind of array; broadcasts against ``p``.
      alpha: the order, in ``(0, inf)``; traced values outside give NaN.
      axis: the class axis (of the broadcast shape).
      where: optional boolean mask broadcastable to the inputs; False removes a
        class from both.
      eps: pseudo-count added to every unmasked class before normalising
        (additive smoothing; in counts for counts, in mass for probabilities).
      base: logarithm base of the result (``2`` for bits); nats by default.

    Returns:
      D_alpha, with the class axis removed, in ``result_type(dtype, float32)``.
      ``+inf`` where P has mass Q lacks (for ``alpha < 1``: where the supports
      are disjoint); NaN in rows holding a negative, NaN or ``+inf`` entry.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import probs
      >>> print(f"{probs.renyi_divergence(jnp.array([1e8, 1, 1]), jnp.array([1, 1, 1e8]), 0.5):.2f}")
      17.03
    """
    alpha = _checks.scalar_parameter(alpha, "alpha", 0.0, jnp.inf, open_low=True, open_high=True)
    x, y = _checks.probabilities((p, q), ("p", "q"), axis=axis, where=where, eps=eps)
    alpha = jnp.asarray(alpha, x.dtype)
    value = divergence(PROBS, _terms.RENYI, x, y, (alpha,))
    return _checks.in_base(value, base)
