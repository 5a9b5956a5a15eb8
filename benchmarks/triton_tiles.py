"""Time the one-pass Triton kernels over tile shapes, warps and pipelining stages (a GPU needed).

``python3 benchmarks/triton_tiles.py [--size 16384x131072] [--out FILE]``

``jaxdiv._pallas`` fixes its Triton tiles (``_TRITON_TILE``, ``_TRITON_ROWS``,
``_TRITON_WARPS``, ``_TRITON_STAGES``); this sweeps them for the forward of KL
and integer-label cross-entropy in float32 and bfloat16 and prints each
choice's time and bandwidth against a device-to-device copy, so the defaults
are chosen from a measurement. Each time is the median of three timings of
five queued calls (one synchronisation per five).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# (rows per program, columns per tile): one row per program across a few tile
# widths, and several narrower rows per program.
SHAPES = [(1, 1024), (1, 2048), (1, 4096), (1, 8192), (2, 1024), (4, 512), (4, 1024)]
WARPS = (2, 4, 8)
STAGES = (1, 3)


@contextlib.contextmanager
def tiles(rows: int, cols: int, warps: int, stages: int, inputs: int):
    import jax

    from jaxdiv import _dispatch, _pallas

    saved = (_pallas._TRITON_TILE, _pallas._TRITON_ROWS, _pallas._TRITON_WARPS, _pallas._TRITON_STAGES)
    _pallas._TRITON_TILE, _pallas._TRITON_ROWS = rows * cols * inputs, rows
    _pallas._TRITON_WARPS, _pallas._TRITON_STAGES = warps, stages
    # jit's caches know nothing of the tiles: without clearing, every choice reran the first.
    jax.clear_caches()
    _dispatch.clear_compiled()
    try:
        yield
    finally:
        (_pallas._TRITON_TILE, _pallas._TRITON_ROWS, _pallas._TRITON_WARPS,
         _pallas._TRITON_STAGES) = saved
        jax.clear_caches()
        _dispatch.clear_compiled()


def seconds_per_call(f, args, queued: int = 5, repeats: int = 3) -> float:
    import jax

    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(queued):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / queued)
    return statistics.median(times)


def main(argv=None) -> None:
    import jax
    import jax.numpy as jnp

    import jaxdiv
    from benchmarks import cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="16384x131072")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--shapes", nargs="*", default=None,
                        help="ROWSxCOLS per program, e.g. 1x2048 1x4096 (default: the sweep's seven)")
    parser.add_argument("--warps", type=int, nargs="*", default=list(WARPS))
    parser.add_argument("--stages", type=int, nargs="*", default=list(STAGES))
    args = parser.parse_args(argv)
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    rows, classes = (int(v) for v in args.size.split("x"))
    if jax.default_backend() != "gpu":
        raise SystemExit("triton_tiles.py times Triton kernels: it needs a GPU")
    copy = cases.copy_bandwidth()
    print(f"{jax.devices()[0].device_kind}; copy {copy / 1e9:.0f} GB/s; {rows}x{classes}", flush=True)
    kernels = {
        "kl": (lambda p, q: jaxdiv.kl_divergence(p, q, implementation="pallas"), "pair"),
        "ce_labels": (lambda x, y: jaxdiv.cross_entropy_with_integer_labels(
            x, y, implementation="pallas"), "labels"),
    }
    key = jax.random.key(0)
    results = []
    for dtype in ("float32", "bfloat16"):
        p = jax.random.normal(key, (rows, classes), dtype)
        q = jax.random.normal(jax.random.fold_in(key, 1), (rows, classes), dtype)
        y = jax.random.randint(key, (rows,), 0, classes)
        for name, (fn, kind) in kernels.items():
            inputs = (p, q) if kind == "pair" else (p, y)
            minimal = sum(a.nbytes for a in inputs) + 4 * rows
            for (r, c), w, s in itertools.product(shapes, args.warps, args.stages):
                label = f"{name:9s} {dtype:8s} rows {r} cols {c:5d} warps {w:2d} stages {s}"
                try:
                    with tiles(r, c, w, s, 2 if kind == "pair" else 1):
                        t = seconds_per_call(jax.jit(fn), inputs)
                except Exception as error:   # a shape Triton refuses is a result too
                    print(f"{label}: failed ({type(error).__name__}: {str(error)[:120]})", flush=True)
                    continue
                results.append({"kernel": name, "dtype": dtype, "rows": r, "cols": c, "warps": w,
                                "stages": s, "seconds": t, "copy_fraction": minimal / t / copy})
                print(f"{label}: {t * 1e3:7.2f} ms  {minimal / t / 1e9:6.0f} GB/s "
                      f"({100 * minimal / t / copy:3.0f}% of copy)", flush=True)
        del p, q, y
    best = {}
    for r in results:
        k = (r["kernel"], r["dtype"])
        if k not in best or r["seconds"] < best[k]["seconds"]:
            best[k] = r
    print("\nfastest:")
    for (name, dtype), r in best.items():
        print(f"  {name} {dtype}: rows {r['rows']} cols {r['cols']} warps {r['warps']} "
              f"stages {r['stages']}: {r['seconds'] * 1e3:.2f} ms, {100 * r['copy_fraction']:.0f}% of copy")
    if args.out:
        args.out.write_text(json.dumps({"copy_bandwidth": copy, "size": [rows, classes],
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
