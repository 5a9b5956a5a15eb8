r"""p-values that know the sample sizes: asymptotic laws, and a bootstrap on counts.

Asymptotic laws, with :math:`k` the bins taking part minus one and
:math:`n_e = n_a n_b / (n_a + n_b)`:

- ``chi2`` (Pearson) and ``g`` (:math:`G = 2 N \, JS_w`, the sample-size-weighted
  Jensen-Shannon divergence) are :math:`\chi^2_k` under no drift;
- the divergences are locally :math:`\chi^2` too: :math:`2 n_e KL`,
  :math:`n_e PSI`, :math:`8 n_e JS` and :math:`8 n_e H^2` each tend to
  :math:`\chi^2_k` (all are :math:`\sum_i (P_i - Q_i)^2 / Q_i` to second order);
- ``ks`` follows Kolmogorov's law at :math:`\sqrt{n_e} D` (conservative for
  binned data).

``tv`` and ``wasserstein`` have no such law: use the bootstrap. The bootstrap
draws both histograms from the pooled one (multinomial, the null of one common
distribution), so a resample costs O(bins) whatever the rows, and reports
:math:`(1 + \#\{T^* \ge T\}) / (1 + R)`: never 0. An asymptotic p-value
below the smallest normal number of the dtype (``1.2e-38`` in float32) is
reported as that number, never 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaincc

from jaxdiv.drift import _statistics

# statistic -> factor c such that c * n_e * value ~ chi2_k (None: use the raw value)
_CHI2_SCALE = {
    "chi2": None, "g": None, "kl": 2.0, "reverse_kl": 2.0, "psi": 1.0,
    "js": 8.0, "hellinger_squared": 8.0,
}
ASYMPTOTIC = ("chi2", "g", "kl", "reverse_kl", "psi", "js", "js_distance", "hellinger", "ks")
METHODS = ("asymptotic", "bootstrap")


def chi2_sf(x, df):
    """:math:`P(\\chi^2_{df} > x)`; 1 where ``df == 0`` (nothing to test)."""
    safe_df = jnp.maximum(df, 1).astype(x.dtype)
    return jnp.where(df > 0, gammaincc(safe_df / 2, jnp.maximum(x, 0.0) / 2), 1.0)


def kolmogorov_sf(t):
    """:math:`P(K > t)` for Kolmogorov's distribution, by whichever series converges fast."""
    t = jnp.maximum(t, 1e-3)
    j = jnp.arange(1, 41, dtype=t.dtype)
    alternating = 2 * jnp.sum((-1.0) ** (j - 1) * jnp.exp(-2 * j**2 * t[..., None] ** 2), -1)
    odd = 2 * j - 1
    theta = jnp.sqrt(2 * jnp.pi) / t * jnp.sum(jnp.exp(-(odd**2) * jnp.pi**2 / (8 * t[..., None] ** 2)), -1)
    return jnp.clip(jnp.where(t < 1.0, 1.0 - theta, alternating), 0.0, 1.0)


def asymptotic(name, value, n_a, n_b, df):
    """The asymptotic p-value of a statistic, knowing both sample sizes (laws in the module docstring).

    Args:
      name: the statistic: ``"chi2"``, ``"g"``, ``"kl"``, ``"reverse_kl"``,
        ``"psi"``, ``"js"``, ``"js_distance"``, ``"hellinger"`` or ``"ks"``.
      value: its value ``[...]``, as :func:`statistic` returns it.
      n_a, n_b: rows on each side ``[...]``.
      df: degrees of freedom ``[...]``: the bins taking part minus one.

    Returns:
      p-values ``[...]``; 1 where a side is empty or the value is not positive;
      never below the dtype's smallest normal number.

    Example:
      >>> from jaxdiv import drift
      >>> print(f"{drift.asymptotic_p_value('chi2', 3.841459, 100.0, 100.0, 1.0):.4f}")
      0.0500
    """
    if name not in ASYMPTOTIC:
        raise ValueError(
            f"{name!r} has no asymptotic law; use method='bootstrap' or a test among {ASYMPTOTIC}.")
    dtype = jnp.result_type(value, n_a, n_b, jnp.float32)
    value, n_a, n_b, df = (jnp.asarray(v, dtype) for v in (value, n_a, n_b, df))
    n_e = n_a * n_b / jnp.maximum(n_a + n_b, 1.0)
    if name == "ks":
        p = kolmogorov_sf(jnp.sqrt(n_e) * value)
    else:
        if name in ("js_distance", "hellinger"):
            # Distances: their squares follow the law.
            name, value = ("js" if name == "js_distance" else "hellinger_squared"), value**2
        scale = _CHI2_SCALE[name]
        p = chi2_sf(value if scale is None else scale * n_e * value, df)
    # Never 0: a p-value below the dtype's smallest normal number is reported as that number.
    p = jnp.maximum(p, jnp.finfo(p.dtype).tiny)
    return jnp.where((n_a == 0) | (n_b == 0) | (value <= 0), 1.0, p)


@functools.partial(jax.jit, static_argnames=("name", "resamples", "chunk"))
def bootstrap(key, name, a, b, bins_in, own, ordered, centres, eps, *, resamples=999, chunk=100):
    r"""Bootstrap p-values of statistic ``name`` for every ``[..., B]`` histogram pair.

    Both histograms are redrawn from their pooled counts (multinomial, the null
    of one common distribution), so each resample costs O(B).

    Args:
      key: a ``jax.random`` key.
      name: any of :data:`STATISTICS` (static).
      a, b: reference and current counts ``[..., B]``.
      bins_in, own, ordered, centres, eps: as for :func:`statistic`
        (``bins_in`` boolean ``[..., B]``; the others may be ``None``/defaults).
      resamples: the number of resamples :math:`R` (static).
      chunk: resamples drawn at once (static; memory).

    Returns:
      :math:`(1 + \#\{T^* \ge T\}) / (1 + R)` per pair ``[...]``: never 0; 1
      where a side is empty; NaN for invalid counts.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv import drift
      >>> a, b = jnp.array([50.0, 50.0]), jnp.array([90.0, 10.0])
      >>> p = drift.bootstrap_p_value(jax.random.key(0), "tv", a, b, jnp.array([True, True]),
      ...                             None, True, None, 0.5, resamples=199)
      >>> print(f"{p:.3f}")  # no resample reaches TV = 0.4: 1 / 200
      0.005
    """
    stat = functools.partial(_statistics.statistic, name, own=own, ordered=ordered,
                             centres=centres, eps=eps)
    a = jnp.where(bins_in, a, 0.0)
    b = jnp.where(bins_in, b, 0.0)
    observed = stat(a, b, bins_in)
    n_a, n_b = a.sum(-1), b.sum(-1)
    pooled = (a + b) / jnp.maximum(n_a + n_b, 1.0)[..., None]
    steps = -(-resamples // chunk)

    def exceed(k):
        ka, kb = jax.random.split(jax.random.fold_in(key, k))
        shape = (chunk,) + a.shape
        a_star = jax.random.multinomial(ka, jnp.round(n_a), pooled, shape=shape)
        b_star = jax.random.multinomial(kb, jnp.round(n_b), pooled, shape=shape)
        used = (k * chunk + jnp.arange(chunk)) < resamples
        hits = stat(a_star, b_star, bins_in) >= observed
        return jnp.sum(hits & used.reshape((chunk,) + (1,) * observed.ndim), 0)

    count = jax.lax.map(exceed, jnp.arange(steps)).sum(0)
    p = (1.0 + count) / (1.0 + resamples)
    p = jnp.where(jnp.isnan(observed), jnp.nan, p)       # invalid counts: NaN, not 1 / (R + 1)
    return jnp.where((n_a == 0) | (n_b == 0), 1.0, p)
