"""Bins fitted on the reference, and counts of every feature in every window in one call.

A feature's bins are fixed by the reference alone (never by the data being
scored). Every feature becomes a float column and a row of edges, so one
compare-and-reduce counts all features at once: the count of rows below each
edge, summed over rows, gives cumulative counts whose differences are the bins.
Sorting and scatter-add histograms are many times slower on XLA:CPU.

Bin layout of a feature with ``k`` bins, padded to the widest feature's ``B``:
bins ``0 .. k-1`` are its own (for discrete features the last of them is the
*unseen* bin), bins ``k .. B-2`` are padding (always empty), bin ``B-1`` counts
missing values (NaN, None).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.drift._table import as_table

BINNINGS = ("quantile", "width")


@dataclasses.dataclass(frozen=True, eq=False)
class Bins:
    """The bins of every feature, fitted on a reference table.

    Attributes:
      columns: feature names, in the order of the count tensor's first axis.
      kinds: per feature, ``"quantile"`` or ``"width"`` (continuous),
        ``"values"`` (numeric with few distinct values: one bin per value),
        ``"levels"`` (categorical) or ``"missing"`` (no value in the reference).
      edges: ``[features, B - 2]`` interior edges (bin ``i`` is
        ``[edges[i-1], edges[i])``), padded with ``+inf``.
      n_bins: ``[features]`` bins per feature, missing-value bin excluded.
      levels: per feature, the values of the discrete bins (``None`` if continuous).
      centres: ``[features, B]`` a value representing each bin (the reference
        median inside it), for the binned Wasserstein distance.
      reference_counts: ``[features, B]`` the reference's own counts, read off
        the sort that fitted the bins (equal to :func:`count` of the reference).

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0)}, bins=4)
      >>> bins.columns, bins.n_bins.tolist(), bins.reference_counts.tolist()
      (('x',), [4], [[24, 25, 25, 26, 0]])
    """

    columns: tuple
    kinds: tuple
    edges: np.ndarray
    n_bins: np.ndarray
    levels: tuple
    centres: np.ndarray
    reference_counts: np.ndarray

    @property
    def num_bins(self) -> int:
        """``B``: bins per feature in the count tensor, missing-value bin included."""
        return self.edges.shape[1] + 2

    @property
    def ordered(self) -> np.ndarray:
        """``[features]``: whether the bins are ordered (KS and Wasserstein apply)."""
        return np.array([k in ("quantile", "width", "values") for k in self.kinds])

    @property
    def optional(self) -> np.ndarray:
        """``[features, B]``: bins that count only when a side has values in them.

        The missing-value bin and a discrete feature's unseen bin: the
        reference has nothing there by construction, and an empty bin that
        both sides lack must not change a statistic or its degrees of freedom.
        """
        b = np.arange(self.num_bins)
        discrete = np.array([k in ("values", "levels") for k in self.kinds])
        unseen = discrete[:, None] & (b == self.n_bins[:, None] - 1)
        return unseen | (b == self.num_bins - 1)

    @property
    def own(self) -> np.ndarray:
        """``[features, B]``: the feature's own bins (not padding, not missing)."""
        return np.arange(self.num_bins) < self.n_bins[:, None]

    def encode(self, data) -> np.ndarray:
        """The values :func:`count` and :meth:`Monitor.update` read.

        Args:
          data: a table with this object's columns (DataFrame, mapping of
            columns, or a 2-d array).

        Returns:
          ``[rows, features]`` float32: numbers, or level codes for discrete
          features (unseen levels and missing values get their own codes).
        """
        continuous = all(k in ("quantile", "width", "missing") for k in self.kinds)
        if continuous and isinstance(data, np.ndarray) and data.dtype == np.float32 \
                and data.ndim == 2 and data.shape[1] == len(self.columns):
            return data          # already what the kernel reads: no copy of a large array
        table = as_table(data)
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise ValueError(
                f"columns {missing} were binned on the reference but are not in the "
                f"data (its columns: {list(table.columns)[:20]}).")
        if continuous:
            return _matrix(table, self.columns)
        return np.stack([
            _codes(table[name], levels, name) if kind in ("values", "levels") else _numbers(table[name], name)
            for name, kind, levels in zip(self.columns, self.kinds, self.levels)], axis=1)


def fit_bins(
    reference,
    *,
    columns: Optional[Sequence[str]] = None,
    bins: int = 10,
    binning: str = "quantile",
    categorical: Sequence[str] = (),
) -> Bins:
    """Fit the bins of every feature on the reference.

    Continuous features get ``bins`` bins with open outer bins: edges at the
    reference quantiles ``1/bins, ..., (bins-1)/bins`` (``binning="quantile"``,
    the default; values of the reference, as NumPy's ``method="inverted_cdf"``;
    repeated quantiles merge, so heavily tied data gets fewer bins)
    or equally spaced between the reference minimum and maximum
    (``binning="width"``). A numeric feature with at most ``bins`` distinct
    values gets one bin per value, and a categorical feature (strings, booleans,
    pandas categories, or named in ``categorical``) one bin per level; both add
    an *unseen* bin for values the reference never had. Every feature has a
    missing-value bin (NaN, None). A feature with no value in the reference
    gets a single bin for any value, so only its missing rate is compared.

    Args:
      reference: a pandas DataFrame, a mapping of column name to 1-d array, or a
        2-d array (columns named ``x0, x1, ...``).
      columns: the features to bin (default: every column).
      bins: bins per continuous feature, at least 2.
      binning: ``"quantile"`` or ``"width"``.
      categorical: columns to treat as categorical even if numeric.

    Returns:
      :class:`Bins`.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0), "plan": np.array(["a", "b"] * 50)}, bins=4)
      >>> bins.kinds, bins.edges[0, :3].tolist()
      (('quantile', 'levels'), [24.0, 49.0, 74.0])
    """
    if not (isinstance(bins, (int, np.integer)) and bins >= 2):
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}.")
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}.")
    table = as_table(reference)
    if table.num_rows == 0:
        raise ValueError("the reference has no rows: bins cannot be fitted.")
    columns = table.select(columns)
    unknown = sorted(set(categorical) - set(columns))
    if unknown:
        raise ValueError(f"categorical names columns {unknown} that are not being binned.")
    numeric = [c for c in columns if c not in categorical and _is_numeric(table[c])]
    matrix = _matrix(table, numeric)
    # Slabs of features, one per worker (NumPy's sort releases the GIL), each
    # transposed into a reused buffer (fresh host memory is slow to fault in) and
    # sorted in place.
    workers = max(1, min(os.cpu_count() or 1, 4, len(numeric)))
    width = min(128, -(-len(numeric) // workers)) if numeric else 1
    slabs = [numeric[j:j + width] for j in range(0, len(numeric), width)]

    def fit_slab(k):
        names = slabs[k]
        j = k * width
        buffer = _scratch(f"fit{k % workers}", (width, table.num_rows))[: len(names)]
        return zip(names, _fit_numeric(_transposed(matrix[:, j:j + len(names)], buffer), bins, binning))

    fitted = {}
    for k0 in range(0, len(slabs), workers):
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for part in pool.map(fit_slab, range(k0, min(k0 + workers, len(slabs)))):
                fitted.update(part)
    for name in columns:
        if name not in fitted:
            levels = _levels(table[name])
            codes = _codes(table[name], levels, name)
            missing = np.isnan(codes)
            # Codes 0..k-1 for the levels, k for unseen: edges halfway between codes.
            fitted[name] = _Fitted("levels", np.arange(len(levels), dtype=np.float32) + 0.5, levels,
                                   np.arange(len(levels) + 1.0),
                                   np.bincount(codes[~missing].astype(np.int64), minlength=len(levels) + 1),
                                   int(missing.sum()))
    fitted = [fitted[name] for name in columns]
    width = max(len(f.edges) for f in fitted) + 2
    edges = np.full((len(columns), width - 2), np.inf, np.float32)
    centres = np.zeros((len(columns), width), np.float32)
    counts = np.zeros((len(columns), width), np.int64)
    for j, f in enumerate(fitted):
        edges[j, : len(f.edges)] = f.edges
        centres[j, : len(f.centres)] = f.centres
        centres[j, len(f.centres):] = f.centres[-1] if len(f.centres) else 0.0
        counts[j, : len(f.counts)] = f.counts
        counts[j, -1] = f.missing
    return Bins(
        columns=tuple(columns),
        kinds=tuple(f.kind for f in fitted),
        edges=edges,
        n_bins=np.array([len(f.edges) + 1 for f in fitted]),
        levels=tuple(f.levels for f in fitted),
        centres=centres,
        reference_counts=counts,
    )


class _Fitted(NamedTuple):
    kind: str
    edges: np.ndarray
    levels: Optional[np.ndarray]
    centres: np.ndarray
    counts: np.ndarray        # per own bin
    missing: int


def _matrix(table, names) -> np.ndarray:
    """``[rows, len(names)]`` float32 of numeric columns (the table's own array when it has one)."""
    whole = getattr(table, "matrix", None)
    if whole is not None and list(names) == table.columns:
        return whole.astype(np.float32, copy=False)
    if not names:
        return np.zeros((table.num_rows, 0), np.float32)
    return np.stack([_numbers(table[n], n) for n in names], axis=1)


def _transposed(x: np.ndarray, out: np.ndarray, rows: int = 2048) -> np.ndarray:
    """``x.T`` written into ``out`` a band of rows at a time: each band stays in cache (8x faster)."""
    for r in range(0, x.shape[0], rows):
        out[:, r:r + rows] = x[r:r + rows].T
    return out


def _fit_numeric(x: np.ndarray, bins: int, binning: str) -> list:
    """``(kind, edges, levels, centres)`` per row of ``x [features, rows]`` (sorted in place).

    One vectorised sort gives every quantile, the distinct values and the
    number of non-missing values (NaN sorts last); it is many times faster
    than a selection per quantile.
    """
    x.sort(axis=1)
    present = np.count_nonzero(~np.isnan(x), axis=1)
    out = []
    for row, n in zip(x, present):
        row, missing = row[:n], x.shape[1] - n
        if n == 0:
            out.append(_Fitted("missing", np.zeros(0, np.float32), None, np.zeros(1, np.float32),
                               np.zeros(1, np.int64), missing))
            continue
        # Order statistics with more than `bins` distinct values settle it without a full scan.
        spread = row[np.linspace(0, n - 1, 4 * bins + 1).astype(np.int64)]
        changes = None if np.count_nonzero(spread[1:] != spread[:-1]) >= bins else \
            np.flatnonzero(row[1:] != row[:-1])
        if changes is not None and changes.size + 1 <= bins:
            first = np.concatenate([[0], changes + 1])
            distinct = row[first]
            out.append(_Fitted("values", np.arange(distinct.size, dtype=np.float32) + 0.5, distinct,
                               np.append(distinct, distinct[-1]), np.append(np.diff(np.append(first, n)), 0),
                               missing))
            continue
        lo, hi = row[0], row[-1]
        # The j / (2 bins) quantiles ("inverted_cdf": data values, so a value equal
        # to an edge lands in the same bin in float32 and float64): even j are edges,
        # odd j the middle of each bin's mass.
        q = row[np.maximum(np.ceil(np.arange(1, 2 * bins) / (2 * bins) * n).astype(np.int64) - 1, 0)]
        if binning == "quantile":
            edges = np.unique(q[1::2])
            edges = edges[edges > lo]
        else:
            # Infinities (clipped to the float32 extremes) go to the open outer bins.
            span = row[np.abs(row) < np.finfo(np.float32).max]
            span = span if span.size else row
            edges = np.unique(np.linspace(float(span[0]), float(span[-1]), bins + 1)[1:-1].astype(np.float32))
        edges = edges.astype(np.float32)
        # Rows below each edge, read off the sort: the kernel's `x < edge`, in float32 too.
        below = np.searchsorted(row, edges, side="left")
        out.append(_Fitted(binning, edges, None, _centres(edges, q[0::2], lo, hi),
                           np.diff(np.concatenate([[0], below, [n]])), missing))
    return out


def _centres(edges, middles, lo, hi) -> np.ndarray:
    """A value per bin for the Wasserstein distance: the reference's median inside it.

    ``middles`` are the quantiles at the middle of each nominal bin; a bin
    holding none of them (merged ties, fixed-width bins) uses its midpoint.
    """
    bounds = np.concatenate([[lo], edges, [hi]]).astype(np.float64)
    owner = np.searchsorted(edges, middles, side="right")
    centres = (bounds[:-1] + bounds[1:]) / 2
    for k in range(edges.size + 1):
        inside = middles[owner == k]
        if inside.size:
            centres[k] = inside[inside.size // 2]
    return centres.astype(np.float32)


def _is_numeric(values) -> bool:
    kind = np.asarray(values).dtype.kind if not hasattr(values, "cat") else "O"
    return kind in "iuf"


def _numbers(values, name) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"column {name!r} is binned as numeric but has non-numeric values "
            f"(e.g. {_first_non_numeric(values)!r}); mark it categorical.") from None
    # +inf belongs to the top bin and -inf to the bottom one; float32 keeps their order.
    return np.clip(x, np.finfo(np.float32).min, np.finfo(np.float32).max).astype(np.float32)


def _first_non_numeric(values):
    for v in values:
        try:
            float(v)
        except (TypeError, ValueError):
            return v
    return None


def _is_missing(values) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    return np.array([v is None or (isinstance(v, float) and v != v) for v in values], bool)


def _levels(values) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    present = values[~_is_missing(values)]
    kinds = {type(v) for v in present.tolist()}
    if len(kinds) > 1 and not kinds <= {int, float, bool, np.int64, np.float64, np.bool_}:
        # Mixed types (e.g. 1 and "1") would compare unpredictably: compare their text.
        present = np.array([str(v) for v in present], dtype=object)
    return np.array(sorted(set(present.tolist()), key=str), dtype=object)


def _codes(values, levels, name) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    missing = _is_missing(values)
    lookup = {v: i for i, v in enumerate(levels.tolist())}
    as_text = any(isinstance(v, str) for v in lookup)
    unseen = float(len(levels))
    codes = np.array(
        [np.nan if m else lookup.get(str(v) if as_text else v, unseen) for v, m in zip(values, missing)],
        np.float32)
    return codes


def _top_is_finite(x):
    """+inf into the top bin: no padding edge (+inf) may count it as below."""
    return jnp.minimum(x, jnp.finfo(x.dtype).max)


def rows_below(x, edges):
    """``[features, edges]`` int32: how many rows of ``x [rows, features]`` lie below each edge.

    NaN is below no edge. Keep ``x`` cache-sized (~1-4 MiB): the loop reads it once
    per edge, which on XLA:CPU is 2.5-3x faster at 1000 features than one
    compare of ``[rows, features, edges]`` summed over the rows. A block of up
    to 4096 rows sums in int16, exactly: twice the lanes per vector, about 20%
    faster than int32 at 100 and 1000 features (the 8192-row blocks of 10
    features were 12% slower in int16).
    """
    acc = jnp.int16 if x.shape[0] <= 4096 else jnp.int32
    below = jax.lax.map(lambda e: jnp.sum(x < e, axis=0, dtype=acc), edges.T).T
    return below.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("block",))
def _block_totals(x, edges, starts, lengths, *, block):
    """Per block of rows: rows below each edge, missing rows and all rows.

    ``x`` is ``[rows, features]``; block ``i`` is rows ``starts[i] ..
    starts[i] + lengths[i] - 1`` (``lengths <= block``). Returns
    ``[blocks, features, edges + 2]`` int32.
    """
    rows = x.shape[0]

    def one(start_length):
        start, length = start_length
        # dynamic_slice clamps a slice running past the end; the mask follows it.
        first = jnp.minimum(start, rows - block)
        rows_x = _top_is_finite(jax.lax.dynamic_slice_in_dim(x, first, block))
        index = first + jnp.arange(block)
        inside = ((index >= start) & (index < start + length))[:, None]
        # Rows outside the block become NaN: below no edge, and taken off the missing count.
        rows_x = jnp.where(inside, rows_x, jnp.nan)
        below = rows_below(rows_x, edges)
        missing = jnp.sum(jnp.isnan(rows_x), axis=0, dtype=jnp.int32) - (block - length)
        total = jnp.broadcast_to(length.astype(jnp.int32), missing.shape)
        return jnp.concatenate([below, missing[:, None], total[:, None]], axis=1)

    return jax.lax.map(one, (starts, lengths))


@jax.jit
def _window_counts(totals, first_block, end_block):
    """``[features, windows, B]`` counts of windows made of consecutive blocks."""
    cumulative = jnp.concatenate(
        [jnp.zeros_like(totals[:1]), jnp.cumsum(totals, axis=0, dtype=jnp.int32)])
    window = cumulative[end_block] - cumulative[first_block]       # [W, F, E + 2]
    below, missing, total = window[..., :-2], window[..., -2], window[..., -1]
    present = total - missing
    steps = jnp.concatenate(
        [jnp.zeros_like(present)[..., None], below, present[..., None]], axis=-1)
    counts = jnp.concatenate([jnp.diff(steps, axis=-1), missing[..., None]], axis=-1)
    return jnp.moveaxis(counts, 0, 1)


def count(bins: Bins, data, ranges: Optional[np.ndarray] = None, *, progress=None) -> jax.Array:
    """Counts of every feature in every window: ``[features, windows, B]`` int32.

    Args:
      bins: :class:`Bins` fitted on the reference.
      data: a table with the binned columns (or an array already encoded by
        :meth:`Bins.encode`).
      ranges: ``[windows, 2]`` row ranges ``[start, end)`` (they may overlap);
        default one window of all rows.
      progress: called as ``progress(done, total)`` after each slab of rows.

    Returns:
      ``[features, windows, B]`` int32 counts, ``B`` the largest number of bins
      of any feature plus the missing-value bin (absent bins count 0).

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0)}, bins=4)
      >>> drift.count(bins, {"x": np.array([1.0, 30.0, 60.0, 99.0, np.nan])}).tolist()
      [[[1, 1, 1, 1, 1]]]
    """
    x = data if isinstance(data, (np.ndarray, jax.Array)) and np.ndim(data) == 2 and \
        data.dtype == np.float32 else bins.encode(data)
    x = np.asarray(x)
    rows, features = x.shape
    ranges = np.array([[0, rows]]) if ranges is None else np.asarray(ranges, np.int64).reshape(-1, 2)
    if ranges.size and (ranges.min() < 0 or ranges.max() > rows or np.any(ranges[:, 1] < ranges[:, 0])):
        raise ValueError(f"window row ranges must lie in [0, {rows}] with start <= end.")
    if rows == 0 or ranges.shape[0] == 0 or ranges.max() == ranges.min():
        return jnp.zeros((len(bins.columns), ranges.shape[0], bins.num_bins), jnp.int32)
    bounds = np.unique(ranges)
    block = _block_size(np.diff(bounds), rows)
    first, last = int(bounds[0]), int(bounds[-1])
    slab = min(max(block, (1 << 24) // max(features, 1) // block * block), -(-(last - first) // block) * block)
    # Cut at every window boundary and slab boundary, then into blocks of at most `block` rows.
    cuts = np.union1d(bounds, np.arange(first, last, slab))
    pieces = [np.arange(a, b, block) for a, b in zip(cuts[:-1], cuts[1:])]
    starts = np.concatenate(pieces + [cuts[-1:]])
    lengths = np.minimum(np.diff(starts), block)
    starts = starts[:-1]
    owner = np.searchsorted(np.arange(first, last, slab), starts, side="right") - 1
    edges = jnp.asarray(bins.edges)
    # Slabs go through one reused host buffer of a fixed shape (one compiled kernel).
    buffer = _scratch("count", (max(slab, block), features))
    totals, slabs = [], -(-(last - first) // slab)
    for k in range(slabs):
        lo = first + k * slab
        n = min(slab, last - lo)
        buffer[:n] = x[lo:lo + n]
        mine = np.flatnonzero(owner == k)
        width = 1 << int(mine.size - 1).bit_length()        # few distinct shapes to compile
        local = np.zeros((2, width), np.int32)
        local[0, : mine.size] = starts[mine] - lo
        local[1, : mine.size] = lengths[mine]
        # A copy: XLA may not read a host buffer that is written again afterwards.
        out = _block_totals(jnp.array(buffer), edges, jnp.asarray(local[0]), jnp.asarray(local[1]),
                            block=block)
        totals.append(np.asarray(out[: mine.size]))          # waits: the buffer is reused next
        if progress is not None:
            progress(k + 1, slabs)
    boundaries = np.append(starts, last)
    first_block = np.searchsorted(boundaries, ranges[:, 0])
    end_block = np.searchsorted(boundaries, ranges[:, 1])
    return _window_counts(jnp.asarray(np.concatenate(totals)), jnp.asarray(first_block),
                          jnp.asarray(end_block))


_SCRATCH: dict = {}
_SCRATCH_KEPT = 1 << 28     # bytes kept between calls, per use


def _scratch(use: str, shape) -> np.ndarray:
    """A float32 host buffer reused across calls (up to 256 MiB per use).

    Fresh host memory has to be faulted in page by page, which costs more than
    the counting itself on some machines; a monitor calls the same sizes again.
    """
    size = int(np.prod(shape))
    kept = _SCRATCH.get(use)
    if kept is None or kept.size < size:
        kept = _aligned_empty((size,))
        if size * 4 <= _SCRATCH_KEPT:
            _SCRATCH[use] = kept
    return kept[:size].reshape(shape)


def _aligned_empty(shape, dtype=np.float32, align: int = 64) -> np.ndarray:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + size].view(dtype).reshape(shape)


def _block_size(pieces: np.ndarray, rows: int) -> int:
    """A power of two near the typical piece length: little padding, few blocks."""
    typical = int(np.median(pieces[pieces > 0])) if np.any(pieces > 0) else 1
    return int(min(1024, rows, max(8, 1 << max(typical, 1).bit_length() - 1)))
