"""The benchmark report: ``python3 benchmarks/report.py [options]``.

On first use it creates ``.venv`` and installs what it needs. It times every
case of ``benchmarks/cases.py`` (jaxdiv, optax, naive NumPy and a roofline
proxy; forward and forward+backward), measures compiled temporary memory and
float32 accuracy against float64, prints a table and writes ``results.json``
and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="rows of the categorical kernels")
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--gaussian-batch", type=int, default=65536)
    parser.add_argument("--gaussian-dims", type=int, default=256)
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="subset of: kl ce_labels gaussian_kl js tv hellinger ce_options distill")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats: a smoke run")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark-results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.classes, args.repeats = 256, 1024, 2
        args.gaussian_batch, args.gaussian_dims = 1024, 64
    return args


def machine() -> dict:
    import jax
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for name in ("jaxlib", "optax", "scipy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "versions": versions,
    }


def run(args) -> dict:
    from benchmarks import cases

    kernels = args.kernels or list(cases.KERNELS)
    impls = list(cases.IMPLS)
    sizes = {k: (args.rows, args.classes) for k in kernels}
    sizes["gaussian_kl"] = (args.gaussian_batch, args.gaussian_dims)
    results = []
    total = len(kernels) * len(args.modes) * len(impls)
    done = 0
    for kernel in kernels:
        inputs = cases.make_inputs(*sizes[kernel])
        array_bytes = sizes[kernel][0] * sizes[kernel][1] * inputs.p[0].dtype.itemsize
        for mode in args.modes:
            for impl in impls:
                done += 1
                print(f"[{done:2d}/{total}] {kernel:10s} {mode:8s} {impl:9s}", end=" ", flush=True)
                calls = cases.callables(kernel, impl, mode, inputs)
                if calls is None:
                    print("n/a")
                    continue
                seconds = cases.median_time(calls, args.repeats)
                row = {"kernel": kernel, "mode": mode, "impl": impl, "seconds": seconds,
                       "shape": list(sizes[kernel]), "array_bytes": array_bytes,
                       "temp_bytes": cases.temp_bytes(kernel, impl, mode, inputs)}
                if mode == "fwd" and not args.no_accuracy:
                    row["rel_err_ordinary"] = cases.relative_error(kernel, impl, "ordinary")
                    row["rel_err_near"] = cases.relative_error(kernel, impl, "near")
                results.append(row)
                print(f"{seconds * 1e3:9.1f} ms")
    _add_ratios(results)
    sweep = [] if args.no_accuracy else cases.kl_accuracy_sweep()
    return {
        "kl_accuracy_sweep": sweep,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"rows": args.rows, "classes": args.classes,
                   "gaussian": [args.gaussian_batch, args.gaussian_dims], "dtype": "float32",
                   "repeats": args.repeats},
        "results": results,
    }


def _add_ratios(results):
    """time(baseline) / time(jaxdiv) per kernel and mode: > 1 means jaxdiv is faster."""
    by_case = {(r["kernel"], r["mode"], r["impl"]): r for r in results}
    for r in results:
        ours = by_case.get((r["kernel"], r["mode"], "jaxdiv"))
        if ours and r["impl"] != "jaxdiv":
            r["jaxdiv_speedup"] = r["seconds"] / ours["seconds"]
        roof = by_case.get((r["kernel"], r["mode"], "roofline"))
        if roof and r["impl"] != "roofline":
            r["vs_roofline"] = r["seconds"] / roof["seconds"]


def _options_overhead(results) -> dict:
    """time(ce_options) / time(ce_labels) for jaxdiv, per mode."""
    t = {(r["kernel"], r["mode"]): r["seconds"] for r in results if r["impl"] == "jaxdiv"}
    return {mode: t[("ce_options", mode)] / t[("ce_labels", mode)]
            for (kernel, mode) in t if kernel == "ce_options" and ("ce_labels", mode) in t}


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def markdown(report) -> str:
    from benchmarks import cases

    cfg, m = report["config"], report["machine"]
    lines = [
        f"jaxdiv benchmark, {cfg['rows']} x {cfg['classes']} (Gaussian: {cfg['gaussian'][0]} x "
        f"{cfg['gaussian'][1]}) {cfg['dtype']}, "
        f"{m['platform']} ({m['cpu']}, {m['cores']} cores), median of {cfg['repeats']}, {report['date']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "| kernel | shape | mode | impl | median | jaxdiv speed-up | / roofline | temp memory "
        "| rel. err. ordinary | rel. err. nearly equal |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        temp = r.get("temp_bytes")
        temp_s = "-" if temp is None else f"{temp / 2**20:.1f} MiB ({100 * temp / r['array_bytes']:.1f}%)"
        impl = cases.BASELINE_NAME[r["kernel"]] if r["impl"] == "optax" else r["impl"]
        lines.append(
            f"| {r['kernel']} | {r['shape'][0]}x{r['shape'][1]} | {r['mode']} | {impl} | {r['seconds'] * 1e3:.1f} ms "
            f"| {_fmt(r.get('jaxdiv_speedup'), '.2f')}x | {_fmt(r.get('vs_roofline'), '.2f')}x "
            f"| {temp_s} | {_fmt(r.get('rel_err_ordinary'), '.1e')} | {_fmt(r.get('rel_err_near'), '.1e')} |"
        )
    overhead = _options_overhead(report["results"])
    if overhead:
        lines += ["", "Cross-entropy options (smoothing + z-loss + ignore index) over plain "
                  "integer-label cross-entropy, jaxdiv: " + ", ".join(
                      f"{mode} {ratio:.2f}x" for mode, ratio in overhead.items())]
    if report.get("kl_accuracy_sweep"):
        lines += [
            "",
            "KL accuracy as Q approaches P (q = p + eps * noise, 64 x 4096 float32; max relative "
            "error against float64, and how many of the 64 values came out negative):",
            "",
            "| eps | median KL | jaxdiv | optax | naive NumPy |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in report["kl_accuracy_sweep"]:
            cells = [
                f"{r[k]:.1e}" + (f" ({r[k + '_negative']} < 0)" if r[k + "_negative"] else "")
                for k in ("jaxdiv", "optax", "numpy")
            ]
            lines.append(f"| {r['eps']:.0e} | {r['kl']:.1e} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "jaxdiv speed-up = baseline time / jaxdiv time (> 1: jaxdiv is faster). "
        "/ roofline = time / the roofline proxy's time. temp memory = XLA's compiled "
        "temporary buffers, and in brackets their share of one logits array. Relative errors "
        "are float32 against float64 on the same inputs (64 x 4096); 'nearly equal' is "
        "q = p + 1e-4 noise for KL, JS, TV and Hellinger, confident predictions (logit scale 20) for CE, and a "
        "posterior within 1e-4 of the prior for the Gaussian KL, whose baseline is the "
        "hand-written VAE formula -0.5*sum(1 + v - m^2 - e^v) (optax has none); JS, TV and "
        "Hellinger are compared with the same formulas hand-written in JAX (JS's mixture "
        "through logaddexp) and with SciPy's jensenshannon (float64, squared). ce_options is "
        f"softmax_cross_entropy with label smoothing {cases.SMOOTHING}, z-loss {cases.Z_LOSS} and "
        "every tenth label ignored, against optax's smoothed one-hot composition with a mask and "
        f"a logsumexp; distill is the forward-KL distillation loss at temperature "
        f"{cases.TEMPERATURE} (value and the student's gradient) against "
        "optax.kl_divergence of the tempered softmaxes.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "results.md").write_text(table)
    print()
    print(table)
    print(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


if __name__ == "__main__":
    from benchmarks._env import ensure_venv

    ensure_venv()
    main()
