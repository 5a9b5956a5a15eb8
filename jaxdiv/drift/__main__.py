"""``python -m jaxdiv.drift REFERENCE CURRENT``: a drift report of two CSV or Parquet files.

Exit status: 0 when nothing drifted, 1 when something did, 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys

import numpy as np

from jaxdiv.drift import _multiple, _pvalues, _report, _statistics, _windows


def read_table(path: str, time_column=None) -> dict:
    """The columns of a CSV or Parquet file; pandas / pyarrow are used when installed."""
    if path.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"reading {path} needs pyarrow: pip install 'jaxdiv[drift]'.") from None
        table = pq.read_table(path)
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    else:
        try:
            import pandas as pd
        except ImportError:
            columns = _read_csv_plain(path)
        else:
            frame = pd.read_csv(path)
            from jaxdiv.drift._table import as_table
            table = as_table(frame)
            columns = {c: table[c] for c in table.columns}
    if time_column is not None:
        if time_column not in columns:
            raise ValueError(f"no time column {time_column!r} in {path} (columns: {list(columns)[:20]}).")
        columns[time_column] = _times(columns[time_column], time_column)
    return columns


def _read_csv_plain(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty.")
    header, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(header):
        cells = [r[j] if j < len(r) else "" for r in body]
        try:
            out[name] = np.array([float(c) if c.strip() else np.nan for c in cells])
        except ValueError:
            out[name] = np.array([c if c != "" else None for c in cells], dtype=object)
    return out


def _times(values, name):
    values = np.asarray(values)
    if values.dtype.kind in "iufM":
        return values
    try:
        return np.array(values, dtype="datetime64[ns]")
    except ValueError:
        raise ValueError(f"time column {name!r} holds neither numbers nor ISO dates "
                         f"(e.g. {values[0]!r}).") from None


_UNITS = {"ms": "ms", "s": "s", "sec": "s", "min": "m", "m": "m", "h": "h", "hour": "h", "d": "D", "day": "D"}


def _period(text: str, times):
    if times.dtype.kind != "M":
        return float(text)
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]+)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"period {text!r}: expected e.g. 30s, 15min, 1h, 7d.")
    return np.timedelta64(int(match.group(1)), _UNITS[match.group(2)])


def _names(text):
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxdiv.drift",
        description="Compare CURRENT data (or each of its windows) with REFERENCE, feature by feature. "
                    "Exit status: 0 no drift, 1 drift, 2 bad input.")
    parser.add_argument("reference", help="CSV or Parquet file of reference rows")
    parser.add_argument("current", help="CSV or Parquet file of rows to check")
    parser.add_argument("--columns", help="comma-separated features (default: all but the time column)")
    parser.add_argument("--categorical", help="comma-separated numeric columns to treat as categorical")
    parser.add_argument("--bins", type=int, default=10, help="bins per continuous feature (default 10)")
    parser.add_argument("--binning", choices=("quantile", "width"), default="quantile")
    parser.add_argument("--statistics", default=",".join(_report.DEFAULT_STATISTICS),
                        help=f"comma-separated, among {','.join(_statistics.STATISTICS)}")
    parser.add_argument("--test", default="chi2", choices=tuple(_statistics.STATISTICS),
                        help="the statistic whose p-value decides drift (default chi2)")
    parser.add_argument("--method", choices=_pvalues.METHODS, default="asymptotic")
    parser.add_argument("--resamples", type=int, default=999, help="bootstrap resamples (default 999)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--correction", choices=_multiple.CORRECTIONS, default="holm")
    parser.add_argument("--window-size", type=int, help="rows per window of the current data")
    parser.add_argument("--stride", help="rows (or a duration with --period) between window starts")
    parser.add_argument("--time-column", help="timestamp column for time windows")
    parser.add_argument("--period", help="time window length, e.g. 1h, 15min (numbers for numeric times)")
    parser.add_argument("--reference-mode", choices=_windows.REFERENCES, default="fixed")
    parser.add_argument("--k", type=int, help="windows in a rolling reference")
    parser.add_argument("--half-life", type=float, help="windows, for a decayed reference")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--output", "-o", help="write the result here instead of standard output")
    parser.add_argument("--plot", help="PNG file: each feature's test statistic over windows and its threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        reference = read_table(args.reference)
        current = read_table(args.current, args.time_column)
        stride = args.stride
        if stride is not None:
            stride = _period(stride, current[args.time_column]) if args.period else int(stride)
        period = _period(args.period, current[args.time_column]) if args.period and args.time_column \
            else args.period
        if args.time_column in reference:
            reference = {k: v for k, v in reference.items() if k != args.time_column}
        report = _report.drift_report(
            reference, current, columns=_names(args.columns), categorical=_names(args.categorical) or (),
            bins=args.bins, binning=args.binning, statistics=_names(args.statistics), test=args.test,
            method=args.method, alpha=args.alpha, correction=args.correction,
            window_size=args.window_size, stride=stride, time_column=args.time_column, period=period,
            reference_mode=args.reference_mode, k=args.k, half_life=args.half_life,
            resamples=args.resamples, seed=args.seed,
            progress=None if args.quiet else _report.progress_bar())
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = {"table": lambda: report.format(max_rows=10**9) + "\n", "csv": report.to_csv,
            "json": report.to_json}[args.format]()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.plot:
        try:
            report.plot(args.plot)
        except ImportError:
            print("error: --plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
    return 1 if report.drift else 0


if __name__ == "__main__":
    sys.exit(main())
