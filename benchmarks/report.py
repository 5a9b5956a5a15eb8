"""The benchmark report: ``python3 benchmarks/report.py [options]``.

On first use it creates ``.venv`` and installs what it needs. It detects the
device, times every kernel of ``benchmarks/cases.py`` against its baselines
(optax or hand-written JAX, PyTorch when installed, naive NumPy, SciPy) and a
roofline proxy, forward and forward+backward, sweeps the headline kernels over
sizes and dtypes, measures compiled memory, achieved bandwidth and float32
accuracy against float64, prints a summary and writes ``results.json``,
``results.md`` and PNG plots into ``--out``.

``--accelerator-model`` runs the accelerator-model report instead
(``benchmarks/accelerator_model.py``): no timing, compiles only.
``--many-devices`` runs the many-device report (``benchmarks/many_devices.py``):
collective bytes read from compiled programs, and times on 1-8 host devices.
``--drift`` runs the drift-monitoring report (``benchmarks/drift.py``) against
Evidently, NannyML, alibi-detect, frouros, River and SciPy (``--no-anchors``:
jaxdiv alone; ``--quick``: small sizes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before JAX starts: it would take 75% of a GPU's memory, leaving PyTorch's and
# Liger's baselines too little for their temporaries at the accelerator sizes.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# rows x classes (Gaussian: batch x latent dimensions) per device kind. On a CPU
# every kernel runs at 1024 x 32000 (as slow per element as 4096 x 32000, and
# the whole report stays at a few minutes); the sweep kernels also at the
# issue's target shape 4096 x 32000 and the other sweep sizes.
TARGET_SHAPE = (4096, 32000)
DEFAULTS = {
    "cpu": {"size": (1024, 32000), "sweep": [(256, 1024), TARGET_SHAPE, (1024, 128256)],
            "gaussian": (65536, 256), "gaussian_sweep": [(1024, 64), (16384, 2048)]},
    # The accelerator issue's shapes; meant to finish within 8 minutes on an H100.
    "gpu": {"size": (4096, 32000),
            "sweep": [(16384, 131072), (8192, 128256)],
            "gaussian": (65536, 256), "gaussian_sweep": [(1024, 64), (16384, 2048), (262144, 512)]},
    "quick": {"size": (256, 1024), "sweep": [(64, 4096)],
              "gaussian": (1024, 64), "gaussian_sweep": [(256, 16)]},
}
DEFAULTS["tpu"] = DEFAULTS["gpu"]
# N tokens x D hidden x V classes of the fused linear heads, and their dtype.
# The CPU targets are at 8192 x 1024 x 128256 (about 30 s per training
# step on 2 cores, so not in the default run: pass --linear-sizes).
LINEAR_TARGET = (8192, 1024, 128256)
LINEAR_DEFAULTS = {
    "cpu": ([(2048, 1024, 32000)], "float32"),
    "gpu": ([(16384, 4096, 151936)], "bfloat16"),
    "quick": ([(64, 32, 1000)], "float32"),
}
LINEAR_DEFAULTS["tpu"] = LINEAR_DEFAULTS["gpu"]


def _size(text: str) -> tuple:
    try:
        rows, classes = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCLASSES such as 4096x32000, got {text!r}")
    return rows, classes


def _linear_size(text: str) -> tuple:
    try:
        n, d, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKENSxHIDDENxVOCAB such as 8192x1024x128256, got {text!r}")
    return n, d, v


def parse_args(argv=None):
    from benchmarks import cases, linear_heads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="*", default=None, choices=list(cases.KERNELS),
                        metavar="KERNEL", help="subset of: " + " ".join(cases.KERNELS)
                        + " (none: only the fused linear heads)")
    parser.add_argument("--size", type=_size, default=None,
                        help="rows x classes of every categorical kernel (default on CPU 1024x32000, "
                             "on GPU 4096x32000)")
    parser.add_argument("--sweep", type=_size, nargs="*", default=None,
                        help="more sizes for the sweep kernels (default on CPU: 256x1024 4096x32000 "
                             "1024x128256; on GPU 16384x131072 8192x128256)")
    parser.add_argument("--sweep-kernels", nargs="*", default=list(cases.SWEEP_KERNELS),
                        choices=list(cases.KERNELS), metavar="KERNEL",
                        help="kernels swept over sizes and dtypes (default: kl ce_labels gaussian_kl)")
    parser.add_argument("--gaussian-size", type=_size, default=None,
                        help="batch x latent dimensions of gaussian_kl (default 65536x256)")
    parser.add_argument("--gaussian-sweep", type=_size, nargs="*", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"],
                        help="every kernel runs in the first; the sweep kernels also in the others")
    parser.add_argument("--linear-sizes", type=_linear_size, nargs="*", default=None,
                        help="N x D x V of the fused linear heads (default on CPU 2048x1024x32000; "
                             "on GPU 16384x4096x151936 8192x1024x128256); none to leave them out")
    parser.add_argument("--linear-kernels", nargs="*", default=list(linear_heads.LINEAR_KERNELS),
                        choices=list(linear_heads.LINEAR_KERNELS), metavar="KERNEL",
                        help="subset of: " + " ".join(linear_heads.LINEAR_KERNELS))
    parser.add_argument("--linear-dtypes", nargs="+", default=None,
                        choices=["float32", "bfloat16", "float16"],
                        help="dtypes of the linear heads (default float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--skip", nargs="*", default=None, choices=list(cases.IMPLS) + ["materialised"],
                        metavar="IMPL",
                        help="implementations to leave out, e.g. --skip scipy torch (default: none "
                             "on a CPU; on a GPU or TPU the host's NumPy and SciPy)")
    parser.add_argument("--modes", nargs="+", default=list(cases.MODES), choices=list(cases.MODES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed calls per case (median)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per case before stopping at the minimum "
                             "(default 1.5 on a CPU, 0.3 on a GPU or TPU: milliseconds per call)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 calls: a smoke run")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark-results")
    parser.add_argument("--accelerator-model", action="store_true",
                        help="instead of timing, compile every kernel for an H100 and a TPU v5e on this "
                             "machine and report launches, temporaries and modelled traffic "
                             "(installs jax's CUDA plugin and libtpu into .venv-accel on first use)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.budget = 2, 0.1
    return args


def select_device(device: str) -> str:
    """Make JAX use ``device`` (or the best one present); return its platform: cpu, gpu or tpu."""
    import jax

    if device != "auto":
        jax.config.update("jax_platforms", {"gpu": "cuda"}.get(device, device))
    return jax.default_backend()


def plan(args, platform_name: str) -> list[tuple]:
    """The (kernel, shape, dtype) entries of this run, in order."""
    from benchmarks import cases

    defaults = DEFAULTS["quick" if args.quick else platform_name]
    size = args.size or defaults["size"]
    sweep = defaults["sweep"] if args.sweep is None else args.sweep
    gaussian = args.gaussian_size or defaults["gaussian"]
    gaussian_sweep = defaults["gaussian_sweep"] if args.gaussian_sweep is None else args.gaussian_sweep
    entries = []
    for kernel in list(cases.KERNELS) if args.kernels is None else args.kernels:
        main, more = (gaussian, gaussian_sweep) if kernel == "gaussian_kl" else (size, sweep)
        entries.append((kernel, tuple(main), args.dtypes[0]))
        if kernel in args.sweep_kernels:
            entries += [(kernel, tuple(s), args.dtypes[0]) for s in more if tuple(s) != tuple(main)]
            entries += [(kernel, tuple(main), dtype) for dtype in args.dtypes[1:]]
    return entries


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
    for name in ("jaxlib", "optax", "scipy", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "devices": jax.device_count(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "versions": versions,
    }


class Progress:
    """One line per case, with a counter and the elapsed time, flushed as it goes."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        print(f"[{self.done:3d}/{self.total} {elapsed / 60:4.1f} min] {label}", end=" ", flush=True)


def run(args, argv=None) -> dict:
    from benchmarks import cases

    try:
        platform_name = select_device(args.device)
    except RuntimeError as error:
        raise SystemExit(f"--device {args.device}: JAX cannot use it here ({error})")
    on_accelerator = platform_name in ("gpu", "tpu")
    if args.budget is None:
        args.budget = 0.3 if on_accelerator else 1.5
    if args.skip is None:
        # Seconds per call on the host against milliseconds on the device: they would
        # take most of the run and say little (the CPU report has them).
        args.skip = list(cases.HOST_IMPLS) if on_accelerator else []
    entries = plan(args, platform_name)
    linear_entries = linear_plan(args, platform_name)
    info = machine()
    print(f"jaxdiv benchmark on {info['platform']} ({info['device']}, {info['cpu']}, "
          f"{info['cores']} cores): {len(entries)} kernel/size/dtype entries", flush=True)
    copy_bw = cases.copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e9:.1f} GB/s", flush=True)
    impls = [impl for impl in cases.IMPLS if impl not in args.skip]
    progress = Progress(len(entries) * len(args.modes) * len(impls))
    results, accuracy, skipped = [], {}, []
    for kernel, shape, dtype in entries:
        inputs = cases.make_inputs(kernel, shape, dtype)
        for mode in args.modes:
            for impl in impls:
                progress.step(f"{kernel:11s} {shape[0]}x{shape[1]} {dtype:8s} {mode:7s} {impl:9s}")
                try:
                    prepared = cases.prepare(kernel, impl, mode, inputs)
                    timing = prepared and cases.measure(prepared, args.repeats, args.budget)
                except Exception as error:
                    # One case too large for the device, or failing in a baseline's
                    # library, does not end the run: it is listed as not measured.
                    reason = failure(error)
                    skipped.append({"kernel": kernel, "shape": list(shape), "dtype": dtype,
                                    "mode": mode, "impl": impl, "reason": reason})
                    print(reason, flush=True)
                    continue
                if prepared is None:
                    print("n/a", flush=True)
                    continue
                row = {
                    "kernel": kernel, "shape": list(shape), "dtype": dtype, "mode": mode,
                    "impl": impl, "seconds": timing.seconds, "calls": timing.calls,
                    "array_bytes": inputs.array_bytes, "temp_bytes": prepared.temp_bytes,
                    "peak_bytes": timing.peak_bytes,
                    "minimal_bytes": cases.minimal_bytes(inputs, mode),
                }
                row["bandwidth"] = row["minimal_bytes"] / timing.seconds
                row["copy_fraction"] = row["bandwidth"] / copy_bw
                if mode == "fwd" and not args.no_accuracy:
                    # on fixed 64 x 4096 inputs: computed once per kernel, dtype and impl
                    if (kernel, dtype, impl) not in accuracy:
                        try:
                            accuracy[kernel, dtype, impl] = {
                                f"rel_err_{regime}": cases.relative_error(kernel, impl, regime, dtype)
                                for regime in ("ordinary", "near")
                            }
                        except Exception as error:
                            print(f"(accuracy: {failure(error)})", end=" ")
                            accuracy[kernel, dtype, impl] = {}
                    row |= accuracy[kernel, dtype, impl]
                results.append(row)
                print(f"{timing.seconds * 1e3:10.2f} ms  ({timing.calls} calls)", flush=True)
            # What has been measured survives a run cut short (a lease that ends).
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.partial.json").write_text(
                json.dumps({"results": results, "skipped": skipped}, indent=1))
        del inputs
        cases.release_torch_memory()
    add_ratios(results)
    linear = run_linear(args, linear_entries, skipped)
    sweep = [] if args.no_accuracy else cases.kl_accuracy_sweep()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python3 benchmarks/report.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
        "copy_bandwidth": copy_bw,
        "config": {"size": list(entries[0][1]) if entries else None, "dtypes": args.dtypes,
                   "modes": args.modes, "min_calls": args.repeats, "budget_s": args.budget},
        "results": results,
        "linear": linear,
        "skipped": skipped,
        "kl_accuracy_sweep": sweep,
    }


def failure(error: Exception) -> str:
    """One line saying why a case was not measured."""
    from benchmarks import cases

    if cases.out_of_memory(error):
        return "out of memory"
    first = (str(error).strip().splitlines() or [""])[0]
    return f"failed: {type(error).__name__}: {first[:200]}"


def linear_plan(args, platform_name: str) -> list[tuple]:
    """The (kernel, (N, D, V), dtype) entries of the fused linear heads."""
    sizes, dtype = LINEAR_DEFAULTS["quick" if args.quick else platform_name]
    sizes = sizes if args.linear_sizes is None else args.linear_sizes
    dtypes = args.linear_dtypes or [dtype]
    return [(k, tuple(s), d) for s in sizes for d in dtypes for k in args.linear_kernels]


def run_linear(args, entries, skipped) -> list[dict]:
    """Loss + gradients of each fused linear head against materialising its logits."""
    from benchmarks import cases, linear_heads

    impls = [i for i in linear_heads.LINEAR_IMPLS if i not in args.skip]
    progress = Progress(len(entries) * len(impls))
    rows, accuracy = [], {}
    for kernel, shape, dtype in entries:
        inputs = linear_heads.make_linear_inputs(kernel, shape, dtype)
        for impl in impls:
            label = f"{kernel:14s} {'x'.join(map(str, shape))} {dtype:8s} fwd+bwd {impl}"
            if impl not in linear_heads.LINEAR_KERNELS[kernel].impls:
                continue
            progress.step(label)
            try:
                prepared = linear_heads.prepare_linear(kernel, impl, "fwd+bwd", inputs)
                timing = cases.measure(prepared, args.repeats, args.budget)
            except Exception as error:
                reason = failure(error)
                skipped.append({"kernel": kernel, "shape": list(shape), "dtype": dtype,
                                "mode": "fwd+bwd", "impl": impl, "reason": reason})
                print(reason, flush=True)
                continue
            row = {"kernel": kernel, "shape": list(shape), "dtype": dtype, "mode": "fwd+bwd",
                   "impl": impl, "seconds": timing.seconds, "calls": timing.calls,
                   "temp_bytes": prepared.temp_bytes}
            if not args.no_accuracy:
                if (kernel, dtype, impl) not in accuracy:
                    accuracy[kernel, dtype, impl] = linear_heads.linear_accuracy(kernel, impl, dtype)
                row |= accuracy[kernel, dtype, impl]
            rows.append(row)
            print(f"{timing.seconds * 1e3:10.1f} ms  ({timing.calls} calls)  "
                  f"temp {_mib(prepared.temp_bytes)}", flush=True)
        del inputs
    by_case = {(r["kernel"], tuple(r["shape"]), r["dtype"], r["impl"]): r for r in rows}
    for r in rows:
        base = by_case.get((r["kernel"], tuple(r["shape"]), r["dtype"], "materialised"))
        if base and r["impl"] != "materialised":
            r["time_vs_materialised"] = r["seconds"] / base["seconds"]
            if r["temp_bytes"] and base["temp_bytes"]:
                r["temp_vs_materialised"] = r["temp_bytes"] / base["temp_bytes"]
    return rows


def _case_key(r) -> tuple:
    return r["kernel"], tuple(r["shape"]), r["dtype"], r["mode"]


def add_ratios(results) -> None:
    """speedup = time(baseline) / time(jaxdiv) (> 1: jaxdiv is faster); vs_roofline = time / roofline.

    The Pallas path's row has ``vs_xla`` = time(jaxdiv) / time(Pallas) (> 1: Pallas is
    faster) instead, and each baseline a ``pallas_speedup`` = time(baseline) / time(Pallas).
    """
    by_case = {(*_case_key(r), r["impl"]): r for r in results}
    for r in results:
        ours = by_case.get((*_case_key(r), "jaxdiv"))
        pallas = by_case.get((*_case_key(r), "pallas"))
        if ours and r["impl"] == "pallas":
            r["vs_xla"] = ours["seconds"] / r["seconds"]
        elif ours and r["impl"] != "jaxdiv":
            r["speedup"] = r["seconds"] / ours["seconds"]
        if pallas and r["impl"] not in ("jaxdiv", "pallas"):
            r["pallas_speedup"] = r["seconds"] / pallas["seconds"]
        roof = by_case.get((*_case_key(r), "roofline"))
        if roof and r["impl"] != "roofline":
            r["vs_roofline"] = r["seconds"] / roof["seconds"]


# ------------------------------------------------------------------ tables


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _ms(seconds):
    return f"{seconds * 1e3:.3g} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"


def _index(report):
    return {(*_case_key(r), r["impl"]): r for r in report["results"]}


def main_entries(report) -> list[tuple]:
    """(kernel, shape, dtype) of each kernel's main entry, in the first dtype: the target
    shape 4096 x 32000 where it was run, else the kernel's first entry."""
    first, target = {}, {}
    dtype = report["config"]["dtypes"][0]
    for r in report["results"]:
        entry = (r["kernel"], tuple(r["shape"]), r["dtype"])
        first.setdefault(r["kernel"], entry)
        if entry[1:] == (TARGET_SHAPE, dtype):
            target[r["kernel"]] = entry
    return [target.get(kernel, entry) for kernel, entry in first.items()]


def targets(report) -> list[str]:
    """Where the issue's CPU targets stand in this run (KL at the main size)."""
    idx = _index(report)
    lines = []
    kl = next(((k, s, d) for k, s, d in main_entries(report) if k == "kl"), None)
    if kl:
        fwd, both = idx.get((*kl, "fwd", "jaxdiv")), idx.get((*kl, "fwd+bwd", "jaxdiv"))
        numpy = idx.get((*kl, "fwd", "numpy"))
        shape = f"{kl[1][0]}x{kl[1][1]} {kl[2]}"
        if fwd and numpy:
            lines.append(f"KL forward vs naive NumPy ({shape}): {numpy['speedup']:.2f}x faster (target >= 8x)")
        if fwd and "vs_roofline" in fwd:
            lines.append(f"KL forward / roofline proxy: {fwd['vs_roofline']:.2f}x (target <= 2x)")
        if both and "vs_roofline" in both:
            lines.append(f"KL forward+backward / roofline proxy: {both['vs_roofline']:.2f}x (target <= 2.5x)")
    for r in report.get("linear", []):
        if r["kernel"] == "linear_ce" and r["impl"] == "fused" and "time_vs_materialised" in r:
            at_target = tuple(r["shape"]) == LINEAR_TARGET and r["dtype"] == "float32"
            shape = "x".join(map(str, r["shape"])) + f" {r['dtype']}"
            goal = " (targets <= 1.25x, <= 15%)" if at_target else ""
            lines.append(
                f"fused linear CE ({shape}): time {r['time_vs_materialised']:.2f}x the materialised "
                f"loss, temp memory {100 * r.get('temp_vs_materialised', float('nan')):.1f}% of it{goal}"
            )
    lines += pallas_targets(report)
    ahead, behind = [], []
    for kernel, shape, dtype in main_entries(report):
        for mode in ("fwd", "fwd+bwd"):
            for impl in ("optax", "jax", "scipy"):
                r = idx.get((kernel, shape, dtype, mode, impl))
                if r and "speedup" in r:
                    text = f"{kernel} {mode} vs {impl} {r['speedup']:.2f}x"
                    (ahead if r["speedup"] >= 1 else behind).append(text)
    if ahead or behind:
        lines.append("jaxdiv ahead of optax / hand-written JAX / SciPy: " + (", ".join(ahead) or "none"))
        lines.append("jaxdiv behind: " + (", ".join(behind) or "none"))
    return lines


def pallas_targets(report) -> list[str]:
    """The one-pass kernels' GPU targets, at every size they ran: the KL and cross-entropy
    forwards at >= 80% of the copy's bandwidth, and ahead of the XLA path, PyTorch and Liger."""
    idx = _index(report)
    lines = []
    for r in report["results"]:
        if r["impl"] != "pallas" or r["kernel"] not in ("kl", "ce_labels", "ce_soft"):
            continue
        key = _case_key(r)
        others = [f"{name} {idx[(*key, impl)]['pallas_speedup']:.2f}x"
                  for impl, name in (("torch", "PyTorch"), ("liger", "Liger"), ("optax", "optax"))
                  if "pallas_speedup" in idx.get((*key, impl), {})]
        goal = " (target >= 80%)" if r["mode"] == "fwd" else ""
        lines.append(
            f"{r['kernel']} {r['mode']} {r['shape'][0]}x{r['shape'][1]} {r['dtype']}, Pallas: "
            f"{100 * r['copy_fraction']:.0f}% of the copy's bandwidth{goal}; "
            f"{r['vs_xla']:.2f}x the XLA path's speed"
            + ("; speed-up against " + ", ".join(others) if others else "")
        )
    return lines


def pallas_table(report) -> list[str]:
    """Every case the Pallas path ran: its time, bandwidth and speed against the others."""
    idx = _index(report)
    rows = [r for r in report["results"] if r["impl"] == "pallas"]
    if not rows:
        return []
    lines = [
        "| kernel | shape | mode | Pallas | bandwidth (of copy) | vs jaxdiv XLA | vs optax / JAX "
        "| vs PyTorch | vs Liger | temp memory | rel. err. ordinary / nearly equal |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        key = _case_key(r)

        def ratio(*impls):
            for impl in impls:
                other = idx.get((*key, impl), {})
                if "pallas_speedup" in other:
                    return f"{other['pallas_speedup']:.2f}x"
            return "-"

        lines.append(
            f"| {r['kernel']} | {r['shape'][0]}x{r['shape'][1]} {r['dtype']} | {r['mode']} "
            f"| {_ms(r['seconds'])} | {r['bandwidth'] / 1e9:.0f} GB/s ({100 * r['copy_fraction']:.0f}%) "
            f"| {r['vs_xla']:.2f}x | {ratio('optax', 'jax')} | {ratio('torch')} | {ratio('liger')} "
            f"| {_mib(r['temp_bytes'])} | {_fmt(r.get('rel_err_ordinary'), '.1e')} / "
            f"{_fmt(r.get('rel_err_near'), '.1e')} |"
        )
    return lines


def summary_table(report) -> list[str]:
    """One row per kernel and mode at the main size: jaxdiv against each baseline."""
    from benchmarks import cases

    idx = _index(report)
    lines = [
        "| kernel | shape | mode | jaxdiv | vs optax / JAX | vs PyTorch | vs NumPy | vs SciPy "
        "| / roofline | bandwidth (of copy) | temp memory: jaxdiv / optax or JAX "
        "| rel. err. nearly equal: jaxdiv / optax or JAX |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kernel, shape, dtype in main_entries(report):
        for mode in report["config"]["modes"]:
            ours = idx.get((kernel, shape, dtype, mode, "jaxdiv"))
            if not ours:
                continue
            jax_impl = "optax" if "optax" in cases.KERNELS[kernel].baselines else "jax"
            base = idx.get((kernel, shape, dtype, mode, jax_impl))
            fwd_ours = idx.get((kernel, shape, dtype, "fwd", "jaxdiv"), {})
            fwd_base = idx.get((kernel, shape, dtype, "fwd", jax_impl), {})

            def ratio(impl):
                r = idx.get((kernel, shape, dtype, mode, impl))
                return "-" if not r else f"{r['speedup']:.2f}x"

            name = f"{kernel} ({jax_impl})" if jax_impl == "jax" else kernel
            lines.append(
                f"| {name} | {shape[0]}x{shape[1]} {dtype} | {mode} | {_ms(ours['seconds'])} "
                f"| {ratio(jax_impl)} | {ratio('torch')} | {ratio('numpy')} | {ratio('scipy')} "
                f"| {_fmt(ours.get('vs_roofline'), '.2f')}x "
                f"| {ours['bandwidth'] / 1e9:.1f} GB/s ({100 * ours['copy_fraction']:.0f}%) "
                f"| {_mib(ours['temp_bytes'])} / {_mib(base and base['temp_bytes'])} "
                f"| {_fmt(fwd_ours.get('rel_err_near'), '.1e')} / {_fmt(fwd_base.get('rel_err_near'), '.1e')} |"
            )
    return lines


def full_table(report) -> list[str]:
    lines = [
        "| kernel | shape | dtype | mode | impl | median | calls | jaxdiv speed-up | / roofline "
        "| bandwidth (of copy) | temp memory | peak memory | rel. err. ordinary | rel. err. nearly equal |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    from benchmarks import cases

    for r in report["results"]:
        temp = r.get("temp_bytes")
        temp_s = "-" if temp is None else f"{_mib(temp)} ({100 * temp / r['array_bytes']:.1f}%)"
        lines.append(
            f"| {r['kernel']} | {r['shape'][0]}x{r['shape'][1]} | {r['dtype']} | {r['mode']} "
            f"| {cases.LABEL[r['impl']]} | {_ms(r['seconds'])} | {r['calls']} "
            f"| {_fmt(r.get('speedup', r.get('vs_xla') and 1 / r['vs_xla']), '.2f')}x "
            f"| {_fmt(r.get('vs_roofline'), '.2f')}x "
            f"| {r['bandwidth'] / 1e9:.1f} GB/s ({100 * r['copy_fraction']:.0f}%) | {temp_s} "
            f"| {_mib(r.get('peak_bytes'))} | {_fmt(r.get('rel_err_ordinary'), '.1e')} "
            f"| {_fmt(r.get('rel_err_near'), '.1e')} |"
        )
    return lines


def linear_table(report) -> list[str]:
    rows = report.get("linear", [])
    if not rows:
        return []
    lines = [
        "| loss | N x D x V | dtype | impl | median (loss + grads) | calls | time / materialised "
        "| temp memory | temp / materialised | rel. err. loss | rel. err. grads |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['impl']} "
            f"| {_ms(r['seconds'])} | {r['calls']} | {_fmt(r.get('time_vs_materialised'), '.2f') + ('x' if 'time_vs_materialised' in r else '')} "
            f"| {_mib(r.get('temp_bytes'))} | {_fmt(r.get('temp_vs_materialised'), '.1%')} "
            f"| {_fmt(r.get('rel_err_loss'), '.1e')} | {_fmt(r.get('rel_err_grads'), '.1e')} |"
        )
    return lines


def accuracy_table(report) -> list[str]:
    sweep = report.get("kl_accuracy_sweep")
    if not sweep:
        return []
    impls = [k for k in ("jaxdiv", "optax", "torch", "numpy", "scipy") if k in sweep[0]]
    from benchmarks import cases

    lines = [
        "KL accuracy as Q approaches P (q = p + eps * noise, 64 x 4096 float32; max relative "
        "error against float64, and how many of the 64 values came out negative):",
        "",
        "| eps | median KL | " + " | ".join(cases.LABEL[k] for k in impls) + " |",
        "|---:|---:|" + "---:|" * len(impls),
    ]
    for r in sweep:
        cells = [
            f"{r[k]:.1e}" + (f" ({r[k + '_negative']} < 0)" if r[k + "_negative"] else "")
            for k in impls
        ]
        lines.append(f"| {r['eps']:.0e} | {r['kl']:.1e} | " + " | ".join(cells) + " |")
    return lines


def markdown(report) -> str:
    from benchmarks import cases

    m = report["machine"]
    lines = [
        f"# jaxdiv benchmark, {report['date']}",
        "",
        f"`{report['command']}` on {m['platform']} ({m['device']}; {m['cpu']}, {m['cores']} cores); "
        f"device-to-device copy {report['copy_bandwidth'] / 1e9:.1f} GB/s.",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in targets(report)],
        "",
        "## Each kernel at its main size",
        "",
        *summary_table(report),
        "",
        *(["## The one-pass Pallas kernels", "", "speed-ups are the other's time / the Pallas "
            "path's (> 1: Pallas is faster).", "", *pallas_table(report), ""]
          if pallas_table(report) else []),
        "## Every case",
        "",
        *full_table(report),
        "",
        *accuracy_table(report),
        "",
        *(["## Fused linear heads (jaxdiv.fused)", "", *linear_table(report), ""]
          if report.get("linear") else []),
        *[f"- not measured: {c['kernel']} {'x'.join(map(str, c['shape']))} {c['dtype']} {c['mode']} "
          f"{cases.LABEL.get(c['impl'], c['impl'])} ({c['reason']})" for c in report.get("skipped", [])],
        "",
        "## How to read this",
        "",
        "speed-up = baseline time / jaxdiv time (> 1: jaxdiv is faster), median of at least "
        f"{report['config']['min_calls']} timed calls (more while they fit in "
        f"{report['config']['budget_s']} s), after an untimed compile and warm-up, inputs rotated "
        "between calls. fwd+bwd is the value and the gradients a training step takes (both "
        "inputs for the divergences, the logits for the label losses, the student for "
        "distillation, the model's logits for ce_soft). / roofline = time / the roofline "
        "proxy's time: one jitted pass reading the inputs with the kernel's minimum number of "
        "exp per element (and writing the gradient arrays). bandwidth = minimal bytes (inputs "
        "read once, outputs or gradients written once) / time, and its share of a measured "
        "device-to-device copy. temp memory = XLA's compiled temporary buffers (in brackets: "
        "their share of one input array); peak memory = XLA's compiled peak (arguments, outputs "
        "and temporaries live at once), for NumPy and SciPy the tracemalloc peak of one call. "
        "Relative errors are against float64 on the same inputs (64 x 4096, rounded to the "
        "dtype); 'nearly equal' is q = p + eps * noise (eps = 1e-4 in float32, 3e-2 in "
        "bfloat16) for two distributions, confident predictions (logit scale 20) for labels, "
        "entropy and BCE, a posterior within eps of the prior for the Gaussian KL and "
        "log-probabilities within eps of the reference for the k3 penalty. NumPy and SciPy are "
        "float32 inputs, forward only (SciPy computes in float64).",
        "",
        *[f"- **{name}**: {spec.note}" for name, spec in cases.KERNELS.items() if spec.note],
        "",
        "Fused linear heads: the loss and the gradients with respect to the hidden states and "
        "the weight (hidden ~ N(0, 1), weight ~ N(0, 1/D)); `fused` is jaxdiv.fused, "
        "`materialised` computes `hidden @ weight` and the same jaxdiv.losses function, `optax` "
        "the logits and optax's cross-entropy. One input copy, so the medians include no cache "
        "effects worth rotating for. Errors are against float64 NumPy on the same (rounded) "
        f"inputs of shape {'x'.join(map(str, _accuracy_shape()))}, the gradient error being "
        "max |g - g_ref| / max |g_ref| over both gradients.",
        *[f"- **{name}**: {spec.note}" for name, spec in _linear_kernels().items() if spec.note],
    ]
    return "\n".join(lines) + "\n"


def _accuracy_shape():
    from benchmarks import linear_heads

    return linear_heads.ACCURACY_SHAPE


def _linear_kernels():
    from benchmarks import linear_heads

    return linear_heads.LINEAR_KERNELS


def console_summary(report) -> str:
    return "\n".join(["", *targets(report), "", *summary_table(report)]) + "\n"


def main(argv=None):
    args = parse_args(argv)
    report = run(args, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    (args.out / "results.md").write_text(markdown(report))
    (args.out / "results.partial.json").unlink(missing_ok=True)   # the whole run is in results.json
    written = [args.out / "results.json", args.out / "results.md"]
    if not args.no_plots:
        from benchmarks import plots

        written += plots.write_all(report, args.out)
    print(console_summary(report))
    print("written: " + ", ".join(str(p) for p in written))
    failed = [c for c in report["skipped"] if c["reason"].startswith("failed")]
    if failed:
        # Measured cases are written; a failure still fails the command.
        raise SystemExit(f"{len(failed)} case(s) failed: see 'not measured' in {args.out / 'results.md'}")


if __name__ == "__main__":
    if "--accelerator-model" in sys.argv[1:]:
        # Compiles for an H100 and a TPU v5e on this machine; runs nothing.
        from benchmarks import accelerator_model

        accelerator_model.ensure_accel_venv()
        accelerator_model.main(sys.argv[1:])
        sys.exit(0)
    from benchmarks._env import ensure_venv

    # A Python that has jax and the report's packages already (a GPU machine's) runs it as is.
    ensure_venv(accept=("jax", "numpy", "optax", "scipy", "matplotlib"))
    if "--many-devices" in sys.argv[1:]:
        from benchmarks import many_devices

        out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else ROOT / "benchmark-results"
        print(many_devices.report(out))
        print(f"written: {out / 'many-devices.json'}, {out / 'many-devices.md'}")
        sys.exit(0)
    if "--drift" in sys.argv[1:]:
        from benchmarks import drift as drift_benchmark

        out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else ROOT / "benchmark-results"
        anchors = () if "--no-anchors" in sys.argv else tuple(drift_benchmark.ANCHORS)
        print(drift_benchmark.report(out, quick="--quick" in sys.argv, anchors=anchors))
        print(f"written: {out / 'drift.json'}, {out / 'drift.md'}")
        sys.exit(0)
    main()
