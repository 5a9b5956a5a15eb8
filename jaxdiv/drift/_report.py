"""A drift report: bins, counts, statistics, p-values and corrections for every feature and window."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import sys
import time
import warnings
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.drift import _binning, _multiple, _pvalues, _statistics, _windows
from jaxdiv.drift._table import as_table

DEFAULT_STATISTICS = ("js_distance", "psi", "ks", "wasserstein", "chi2")


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """The result of :func:`drift_report`: one row per feature and window.

    Attributes:
      columns: the table, a dict of equal-length arrays: ``feature``, ``window``,
        ``n_reference``, ``n_current``, one column per statistic, ``p_value``
        (of ``test``), ``p_adjusted`` (after ``correction``) and ``drift``
        (``p_adjusted < alpha``). Never NaN.
      test: the statistic whose p-value decides drift.
      method: ``"asymptotic"`` or ``"bootstrap"``.
      alpha: the level of the decision.
      correction: the multiple-testing correction.
      dataset_p_value: one p-value for "some feature drifted in some window"
        (Cauchy combination, valid under any dependence between features).
      thresholds: per row, the value of ``test`` at which the row would be
        flagged, or ``None`` where the bootstrap was used.
      bins: the :class:`~jaxdiv.drift.Bins` fitted on the reference.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> rng = np.random.default_rng(1)
      >>> report = drift.drift_report({"x": rng.normal(size=4000)}, {"x": rng.normal(size=4000)})
      >>> sorted(report.columns)[:4], report.drifted   # no drift
      (['chi2', 'drift', 'feature', 'js_distance'], [])
    """

    columns: dict
    test: str
    method: str
    alpha: float
    correction: str
    dataset_p_value: float
    thresholds: Optional[np.ndarray]
    bins: _binning.Bins

    @property
    def drift(self) -> bool:
        """Whether any feature drifted in any window (after the correction)."""
        return bool(np.any(self.columns["drift"]))

    @property
    def drifted(self) -> list:
        """``(feature, window)`` of every flagged row."""
        c = self.columns
        return [(f, _plain(w)) for f, w, d in zip(c["feature"], c["window"], c["drift"]) if d]

    def __len__(self) -> int:
        return len(self.columns["feature"])

    def to_pandas(self):
        """The table as a pandas DataFrame, one row per feature and window.

        Returns:
          A ``pandas.DataFrame`` with the columns of ``columns`` (needs
          pandas: the ``drift`` extra).
        """
        import pandas as pd
        return pd.DataFrame(self.columns)

    def to_csv(self, file=None) -> Optional[str]:
        """Write the table as CSV.

        Args:
          file: a path or a text stream; None to return the text.

        Returns:
          The CSV text if ``file`` is None, else None.
        """
        out = io.StringIO()
        names = list(self.columns)
        out.write(",".join(names) + "\n")
        for row in zip(*(self.columns[n] for n in names)):
            out.write(",".join(_csv_cell(v) for v in row) + "\n")
        return _write(out.getvalue(), file)

    def to_json(self, file=None) -> Optional[str]:
        """Write JSON: the settings, the dataset p-value and the rows.

        Args:
          file: a path or a text stream; None to return the text.

        Returns:
          The JSON text if ``file`` is None, else None.
        """
        rows = [dict(zip(self.columns, (_plain(v) for v in row)))
                for row in zip(*self.columns.values())]
        doc = dict(test=self.test, method=self.method, alpha=self.alpha, correction=self.correction,
                   drift=self.drift, dataset_p_value=self.dataset_p_value, rows=rows)
        return _write(json.dumps(doc, indent=1) + "\n", file)

    def format(self, max_rows: int = 60) -> str:
        """The table as aligned text (the command line's default output).

        Args:
          max_rows: rows shown before a "... more rows" line.

        Returns:
          The text, ending with a one-line summary.
        """
        names = list(self.columns)
        cells = [[_text_cell(v) for v in self.columns[n][:max_rows]] for n in names]
        widths = [max([len(n)] + [len(c) for c in col]) for n, col in zip(names, cells)]
        lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths))]
        lines += ["  ".join(col[i].rjust(w) for col, w in zip(cells, widths)) for i in range(len(cells[0]))]
        if len(self) > max_rows:
            lines.append(f"... {len(self) - max_rows} more rows")
        flagged = int(np.sum(self.columns["drift"]))
        lines.append(
            f"{flagged} of {len(self)} feature-windows drifted ({self.test}, {self.method}, "
            f"{self.correction} at alpha={self.alpha:g}); dataset p-value {self.dataset_p_value:.3g}")
        return "\n".join(lines)

    def plot(self, path, statistic: Optional[str] = None):
        """A PNG with one panel per feature: the test statistic over windows and its threshold.

        Args:
          path: the file to write (needs matplotlib: the ``bench`` extra).
          statistic: the statistic to draw (default the test's).

        Returns:
          None.
        """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        statistic = statistic or self.test
        c = self.columns
        features = list(dict.fromkeys(c["feature"]))
        cols = min(4, len(features))
        rows = -(-len(features) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, name in zip(axes.flat, features):
            sel = np.asarray(c["feature"]) == name
            x = np.arange(sel.sum())
            ax.plot(x, np.asarray(c[statistic])[sel], marker=".", lw=1)
            if self.thresholds is not None and statistic == self.test:
                ax.plot(x, self.thresholds[sel], color="tab:red", lw=1, ls="--", label="threshold")
            flagged = np.asarray(c["drift"])[sel]
            ax.plot(x[flagged], np.asarray(c[statistic])[sel][flagged], "o", color="tab:red", ms=4)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("window", fontsize=8)
            ax.set_ylabel(statistic, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.flat[len(features):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def drift_report(
    reference,
    current,
    *,
    columns: Optional[Sequence[str]] = None,
    categorical: Sequence[str] = (),
    bins: int = 10,
    binning: str = "quantile",
    statistics: Sequence[str] = DEFAULT_STATISTICS,
    test: str = "chi2",
    method: str = "asymptotic",
    alpha: float = 0.05,
    correction: str = "holm",
    eps: float = 0.5,
    window_size: Optional[int] = None,
    stride: Optional[int] = None,
    time_column: Optional[str] = None,
    period=None,
    reference_mode: str = "fixed",
    k: Optional[int] = None,
    half_life: Optional[float] = None,
    resamples: int = 999,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> DriftReport:
    """Compare every feature of ``current`` (or each of its windows) with ``reference``.

    Bins are fitted on the reference only (:func:`fit_bins`); the current rows
    are cut into windows (all rows by default; ``window_size`` / ``stride``
    rows; or ``period`` of ``time_column``, which must be sorted); each window
    is compared with its reference (``reference_mode``, see
    :func:`references`); every statistic comes from the counts. The p-value of
    ``test`` accounts for both sample sizes, and the correction runs over all
    features and windows, so ``alpha`` bounds the chance of any false alarm
    (``"holm"``, ``"bonferroni"``) or the expected share of false alarms
    (``"bh"``, ``"by"``) however many windows there are.

    Args:
      reference, current: tables (a pandas DataFrame, a mapping of columns, a
        2-d array) with the same feature columns.
      columns: features to compare (default: the reference's, minus ``time_column``).
      categorical, bins, binning: see :func:`fit_bins`.
      statistics: statistics to report, among :data:`STATISTICS`.
      test: the statistic whose p-value decides drift (default Pearson's ``chi2``).
      method: ``"asymptotic"`` or ``"bootstrap"`` (``resamples`` draws, ``seed``).
      alpha: the level of the decision.
      correction: ``"holm"``, ``"bonferroni"``, ``"bh"``, ``"by"`` or ``"none"``.
      eps: pseudo-count added to each bin of both sides for the divergences.
      window_size, stride: cut ``current`` into windows of ``window_size``
        rows every ``stride`` rows (default ``window_size``: tumbling).
      time_column, period: or into windows of duration ``period`` over the
        sorted ``time_column`` (see :func:`by_time`).
      reference_mode: each window's reference: ``"fixed"`` (``reference``),
        ``"previous"``, ``"rolling"`` (``k`` windows), ``"expanding"`` or
        ``"decayed"`` (``half_life`` windows), see :func:`references`.
      k, half_life: for ``"rolling"`` and ``"decayed"``.
      resamples, seed: the bootstrap's draws and seed.
      progress: called as ``progress(done, total)`` while windows are counted.

    Returns:
      :class:`DriftReport`.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> rng = np.random.default_rng(0)
      >>> reference = {"age": rng.normal(40, 10, 5000), "plan": rng.choice(["a", "b"], 5000)}
      >>> current = {"age": rng.normal(43, 10, 2000), "plan": rng.choice(["a", "b"], 2000)}
      >>> report = drift_report(reference, current)
      >>> report.drifted
      [('age', 0)]
    """
    names = _statistics.check_names(statistics)
    if test not in _statistics.STATISTICS:
        raise ValueError(f"unknown test {test!r}; expected one of {sorted(_statistics.STATISTICS)}.")
    if method not in _pvalues.METHODS:
        raise ValueError(f"method must be one of {_pvalues.METHODS}, got {method!r}.")
    if method == "asymptotic" and test not in _pvalues.ASYMPTOTIC:
        raise ValueError(f"test {test!r} has no asymptotic law: use method='bootstrap' "
                         f"or a test among {_pvalues.ASYMPTOTIC}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    if correction not in _multiple.CORRECTIONS:
        raise ValueError(f"correction must be one of {_multiple.CORRECTIONS}, got {correction!r}.")
    if not (np.isscalar(eps) and eps >= 0):
        raise ValueError(f"eps must be a non-negative pseudo-count, got {eps!r}.")
    if method == "bootstrap" and correction != "none":
        _warn_if_too_few_resamples(resamples, alpha)
    reference, current = as_table(reference), as_table(current)
    without = (time_column,) if time_column else ()
    if columns is None:
        columns = reference.select(None, without=without)
        extra = [c for c in current.select(None, without=without) if c not in columns]
        if extra:
            raise ValueError(f"columns {extra} are in the current data but not in the reference; "
                             f"pass columns= to choose the features to compare.")
    bins_ = _binning.fit_bins(reference, columns=columns, bins=bins, binning=binning,
                              categorical=categorical)
    windows = _current_windows(current, window_size, stride, time_column, period)
    reference_counts = jnp.asarray(bins_.reference_counts, jnp.int32)
    window_counts = _count_windows(bins_, current, windows, progress)
    a = _windows.references(window_counts, reference_mode, reference_counts, k=k, half_life=half_life)
    b = jnp.asarray(window_counts, jnp.float32)
    values, p, n_a, n_b, df = _evaluate(
        a, b, jnp.asarray(bins_.own), jnp.asarray(bins_.optional), jnp.asarray(bins_.ordered)[:, None],
        jnp.asarray(bins_.centres)[:, None], eps, names=names, test=test, method=method,
        resamples=resamples, key=jax.random.key(seed))
    adjusted = _multiple.adjust(p, correction)
    drift = np.asarray(adjusted < alpha)
    features, windows_n = b.shape[0], b.shape[1]
    table = {
        "feature": np.repeat(np.array(bins_.columns, dtype=object), windows_n),
        "window": np.tile(windows.labels, features),
        "n_reference": np.asarray(n_a).reshape(-1),
        "n_current": np.asarray(n_b).reshape(-1).astype(np.int64),
    }
    if reference_mode == "fixed":
        table["n_reference"] = table["n_reference"].astype(np.int64)
    for name in names:
        table[name] = np.asarray(values[name], np.float64).reshape(-1)
    table["p_value"] = np.asarray(p, np.float64).reshape(-1)
    table["p_adjusted"] = np.asarray(adjusted, np.float64).reshape(-1)
    table["drift"] = drift.reshape(-1)
    thresholds = None
    if method == "asymptotic":
        level = _effective_level(np.asarray(p).reshape(-1), table["drift"], alpha, correction)
        thresholds = np.asarray(_critical_value(test, level, n_a, n_b, df)).reshape(-1)
    combined = float(_multiple.combine(p, "cauchy")) if p.size else 1.0
    return DriftReport(table, test, method, float(alpha), correction, combined, thresholds, bins_)


def _warn_if_too_few_resamples(resamples, alpha):
    # The smallest bootstrap p-value is 1 / (R + 1); corrected over many tests it may
    # never reach alpha (Evidently's 100 permutations cannot pass a Bonferroni level).
    if 1.0 / (resamples + 1) > alpha / 10:
        warnings.warn(
            f"{resamples} resamples: the smallest p-value is {1 / (resamples + 1):.2g}, which a "
            f"correction over more than {int(alpha * (resamples + 1))} tests can never flag at "
            f"alpha={alpha:g}; use more resamples.", stacklevel=3)


def chunk_thresholds(bins: _binning.Bins, reference, chunk_size: int, *, statistic: str = "js",
                     rule: str = "3sigma", eps: float = 0.5) -> np.ndarray:
    """Per feature, a threshold for ``statistic`` from the reference's own chunks, out of sample.

    The reference is cut into chunks of ``chunk_size`` rows; each chunk is
    scored against the rest of the reference (never against counts that
    include it), and the threshold is the mean plus three standard deviations
    of those scores (``rule="3sigma"``, NannyML's rule) or their maximum
    (``"max"``). A window of ``chunk_size`` rows scoring above it is unusual
    for the reference.

    Args:
      bins: :class:`Bins` fitted on the reference.
      reference: the reference table.
      chunk_size: rows per chunk (the size of the windows you will score).
      statistic: any of :data:`STATISTICS`.
      rule: ``"3sigma"`` or ``"max"``.
      eps: the pseudo-count of the divergences.

    Returns:
      ``[features]`` float64 thresholds.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> reference = {"x": np.random.default_rng(0).normal(size=10000)}
      >>> t = drift.chunk_thresholds(drift.fit_bins(reference), reference, 1000)
      >>> t.shape, bool(0 < t[0] < 0.01)   # JS of 1000 rows against 9000, plus 3 sigma
      ((1,), True)
    """
    if rule not in ("3sigma", "max"):
        raise ValueError(f"rule must be '3sigma' or 'max', got {rule!r}.")
    _statistics.check_names(statistic)
    table = as_table(reference)
    chunks = _windows.tumbling(table.num_rows, chunk_size, drop_last=True)
    if len(chunks) < 2:
        raise ValueError(f"chunks of {chunk_size} rows: the reference ({table.num_rows} rows) "
                         f"holds fewer than two.")
    b = jnp.asarray(_binning.count(bins, table, chunks.ranges), jnp.float32)
    rest = b.sum(1, keepdims=True) - b
    own, optional = jnp.asarray(bins.own)[:, None], jnp.asarray(bins.optional)[:, None]
    bins_in = _statistics.bins_taking_part(own, optional, rest, b)
    scores = _statistics.statistic(
        statistic, rest, b, bins_in, own=own & ~optional, ordered=jnp.asarray(bins.ordered)[:, None],
        centres=jnp.asarray(bins.centres)[:, None], eps=eps)
    scores = np.asarray(scores)
    return scores.max(1) if rule == "max" else scores.mean(1) + 3 * scores.std(1, ddof=1)


def _current_windows(current, window_size, stride, time_column, period) -> _windows.Windows:
    if time_column is not None or period is not None:
        if time_column is None or period is None:
            raise ValueError("time windows need both time_column and period.")
        if time_column not in current:
            raise ValueError(f"no time column {time_column!r} in the current data.")
        return _windows.by_time(current[time_column], period, stride=stride)
    if window_size is not None:
        if stride is None:
            return _windows.tumbling(current.num_rows, window_size)
        return _windows.sliding(current.num_rows, window_size, stride)
    if stride is not None:
        raise ValueError("stride needs window_size (or time_column and period).")
    return _windows.Windows(np.array([[0, current.num_rows]]), np.array([0]))


def _count_windows(bins, current, windows, progress):
    return _binning.count(bins, bins.encode(current), windows.ranges, progress=progress)


@functools.partial(jax.jit, static_argnames=("names", "test", "method", "resamples"))
def _evaluate(a, b, own, optional, ordered, centres, eps, *, names, test, method, resamples, key):
    own, optional = own[:, None], optional[:, None]
    bins_in = _statistics.bins_taking_part(own, optional, a, b)
    ordered_bins = own & ~optional
    stat = functools.partial(_statistics.statistic, own=ordered_bins, ordered=ordered,
                             centres=centres, eps=eps)
    values = {name: stat(name, a, b, bins_in) for name in set(names) | {test}}
    n_a = jnp.where(bins_in, a, 0.0).sum(-1)
    n_b = jnp.where(bins_in, b, 0.0).sum(-1)
    df = bins_in.sum(-1) - 1
    if method == "asymptotic":
        p = _pvalues.asymptotic(test, values[test], n_a, n_b, df)
    else:
        p = _pvalues.bootstrap(key, test, a, b, bins_in, ordered_bins, ordered, centres, eps,
                               resamples=resamples)
    return {n: values[n] for n in names}, p, n_a, n_b, df


def _effective_level(p, flagged, alpha, correction):
    """The raw p-value below which a row is flagged, given how many the correction flagged."""
    m, k = max(p.size, 1), int(flagged.sum())
    if correction == "none":
        return alpha
    if correction == "bonferroni":
        return alpha / m
    if correction == "holm":
        return alpha / max(m - k, 1)
    c = float(np.sum(1.0 / np.arange(1, m + 1))) if correction == "by" else 1.0
    return alpha * max(k, 1) / (m * c)


@functools.partial(jax.jit, static_argnames=("test",))
def _critical_value(test, level, n_a, n_b, df):
    """The value of ``test`` whose asymptotic p-value is ``level``, by bisection."""
    level = jnp.asarray(level, jnp.float32)

    def above(x):
        return _pvalues.asymptotic(test, x, n_a, n_b, df) > level

    # Grow the bracket, then halve it: p-values fall as the statistic grows.
    hi = jax.lax.fori_loop(0, 64, lambda _, h: jnp.where(above(h), 2 * h, h), jnp.ones_like(n_a))

    def halve(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        up = above(mid)
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    _, hi = jax.lax.fori_loop(0, 48, halve, (jnp.zeros_like(n_a), hi))
    return jnp.where((n_a == 0) | (n_b == 0) | (df <= 0), 0.0, hi)


def _write(text, file):
    if file is None:
        return text
    if hasattr(file, "write"):
        file.write(text)
    else:
        with open(file, "w") as f:
            f.write(text)
    return None


def _plain(v):
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.datetime64):
        return str(v)
    return v


def _csv_cell(v) -> str:
    v = _plain(v)
    text = f"{v:.10g}" if isinstance(v, float) else str(v)
    return f'"{text}"' if ("," in text or '"' in text) else text


def _text_cell(v) -> str:
    v = _plain(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def progress_bar(stream=sys.stderr, after: float = 1.0):
    """A ``progress(done, total)`` callback drawing a bar once a run takes longer than ``after`` s."""
    began = time.perf_counter()

    def show(done, total):
        if time.perf_counter() - began < after:
            return
        filled = int(30 * done / max(total, 1))
        stream.write(f"\rcounting [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show
