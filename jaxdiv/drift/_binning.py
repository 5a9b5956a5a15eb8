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

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.drift._table import Table, as_table

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
        mean inside it), for the binned Wasserstein distance.
    """

    columns: tuple
    kinds: tuple
    edges: np.ndarray
    n_bins: np.ndarray
    levels: tuple
    centres: np.ndarray

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
        """``[rows, features]`` float32 values to count: numbers, or level codes."""
        table = as_table(data)
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise ValueError(
                f"columns {missing} were binned on the reference but are not in the "
                f"data (its columns: {list(table.columns)[:20]}).")
        out = np.empty((table.num_rows, len(self.columns)), np.float32)
        for j, (name, kind, levels) in enumerate(zip(self.columns, self.kinds, self.levels)):
            values = table[name]
            if kind in ("values", "levels"):
                out[:, j] = _codes(values, levels, name)
            else:
                out[:, j] = _numbers(values, name)
        return out


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
    the default; repeated quantiles merge, so heavily tied data gets fewer bins)
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
    fitted = [_fit_one(name, table[name], bins, binning, name in categorical) for name in columns]
    width = max(len(edges) for _, edges, _, _ in fitted) + 2
    edges = np.full((len(columns), width - 2), np.inf, np.float32)
    centres = np.zeros((len(columns), width), np.float32)
    for j, (_, e, _, c) in enumerate(fitted):
        edges[j, : len(e)] = e
        centres[j, : len(c)] = c
        centres[j, len(c):] = c[-1] if len(c) else 0.0
    return Bins(
        columns=tuple(columns),
        kinds=tuple(kind for kind, _, _, _ in fitted),
        edges=edges,
        n_bins=np.array([len(e) + 1 for _, e, _, _ in fitted]),
        levels=tuple(levels for _, _, levels, _ in fitted),
        centres=centres,
    )


def _fit_one(name, values, bins, binning, categorical):
    """``(kind, edges, levels, centres)`` of one feature."""
    if categorical or not _is_numeric(values):
        levels = _levels(values)
        # Codes 0..k-1 for the levels, k for unseen: edges halfway between codes.
        return "levels", np.arange(len(levels), dtype=np.float32) + 0.5, levels, np.arange(len(levels) + 1.0)
    x = _numbers(values, name)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return "missing", np.zeros(0, np.float32), None, np.zeros(1, np.float32)
    distinct = np.unique(x)
    if distinct.size <= bins:
        return "values", np.arange(distinct.size, dtype=np.float32) + 0.5, distinct, np.append(distinct, distinct[-1])
    if binning == "quantile":
        # Edges are data values ("inverted_cdf"), so a value equal to an edge
        # lands in the same bin in float32 and float64.
        edges = np.unique(np.quantile(x, np.arange(1, bins) / bins, method="inverted_cdf"))
        edges = edges[edges > distinct[0]]
    else:
        edges = np.unique(np.linspace(distinct[0], distinct[-1], bins + 1)[1:-1].astype(np.float32))
    index = np.searchsorted(edges, x, side="right")
    sums = np.bincount(index, weights=x, minlength=edges.size + 1)
    counts = np.bincount(index, minlength=edges.size + 1)
    bounds = np.concatenate([[distinct[0]], edges, [distinct[-1]]])
    middle = (bounds[:-1] + bounds[1:]) / 2
    centres = np.where(counts > 0, sums / np.maximum(counts, 1), middle)
    return binning, edges.astype(np.float32), None, centres.astype(np.float32)


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
        rows_x = jax.lax.dynamic_slice_in_dim(x, first, block)
        index = first + jnp.arange(block)
        inside = ((index >= start) & (index < start + length))[:, None]
        # Float sums of 0/1 are exact below 2^24 rows and vectorise best on XLA:CPU.
        below = jnp.where((rows_x[:, :, None] < edges) & inside[:, :, None], 1.0, 0.0).sum(0)
        missing = jnp.where(jnp.isnan(rows_x) & inside, 1.0, 0.0).sum(0)
        total = jnp.broadcast_to(length.astype(jnp.int32), missing.shape)
        return jnp.concatenate(
            [below.astype(jnp.int32), missing.astype(jnp.int32)[:, None], total[:, None]], axis=1)

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


def count(bins: Bins, data, ranges: Optional[np.ndarray] = None) -> jax.Array:
    """Counts of every feature in every window: ``[features, windows, B]`` int32.

    Args:
      bins: :class:`Bins` fitted on the reference.
      data: a table with the binned columns (or an array already encoded by
        :meth:`Bins.encode`).
      ranges: ``[windows, 2]`` row ranges ``[start, end)`` (they may overlap);
        default one window of all rows.
    """
    x = data if isinstance(data, (np.ndarray, jax.Array)) and np.ndim(data) == 2 and \
        np.asarray(data).dtype == np.float32 and not isinstance(data, Table) else bins.encode(data)
    rows = x.shape[0]
    ranges = np.array([[0, rows]]) if ranges is None else np.asarray(ranges, np.int64).reshape(-1, 2)
    if ranges.size and (ranges.min() < 0 or ranges.max() > rows or np.any(ranges[:, 1] < ranges[:, 0])):
        raise ValueError(f"window row ranges must lie in [0, {rows}] with start <= end.")
    if rows == 0 or ranges.shape[0] == 0:
        return jnp.zeros((len(bins.columns), ranges.shape[0], bins.num_bins), jnp.int32)
    bounds = np.unique(ranges)
    block = _block_size(np.diff(bounds), rows)
    # Cut the rows at every window boundary, then into blocks of at most `block` rows.
    pieces = [np.arange(a, b, block) for a, b in zip(bounds[:-1], bounds[1:])]
    starts = np.concatenate(pieces + [bounds[-1:]])
    lengths = np.minimum(np.diff(starts), block)
    totals = _block_totals(jnp.asarray(x), jnp.asarray(bins.edges), jnp.asarray(starts[:-1], jnp.int32),
                           jnp.asarray(lengths, jnp.int32), block=block)
    first = np.searchsorted(starts, ranges[:, 0])
    end = np.searchsorted(starts, ranges[:, 1])
    return _window_counts(totals, jnp.asarray(first), jnp.asarray(end))


def _block_size(pieces: np.ndarray, rows: int) -> int:
    """A power of two near the typical piece length: little padding, few blocks."""
    typical = int(np.median(pieces[pieces > 0])) if np.any(pieces > 0) else 1
    return int(min(1024, rows, max(8, 1 << max(typical, 1).bit_length() - 1)))
