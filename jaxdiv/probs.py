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
from jaxdiv._numerics import log_normalised, safe_sqrt
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

    ``scipy.stats.entropy(p, q, base=base, axis=axis)``, differentiable.
    ``+inf`` where ``P_i > 0 = Q_i`` (use ``eps`` to smooth).
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
    r""":math:`H(P, Q) = -\sum_i P_i \log Q_i` of normalised ``p`` and ``q``."""
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

    ``scipy.spatial.distance.jensenshannon(p, q, base) ** 2`` at ``beta=0.5``.
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
    """``scipy.spatial.distance.jensenshannon(p, q, base)``: the square root of JS."""
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
    r"""Total variation :math:`\tfrac12 \sum_i |P_i - Q_i|` of normalised ``p`` and ``q``, in ``[0, 1]``."""
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
    r"""Hellinger distance :math:`\sqrt{\tfrac12 \sum_i (\sqrt{P_i} - \sqrt{Q_i})^2}`, in ``[0, 1]``."""
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
    r"""Renyi divergence of order ``alpha`` in ``(0, inf)``, see :func:`jaxdiv.renyi_divergence`."""
    alpha = _checks.scalar_parameter(alpha, "alpha", 0.0, jnp.inf, open_low=True, open_high=True)
    x, y = _checks.probabilities((p, q), ("p", "q"), axis=axis, where=where, eps=eps)
    alpha = jnp.asarray(alpha, x.dtype)
    total = divergence(PROBS, _terms.RENYI, x, y, (alpha,))
    value = _terms.renyi_from_total(total, lambda: log_normalised(x), lambda: log_normalised(y), alpha)
    return _checks.in_base(value, base)
