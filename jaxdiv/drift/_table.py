"""Tables of named columns from pandas, a mapping or a 2-d array, without requiring pandas."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np


class Table:
    """Named 1-d columns of equal length."""

    def __init__(self, columns: Mapping[str, np.ndarray], matrix: Optional[np.ndarray] = None):
        self._columns = dict(columns)
        self.matrix = matrix          # the [rows, columns] array the columns are views of, if any
        lengths = {name: len(v) for name, v in self._columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns have different lengths: {lengths}.")
        self.num_rows = next(iter(lengths.values()), 0)

    @property
    def columns(self) -> list:
        return list(self._columns)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __contains__(self, name) -> bool:
        return name in self._columns

    def select(self, columns: Optional[Sequence[str]], *, without: Sequence[str] = ()) -> list:
        """The named columns (default: all but ``without``), checked to exist."""
        if columns is None:
            return [c for c in self._columns if c not in without]
        columns = list(columns)
        missing = [c for c in columns if c not in self._columns]
        if missing:
            raise ValueError(f"no column {missing} here; the columns are {self.columns[:20]}.")
        if len(set(columns)) != len(columns):
            raise ValueError(f"columns are repeated: {columns}.")
        return columns


def as_table(data) -> Table:
    """A :class:`Table` of a pandas DataFrame, a mapping of columns, or a 2-d array."""
    if isinstance(data, Table):
        return data
    if hasattr(data, "columns") and hasattr(data, "iloc"):      # pandas, without importing it
        return Table({str(c): _column(data[c]) for c in data.columns})
    if isinstance(data, Mapping):
        return Table({str(k): np.asarray(v) for k, v in data.items()})
    array = np.asarray(data)
    if array.ndim != 2:
        raise ValueError(
            f"expected a table: a DataFrame, a mapping of columns or a 2-d array "
            f"[rows, features]; got an array of shape {array.shape}.")
    matrix = array if array.dtype.kind in "iuf" else None
    return Table({f"x{j}": array[:, j] for j in range(array.shape[1])}, matrix)


def _column(series) -> np.ndarray:
    if hasattr(series, "cat"):                                    # pandas categorical
        return np.asarray(series.astype(object))
    if getattr(series.dtype, "kind", "O") in "iuf":               # nullable Int64 too
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = series.to_numpy()
    if values.dtype.kind != "b" and values.dtype != object:
        values = values.astype(object)
    return values
