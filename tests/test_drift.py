"""jaxdiv.drift against independent float64 references (SciPy, NumPy loops) and the null law."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats as ss

from jaxdiv import drift
from jaxdiv.drift import _stream

ROOT = Path(__file__).resolve().parents[1]
DIVERGENCES = ("kl", "reverse_kl", "psi", "js", "js_distance", "hellinger", "tv")


def _smoothed(a, b, eps):
    P = (a + eps) / (a + eps).sum()
    Q = (b + eps) / (b + eps).sum()
    return P, Q


def reference_statistic(name, a, b, centres, eps=0.5):
    """float64 references written from the definitions (SciPy where it has them)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if name in DIVERGENCES:
        P, Q = _smoothed(a, b, eps)     # P reference, Q current
        return {
            "kl": lambda: ss.entropy(Q, P),
            "reverse_kl": lambda: ss.entropy(P, Q),
            "psi": lambda: np.sum((Q - P) * np.log(Q / P)),
            "js": lambda: ssd.jensenshannon(P, Q) ** 2,
            "js_distance": lambda: ssd.jensenshannon(P, Q),
            "hellinger": lambda: np.sqrt(0.5 * np.sum((np.sqrt(P) - np.sqrt(Q)) ** 2)),
            "tv": lambda: 0.5 * np.abs(P - Q).sum(),
        }[name]()
    keep = (a + b) > 0
    if name in ("chi2", "g"):
        table = np.array([a[keep], b[keep]])
        lam = "log-likelihood" if name == "g" else None
        return ss.chi2_contingency(table, correction=False, lambda_=lam)[0]
    if name == "ks":
        return np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum()))
    return ss.wasserstein_distance(centres, centres, a, b)


def _counts(rng, shape, zeros=True):
    c = rng.integers(0, 400, size=shape).astype(np.float64)
    if zeros:
        c[..., 2] = 0.0          # a bin empty on both sides
        c[0, 4] = 0.0            # empty on one side only
    return c


@pytest.mark.parametrize("name", sorted(drift.STATISTICS))
def test_statistics_match_scipy_in_float64(x64, rng, name):
    a, b = _counts(rng, (3, 7)), _counts(rng, (3, 7))
    centres = np.cumsum(rng.uniform(0.5, 2.0, 7))
    got = np.asarray(drift.statistic(name, jnp.asarray(a), jnp.asarray(b), centres=jnp.asarray(centres)))
    want = [reference_statistic(name, a[i], b[i], centres) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def mp_statistic(name, a, b, centres, eps=0.5):
    """40-digit references: at tiny drift float64 formulas (SciPy's G among them) lose digits."""
    import mpmath as mp

    mp.mp.dps = 40
    a = [mp.mpf(int(v)) for v in a]
    b = [mp.mpf(int(v)) for v in b]
    na, nb = sum(a), sum(b)
    P = [(v + mp.mpf(eps)) / (na + len(a) * mp.mpf(eps)) for v in a]
    Q = [(v + mp.mpf(eps)) / (nb + len(b) * mp.mpf(eps)) for v in b]
    kl = lambda x, y: sum(u * mp.log(u / v) for u, v in zip(x, y))
    M = [(u + v) / 2 for u, v in zip(P, Q)]
    cum = lambda x, n: [sum(x[: i + 1]) / n for i in range(len(x))]
    gaps = [abs(u - v) for u, v in zip(cum(a, na), cum(b, nb))]
    pooled = [(u + v) / (na + nb) for u, v in zip(a, b)]
    value = {
        "kl": lambda: kl(Q, P), "reverse_kl": lambda: kl(P, Q), "psi": lambda: kl(Q, P) + kl(P, Q),
        "js": lambda: (kl(P, M) + kl(Q, M)) / 2, "js_distance": lambda: mp.sqrt((kl(P, M) + kl(Q, M)) / 2),
        "hellinger": lambda: mp.sqrt(sum((mp.sqrt(u) - mp.sqrt(v)) ** 2 for u, v in zip(P, Q)) / 2),
        "tv": lambda: sum(abs(u - v) for u, v in zip(P, Q)) / 2,
        "chi2": lambda: sum((u - n * m) ** 2 / (n * m) for x, n in ((a, na), (b, nb)) for u, m in zip(x, pooled)),
        "g": lambda: 2 * sum(u * mp.log(u / (n * m)) for x, n in ((a, na), (b, nb)) for u, m in zip(x, pooled)),
        "ks": lambda: max(gaps),
        "wasserstein": lambda: sum(g * (c1 - c0) for g, c0, c1 in zip(gaps, centres[:-1], centres[1:])),
    }[name]()
    return float(value)


@pytest.mark.parametrize("name", sorted(drift.STATISTICS))
def test_float32_keeps_tiny_drift(x64, name):
    # Two histograms of a million rows that differ by one row moved between bins:
    # a naive sum(p * log(p / q)) in float32 is off by percents here.
    a = np.array([250_000.0, 250_000.0, 300_000.0, 200_000.0])
    b = a + np.array([1.0, 0.0, -1.0, 0.0])
    centres = np.array([0.0, 1.0, 2.0, 3.0])
    want = mp_statistic(name, a, b, centres)
    got = drift.statistic(name, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                          centres=jnp.asarray(centres, jnp.float32))
    assert got.dtype == jnp.float32
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_empty_bins_never_give_inf_or_nan():
    a = jnp.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = jnp.array([[0.0, 0.0, 7.0], [3.0, 0.0, 0.0]])
    for name in drift.STATISTICS:
        v = np.asarray(drift.statistic(name, a, b))
        assert np.all(np.isfinite(v)), name
        assert v[1] == 0.0, name            # an empty side: nothing to compare


def test_invalid_counts_give_nan_never_a_number():
    b = jnp.array([3.0, 4.0, 2.0])
    for bad in ([-1.0, 5.0, 3.0], [np.nan, 5.0, 3.0], [np.inf, 5.0, 3.0]):
        for name in drift.STATISTICS:
            assert np.isnan(float(drift.statistic(name, jnp.array(bad), b))), (name, bad)
            assert np.isnan(float(drift.statistic(name, b, jnp.array(bad)))), (name, bad)
    ones = jnp.ones((1, 3), bool)
    p = drift.bootstrap_p_value(jax.random.key(0), "tv", jnp.array([[-1.0, 5.0, 3.0]]), b[None], ones, ones,
                                True, jnp.arange(3.0), 0.5, resamples=99)
    assert np.isnan(float(p[0]))


def test_chi2_and_g_p_values_match_scipy(x64, rng):
    a, b = _counts(rng, (4, 6), zeros=False), _counts(rng, (4, 6), zeros=False)
    b[1] = a[1] * 2                         # no drift at all in row 1
    n_a, n_b, df = a.sum(-1), b.sum(-1), np.full(4, 5)
    for name, lam in (("chi2", None), ("g", "log-likelihood")):
        value = drift.statistic(name, a, b)
        p = drift.asymptotic_p_value(name, value, n_a, n_b, df)
        want = [ss.chi2_contingency(np.array([a[i], b[i]]), correction=False, lambda_=lam)[1]
                for i in range(4)]
        np.testing.assert_allclose(np.asarray(p), want, rtol=1e-10)


def test_ks_law_is_kolmogorovs(x64):
    t = np.array([0.2, 0.5, 0.9, 1.0, 1.3, 2.0, 3.0])
    n = np.full(t.shape, 1e12)   # n_e = n / 2
    p = drift.asymptotic_p_value("ks", t / np.sqrt(n / 2), n, n, np.full(t.shape, 9))
    np.testing.assert_allclose(np.asarray(p), ss.kstwobign.sf(t), rtol=1e-9, atol=1e-15)


def test_bootstrap_p_values_are_never_zero_and_agree_with_the_law(rng):
    a = jnp.asarray(rng.multinomial(20_000, np.full(8, 1 / 8), size=6), jnp.float32)
    b = jnp.asarray(rng.multinomial(5_000, np.full(8, 1 / 8), size=6), jnp.float32)
    b = b.at[0].set(jnp.array([900.0, 600, 600, 600, 600, 600, 600, 500]))   # strong drift
    ones = jnp.ones(a.shape, bool)
    centres = jnp.arange(8.0)
    p_boot = drift.bootstrap_p_value(jax.random.key(1), "chi2", a, b, ones, ones, True, centres, 0.5,
                                     resamples=499)
    assert float(p_boot[0]) == pytest.approx(1 / 500)           # (0 + 1) / (R + 1), never 0
    p_law = drift.asymptotic_p_value("chi2", drift.statistic("chi2", a, b), a.sum(-1), b.sum(-1),
                                     jnp.full(6, 7))
    np.testing.assert_allclose(np.asarray(p_boot[1:]), np.asarray(p_law[1:]), atol=0.07)


@pytest.mark.parametrize("n", [30, 1000])
def test_false_alarms_match_alpha(rng, n):
    # TESTING.md row 22: with no drift, a share alpha of windows is flagged,
    # within three Monte-Carlo standard errors, small and large windows alike.
    windows = 1500
    ref = {"x": rng.normal(size=50_000), "c": rng.choice(list("abcd"), 50_000, p=[.4, .3, .2, .1])}
    cur = {"x": rng.normal(size=n * windows), "c": rng.choice(list("abcd"), n * windows, p=[.4, .3, .2, .1])}
    report = drift.drift_report(ref, cur, window_size=n, correction="none", statistics=("js_distance",))
    flagged = report.columns["p_value"] < 0.05
    se = np.sqrt(0.05 * 0.95 / flagged.size)
    assert abs(flagged.mean() - 0.05) < 3 * se, flagged.mean()
    # Evidently's fixed 0.1 threshold on the divergence flags most small windows.
    if n == 30:
        assert np.mean(report.columns["js_distance"] > 0.1) > 0.2


def _reference_adjust(p, method):
    p = np.asarray(p, np.float64)
    m = p.size
    order = np.argsort(p)
    out = np.empty(m)
    if method == "bonferroni":
        return np.minimum(1, p * m)
    if method == "holm":
        running = 0.0
        for i, j in enumerate(order):
            running = max(running, (m - i) * p[j])
            out[j] = min(1.0, running)
        return out
    c = np.sum(1 / np.arange(1, m + 1)) if method == "by" else 1.0
    running = 1.0
    for i in range(m - 1, -1, -1):
        j = order[i]
        running = min(running, p[j] * m * c / (i + 1))
        out[j] = running
    return out


@pytest.mark.parametrize("method", ["bonferroni", "holm", "bh", "by"])
def test_corrections_match_their_definitions(x64, rng, method):
    p = rng.uniform(size=(5, 7)) ** 3
    np.testing.assert_allclose(np.asarray(drift.adjust(p, method)), _reference_adjust(p.ravel(), method).reshape(5, 7),
                               rtol=1e-12)


def test_combined_p_values(x64, rng):
    p = rng.uniform(size=12) ** 2
    fisher = ss.combine_pvalues(p, method="fisher").pvalue
    assert float(drift.combine(p, "fisher")) == pytest.approx(fisher, rel=1e-10)
    t = np.mean(np.tan((0.5 - p) * np.pi))
    assert float(drift.combine(p, "cauchy")) == pytest.approx(ss.cauchy.sf(t), rel=1e-10)
    tiny = np.array([1e-30, 0.5])
    assert 0 < float(drift.combine(tiny, "cauchy")) < 1e-29


def test_bins_are_fitted_on_the_reference(rng):
    x = rng.normal(size=10_000)
    bins = drift.fit_bins({"x": x, "k": rng.integers(0, 4, 10_000), "s": rng.choice(["u", "v"], 10_000)},
                          bins=5)
    assert bins.kinds == ("quantile", "values", "levels")
    np.testing.assert_allclose(bins.edges[0, :4], np.quantile(x, [.2, .4, .6, .8]), atol=1e-3)
    counts = np.asarray(drift.count(bins, {"x": x, "k": np.zeros(10_000), "s": np.array(["u"] * 10_000)}))
    assert counts.shape == (3, 1, bins.num_bins)
    # Values are compared in float32 (an edge is a reference value, so ties land alike).
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(counts[0, 0, :5], np.histogram(x32, [-np.inf, *bins.edges[0, :4], np.inf])[0])
    assert counts[1, 0, 0] == 10_000 and counts[2, 0, 0] == 10_000


def test_reference_counts_from_the_fit_equal_the_counting_kernel(rng):
    x = rng.normal(size=5000)
    x[::7] = np.nan
    x[3], x[5] = np.inf, -np.inf
    table = {"x": x, "w": np.round(x * 2), "k": rng.integers(0, 3, 5000).astype(float),
             "s": rng.choice(["u", "v", None], 5000).astype(object), "m": np.full(5000, np.nan)}
    for binning in ("quantile", "width"):
        bins = drift.fit_bins(table, binning=binning)
        np.testing.assert_array_equal(bins.reference_counts, np.asarray(drift.count(bins, table)[:, 0]))


def test_counts_of_windows_equal_numpy_histograms(rng):
    x = rng.normal(size=(3_001, 4)).astype(np.float32)
    x[rng.uniform(size=x.shape) < 0.05] = np.nan
    x[0, 0], x[1, 1] = np.inf, -np.inf
    bins = drift.fit_bins(x[:1000], bins=6)
    ranges = np.array([[0, 3001], [17, 40], [100, 2100], [2000, 3001], [5, 5]])
    counts = np.asarray(drift.count(bins, x, ranges))
    for j in range(4):
        edges = [-np.inf, *bins.edges[j, : bins.n_bins[j] - 1], np.inf]
        for w, (lo, hi) in enumerate(ranges):
            col = x[lo:hi, j]
            col = np.clip(col, np.finfo(np.float32).min, np.finfo(np.float32).max)
            want = np.histogram(col[~np.isnan(col)], edges)[0]
            np.testing.assert_array_equal(counts[j, w, : len(want)], want)
            assert counts[j, w, -1] == np.isnan(col).sum()
            assert counts[j, w].sum() == hi - lo


def test_unseen_levels_missing_values_and_degenerate_columns(rng):
    ref = {"plan": ["a", "b", None] * 100, "const": np.ones(300), "empty": np.full(300, np.nan),
           "mixed": [1, "1", 2.5] * 100, "few": rng.normal(size=300)}
    cur = {"plan": ["a", "c"] * 50, "const": np.ones(100), "empty": rng.normal(size=100),
           "mixed": ["1", 1, 2.5, "x"] * 25, "few": rng.normal(size=100)}
    report = drift.drift_report(ref, cur, bins=500, statistics=sorted(drift.STATISTICS))
    table = report.columns
    for name in drift.STATISTICS:
        assert np.all(np.isfinite(table[name])), name
    row = dict(zip(table["feature"], table["drift"]))
    assert row["plan"] and row["empty"] and not row["const"]
    assert report.bins.kinds[report.bins.columns.index("empty")] == "missing"
    # More bins than rows: one bin per distinct value at most.
    assert report.bins.n_bins[report.bins.columns.index("few")] <= 301


def test_bad_input_names_the_problem(rng):
    ref = {"a": rng.normal(size=100), "b": rng.normal(size=100)}
    with pytest.raises(ValueError, match=r"\['c'\].*not in the reference"):
        drift.drift_report(ref, {"a": rng.normal(size=10), "b": np.ones(10), "c": np.ones(10)})
    with pytest.raises(ValueError, match=r"\['b'\].*not in the data"):
        drift.drift_report(ref, {"a": rng.normal(size=10)})
    with pytest.raises(ValueError, match="non-numeric values.*'oops'"):
        drift.drift_report(ref, {"a": np.array([1.0, "oops"], dtype=object), "b": np.ones(2)})
    with pytest.raises(ValueError, match="row 2 .* before row 1"):
        drift.by_time(np.array([0.0, 5.0, 3.0]), 1.0)
    with pytest.raises(ValueError, match="no asymptotic law"):
        drift.drift_report(ref, ref, test="tv")
    with pytest.raises(ValueError, match="different lengths"):
        drift.drift_report({"a": np.ones(3), "b": np.ones(4)}, ref)
    with pytest.warns(UserWarning, match="99 resamples"):
        drift.drift_report(ref, ref, method="bootstrap", resamples=99)


def test_time_windows_and_empty_windows(rng):
    t = np.sort(rng.choice(np.arange(0, 10 * 3600, 7), 2000, replace=False)).astype(np.int64)
    t = np.concatenate([t[t < 3600], t[t >= 7200]])          # an hour with no rows
    t = np.repeat(t, 2)                                        # duplicated timestamps
    times = np.datetime64("2026-03-01T00:00", "s") + t.astype("timedelta64[s]")
    windows = drift.by_time(times, np.timedelta64(1, "h"))
    assert len(windows) == 10
    assert windows.ranges[1, 0] == windows.ranges[1, 1]        # the empty hour is kept
    sizes = np.diff(windows.ranges, axis=1).ravel()
    assert sizes.sum() == t.size
    ref = {"x": rng.normal(size=5000)}
    cur = {"time": times, "x": rng.normal(size=t.size)}
    report = drift.drift_report(ref, cur, time_column="time", period=np.timedelta64(1, "h"))
    assert report.columns["n_current"][1] == 0 and report.columns["p_value"][1] == 1.0
    assert report.columns["window"][0] == np.datetime64("2026-03-01T00:00:00")
    assert all(np.all(np.isfinite(np.asarray(v, float))) for k, v in report.columns.items()
               if k not in ("feature", "window"))


def test_sliding_windows_and_references(rng):
    w = drift.sliding(10, 4, 3)
    np.testing.assert_array_equal(w.ranges, [[0, 4], [3, 7], [6, 10]])
    np.testing.assert_array_equal(drift.tumbling(10, 4).ranges, [[0, 4], [4, 8], [8, 10]])
    counts = rng.integers(0, 50, size=(2, 6, 3)).astype(np.float32)
    ref = rng.integers(0, 50, size=(2, 3)).astype(np.float32)
    zeros = np.zeros_like(counts[:, 0])
    for mode, kw, want in [
        ("fixed", {}, lambda w: ref),
        ("previous", {}, lambda w: counts[:, w - 1] if w else zeros),
        ("rolling", {"k": 2}, lambda w: counts[:, max(w - 2, 0):w].sum(1)),
        ("expanding", {}, lambda w: counts[:, :w].sum(1)),
        ("decayed", {"half_life": 2.0},
         lambda w: sum(0.5 ** ((w - 1 - i) / 2.0) * counts[:, i] for i in range(w)) if w else zeros),
    ]:
        got = np.asarray(drift.references(counts, mode, ref, **kw))
        for i in range(6):
            np.testing.assert_allclose(got[:, i], want(i), rtol=1e-6, err_msg=mode)


def test_streaming_update_reads_numpy_batches_in_place_at_every_alignment(rng, monkeypatch):
    # A float32 NumPy batch whose start is not 64-byte aligned is counted through an
    # aligned view of its own memory (the copy cost more than the counting); every
    # offset must give the counts of an independent NumPy binning, NaN and +-inf included.
    assert _stream._in_place_parts(np.zeros((37, 20), np.float32)[:, 1:]) is None
    assert _stream._in_place_parts(np.zeros(37 * 20 + 1, np.float32)[1:].reshape(37, 20)) is None
    monkeypatch.setattr(_stream, "_IN_PLACE_BYTES", 0)   # taken from 1 MiB: here from any size
    columns = {f"f{j}": rng.normal(size=500) for j in range(20)}
    columns["f3"] = rng.choice([1.0, 2.0, 3.0], 500)            # few levels: fewer edges, +inf padding
    bins = drift.fit_bins(columns)
    monitor = drift.Monitor(bins, columns)
    edges = np.asarray(bins.edges)
    buffer = np.empty(40 * 20 + 32, np.float32)
    start = (-buffer.ctypes.data % 64) // 4
    for shift in range(16):
        x = buffer[start + shift: start + shift + 37 * 20].reshape(37, 20)
        x[...] = rng.normal(size=(37, 20)) * 1.5
        x[rng.random((37, 20)) < 0.1] = np.nan
        x[0, 0], x[-1, -1], x[5, 3], x[36, 19 - shift % 3] = np.inf, -np.inf, 2.0, np.inf
        parts = _stream._in_place_parts(x)
        assert (parts == ()) == (shift == 0)
        if parts:
            assert np.shares_memory(parts[0], x) and parts[0].ctypes.data % 64 == 0
        index = np.sum(np.minimum(x, np.finfo(np.float32).max)[:, :, None] >= edges[None], -1)
        want = np.zeros((20, bins.num_bins), np.float32)
        for j in range(20):
            np.add.at(want[j], index[~np.isnan(x[:, j]), j], 1)
            want[j, -1] = np.isnan(x[:, j]).sum()
        got = monitor.update(monitor.init(), x).current
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"offset {4 * shift} bytes")
        np.testing.assert_array_equal(np.asarray(monitor.update(monitor.init(), jnp.asarray(x)).current), want)
    # One row, no row, a view that is not contiguous: the plain path, same counts.
    for x in (buffer[start + 1: start + 21].reshape(1, 20), np.zeros((0, 20), np.float32),
              np.asarray(buffer[start + 1: start + 1 + 40 * 20].reshape(20, 40).T[::2])):
        assert _stream._in_place_parts(x) is None
        np.testing.assert_array_equal(np.asarray(monitor.update(monitor.init(), x).current),
                                      np.asarray(drift.count(bins, x)[:, 0]))


def test_streaming_update_is_done_with_a_numpy_batch_when_it_returns(rng):
    # JAX reads an aligned NumPy array in place, asynchronously: a caller refilling
    # its batch buffer right after update returned changed what was being counted
    # (NaN counted as missing in 1.6M of 2.9e8 values over 1500 updates).
    columns = {f"f{j}": rng.normal(size=1000) for j in range(300)}
    bins = drift.fit_bins(columns)
    monitor = drift.Monitor(bins, columns)
    for rows in (513, 2048):                  # under and over 1 MiB: copied, or read in place
        buffer = np.empty(rows * 300 + 16, np.float32)
        start = (-buffer.ctypes.data % 64) // 4
        x = buffer[start: start + rows * 300].reshape(rows, 300)   # aligned
        state = monitor.init()
        for _ in range(30):
            x[...] = rng.normal(size=(rows, 300))
            state = monitor.update(state, x)
            x[...] = np.nan                    # the caller reuses its buffer at once
        counts = np.asarray(state.current)
        assert counts[:, -1].sum() == 0 and (counts.sum(1) == 30 * rows).all()


def test_streaming_update_under_jit_counts_a_numpy_batch(rng, monkeypatch):
    # A traced state is no CPU buffer to read in place: the batch goes in as a
    # constant (no waiting on a tracer), and the counts are the eager ones.
    monkeypatch.setattr(_stream, "_IN_PLACE_BYTES", 0)
    columns = {f"f{j}": rng.normal(size=300) for j in range(20)}
    bins = drift.fit_bins(columns)
    monitor = drift.Monitor(bins, columns)
    buffer = np.empty(37 * 20 + 16, np.float32)
    x = buffer[1: 1 + 37 * 20].reshape(37, 20)          # not aligned: the in-place path eagerly
    x[...] = rng.normal(size=(37, 20))
    assert _stream._in_place_parts(x)
    got = jax.jit(lambda s: monitor.update(s, x))(monitor.init()).current
    np.testing.assert_array_equal(np.asarray(got), np.asarray(monitor.update(monitor.init(), x).current))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(drift.count(bins, x)[:, 0]))


def test_streaming_update_of_ever_changing_batch_sizes_compiles_a_bounded_number_of_programs(rng):
    # Each new row count was a compile (~0.1 s) per batch; the counts must stay
    # those of an independent NumPy binning of everything fed.
    columns = {f"f{j}": rng.normal(size=400) for j in range(6)}
    bins = drift.fit_bins(columns)
    monitor = drift.Monitor(bins, columns)
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kw.get("fun_name"))

    state, fed = monitor.init(), []
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for rows in rng.permutation(np.arange(1, 301))[:60]:
            x = rng.normal(size=(rows, 6)).astype(np.float32)
            x[rng.random(x.shape) < 0.05] = np.nan
            state = monitor.update(state, x)
            fed.append(x)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    seen = len(compiles)
    # 8 whole row counts and the 9 powers of two up to 256, one program each.
    assert seen <= 8 + 9, compiles
    np.testing.assert_array_equal(np.asarray(state.current), np.asarray(drift.count(bins, np.concatenate(fed))[:, 0]))


def test_chunk_thresholds_are_out_of_sample(rng):
    ref = {"x": rng.normal(size=6000)}
    bins = drift.fit_bins(ref)
    th = drift.chunk_thresholds(bins, ref, 500, statistic="js")
    # In sample (each chunk against counts that include it) the scores would be smaller.
    counts = np.asarray(drift.count(bins, ref, drift.tumbling(6000, 500).ranges), np.float32)[0]
    own = jnp.asarray(bins.own[0])
    inside = [float(drift.statistic("js", counts.sum(0), c, own)) for c in counts]
    rest = [float(drift.statistic("js", counts.sum(0) - c, c, own)) for c in counts]
    assert th[0] == pytest.approx(np.mean(rest) + 3 * np.std(rest, ddof=1), rel=1e-5)
    assert np.mean(rest) > np.mean(inside)


def test_streaming_counts_merge_and_save(rng, tmp_path):
    ref = {"a": rng.normal(size=4000), "b": rng.choice(["x", "y", "z"], 4000)}
    bins = drift.fit_bins(ref)
    monitor = drift.Monitor(bins, ref, history=3)
    data = bins.encode({"a": rng.normal(size=3000), "b": rng.choice(["x", "y", "w"], 3000)})
    whole = monitor.update(monitor.init(), data)
    parts = monitor.init()
    for chunk in np.array_split(data, 7):
        parts = monitor.update(parts, chunk)
    np.testing.assert_array_equal(np.asarray(whole.current), np.asarray(parts.current))
    np.testing.assert_array_equal(np.asarray(whole.current), np.asarray(drift.count(bins, data)[:, 0]))
    left = monitor.update(monitor.init(), data[:1234])
    right = monitor.update(monitor.init(), data[1234:])
    np.testing.assert_array_equal(np.asarray(drift.merge(left, right).current), np.asarray(whole.current))
    state, window = monitor.close_window(whole)
    assert window.n.tolist() == [3000, 3000]
    np.testing.assert_allclose(np.asarray(window.divergence),
                               [float(drift.statistic("js", np.asarray(monitor.reference_counts[i]),
                                                      np.asarray(whole.current[i]),
                                                      jnp.asarray(bins.own[i] & ~bins.optional[i] |
                                                                  (bins.optional[i] & (np.asarray(whole.current[i]) > 0)))))
                                for i in range(2)], rtol=1e-6)
    drift.save(tmp_path / "s.npz", state)
    loaded = drift.load(tmp_path / "s.npz")
    for x, y in zip(state, loaded):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_calibrated_detectors_hold_their_run_length_and_catch_a_shift(rng):
    ref = {"x": rng.normal(size=20_000)}
    bins = drift.fit_bins(ref)
    monitor = drift.Monitor(bins, ref, statistic="js").calibrate(window=200, arl=100, seed=3)
    d = monitor.detector
    assert np.all(np.isfinite(np.asarray(d.h))) and np.all(np.isfinite(np.asarray(d.lam)))
    # Fresh null windows, not the ones the calibration drew: false alarms per window ~ 1/arl.
    null = jnp.asarray(np.stack([np.asarray(drift.count(bins, {"x": rng.normal(size=200)})[:, 0])
                                 for _ in range(3000)]), jnp.float32)
    state, alarms = monitor.init(), np.zeros(2)
    step = jax.jit(lambda s, c: monitor.close_window(s._replace(current=c)))
    for c in null:
        state, w = step(state, c)
        alarms += [bool(w.cusum_alarm[0]), bool(w.ph_alarm[0])]
    run_length = 3000 / np.maximum(alarms, 1)
    assert np.all((run_length > 50) & (run_length < 250)), run_length
    shifted = jnp.asarray(drift.count(bins, {"x": rng.normal(0.3, 1, size=200)})[:, 0], jnp.float32)
    hit = []
    for _ in range(5):
        state, w = step(state, shifted)
        hit.append(bool(w.cusum_alarm[0]))
    assert any(hit)


def test_report_outputs(rng, tmp_path):
    ref = {"a": rng.normal(size=2000), "b": rng.choice(["x", "y"], 2000)}
    cur = {"a": rng.normal(0.5, 1, size=1000), "b": rng.choice(["x", "y"], 1000)}
    report = drift.drift_report(ref, cur, window_size=250)
    doc = json.loads(report.to_json())
    assert doc["drift"] is True and len(doc["rows"]) == 8
    csv_text = report.to_csv()
    assert csv_text.splitlines()[0].startswith("feature,window,n_reference,n_current")
    assert "drifted" in report.format()
    pytest.importorskip("matplotlib")
    report.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jaxdiv.drift", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_command_line_exit_status_and_formats(rng, tmp_path):
    ref = tmp_path / "ref.csv"
    same = tmp_path / "same.csv"
    moved = tmp_path / "moved.csv"
    ref.write_text("a,b\n" + "".join(f"{v},{c}\n" for v, c in zip(rng.normal(size=3000), rng.choice(["x", "y"], 3000))))
    same.write_text("a,b\n" + "".join(f"{v},{c}\n" for v, c in zip(rng.normal(size=500), rng.choice(["x", "y"], 500))))
    moved.write_text("a,b\n" + "".join(f"{v},{c}\n" for v, c in zip(rng.normal(1, 1, size=500), rng.choice(["x", "y"], 500))))
    ok = _cli(str(ref), str(same), "--format", "json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["drift"] is False
    hit = _cli(str(ref), str(moved), "--format", "csv", "--window-size", "100", "--quiet", cwd=tmp_path)
    assert hit.returncode == 1 and hit.stdout.count("\n") == 11
    bad = _cli(str(ref), str(same), "--columns", "a,zz", cwd=tmp_path)
    assert bad.returncode == 2 and "zz" in bad.stderr


def test_parquet_and_time_windows_from_the_command_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pandas") is None or importlib.util.find_spec("pyarrow") is None:
        pytest.skip("the drift extra (pandas, pyarrow) is not installed")
    import pandas as pd

    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=2000)}).to_parquet(tmp_path / "ref.parquet")
    times = pd.date_range("2026-01-01", periods=600, freq="min")
    pd.DataFrame({"ts": times, "a": rng.normal(size=600)}).to_parquet(tmp_path / "cur.parquet")
    out = _cli("ref.parquet", "cur.parquet", "--time-column", "ts", "--period", "1h", "--format", "json",
               "--plot", "p.png", cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["rows"]) == 10 and doc["rows"][1]["window"].startswith("2026-01-01T01:00")
    assert (tmp_path / "p.png").exists()


def test_features_sharded_over_devices_need_no_collective():
    # A monitor whose features are sharded over 4 devices: each device counts and
    # scores its own features; the compiled update and window close move nothing.
    code = f"""
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
sys.path.insert(0, {str(ROOT)!r})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxdiv import drift
rng = np.random.default_rng(0)
ref = rng.standard_normal((5000, 64), dtype=np.float32)
bins = drift.fit_bins(ref)
monitor = drift.Monitor(bins, ref)
mesh = Mesh(np.array(jax.devices()), ("features",))
batch = rng.standard_normal((4096, 64), dtype=np.float32) + np.linspace(0, 1, 64, dtype=np.float32)
sharded_batch = jax.device_put(batch, NamedSharding(mesh, P(None, "features")))
state = monitor.update(monitor.init(mesh), sharded_batch)
assert state.current.sharding.spec == P("features"), state.current.sharding
_, window = monitor.close_window(state)
_, plain = monitor.close_window(monitor.update(monitor.init(), batch))
np.testing.assert_allclose(np.asarray(window.divergence), np.asarray(plain.divergence), rtol=1e-6)
hlo = (jax.jit(monitor._update).lower(monitor.init(mesh), sharded_batch).compile().as_text()
       + jax.jit(monitor.close_window).lower(state).compile().as_text())
print("collectives", [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute") if op in hlo])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "collectives []" in out.stdout, out.stdout


def test_cauchy_combination_near_one_and_with_empty_windows():
    assert float(drift.combine(np.array([1.0]), "cauchy")) > 0.99
    assert float(drift.combine(np.array([1.0, 1.0, 0.999]), "cauchy")) > 0.99
    # An empty window (p = 1) does not hide a strong signal elsewhere.
    assert float(drift.combine(np.array([1.0, 1e-20]), "cauchy")) < 1e-15


def test_unseen_values_only_are_not_zero_drift():
    ref = {"a": np.array([1.0, 2.0, 3.0] * 10)}
    cur = {"a": np.array([7.0, 8.0] * 10)}
    report = drift.drift_report(ref, cur, statistics=("ks", "wasserstein", "tv"))
    # No shared value: the raw total variation, 1 (the smoothed tv is a little less).
    assert report.columns["ks"][0] == pytest.approx(1.0) and report.columns["wasserstein"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_drift_kernels_lower_for_accelerators(platform):
    # TESTING.md row 18: counting, every statistic, the p-values, the corrections and the
    # monitor's update and window close lower for GPU and TPU on this CPU.
    from jaxdiv.drift import _binning, _multiple, _pvalues, _statistics

    x = jax.ShapeDtypeStruct((4096, 8), jnp.float32)
    edges = jax.ShapeDtypeStruct((8, 9), jnp.float32)
    ab = jax.ShapeDtypeStruct((8, 3, 11), jnp.float32)
    idx = jax.ShapeDtypeStruct((4,), jnp.int32)

    def lower(fn, *args):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()

    lower(lambda x, e, s, n: _binning._block_totals(x, e, s, n, block=1024), x, edges, idx, idx)
    for name in drift.STATISTICS:
        lower(lambda a, b, name=name: _statistics.statistic(name, a, b), ab, ab)
    n = jax.ShapeDtypeStruct((8, 3), jnp.float32)
    lower(lambda v, na, nb: _pvalues.asymptotic("chi2", v, na, nb, jnp.full(v.shape, 9)), n, n, n)
    lower(lambda p: _multiple.adjust(p, "holm") + _multiple.combine(p), n)
    ref = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    monitor = drift.Monitor(drift.fit_bins(ref))
    state = monitor.init()
    lower(monitor._update, state, x)
    lower(monitor.close_window, state)
