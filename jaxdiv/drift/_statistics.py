r"""Drift statistics of a current histogram against a reference one, from counts.

``a`` are the reference counts and ``b`` the current ones, ``[..., B]`` with the
bins of :mod:`jaxdiv.drift._binning`; ``bins_in`` marks the bins that take part
(a feature's own bins, and its optional bins when either side has values
there). Divergences go through :mod:`jaxdiv.probs` with a symmetric
pseudo-count ``eps`` added to every bin of both sides (default ``0.5``, the
Jeffreys / Krichevsky-Trofimov prior): an empty bin never gives ``inf`` or NaN,
and no floor such as ``1e-4`` distorts a small value. The tests (``chi2``,
``g``) and the distances of ordered bins (``ks``, ``wasserstein``) use the raw
counts. A side with no rows gives 0 for every statistic; a negative or NaN
count makes the statistic NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiv import probs
from jaxdiv._numerics import two_product

# statistic -> whether it uses the pseudo-count
STATISTICS = {
    "kl": True,             # KL(current || reference)
    "reverse_kl": True,     # KL(reference || current)
    "psi": True,            # population stability index = KL + reverse KL
    "js": True,             # Jensen-Shannon divergence (nats, <= log 2)
    "js_distance": True,    # its square root
    "hellinger": True,
    "tv": True,             # total variation
    "chi2": False,          # Pearson's chi-squared test of homogeneity
    "g": False,             # the likelihood-ratio (G) test of homogeneity
    "ks": False,            # Kolmogorov-Smirnov over the ordered bins
    "wasserstein": False,   # Wasserstein-1 over the ordered bins, in the feature's units
}


def cross_difference(a, n_b, b, n_a):
    """``a * n_b - b * n_a`` to a few ulps, however close the two products are.

    The numerator of :math:`P_i - Q_i` for counts; formed from proportions it
    would lose every digit at small drift.
    """
    p1, e1 = two_product(a, n_b)
    p2, e2 = two_product(b, n_a)
    return (p1 - p2) + (e1 - e2)


def _pearson(a, b, n_a, n_b, bins_in):
    d = cross_difference(a, n_b[..., None], b, n_a[..., None])
    pooled = a + b
    terms = jnp.where(bins_in & (pooled > 0), d * d / jnp.where(pooled > 0, pooled, 1.0), 0.0)
    return terms.sum(-1) / (n_a * n_b)


def _g(a, b, n_a, n_b, bins_in):
    # G = 2 sum O log(O / E) = 2 (n_a KL(A || M) + n_b KL(B || M)), M the pooled histogram.
    pooled = a + b
    return 2.0 * (n_a * probs.kl_divergence(a, pooled, where=bins_in)
                  + n_b * probs.kl_divergence(b, pooled, where=bins_in))


def _cumulative_gaps(a, b, own):
    """``|F_A - F_B|`` at each bin's upper end, over the feature's own bins."""
    a = jnp.where(own, a, 0.0)
    b = jnp.where(own, b, 0.0)
    ca, cb = jnp.cumsum(a, -1), jnp.cumsum(b, -1)
    na, nb = ca[..., -1:], cb[..., -1:]
    empty = (na == 0) | (nb == 0)
    gap = jnp.abs(cross_difference(ca, nb, cb, na)) / jnp.where(empty, 1.0, na * nb)
    return jnp.where(empty | ~own, 0.0, gap)


def statistic(name, a, b, bins_in=None, *, own=None, ordered=True, centres=None, eps=0.5):
    """One statistic of reference counts ``a`` and current counts ``b``, ``[..., B] -> [...]``.

    Args:
      name: one of :data:`STATISTICS`.
      a, b: counts (or any non-negative weights) over the same bins.
      bins_in: the bins taking part (default all).
      own: the ordered bins for ``ks`` and ``wasserstein`` (default ``bins_in``).
      ordered: whether the bins are ordered; if not, ``ks`` and ``wasserstein``
        are the total variation.
      centres: ``[..., B]`` bin positions for ``wasserstein`` (default 0, 1, 2, ...).
      eps: the pseudo-count of the divergences.

    Returns:
      ``[...]`` float32 values; ``"kl"`` is KL(current || reference). NaN for
      negative or non-finite counts.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import drift
      >>> a = jnp.array([100.0, 250.0, 0.0, 50.0])
      >>> b = jnp.array([80.0, 260.0, 0.0, 60.0])
      >>> print(f"{float(drift.statistic('psi', a, b)):.6f}")
      0.016508
      >>> print(f"{float(drift.statistic('chi2', a, b)):.6f}")   # scipy.stats.chi2_contingency
      3.327392
    """
    a, b = jnp.asarray(a, jnp.result_type(a, jnp.float32)), jnp.asarray(b, jnp.result_type(b, jnp.float32))
    bins_in = jnp.ones(a.shape, bool) if bins_in is None else bins_in
    own = bins_in if own is None else own
    if centres is None:
        centres = jnp.arange(a.shape[-1], dtype=a.dtype)
    a = jnp.where(bins_in, a, 0.0)
    b = jnp.where(bins_in, b, 0.0)
    n_a, n_b = a.sum(-1), b.sum(-1)
    empty = (n_a == 0) | (n_b == 0)
    smooth = dict(where=bins_in, eps=eps)
    if name == "kl":
        value = probs.kl_divergence(b, a, **smooth)
    elif name == "reverse_kl":
        value = probs.kl_divergence(a, b, **smooth)
    elif name == "psi":
        value = probs.kl_divergence(b, a, **smooth) + probs.kl_divergence(a, b, **smooth)
    elif name == "js":
        value = probs.js_divergence(a, b, **smooth)
    elif name == "js_distance":
        value = probs.js_distance(a, b, **smooth)
    elif name == "hellinger":
        value = probs.hellinger_distance(a, b, **smooth)
    elif name == "tv":
        value = probs.total_variation(a, b, **smooth)
    elif name == "chi2":
        value = _pearson(a, b, jnp.where(empty, 1.0, n_a), jnp.where(empty, 1.0, n_b), bins_in)
    elif name == "g":
        value = _g(a, b, n_a, n_b, bins_in)
    elif name in ("ks", "wasserstein"):
        gaps = _cumulative_gaps(a, b, own)
        # A side with all its values outside the ordered bins (unseen values only)
        # has no distribution function there: compare all bins, as for levels.
        ordered = ordered & jnp.all(jnp.where(own, a, 0.0).sum(-1, keepdims=True) > 0, -1) \
            & jnp.all(jnp.where(own, b, 0.0).sum(-1, keepdims=True) > 0, -1)
        if name == "ks":
            ordered_value = gaps.max(-1)
        else:
            widths = jnp.diff(centres, axis=-1, append=centres[..., -1:])
            ordered_value = (gaps * widths).sum(-1)
        # Unordered levels: the supremum over all sets of levels (KS) and W1 under
        # the discrete metric are both the total variation.
        value = jnp.where(ordered, ordered_value, probs.total_variation(a, b, where=bins_in))
    else:
        raise ValueError(f"unknown statistic {name!r}; expected one of {sorted(STATISTICS)}.")
    # A negative or NaN count is invalid input: NaN, never a plausible number.
    invalid = jnp.any(~(a >= 0) | ~(b >= 0), -1)
    return jnp.where(invalid, jnp.nan, jnp.where(empty, 0.0, value))


def check_names(names) -> tuple:
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in STATISTICS]
    if unknown or not names:
        raise ValueError(f"unknown statistics {unknown}; expected some of {sorted(STATISTICS)}.")
    return names


def bins_taking_part(own, optional, a, b):
    """``[..., B]``: own bins always; optional bins when either side has values there."""
    return (own & ~optional) | (optional & ((a > 0) | (b > 0)))
