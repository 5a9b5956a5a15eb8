"""Drift monitoring benchmarks: ``python3 benchmarks/report.py --drift [--quick] [--no-anchors]``.

The same data through ``jaxdiv.drift`` and, where they install, Evidently,
NannyML, alibi-detect, frouros, River and SciPy. Their pins conflict on pandas
and NumPy, so each gets its own environment in ``.venv-anchors/NAME`` (created
on first use; an anchor that fails to install is skipped, and the report says
so). Measured:

- speed of a full drift report (rows x features per second) at 100k x 100,
  and jaxdiv alone at 1M x 1000;
- each statistic against SciPy (float64) and float32 against float64, tiny
  drift included; the anchors' values on identical bins;
- false-alarm rate with no drift at window sizes 30 .. 10,000, and power
  against mean shifts and a new category;
- the streaming detectors' false alarms and delay against River's, and the
  streaming update's throughput.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANCHORS = {
    "evidently": ["evidently>=0.7", "pandas<3"],       # Evidently 0.7 fails to import on pandas 3
    "nannyml": ["nannyml>=0.13", "statsmodels>=0.14"],
    "alibi-detect": ["alibi-detect>=0.12"],
    "frouros": ["frouros>=0.9"],
    "river": ["river>=0.21"],
}
SIZES = (30, 50, 100, 1000, 10_000)
ALPHA = 0.05


def anchor_python(name: str, log) -> Path | None:
    """The anchor's interpreter, installing it on first use; None (and why, in ``log``) if it fails."""
    env = ROOT / ".venv-anchors" / name
    python = env / "bin" / "python"
    stamp = env / ".installed"
    wanted = " ".join(ANCHORS[name])
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *ANCHORS[name]],
                       check=True, capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        tail = (getattr(error, "stderr", "") or "").strip().splitlines()[-1:] or [str(error)]
        log.append(f"{name}: not installed ({tail[0][:200]})")
        return None
    stamp.write_text(wanted)
    return python


def run_anchor(name, task, data_path, log) -> dict:
    python = anchor_python(name, log)
    if python is None:
        return {}
    out = subprocess.run([str(python), str(ROOT / "benchmarks" / "drift_anchors.py"), name, task, str(data_path)],
                         capture_output=True, text=True, timeout=3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    log.append(f"{name} {task}: failed ({(out.stderr.strip().splitlines() or ['?'])[-1][:200]})")
    return {}


def _timed(fn, repeats=3):
    fn()
    best = np.inf
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def speed(quick, anchors, tmp, log):
    from scipy import stats

    from jaxdiv import drift

    rows, features = (20_000, 20) if quick else (100_000, 100)
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((rows, features), dtype=np.float32)
    cur = rng.standard_normal((rows, features), dtype=np.float32)
    cur[:, : features // 10] += 0.1
    began = time.perf_counter()
    drift.drift_report(ref, cur)
    cold = time.perf_counter() - began
    table = {"jaxdiv (compiled)": _timed(lambda: drift.drift_report(ref, cur)), "jaxdiv (first call)": cold,
             "SciPy ks_2samp(axis=0)": _timed(lambda: stats.ks_2samp(ref, cur, axis=0), 1)}
    path = tmp / "speed.npz"
    np.savez(path, ref=ref, cur=cur)
    for name in anchors:
        result = run_anchor(name, "speed", path, log)
        if "seconds" in result:
            table[{"evidently": "Evidently DataDriftPreset", "nannyml": "NannyML univariate JS",
                   "alibi-detect": "alibi-detect KSDrift", "frouros": "frouros PSI"}[name]] = result["seconds"]
    big = None
    if not quick:
        del ref, cur
        ref = rng.standard_normal((1_000_000, 1000), dtype=np.float32)
        cur = rng.standard_normal((1_000_000, 1000), dtype=np.float32)
        drift.drift_report(ref[:4096], cur[:4096])
        began = time.perf_counter()
        drift.drift_report(ref, cur)
        big = time.perf_counter() - began
        del ref, cur
    return {"rows": rows, "features": features, "seconds": table, "big_seconds": big}


def stream_throughput(quick):
    import jax

    from jaxdiv import drift

    rng = np.random.default_rng(1)
    out = {}
    for features in ((10, 100) if quick else (10, 100, 1000)):
        ref = rng.standard_normal((20_000, features), dtype=np.float32)
        bins = drift.fit_bins(ref)
        monitor = drift.Monitor(bins, ref)
        batch = rng.standard_normal((8192, features), dtype=np.float32)
        state = monitor.update(monitor.init(), batch)
        calls, runs = (10, 1) if quick else (10, 3)
        best = float("inf")
        for _ in range(runs):    # best of the runs: this machine is shared
            began = time.perf_counter()
            for _ in range(calls):
                state = monitor.update(state, batch)
            jax.block_until_ready(state)
            best = min(best, time.perf_counter() - began)
        out[features] = calls * batch.shape[0] / best
    return out


def accuracy():
    """Each statistic against SciPy in float64, and float32 against float64 (tiny drift too)."""
    import jax
    import jax.numpy as jnp

    from jaxdiv import drift
    from tests.test_drift import mp_statistic, reference_statistic

    rng = np.random.default_rng(2)
    a = rng.integers(0, 500, size=(50, 10)).astype(np.float64)
    b = rng.integers(0, 500, size=(50, 10)).astype(np.float64)
    tiny_a = np.array([250_000.0, 250_000.0, 300_000.0, 200_000.0])
    tiny_b = tiny_a + np.array([1.0, 0.0, -1.0, 0.0])
    centres = np.arange(10.0)
    out = {}
    for name in drift.STATISTICS:
        with jax.enable_x64(True):
            got = np.asarray(drift.statistic(name, jnp.asarray(a), jnp.asarray(b), centres=jnp.asarray(centres)))
            f64_tiny = mp_statistic(name, tiny_a, tiny_b, centres[:4])
        want = np.array([reference_statistic(name, a[i], b[i], centres) for i in range(50)])
        got32 = np.asarray(drift.statistic(name, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                           centres=jnp.asarray(centres, jnp.float32)), np.float64)
        tiny32 = float(drift.statistic(name, jnp.asarray(tiny_a, jnp.float32), jnp.asarray(tiny_b, jnp.float32),
                                       centres=jnp.asarray(centres[:4], jnp.float32)))
        naive = None
        if name == "kl":
            P, Q = (tiny_a + 0.5) / (tiny_a + 0.5).sum(), (tiny_b + 0.5) / (tiny_b + 0.5).sum()
            P32, Q32 = P.astype(np.float32), Q.astype(np.float32)
            naive = abs(float(np.sum(Q32 * np.log(Q32 / P32))) / f64_tiny - 1)
        out[name] = {"scipy_f64": float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))),
                     "f32": float(np.max(np.abs(got32 - want) / np.maximum(np.abs(want), 1e-300))),
                     "f32_tiny": abs(tiny32 / f64_tiny - 1), "tiny_value": f64_tiny, "naive_f32_tiny": naive}
    return out


def _null_windows(rng, n, count):
    return rng.standard_normal((count, n))


def calibration(quick, anchors, tmp, log):
    from jaxdiv import drift

    rng = np.random.default_rng(3)
    ref = rng.standard_normal(50_000)
    ours_windows = 400 if quick else 4000
    anchor_windows = 50 if quick else 200
    data = {"ref": ref, "sizes": np.array(SIZES)}
    false = {}
    # A p-value is calibrated over draws of both samples: with one shared reference the
    # windows' errors are correlated, so the windows are spread over several references.
    references = 4 if quick else 10
    for n in SIZES:
        flags = {}
        for k in range(references):
            reference = {"x": ref if k == 0 else rng.standard_normal(ref.size)}
            windows = _null_windows(rng, n, ours_windows // references)
            if k == 0:
                data[f"null_{n}"] = windows[:anchor_windows]
            current = {"x": windows.reshape(-1)}
            report = drift.drift_report(reference, current, window_size=n, correction="none",
                                        statistics=("js_distance", "psi"))
            row = {"jaxdiv chi2 p < 0.05": report.columns["p_value"] < ALPHA,
                   # The fixed thresholds others use, applied to jaxdiv's own exact values.
                   "PSI > 0.1 (fixed)": report.columns["psi"] > 0.1,
                   "JS distance > 0.1 (fixed)": report.columns["js_distance"] > 0.1}
            for test in ("g", "ks"):
                r = drift.drift_report(reference, current, window_size=n, correction="none",
                                       statistics=(test,), test=test)
                row[f"jaxdiv {test} p < 0.05"] = r.columns["p_value"] < ALPHA
            for rule, hit in row.items():
                flags.setdefault(rule, []).append(hit)
        false[str(n)] = {rule: float(np.mean(np.concatenate(hits))) for rule, hits in flags.items()}
    shifts = {}
    for n in (1000, 10_000):
        for s in (0.05, 0.1, 0.25):
            windows = rng.standard_normal((anchor_windows, n)) + s
            data[f"shift_{s}_{n}"] = windows
            report = drift.drift_report({"x": ref}, {"x": windows.reshape(-1)}, window_size=n, correction="none",
                                        statistics=("js_distance",))
            r_ks = drift.drift_report({"x": ref}, {"x": windows.reshape(-1)}, window_size=n, correction="none",
                                      statistics=("ks",), test="ks")
            shifts[f"shift_{s}_{n}"] = {"jaxdiv chi2 p < 0.05": float(np.mean(report.columns["p_value"] < ALPHA)),
                                        "jaxdiv ks p < 0.05": float(np.mean(r_ks.columns["p_value"] < ALPHA))}
    levels = np.array(list("abcde"))
    shares = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    cat_ref = rng.choice(levels, 50_000, p=shares)
    cat_cur = rng.choice(np.append(levels, "z"), (anchor_windows, 1000), p=np.append(shares * 0.95, 0.05))
    data["cat_ref"], data["cat_cur"] = cat_ref, cat_cur
    report = drift.drift_report({"c": cat_ref}, {"c": cat_cur.reshape(-1)}, window_size=1000, correction="none")
    shifts["new_category"] = {"jaxdiv chi2 p < 0.05": float(np.mean(report.columns["p_value"] < ALPHA))}
    path = tmp / "calibration.npz"
    np.savez(path, **data)
    for name in anchors:
        for n, row in run_anchor(name, "false_alarms", path, log).items():
            false[n].update(row)
        for key, row in run_anchor(name, "power", path, log).items():
            shifts.setdefault(key, {}).update(row)
    return {"false_alarms": false, "power": shifts, "windows": ours_windows, "anchor_windows": anchor_windows}


def streaming(quick, anchors, tmp, log):
    import jax
    import jax.numpy as jnp

    from jaxdiv import drift

    rng = np.random.default_rng(4)
    count, length, change, window = (4, 20_000, 10_000, 100) if quick else (20, 40_000, 20_000, 100)
    streams = rng.standard_normal((count, length))
    streams[:, change:] += 0.5
    reference = {"x": rng.standard_normal(20_000)}
    bins = drift.fit_bins(reference)
    monitor = drift.Monitor(bins, reference).calibrate(window=window, arl=1000)
    step = jax.jit(lambda s, c: monitor.close_window(s._replace(current=c)))
    result = {}
    for detector in ("cusum", "page_hinkley"):
        false, delays = 0, []
        for s in streams:
            counts = np.asarray(drift.count(bins, s.astype(np.float32)[:, None],
                                            drift.tumbling(length, window).ranges))[0]
            state, found = monitor.init(), None
            for w, c in enumerate(jnp.asarray(counts, jnp.float32)):
                state, out = step(state, c)
                alarm = bool((out.cusum_alarm if detector == "cusum" else out.ph_alarm)[0])
                if alarm and (w + 1) * window <= change:
                    false += 1
                elif alarm and w * window >= change:
                    found = (w + 1) * window - change
                    break
            delays.append(found)
        hit = [d for d in delays if d is not None]
        result[f"jaxdiv {detector} (ARL 1000 windows)"] = {
            "false_alarms_per_100k": false / (count * change) * 1e5, "detected": len(hit) / count,
            "median_delay": float(np.median(hit)) if hit else None}
    path = tmp / "stream.npz"
    np.savez(path, streams=streams, change=np.array(change))
    if "river" in anchors:
        result.update(run_anchor("river", "stream", path, log))
    return result


def agreement(anchors, tmp, log):
    import jax.numpy as jnp

    from jaxdiv import drift

    rng = np.random.default_rng(5)
    shares = np.array([0.2, 0.15, 0.15, 0.1, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02])
    ref = rng.choice(10, 10_000, p=shares)
    cur = rng.choice(10, 5_000, p=np.roll(shares, 1) * 0.3 + shares * 0.7)
    a = np.bincount(ref, minlength=10).astype(np.float32)
    b = np.bincount(cur, minlength=10).astype(np.float32)
    ours = {name: float(drift.statistic(name, jnp.asarray(a), jnp.asarray(b), eps=0.0))
            for name in ("psi", "reverse_kl", "kl", "js_distance", "js")}
    path = tmp / "agree.npz"
    np.savez(path, agree_ref=ref, agree_cur=cur)
    theirs = {}
    for name in anchors:
        if name in ("evidently", "nannyml"):
            for k, v in run_anchor(name, "agreement", path, log).items():
                theirs[f"{name} {k}"] = v
    return {"ours": ours, "theirs": theirs}


def markdown(r) -> str:
    lines = ["# Drift monitoring benchmark", "", f"`{r['command']}` on {r['machine']}, {r['date']}.", ""]
    s = r["speed"]
    ours = s["seconds"]["jaxdiv (compiled)"]
    lines += [f"## Full drift report, {s['rows']:,} reference + {s['rows']:,} current rows x {s['features']} features",
              "", "| tool | seconds | rows x features / s | jaxdiv is faster by |", "|---|---:|---:|---:|"]
    cells = s["rows"] * 2 * s["features"]
    for name, sec in sorted(s["seconds"].items(), key=lambda kv: kv[1]):
        lines.append(f"| {name} | {sec:.3f} | {cells / sec:,.0f} | {sec / ours:.1f}x |")
    if s["big_seconds"]:
        lines += ["", f"jaxdiv at 1M + 1M rows x 1000 features: {s['big_seconds']:.1f} s "
                      f"({2e9 / s['big_seconds']:,.0f} rows x features / s)."]
    lines += ["", "Streaming update (`Monitor.update` of NumPy float32 batches of 8192 rows, 10 bins;"
              " best of three runs of 10 updates):", "",
              "| features | rows / s |", "|---:|---:|"]
    lines += [f"| {f} | {v:,.0f} |" for f, v in r["stream_throughput"].items()]
    lines += ["", "## Accuracy", "", "Max relative error against SciPy / the definitions in float64 (50 random "
              "count pairs), of float32 against them, and of float32 at a tiny drift (one row of 1M moved) "
              "against 40-digit mpmath.", "", "| statistic | float64 vs SciPy | float32 | float32, tiny drift | tiny value |",
              "|---|---:|---:|---:|---:|"]
    for name, v in r["accuracy"].items():
        lines.append(f"| {name} | {v['scipy_f64']:.1e} | {v['f32']:.1e} | {v['f32_tiny']:.1e} | {v['tiny_value']:.3g} |")
    naive = r["accuracy"]["kl"]["naive_f32_tiny"]
    lines += ["", f"The naive float32 `sum(q * log(q / p))` at that tiny drift: relative error {naive:.1e}."]
    ag = r["agreement"]
    if ag["theirs"]:
        lines += ["", "Same 10 categories on both sides (identical bins, no empty bin), jaxdiv with `eps=0`: "
                      + ", ".join(f"{k} {v:.6g}" for k, v in ag["ours"].items()) + "; theirs: "
                      + ", ".join(f"{k} {v:.6g}" for k, v in ag["theirs"].items()) + "."]
    c = r["calibration"]
    rules = sorted({k for row in c["false_alarms"].values() for k in row})
    lines += ["", f"## False alarms with no drift (alpha = {ALPHA}; jaxdiv {c['windows']} windows per size, "
                  f"anchors {c['anchor_windows']})", "",
              "Share of windows flagged. jaxdiv's p-values are uncorrected here (one test per window), so the "
              f"right answer is {ALPHA}; three Monte-Carlo standard errors at {c['windows']} windows are "
              f"{3 * np.sqrt(ALPHA * (1 - ALPHA) / c['windows']):.3f}.", "",
              "| rule | " + " | ".join(f"n={n}" for n in c["false_alarms"]) + " |",
              "|---|" + "---:|" * len(c["false_alarms"])]
    for rule in rules:
        lines.append(f"| {rule} | " + " | ".join(
            f"{row[rule]:.3f}" if rule in row else "-" for row in c["false_alarms"].values()) + " |")
    prules = sorted({k for row in c["power"].values() for k in row})
    lines += ["", "## Power (share of drifted windows flagged)", "",
              "| rule | " + " | ".join(c["power"]) + " |", "|---|" + "---:|" * len(c["power"])]
    for rule in prules:
        lines.append(f"| {rule} | " + " | ".join(
            f"{row[rule]:.2f}" if rule in row else "-" for row in c["power"].values()) + " |")
    lines += ["", "## Streaming detectors (mean shift of 0.5 sigma)", "",
              "| detector | false alarms / 100k values | detected | median delay (values) | updates / s |",
              "|---|---:|---:|---:|---:|"]
    for name, v in r["streaming"].items():
        delay = "-" if v.get("median_delay") is None else f"{v['median_delay']:.0f}"
        ups = f"{v['updates_per_s']:,.0f}" if "updates_per_s" in v else "-"
        lines.append(f"| {name} | {v['false_alarms_per_100k']:.1f} | {v['detected']:.2f} | {delay} | {ups} |")
    if r["log"]:
        lines += ["", "Skipped or failed: " + "; ".join(r["log"])]
    return "\n".join(lines) + "\n"


def report(out: Path, quick: bool = False, anchors=tuple(ANCHORS)) -> str:
    import platform

    log: list = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = {"command": "python3 benchmarks/report.py --drift" + (" --quick" if quick else ""),
             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
             "date": time.strftime("%Y-%m-%d"),
             "speed": speed(quick, anchors, tmp, log), "stream_throughput": stream_throughput(quick),
             "accuracy": accuracy(), "agreement": agreement(anchors, tmp, log),
             "calibration": calibration(quick, anchors, tmp, log),
             "streaming": streaming(quick, anchors, tmp, log)}
    r["log"] = log
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(r, indent=1, default=str))
    text = markdown(r)
    (out / "drift.md").write_text(text)
    return text
