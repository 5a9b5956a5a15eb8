"""Windows over a series of rows, and the reference each window is compared with.

A window is a row range ``[start, end)`` of rows in time order; windows may
overlap (sliding) or leave gaps (time windows with no rows are empty, not
dropped). Because every window becomes counts, the references are sums of
window counts: the previous window, the last ``k`` windows, all earlier ones,
or an exponentially decayed sum of them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

REFERENCES = ("fixed", "previous", "rolling", "expanding", "decayed")


@dataclasses.dataclass(frozen=True)
class Windows:
    """Row ranges and a label per window (an index, or the window's start time).

    Attributes:
      ranges: ``[windows, 2]`` int64 rows ``[start, end)``.
      labels: ``[windows]`` window indices, or start times for :func:`by_time`.

    Example:
      >>> from jaxdiv import drift
      >>> w = drift.tumbling(10, 4)
      >>> len(w), w.ranges.tolist()
      (3, [[0, 4], [4, 8], [8, 10]])
    """

    ranges: np.ndarray    # [windows, 2] int64, rows [start, end)
    labels: np.ndarray    # [windows]

    def __len__(self) -> int:
        return self.ranges.shape[0]


def tumbling(rows: int, size: int, *, drop_last: bool = False) -> Windows:
    """Consecutive windows of ``size`` rows; the last one may be shorter unless dropped.

    Args:
      rows: the number of rows.
      size: rows per window, a positive integer.
      drop_last: drop a last window shorter than ``size``.

    Returns:
      :class:`Windows`.

    Example:
      >>> from jaxdiv import drift
      >>> drift.tumbling(10, 4, drop_last=True).ranges.tolist()
      [[0, 4], [4, 8]]
    """
    return sliding(rows, size, size, drop_last=drop_last)


def sliding(rows: int, size: int, stride: int, *, drop_last: bool = True) -> Windows:
    """Windows of ``size`` rows starting every ``stride`` rows.

    With ``drop_last`` (the default for sliding windows) only full windows are
    kept; otherwise the last windows are cut short at the end of the rows.

    Args:
      rows: the number of rows.
      size: rows per window, a positive integer.
      stride: rows between window starts, a positive integer.
      drop_last: keep full windows only.

    Returns:
      :class:`Windows`.

    Example:
      >>> from jaxdiv import drift
      >>> drift.sliding(10, 4, 3).ranges.tolist()
      [[0, 4], [3, 7], [6, 10]]
    """
    for name, v in (("size", size), ("stride", stride)):
        if not (isinstance(v, (int, np.integer)) and v >= 1):
            raise ValueError(f"window {name} must be a positive integer, got {v!r}.")
    last = rows - size if drop_last else rows - 1
    starts = np.arange(0, max(last, 0) + 1, stride) if rows else np.zeros(0, np.int64)
    if drop_last and rows < size:
        raise ValueError(f"a window of {size} rows does not fit in {rows} rows.")
    ranges = np.stack([starts, np.minimum(starts + size, rows)], 1)
    return Windows(ranges, np.arange(len(starts)))


def by_time(times, period, *, stride=None, start=None) -> Windows:
    """Windows of duration ``period`` over sorted ``times``, every ``stride`` (default ``period``).

    ``times`` are numbers or ``numpy.datetime64`` (``period`` then a
    ``numpy.timedelta64``, or a pandas Timedelta / offset string). Rows with
    equal times share a window. Windows between the first and the last time
    are all returned, empty ones included (their statistics are 0, p-value 1).

    Args:
      times: sorted numbers or ``numpy.datetime64``, one per row.
      period: the window duration.
      stride: time between window starts (default ``period``).
      start: the first window's start (default the first time).

    Returns:
      :class:`Windows` labelled by their start times.

    Raises:
      ValueError: if ``times`` are not sorted (naming the first row out of
        order) or contain NaT / NaN.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> t = np.array(["2026-01-01T00:10", "2026-01-01T00:50", "2026-01-01T02:30"], "datetime64[m]")
      >>> w = drift.by_time(t, np.timedelta64(1, "h"))
      >>> w.ranges.tolist()  # the hour from 01:10 is empty
      [[0, 2], [2, 2], [2, 3]]
    """
    times = np.asarray(times)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}.")
    period = _duration(period, times)
    stride = period if stride is None else _duration(stride, times)
    numeric = times.astype("datetime64[ns]").astype(np.int64) if times.dtype.kind == "M" else times
    if times.dtype.kind == "M" and np.isnat(times).any() or times.dtype.kind == "f" and np.isnan(times).any():
        raise ValueError(f"times have missing values (first at row {int(np.flatnonzero(np.isnat(times) if times.dtype.kind == 'M' else np.isnan(times))[0])}).")
    back = np.flatnonzero(np.diff(numeric) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(
            f"times must be sorted: row {i} ({times[i]}) comes before row {i - 1} ({times[i - 1]}); "
            f"sort the rows by time first.")
    first = numeric[0] if start is None else _instant(start, times)
    starts = np.arange(first, numeric[-1] + 1, stride) if stride > 0 else None
    if starts is None:
        raise ValueError(f"period and stride must be positive, got {period}, {stride}.")
    lo = np.searchsorted(numeric, starts, side="left")
    hi = np.searchsorted(numeric, starts + period, side="left")
    labels = starts
    if times.dtype.kind == "M":
        labels = starts.astype("datetime64[ns]")
        whole = np.all(starts % 1_000_000_000 == 0)
        labels = labels.astype("datetime64[s]") if whole else labels
    return Windows(np.stack([lo, hi], 1), labels)


def _duration(value, times):
    if times.dtype.kind == "M":
        if isinstance(value, str):
            try:
                import pandas as pd
            except ImportError:
                raise ValueError(f"a period written as text ({value!r}) needs pandas; "
                                 "pass a numpy.timedelta64.") from None
            value = pd.Timedelta(value)
        if hasattr(value, "to_timedelta64"):
            value = value.to_timedelta64()
        return int(np.timedelta64(value, "ns").astype(np.int64))
    if not np.isscalar(value) or not float(value) > 0:
        raise ValueError(f"period and stride must be positive numbers, got {value!r}.")
    return value


def _instant(value, times):
    if times.dtype.kind == "M":
        return int(np.datetime64(value, "ns").astype(np.int64))
    return value


@jax.jit
def _shifted_sums(counts, lags):
    """``sum_{l in 1..lags} counts[:, w - l]`` for every window ``w`` (0 before the first)."""
    cumulative = jnp.concatenate([jnp.zeros_like(counts[:, :1]), jnp.cumsum(counts, 1)], 1)
    w = jnp.arange(counts.shape[1])
    return cumulative[:, w] - cumulative[:, jnp.maximum(w - lags, 0)]


def references(window_counts, mode: str = "fixed", reference_counts=None, *,
               k: Optional[int] = None, half_life: Optional[float] = None):
    """The reference counts of every window, ``[features, windows, B]``.

    Args:
      window_counts: ``[features, windows, B]`` counts of the windows in time order.
      mode: ``"fixed"`` (``reference_counts`` for every window), ``"previous"``
        (the window before), ``"rolling"`` (the ``k`` windows before),
        ``"expanding"`` (all windows before) or ``"decayed"`` (all windows
        before, weighted by ``0.5 ** (age / half_life)``, age 0 for the last).
      reference_counts: ``[features, B]``, for ``"fixed"``.
      k: windows summed by ``"rolling"``.
      half_life: in windows, for ``"decayed"``.

    Returns:
      ``[features, windows, B]`` float counts.

    A window with nothing before it has an empty reference: its statistics are 0
    and its p-value 1.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> counts = np.array([[[1, 0], [2, 2], [0, 4]]])   # 1 feature, 3 windows, 2 bins
      >>> drift.references(counts, "expanding")[0].tolist()
      [[0.0, 0.0], [1.0, 0.0], [3.0, 2.0]]
    """
    if mode not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {mode!r}.")
    counts = jnp.asarray(window_counts, jnp.float32)
    if mode == "fixed":
        if reference_counts is None:
            raise ValueError("reference='fixed' needs the reference counts.")
        return jnp.broadcast_to(jnp.asarray(reference_counts, jnp.float32)[:, None], counts.shape)
    if mode == "previous":
        return _shifted_sums(counts, 1)
    if mode == "rolling":
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"reference='rolling' needs k >= 1 windows, got {k!r}.")
        return _shifted_sums(counts, int(k))
    if mode == "expanding":
        return _shifted_sums(counts, counts.shape[1])
    if half_life is None or not float(half_life) > 0:
        raise ValueError(f"reference='decayed' needs a positive half_life, got {half_life!r}.")
    keep = 0.5 ** (1.0 / float(half_life))

    def step(carry, c):
        return keep * carry + c, carry

    _, before = jax.lax.scan(step, jnp.zeros_like(counts[:, 0]), jnp.moveaxis(counts, 1, 0))
    return jnp.moveaxis(before, 0, 1)
