"""The accelerator-model report: every kernel compiled for an H100 and a TPU v5e, on a CPU.

``python3 benchmarks/report.py --accelerator-model`` runs it. XLA's GPU and
TPU compilers run without a device when given a target description
(``jax.experimental.topologies``): the CUDA plugin compiles for the H100 of
``benchmarks/accel/h100_sxm.txtpb`` (trimmed from openxla/xla's
``xla/backends/gpu/target_config/specs/``) and ``libtpu`` for a v5e. Both come
from an optional set of packages pinned to the installed jax, installed on
first use into ``.venv-accel`` (see :func:`ensure_accel_venv`).

From each optimised program it reads, per kernel:

* **launches**: the kernels one call runs (fusions, custom calls, copies, ...),
  a loop body counted once per iteration of its known trip count;
* **temporaries**: ``memory_analysis().temp_size_in_bytes``, against one input;
* **traffic / minimal**: the operand and output bytes of every kernel, summed,
  over the minimal bytes (each input read once, each output written once).
  This is a model: a kernel that re-reads an operand from L2 or VMEM counts
  its bytes again, one that reads only part of an operand counts all of it;
* **compiles**: whether the compiler accepted the program (a TPU v5e has
  15.75 GiB of HBM for arguments and temporaries together).

Nothing here runs a kernel: no timing comes out of this report.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCEL_VENV = ROOT / ".venv-accel"
H100_SPEC = ROOT / "benchmarks" / "accel" / "h100_sxm.txtpb"

# The model shapes: [rows, classes] float32 logits, 8 GiB (H100) and
# 4 GiB (v5e) per input; the fused heads at tokens x hidden x vocabulary.
TARGETS = {
    "H100": {"size": (16384, 131072), "linear": (16384, 4096, 151936)},
    "TPU v5e": {"size": (8192, 131072), "linear": (8192, 4096, 151936)},
}

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
# Instructions that launch nothing (views, bookkeeping, control flow whose
# bodies are counted on their own).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
         "conditional", "call", "after-all", "partition-id", "replica-id", "copy-done",
         "opt-barrier", "add-dependency", "iota"}
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")


def _bytes(shape_text: str) -> int:
    """Bytes of every array in an HLO shape (a tuple counts all its elements)."""
    total = 0
    for dtype, dims in _SHAPE.findall(shape_text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


class _Instr:
    __slots__ = ("name", "shape", "opcode", "operands", "attrs", "index")

    def __init__(self, name, shape, opcode, operands, attrs, index=None):
        self.name, self.shape, self.opcode, self.operands, self.attrs = name, shape, opcode, operands, attrs
        self.index = index   # a parameter's number


_LINE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")


def parse_hlo(text: str) -> dict[str, list[_Instr]]:
    """Computations of an HLO module: name -> its instructions."""
    comps: dict[str, list[_Instr]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
        if header:
            current = comps.setdefault(("ENTRY " if line.startswith("ENTRY") else "") + header.group(1), [])
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None:
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, shape, opcode, tail = m.groups()
        # Operands: the %names inside the call's parentheses (before the attributes).
        depth, end = 1, 0
        for i, ch in enumerate(tail):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                end = i
                break
        operands = re.findall(r"%([\w.\-]+)", tail[:end])
        index = int(tail[:end]) if opcode == "parameter" else None
        current.append(_Instr(name, shape, opcode, operands, tail[end + 1:], index))
    return comps


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(key + r"=\{?([%\w.\-, ]+)\}?", attrs)
    return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


# Ops that touch only a window of their first operand: a kernel whose operand
# feeds nothing else reads (or, updated in place, writes) only that window.
_WINDOWED = {"dynamic-slice", "gather", "slice"}


def _kernel_traffic(ins: _Instr, shapes: dict, comps: dict) -> int:
    """Operand plus output bytes of one kernel, windows counted at their size.

    A dynamic-update-slice writes its update into the operand's buffer in place
    (a fused loop accumulating one chunk of a gradient touches the chunk, not
    the whole gradient).
    """
    sizes = [_bytes(shapes.get(o, "")) for o in ins.operands]
    if ins.opcode == "custom-call" and "jaxdiv_two_sweeps" in ins.name + ins.attrs:
        sizes = [2 * size for size in sizes]   # a Pallas kernel that reads its rows twice
    out = _bytes(ins.shape)
    body = comps.get(_called(ins.attrs, "calls")[0]) if ins.opcode == "fusion" else None
    if body is None:   # an unfused op is its own body, its operands its parameters
        body = [ins] if ins.opcode in _WINDOWED | {"dynamic-update-slice"} else []
        params = {o: k for k, o in enumerate(ins.operands)}
    else:
        params = {i.name: i.index for i in body if i.opcode == "parameter"}
    uses: dict[str, list[_Instr]] = {}
    for i in body:
        for o in i.operands:
            uses.setdefault(o, []).append(i)
    for name, k in params.items():
        users = uses.get(name, [])
        if users and all(u.opcode in _WINDOWED and u.operands[0] == name for u in users):
            sizes[k] = min(sizes[k], sum(_bytes(u.shape) for u in users))
        elif users and all(u.opcode == "dynamic-update-slice" and u.operands[0] == name for u in users):
            update = sum(_bytes(next((j.shape for j in body if j.name == u.operands[1]), "")) for u in users)
            sizes[k] = 0
            out -= _bytes(shapes.get(ins.operands[k], "")) - update
    return sum(sizes) + out


def kernel_profile(text: str) -> dict:
    """``launches``, ``traffic`` (bytes) and ``loops`` (while count) of one call of the entry computation.

    A loop body counts once per iteration (XLA's ``known_trip_count``); of the
    branches of a conditional, the cheapest counts (the fallbacks of Renyi and
    the Gaussian safe path run only when a batch needs them).
    """
    comps = parse_hlo(text)
    entry = next(k for k in comps if k.startswith("ENTRY "))

    def walk(name: str) -> tuple[int, int, int]:
        instrs = comps[name.replace("ENTRY ", "")] if name not in comps else comps[name]
        shapes = {i.name: i.shape for i in instrs}
        launches = traffic = loops = 0
        for ins in instrs:
            if ins.opcode == "while":
                n = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
                trips = int(n.group(1)) if n else 1
                body = _called(ins.attrs, "body")
                cond = _called(ins.attrs, "condition")
                b = walk(body[0]) if body else (0, 0, 0)
                c = walk(cond[0]) if cond else (0, 0, 0)
                launches += trips * b[0] + (trips + 1) * c[0]
                traffic += trips * b[1] + (trips + 1) * c[1]
                loops += 1 + b[2]
                continue
            if ins.opcode == "conditional":
                branches = _called(ins.attrs, "branch_computations") or (
                    _called(ins.attrs, "true_computation") + _called(ins.attrs, "false_computation"))
                costs = [walk(b) for b in branches]
                if costs:
                    cheapest = min(costs, key=lambda c: c[1])
                    launches += cheapest[0]
                    traffic += cheapest[1]
                    loops += max(c[2] for c in costs)
                continue
            if ins.opcode == "call":
                for callee in _called(ins.attrs, "to_apply"):
                    c = walk(callee)
                    launches, traffic, loops = launches + c[0], traffic + c[1], loops + c[2]
                continue
            if ins.opcode in _FREE:
                continue
            launches += 1
            traffic += _kernel_traffic(ins, shapes, comps)
        return launches, traffic, loops

    launches, traffic, loops = walk(entry)
    return {"launches": launches, "traffic": traffic, "loops": loops}


# ------------------------------------------------------------------ kernels


def _kernels(implementation: str = "xla"):
    """name -> (function, argument kinds: "x" a [rows, classes] array, "y" integer labels).

    ``implementation`` goes to the functions that take it (see ``PALLAS``).
    """
    import functools

    import jax

    import jaxdiv
    from jaxdiv import losses, probs

    kl, xent, label_xent, entropy, js, tv, hellinger = (
        functools.partial(f, implementation=implementation)
        for f in (jaxdiv.kl_divergence, jaxdiv.cross_entropy,
                  jaxdiv.cross_entropy_with_integer_labels, jaxdiv.entropy, jaxdiv.js_divergence,
                  jaxdiv.total_variation, jaxdiv.hellinger_distance))

    def fwd(f):
        return lambda p, q: f(p, q)

    def vg(f, argnums=(0, 1)):
        return jax.value_and_grad(lambda *a: f(*a).sum(), argnums=argnums)

    sce = functools.partial(losses.softmax_cross_entropy, label_smoothing=0.1, z_loss=1e-4,
                            implementation=implementation)
    distill = functools.partial(losses.distillation_loss, implementation=implementation)
    return {
        "kl forward": (fwd(kl), "xx"),
        "kl value+grad (p, q)": (vg(kl), "xx"),
        "kl value+grad (p)": (vg(kl, 0), "xx"),
        "cross_entropy forward": (fwd(xent), "xx"),
        "cross_entropy value+grad (q)": (vg(xent, 1), "xx"),
        "integer-label CE forward": (fwd(label_xent), "xy"),
        "integer-label CE value+grad": (vg(label_xent, 0), "xy"),
        "entropy forward": (entropy, "x"),
        "entropy value+grad": (vg(entropy, 0), "x"),
        "js forward": (fwd(js), "xx"),
        "js value+grad (p)": (vg(js, 0), "xx"),
        "total_variation forward": (fwd(tv), "xx"),
        "hellinger value+grad (p)": (vg(hellinger, 0), "xx"),
        "renyi(0.5) value+grad (p)": (vg(lambda p, q: jaxdiv.renyi_divergence(p, q, 0.5), 0), "xx"),
        "probs.kl forward": (fwd(probs.kl_divergence), "xx"),
        "softmax_cross_entropy value+grad": (vg(sce, 0), "xy"),
        "distillation_loss value+grad (student)": (vg(distill, 0), "xx"),
    }


# The kernels with a one-pass Pallas implementation (implementation="pallas").
PALLAS = {"kl forward", "kl value+grad (p, q)", "kl value+grad (p)", "cross_entropy forward",
          "cross_entropy value+grad (q)", "integer-label CE forward",
          "integer-label CE value+grad", "entropy forward", "entropy value+grad",
          "softmax_cross_entropy value+grad", "distillation_loss value+grad (student)",
          "js forward", "js value+grad (p)", "total_variation forward", "hellinger value+grad (p)"}


def _linear_kernels():
    import jax

    from jaxdiv import fused

    def vg(f):
        return jax.value_and_grad(lambda h, w, y: f(h, w, y).sum(), argnums=(0, 1))

    return {
        "linear_cross_entropy value+grad (hidden, weight)": (vg(fused.linear_cross_entropy), "hwy"),
    }


def _args(kinds: str, size, dtype, sharding):
    import jax
    import jax.numpy as jnp

    rows, classes = size
    out = []
    for k in kinds:
        if k == "x":
            out.append(jax.ShapeDtypeStruct((rows, classes), dtype, sharding=sharding))
        else:
            out.append(jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding))
    return out


def _linear_args(size, dtype, sharding):
    import jax
    import jax.numpy as jnp

    n, d, v = size
    return [jax.ShapeDtypeStruct((n, d), dtype, sharding=sharding),
            jax.ShapeDtypeStruct((d, v), dtype, sharding=sharding),
            jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding)]


def _minimal(args, outs) -> int:
    import jax

    leaves = list(args) + jax.tree.leaves(outs)
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in leaves)


def _devices():
    from jax.experimental import topologies

    devices = {}
    try:
        topo = topologies.get_topology_desc(
            "h100", "cuda", target_config=H100_SPEC.read_text(), topology="1x1x1")
        devices["H100"] = topo.devices[0]
    except Exception as e:   # the plugin is missing or does not parse the spec
        devices["H100"] = e
    try:
        devices["TPU v5e"] = topologies.get_topology_desc("v5e:2x2", platform="tpu").devices[0]
    except Exception as e:
        devices["TPU v5e"] = e
    return devices


def _compile_one(fn, args):
    """Compile ``fn`` for ``args``' device. A program that does not fit the
    device's memory is compiled again with its inputs donated, as a training
    step's logits are when they are intermediates (the gradients may then take
    the inputs' memory); the row says so."""
    import warnings

    import jax

    outs = jax.eval_shape(fn, *args)
    error = None
    for donate in ((), tuple(range(len(args)))):
        try:
            with warnings.catch_warnings():   # "Some donated buffers were not usable"
                warnings.simplefilter("ignore", UserWarning)
                compiled = jax.jit(fn, donate_argnums=donate).trace(*args).lower().compile()
        except Exception as e:   # e.g. the TPU's "exceeds available HBM"
            error = error or str(e).splitlines()[0][:160]
            if "RESOURCE_EXHAUSTED" in error:
                continue
            break
        memory = compiled.memory_analysis()
        profile = kernel_profile(compiled.as_text())
        return {"compiles": True, "temp": memory.temp_size_in_bytes, "outs": outs,
                **({"donated": True, "error": error} if donate else {}), **profile}
    return {"compiles": False, "error": error, "outs": outs}


def run(kernels=None, dtype="float32", branches=("accelerator", "cpu")) -> list[dict]:
    """Compile every kernel for each target; one row per (target, kernel, branch).

    ``branch="cpu"`` compiles the CPU's row-block loop for the accelerator
    instead: what jaxdiv 0.2.0 ran on every backend, the "before" column.
    """
    import contextlib

    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    from jaxdiv import _numerics

    dt = jnp.dtype(dtype)
    rows = []
    table = {**_kernels(), **_linear_kernels()}
    for target, device in _devices().items():
        if isinstance(device, Exception):
            rows.append({"target": target, "kernel": "*", "compiles": False,
                         "error": f"no compiler: {str(device).splitlines()[0][:160]}"})
            continue
        sharding = SingleDeviceSharding(device)
        for name, (fn, kinds) in table.items():
            if kernels and name not in kernels:
                continue
            if "w" in kinds:
                size = TARGETS[target]["linear"]
                args = _linear_args(size, dt, sharding)
                input_bytes = args[1].size * dt.itemsize   # the weight: the big input
            else:
                size = TARGETS[target]["size"]
                args = _args(kinds, size, dt, sharding)
                input_bytes = args[0].size * dt.itemsize
            for branch in branches:
                if branch == "pallas" and name not in PALLAS:
                    continue
                jax.clear_caches()   # traces are cached regardless of the forced branch
                if branch == "pallas":
                    result = _compile_one(_kernels("pallas")[name][0], args)
                else:
                    with _numerics.forced_branch(branch) if branch else contextlib.nullcontext():
                        result = _compile_one(fn, args)
                outs = result.pop("outs")
                row = {"target": target, "kernel": name, "branch": branch,
                       "shape": "x".join(map(str, size)), "dtype": dtype, **result}
                if result["compiles"]:
                    row["temp_fraction"] = result["temp"] / input_bytes
                    row["traffic_ratio"] = result["traffic"] / _minimal(args, outs)
                rows.append(row)
                print(_format_row(row), flush=True)
    return rows


_BRANCH_NAMES = {"accelerator": "0.3 (whole-array)", "cpu": "0.2 (row blocks)",
                 "pallas": "Pallas kernel", None: "default"}


def sharded_on_tpu(rows: int = 1024, classes: int = 32000) -> str:
    """The TPU v5e's 4 chips (v5e:2x2) with the batch sharded (``data``) and with
    the classes split too (``data x model``) under plain ``jax.jit``: which
    collectives the partitioner makes, and their bytes per row of a chip's
    part of the batch. A markdown table."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxdiv
    from benchmarks.many_devices import _collectives, collective_bytes
    from jaxdiv import losses

    chips = np.array(topologies.get_topology_desc("v5e:2x2", platform="tpu").devices)
    layouts = {"data": (Mesh(chips.reshape(4), ("data",)), P("data", None), 4),
               "data x model": (Mesh(chips.reshape(2, 2), ("data", "model")), P("data", "model"), 2)}
    programs = {
        "kl_divergence": (lambda p, q, y: jaxdiv.kl_divergence(p, q).sum(), (0, 1)),
        "js_divergence": (lambda p, q, y: jaxdiv.js_divergence(p, q).sum(), (0, 1)),
        "losses.softmax_cross_entropy (smoothing)": (
            lambda p, q, y: losses.softmax_cross_entropy(q, y, label_smoothing=0.1), (1,)),
    }
    lines = [f"TPU v5e:2x2, f32 [{rows}, {classes}], value+grad under plain jax.jit",
             "", "| kernel | layout | collectives | bytes per row |", "|---|---|---|---:|"]
    for name, (fn, argnums) in programs.items():
        for layout, (mesh, spec, batch_shards) in layouts.items():
            logits = jax.ShapeDtypeStruct((rows, classes), jnp.float32, sharding=NamedSharding(mesh, spec))
            labels = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=NamedSharding(mesh, P("data")))
            text = jax.jit(jax.value_and_grad(fn, argnums)).trace(logits, logits, labels).lower().compile().as_text()
            ops = sorted({op for op, _ in _collectives(text)})
            lines.append(f"| {name} | {layout} | {', '.join(ops) or 'none'} | "
                         f"{collective_bytes(text) / (rows / batch_shards):.2f} |")
    return "\n".join(lines)


def _format_row(row) -> str:
    donated = ", inputs donated" if row.get("donated") else ""
    where = f"| {row['target']} | {row['kernel']} | {_BRANCH_NAMES[row.get('branch')]}{donated} "
    if not row["compiles"]:
        return where + f"| does not compile: {row.get('error', '')} | | | |"
    return (where + f"| {row['launches']:,} | {row['loops']} "
            f"| {row['temp'] / 2**20:,.1f} MiB ({100 * row['temp_fraction']:.2f}%) "
            f"| {row['traffic_ratio']:.2f}x |")


def table(rows) -> str:
    head = ("| target | kernel | execution | launches per call | loops | compiled temporaries "
            "(% of one input) | traffic / minimal |\n|---|---|---|---:|---:|---:|---:|")
    return "\n".join([head] + [_format_row(r) for r in rows])


def main(argv) -> None:
    """``report.py --accelerator-model [--kernels NAME ...] [--out DIR]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="the accelerator-model report")
    parser.add_argument("--accelerator-model", action="store_true")
    parser.add_argument("--kernels", nargs="*", default=None,
                        help="subset of: " + "; ".join(list(_kernels()) + list(_linear_kernels())))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--only-new", action="store_true", help="skip the 0.2 row-block column")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark-results")
    args = parser.parse_args(argv)
    import jax

    branches = ("accelerator", "pallas") if args.only_new else ("accelerator", "pallas", "cpu")
    print(f"jax {jax.__version__}; H100 at {TARGETS['H100']['size']}, TPU v5e at "
          f"{TARGETS['TPU v5e']['size']} ({args.dtype}); fused heads at tokens x hidden x vocab "
          f"{TARGETS['H100']['linear']} / {TARGETS['TPU v5e']['linear']}", flush=True)
    rows = run(args.kernels, args.dtype, branches)
    sharded = sharded_on_tpu() if args.kernels is None else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accelerator-model.json").write_text(json.dumps(rows, indent=2))
    (args.out / "accelerator-model.md").write_text(table(rows) + "\n\n" + sharded + "\n")
    print(table(rows))
    print(sharded)
    print(f"written: {args.out / 'accelerator-model.json'}, {args.out / 'accelerator-model.md'}")


# ------------------------------------------------------------------ environment


def ensure_accel_venv() -> None:
    """Re-run the calling script in ``.venv-accel``: jaxdiv's jax with its CUDA plugin and libtpu.

    The plugins print initialisation errors on a machine without a GPU or TPU
    and are of no use to the test suite, so they live in their own
    environment, created on first use (about 1 GB of wheels): jaxdiv and
    ``jax[tpu]`` first, then the CUDA plugin of exactly the jax version that
    was installed.
    """
    python = ACCEL_VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == ACCEL_VENV.resolve():
        return
    stamp = ACCEL_VENV / ".jaxdiv-accel"
    wanted = (ROOT / "pyproject.toml").read_text()
    if not python.exists():
        print(f"[jaxdiv] creating {ACCEL_VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(ACCEL_VENV)])
    if not stamp.exists() or stamp.read_text() != wanted:
        print("[jaxdiv] installing jax with libtpu, then its CUDA plugin (first run only)", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.check_call(pip + ["-e", str(ROOT), "jax[tpu]"])
        version = subprocess.check_output(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('jax'))"], text=True).strip()
        subprocess.check_call(pip + [f"jaxlib=={version}", f"jax-cuda12-plugin=={version}",
                                     f"jax-cuda12-pjrt=={version}"])
        stamp.write_text(wanted)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1",
               TF_CPP_MIN_LOG_LEVEL="3", TPU_ACCELERATOR_TYPE="v5litepod-4",
               TPU_WORKER_HOSTNAMES="localhost", TPU_WORKER_ID="0")
    os.execve(str(python), [str(python), *sys.argv], env)
