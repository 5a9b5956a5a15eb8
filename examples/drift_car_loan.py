"""Data drift on NannyML's synthetic car-loan dataset: reference period against analysis chunks.

    .venv/bin/python -m examples.drift_car_loan [--chunk 5000] [--plot drift.png]

The data come inside NannyML's package (its wheel is fetched once from the
package index with ``pip download --no-deps``, never installed, so NannyML's
pins do not touch this environment). The analysis period has 50,000 loans in
time order; NannyML documents drift in its second half. Every feature of every
chunk is compared with the reference through ``jaxdiv.drift.drift_report``:
Pearson's chi-squared p-value with Holm's correction over features x chunks,
so 0.05 bounds the chance of any false alert in the whole table.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from jaxdiv import drift

WHEEL = "nannyml==0.13.1"
CACHE = Path.home() / ".cache" / "jaxdiv" / "wheels"
FEATURES = ["car_value", "salary_range", "debt_to_income_ratio", "loan_length",
            "repaid_loan_on_prev_car", "size_of_downpayment", "driver_tenure"]


def nannyml_table(name: str) -> dict:
    """A CSV shipped inside NannyML's wheel, as columns (numbers where a column parses as numbers)."""
    wheels = sorted(CACHE.glob("nannyml-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                        "-d", str(CACHE), WHEEL], check=True)
        wheels = sorted(CACHE.glob("nannyml-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        text = z.read(f"nannyml/datasets/data/{name}.csv").decode()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    columns = {}
    for j, column in enumerate(header):
        cells = [r[j] for r in body]
        try:
            columns[column] = np.array([float(c) if c else np.nan for c in cells])
        except ValueError:
            columns[column] = np.array(cells, dtype=object)
    return columns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=5000, help="analysis rows per chunk")
    parser.add_argument("--plot", help="PNG of each feature's chi-squared statistic over chunks")
    args = parser.parse_args(argv)
    reference = nannyml_table("synthetic_car_loan_reference")
    analysis = nannyml_table("synthetic_car_loan_analysis")
    report = drift.drift_report(
        {f: reference[f] for f in FEATURES}, {f: analysis[f] for f in FEATURES},
        window_size=args.chunk, statistics=("js_distance", "psi", "chi2"),
        categorical=["repaid_loan_on_prev_car"])
    c = report.columns
    chunks = sorted(set(c["window"].tolist()))
    print(f"{len(reference['car_value']):,} reference loans; {len(analysis['car_value']):,} analysis loans "
          f"in {len(chunks)} chunks of {args.chunk:,}")
    print("Holm-adjusted chi-squared p-values (* = drift at 0.05):")
    print(f"{'feature':>24}  " + "  ".join(f"{w:>8d}" for w in chunks))
    for feature in FEATURES:
        rows = [i for i, f in enumerate(c["feature"]) if f == feature]
        cells = [f"{c['p_adjusted'][i]:7.1e}{'*' if c['drift'][i] else ' '}" for i in rows]
        print(f"{feature:>24}  " + "  ".join(cells))
    flagged = sorted({w for _, w in report.drifted})
    print(f"chunks with drift: {flagged} (dataset p-value {report.dataset_p_value:.2g})")
    if args.plot:
        report.plot(args.plot)
        print(f"written: {args.plot}")
    return report


if __name__ == "__main__":
    main()
