r"""Multiple testing over features and windows, and one combined p-value for a dataset.

``adjust`` returns adjusted p-values (compare them with :math:`\alpha`), as
``statsmodels.stats.multitest.multipletests`` does, over all entries of the
array (every feature in every window is one test):

- ``"bonferroni"``: :math:`\min(1, m p)`; family-wise error :math:`\le \alpha`.
- ``"holm"``: step-down Bonferroni; family-wise error :math:`\le \alpha`, more power.
- ``"bh"``: Benjamini-Hochberg step-up; false discovery rate :math:`\le \alpha`
  for independent or positively dependent tests.
- ``"by"``: Benjamini-Yekutieli; false discovery rate :math:`\le \alpha` under
  any dependence (BH times :math:`\sum_{i \le m} 1/i`).
- ``"none"``: unchanged.

``combine`` gives one p-value for "some feature drifted" from independent
(``"fisher"``: :math:`-2 \sum \log p \sim \chi^2_{2m}`) or arbitrarily
dependent (``"cauchy"``, Liu & Xie 2020: the mean of
:math:`\tan((1/2 - p)\pi)` is standard Cauchy) p-values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiv.drift._pvalues import chi2_sf

CORRECTIONS = ("holm", "bonferroni", "bh", "by", "none")
COMBINATIONS = ("cauchy", "fisher")


def adjust(p, method: str = "holm"):
    """Adjusted p-values for multiple testing over every entry of ``p``.

    Compare the result with :math:`\alpha`; the procedures are listed in the
    module docstring (Holm, Bonferroni, Benjamini-Hochberg / -Yekutieli).

    Args:
      p: p-values, any shape (every entry is one test: features x windows).
      method: one of :data:`CORRECTIONS`.

    Returns:
      The adjusted p-values, the shape of ``p``, each in ``[p, 1]``.

    Example:
      >>> from jaxdiv import drift
      >>> print(drift.adjust([0.01, 0.04, 0.03], "holm"))  # 3 p, max(2 p, ..), ..
      [0.03 0.06 0.06]
      >>> print(drift.adjust([0.01, 0.04, 0.03], "bh"))    # min over larger of m p / rank
      [0.03 0.04 0.04]
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}.")
    return _adjust(jnp.asarray(p), method)


@functools.partial(jax.jit, static_argnums=1)
def _adjust(p, method):
    if method == "none" or p.size == 0:
        return p
    flat = p.reshape(-1)
    m = flat.size
    if method == "bonferroni":
        return jnp.minimum(1.0, m * p)
    order = jnp.argsort(flat)
    sorted_p = flat[order]
    rank = jnp.arange(1, m + 1, dtype=p.dtype)
    if method == "holm":
        # Step down: the i-th smallest is rejected only if all smaller ones are.
        adjusted = jnp.minimum(1.0, jax.lax.cummax((m - rank + 1) * sorted_p))
    else:
        factor = jnp.sum(1.0 / rank) if method == "by" else 1.0
        # Step up: the i-th smallest is rejected if any larger one is.
        adjusted = jnp.minimum(1.0, jax.lax.cummin(sorted_p * m * factor / rank, reverse=True))
    return jnp.empty_like(flat).at[order].set(adjusted).reshape(p.shape)


def combine(p, method: str = "cauchy", axis=None):
    r"""One p-value for "some null is false", from many.

    ``"cauchy"`` (Liu & Xie 2020): :math:`\tfrac12 - \arctan(\bar t)/\pi` with
    :math:`\bar t` the mean of :math:`\tan((\tfrac12 - p_i)\pi)`, valid under any
    dependence; ``"fisher"``: :math:`-2 \sum_i \log p_i \sim \chi^2_{2m}`, for
    independent p-values.

    Args:
      p: p-values, any shape.
      method: ``"cauchy"`` or ``"fisher"``.
      axis: the axis to combine over (static); ``None``: all entries.

    Returns:
      The combined p-value(s), never 0.

    Example:
      >>> from jaxdiv import drift
      >>> print(f"{drift.combine([0.05, 0.05]):.4f}")       # equal p-values: unchanged
      0.0500
      >>> print(f"{drift.combine([0.05, 0.05], 'fisher'):.5f}")  # chi2_4 tail at 11.98
      0.01747
    """
    if method not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {method!r}.")
    return _combine(jnp.asarray(p), method, axis)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _combine(p, method, axis):
    p = jnp.clip(jnp.asarray(p), jnp.finfo(jnp.result_type(p, jnp.float32)).tiny, 1.0)
    m = p.size if axis is None else p.shape[axis]
    if method == "fisher":
        combined = chi2_sf(-2.0 * jnp.log(p).sum(axis), jnp.asarray(2 * m))
        return jnp.maximum(combined, jnp.finfo(combined.dtype).tiny)     # never 0
    # tan((1/2 - p) pi) is 1 / tan(p pi) for p <= 1/2 and -1 / tan((1 - p) pi) above:
    # accurate near 0 and 1, where the first form overflows or takes the wrong sign
    # (float32 pi / 2 is above pi / 2). A p-value of 1 counts as 1 - 2^-24, so one
    # empty window does not hide the others (Liu & Xie's ACAT returns 1 there).
    low = p <= 0.5
    q = jnp.where(low, p, jnp.maximum(1.0 - p, 2.0**-24))
    t = jnp.mean(jnp.where(low, 1.0, -1.0) / jnp.tan(q * jnp.pi), axis)
    # P(C > t) for a standard Cauchy C; for large t, 1 / (pi t) keeps relative accuracy.
    combined = jnp.where(t > 1e8, 1.0 / (jnp.pi * t), 0.5 - jnp.arctan(t) / jnp.pi)
    return jnp.maximum(combined, jnp.finfo(combined.dtype).tiny)     # never 0
