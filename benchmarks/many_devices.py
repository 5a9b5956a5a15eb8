"""Many devices, measured from the compiled programs and timed on host devices.

``python -m benchmarks.many_devices measure N`` compiles every public kernel,
loss and fused head with a batch-sharded input on N host devices (it sets the
host device count before JAX starts, so it needs its own process) and prints,
per program, the collectives of the compiled HLO, its largest array and the
per-device compiled cost; ``tests/test_many_devices.py`` checks them against
the single-device programs.

``python3 benchmarks/report.py --many-devices`` writes the report: the bytes
each device sends in collectives per row (data parallel, and with the classes
split over a model axis), against what gathering the logits moves and against
optax's compositions, and forward / value+grad times on 1, 2, 4 and 8 host
devices at a fixed global batch.
"""

from __future__ import annotations

import json
import os
import re
import sys

# A [rows, C] float32 input large enough for the CPU's row blocks to loop
# (2^19 elements per block): 256 rows of 4096 take 2 steps of 128 rows.
ROWS, CLASSES, HIDDEN = 256, 4096, 64
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
_OP = re.compile(r"= (\(?[a-z0-9]+\[[^=]*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


def programs():
    """``{name: (fn, [(shape, dtype, sharded_axis or None)], argnums[, grad_only])}``:
    each a function of arrays, the inputs, the inputs a gradient is taken for,
    and whether only value+grad is compiled."""
    import jax.numpy as jnp

    import jaxdiv
    from jaxdiv import fused, gaussian, losses, probs

    f32, i32 = jnp.float32, jnp.int32
    logits = ((ROWS, CLASSES), f32, 0)
    labels = ((ROWS,), i32, 0)
    gauss = ((ROWS, HIDDEN), f32, 0)
    hidden = ((ROWS, HIDDEN), f32, 0)
    weight = ((HIDDEN, CLASSES), f32, None)
    pair = [logits, logits]
    small, square = ((ROWS, 8), f32, 0), ((ROWS, 8, 8), f32, 0)   # full-covariance Gaussians
    labels_f = ((ROWS,), f32, 0)                                  # sampled tokens' log-probabilities
    # [batch, sequence, classes] with the sequence sharded (sequence parallelism)
    sequence = ((2, ROWS // 2, CLASSES), f32, 1)
    out = {
        "kl_divergence [B, T, C] over T": (jaxdiv.kl_divergence, [sequence, sequence], (0, 1)),
        "js_divergence [B, T, C] over T": (jaxdiv.js_divergence, [sequence, sequence], (0, 1)),
        "kl_divergence": (jaxdiv.kl_divergence, pair, (0, 1)),
        "cross_entropy": (jaxdiv.cross_entropy, pair, (0, 1)),
        "cross_entropy_with_integer_labels": (jaxdiv.cross_entropy_with_integer_labels, [logits, labels], (0,)),
        "entropy": (jaxdiv.entropy, [logits], (0,)),
        "bernoulli_kl_divergence": (jaxdiv.bernoulli_kl_divergence, pair, (0, 1)),
        "js_divergence": (jaxdiv.js_divergence, pair, (0, 1)),
        "js_distance": (jaxdiv.js_distance, pair, (0, 1)),
        "total_variation": (jaxdiv.total_variation, pair, (0, 1)),
        "hellinger_distance": (jaxdiv.hellinger_distance, pair, (0, 1)),
        "renyi_divergence": (lambda p, q: jaxdiv.renyi_divergence(p, q, 0.5), pair, (0, 1)),
        "jeffreys_divergence": (jaxdiv.jeffreys_divergence, pair, (0, 1)),
        "f_divergence": (lambda p, q: jaxdiv.f_divergence(p, q, lambda t: (t - 1) ** 2), pair, (0, 1)),
        "probs.kl_divergence": (lambda p, q: probs.kl_divergence(jnp.exp(p), jnp.exp(q)), pair, (0, 1)),
        "probs.js_divergence": (lambda p, q: probs.js_divergence(jnp.exp(p), jnp.exp(q)), pair, (0, 1)),
        "probs.entropy": (lambda p: probs.entropy(jnp.exp(p)), [logits], (0,)),
        "gaussian.kl_divergence": (gaussian.kl_divergence, [gauss] * 4, (0, 1, 2, 3)),
        "gaussian.kl_standard_normal": (gaussian.kl_standard_normal, [gauss] * 2, (0, 1)),
        "losses.softmax_cross_entropy": (
            lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4, reduction="none"),
            [logits, labels], (0,)),
        "losses.distillation_loss": (
            lambda s, t: losses.distillation_loss(s, t, temperature=2.0, reduction="none"), pair, (0,)),
        "losses.binary_cross_entropy": (
            lambda x, y: losses.binary_cross_entropy(x, y, reduction="none"), pair, (0,)),
        "losses.vae_kl": (lambda m, v: losses.vae_kl(m, v, reduction="none"), [gauss] * 2, (0, 1)),
        # value+grad only below (its compile holds the forward too): the rest of the API
        "probs.cross_entropy": (lambda p, q: probs.cross_entropy(jnp.exp(p), jnp.exp(q)), pair, (0, 1), True),
        "probs.total_variation": (lambda p, q: probs.total_variation(jnp.exp(p), jnp.exp(q)), pair, (0, 1), True),
        "probs.hellinger_distance": (
            lambda p, q: probs.hellinger_distance(jnp.exp(p), jnp.exp(q)), pair, (0, 1), True),
        "probs.renyi_divergence": (
            lambda p, q: probs.renyi_divergence(jnp.exp(p), jnp.exp(q), 2.0), pair, (0, 1), True),
        "probs.js_distance": (lambda p, q: probs.js_distance(jnp.exp(p), jnp.exp(q)), pair, (0, 1), True),
        "gaussian.kl_divergence_scale": (
            lambda m, s, n, t: gaussian.kl_divergence_scale(m, jnp.exp(s), n, jnp.exp(t)), [gauss] * 4,
            (0, 1, 2, 3), True),
        "gaussian.cross_entropy": (gaussian.cross_entropy, [gauss] * 4, (0, 1, 2, 3), True),
        # (its gradient in log_var is a constant, which the partitioner would replicate)
        "gaussian.entropy": (lambda v: gaussian.entropy(jnp.sin(v)), [gauss], (0,), True),
        "gaussian.kl_divergence_tril": (
            lambda m, a, n, b: gaussian.kl_divergence_tril(m, _tril(a), n, _tril(b)), [small, square] * 2,
            (0, 1, 2, 3), True),
        "gaussian.cross_entropy_tril": (
            lambda m, a, n, b: gaussian.cross_entropy_tril(m, _tril(a), n, _tril(b)), [small, square] * 2,
            (0, 1, 2, 3), True),
        "gaussian.entropy_tril": (lambda a: gaussian.entropy_tril(_tril(a)), [square], (0,), True),
        "losses.kl_penalty": (
            lambda a, b: losses.kl_penalty(a, b, reduction="none"), [labels_f, labels_f], (0,), True),
        # the Pallas kernels' path: on the CPU their XLA twin, inside the same
        # row partitioning that splits the kernels on GPU and TPU
        "kl_divergence [pallas]": (
            lambda p, q: jaxdiv.kl_divergence(p, q, implementation="pallas"), pair, (0, 1), True),
        "js_divergence [pallas]": (
            lambda p, q: jaxdiv.js_divergence(p, q, implementation="pallas"), pair, (0, 1), True),
        "kl_divergence [B, T, C] over T [pallas]": (
            lambda p, q: jaxdiv.kl_divergence(p, q, implementation="pallas"), [sequence, sequence], (0, 1),
            True),
        "losses.softmax_cross_entropy [pallas]": (
            lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=0.1, reduction="none",
                                                      implementation="pallas"),
            [logits, labels], (0,), True),
        "fused.linear_cross_entropy": (
            lambda h, w, y: fused.linear_cross_entropy(h, w, y, reduction="none"), [hidden, weight, labels],
            (0, 1)),
        "fused.linear_kl_divergence": (
            lambda h, w, t: fused.linear_kl_divergence(h, w, t, reduction="none"), [hidden, weight, logits],
            (0, 1)),
        "fused.linear_distillation_loss": (
            lambda h, w, t: fused.linear_distillation_loss(h, w, t, kind="jsd", reduction="none"),
            [hidden, weight, logits], (0, 1)),
    }
    return out


def _tril(a):
    """A lower-triangular factor with a positive diagonal from any square block."""
    import jax.numpy as jnp

    return jnp.tril(a, -1) + jnp.eye(a.shape[-1]) * (1.0 + jnp.exp(jnp.diagonal(a, axis1=-2, axis2=-1))[..., None])


def _arrays(shapes: str):
    """``[(dtype, elements)]`` of the array shapes written in an HLO snippet."""
    out = []
    for dtype, dims in _SHAPE.findall(shapes):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append((dtype, n))
    return out


def _collectives(text: str):
    """``[(op, elements)]`` of every collective in an optimised HLO module."""
    return [(op, sum(n for _, n in _arrays(shapes))) for shapes, op in _OP.findall(text)]


def _largest(text: str) -> int:
    """Elements of the largest array any instruction of the (per-device) program holds."""
    return max((n for _, n in _arrays(text)), default=0)


# These programs are read (HLO, cost and memory analyses), never run: the LLVM
# code generator's optimisation level changes none of that, and level 0 compiles
# them 15% faster.
_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def measure(devices: int) -> dict:
    """Per program: the collectives, the largest array, and the compiled cost of
    one device's program, with every input sharded over its batch axis (with one
    device, the single-device program). With 4 devices, also the
    categorical programs on a (data, model) mesh, the classes split over
    ``model`` under plain ``jax.jit`` (entries named ``"... [vocabulary]"``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    assert len(jax.devices()) == devices, jax.devices()
    meshes = {"": (Mesh(np.array(jax.devices()), ("data",)), None)}
    if devices == 4:
        grid = np.array(jax.devices()).reshape(devices // 2, 2)
        meshes[" [vocabulary]"] = (Mesh(grid, ("data", "model")), "model")

    def spec(mesh, model, shape, dtype, axis):
        names = [None] * len(shape)
        if axis is not None:
            names[axis] = "data"
        if model is not None and shape[-1] == CLASSES:
            names[-1] = model
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(*names)))

    report = {}
    for suffix, (mesh, model) in meshes.items():
        for name, (fn, inputs, argnums, *grad_only) in programs().items():
            if model is not None and (name.startswith(("fused.", "gaussian.", "probs.", "losses.vae_kl", "losses.kl_penalty", "js_distance"))
                                      or "[" in name):
                continue
            if grad_only and devices == 8:
                continue   # the rest of the API is checked on 1 and 4 devices, to keep the suite short
            grad = jax.value_and_grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=argnums)
            # value+grad only on the vocabulary mesh, on 8 devices and for the rest of
            # the API: its compile holds the forward computation too
            short = grad_only or model is not None or devices == 8
            kinds = (("value+grad", grad),) if short else (("forward", fn), ("value+grad", grad))
            for kind, program in kinds:
                args = [spec(mesh, model, *i) for i in inputs]
                compiled = jax.jit(program).trace(*args).lower().compile(_COMPILE_OPTIONS)
                cost, text = compiled.cost_analysis(), compiled.as_text()
                report[f"{name} {kind}{suffix}"] = {
                    "collectives": _collectives(text),
                    "largest": _largest(text),
                    "flops": cost.get("flops", 0.0),
                    "bytes": cost.get("bytes accessed", 0.0),
                    "temps": compiled.memory_analysis().temp_size_in_bytes,
                }
    return report


def run(devices: int, timeout: float = 600) -> dict:
    """:func:`measure` in a new process with ``devices`` host devices."""
    import subprocess
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "benchmarks.many_devices", "measure", str(devices)],
                            capture_output=True,
                            text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout)


# ----------------------------------------------------------------- the report

# The report's size: the README's CPU shape, on 4 devices (2 x 2 for the
# vocabulary split); times at the same global batch on 1, 2, 4 and 8.
REPORT_ROWS, REPORT_CLASSES, REPORT_DEVICES = 1024, 32000, 4
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_WHILE = re.compile(r"while\(.*?body=%?([\w.\-]+).*?known_trip_count\":\{\"n\":\"(\d+)\"")


def collective_bytes(text: str) -> int:
    """Bytes of every collective's result in an optimised HLO module, each counted
    as many times as it runs (loop bodies by their known trip counts)."""
    owner, collectives, loops, entry = None, {}, {}, None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            owner = header.group(1)
            entry = owner if line.startswith("ENTRY") else entry
            continue
        for body, trips in _WHILE.findall(line):
            loops.setdefault(owner, []).append((body, int(trips)))
        for shapes, _ in _OP.findall(line):
            size = sum(n * (int(re.sub(r"\D", "", dtype) or 8) // 8) for dtype, n in _arrays(shapes))
            collectives[owner] = collectives.get(owner, 0) + size

    def total(name, seen=()):
        if name in seen:
            return 0
        return collectives.get(name, 0) + sum(t * total(b, seen + (name,)) for b, t in loops.get(name, []))

    return total(entry)


def _report_programs():
    import jax
    import optax

    import jaxdiv
    from jaxdiv import losses

    def optax_kl(p, q):
        return optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(q), jax.nn.log_softmax(p))

    return {
        "kl_divergence": (jaxdiv.kl_divergence, 2, False),
        "optax KL (log_softmax + kl_divergence_with_log_targets)": (optax_kl, 2, False),
        "cross_entropy_with_integer_labels": (jaxdiv.cross_entropy_with_integer_labels, 1, True),
        "optax softmax_cross_entropy_with_integer_labels": (
            optax.losses.softmax_cross_entropy_with_integer_labels, 1, True),
        "losses.softmax_cross_entropy (smoothing, z-loss)": (
            lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4, reduction="none"),
            1, True),
        "entropy": (jaxdiv.entropy, 1, False),
        "js_divergence": (jaxdiv.js_divergence, 2, False),
        "losses.distillation_loss": (
            lambda s, t: losses.distillation_loss(s, t, temperature=2.0, reduction="none"), 2, False),
    }


def communication(devices: int) -> dict:
    """Per program, forward and value+grad: collective bytes per row of a device's
    part of the batch, data parallel and (4+ devices) with the classes split too."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    rows, classes = REPORT_ROWS, REPORT_CLASSES
    layouts = {"data": (Mesh(np.array(jax.devices()), ("data",)), P("data", None), devices)}
    if devices >= 4:
        grid = np.array(jax.devices()).reshape(devices // 2, 2)
        layouts["data x model"] = (Mesh(grid, ("data", "model")), P("data", "model"), devices // 2)
    out = {}
    for name, (fn, logits, labelled) in _report_programs().items():
        for layout, (mesh, spec, batch_shards) in layouts.items():
            args = [jax.ShapeDtypeStruct((rows, classes), jnp.float32, sharding=NamedSharding(mesh, spec))] * logits
            if labelled:
                args.append(jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=NamedSharding(mesh, P("data"))))
            grad = jax.value_and_grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=tuple(range(logits)))
            for kind, program in (("forward", fn), ("value+grad", grad)):
                compiled = jax.jit(program).trace(*args).lower().compile(_COMPILE_OPTIONS)
                cost = compiled.cost_analysis()
                out[f"{name}|{kind}|{layout}"] = {
                    # per row of the device's own part of the batch
                    "bytes_per_row": collective_bytes(compiled.as_text()) / (rows / batch_shards),
                    "flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0),
                }
    return out


def timings(devices: int, repeats: int = 5) -> dict:
    """Median ms of forward and value+grad at the global batch, batch-sharded over ``devices``."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxdiv
    from jaxdiv import losses

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    shape = (REPORT_ROWS, REPORT_CLASSES)
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    p = put(rng.standard_normal(shape, np.float32), P("data", None))
    q = put(rng.standard_normal(shape, np.float32), P("data", None))
    y = put(rng.integers(0, shape[1], shape[0]).astype(np.int32), P("data"))
    kernels = {
        "kl_divergence": (lambda a, b, y: jaxdiv.kl_divergence(a, b), (0, 1)),
        "losses.softmax_cross_entropy": (lambda a, b, y: losses.softmax_cross_entropy(b, y, reduction="none"), (1,)),
        "js_divergence": (lambda a, b, y: jaxdiv.js_divergence(a, b), (0, 1)),
    }
    out = {}
    for name, (fn, argnums) in kernels.items():
        grad = jax.value_and_grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=argnums)
        for kind, program in (("forward", fn), ("value+grad", grad)):
            compiled = jax.jit(program)
            jax.block_until_ready(compiled(p, q, y))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(compiled(p, q, y))
                times.append(time.perf_counter() - start)
            out[f"{name}|{kind}"] = 1e3 * statistics.median(times)
    return out


def _in_process(task: str, devices: int, timeout: float = 900) -> dict:
    import subprocess
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "benchmarks.many_devices", task, str(devices)],
                            capture_output=True, text=True, timeout=timeout,
                            cwd=Path(__file__).resolve().parents[1])
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout)


def report(out_dir) -> str:
    """Runs the measurements (each device count in its own process), writes
    ``many-devices.json`` and ``many-devices.md`` into ``out_dir``, returns the markdown."""
    from pathlib import Path

    comm = _in_process("communication", REPORT_DEVICES)
    times = {n: _in_process("timings", n) for n in (1, 2, 4, 8)}
    n, c = REPORT_DEVICES, REPORT_CLASSES
    gathered = (n - 1) / n * c * 4   # bytes per row per input a device receives to gather the logits
    lines = [
        f"## Many devices: f32 [{REPORT_ROWS}, {c}], {n} host devices ({os.cpu_count()} CPU cores)",
        "",
        "Collective bytes per row of a device's part of the batch (each collective's result, counted as "
        "often as it runs), from the compiled programs. `data`: batch sharded over 4 devices under `jax.jit`; "
        "`data x model`: a 2 x 2 mesh with the classes split over `model` too. jaxdiv 0.2 gathered "
        f"the whole logits: {gathered:,.0f} B per row per input on every device.",
        "",
        "| kernel | pass | data | data x model |",
        "|---|---|---:|---:|",
    ]
    names = list(dict.fromkeys(k.split("|")[0] for k in comm))
    for name in names:
        for kind in ("forward", "value+grad"):
            cells = [f"{comm[f'{name}|{kind}|{layout}']['bytes_per_row']:,.2f}"
                     if f"{name}|{kind}|{layout}" in comm else "-" for layout in ("data", "data x model")]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", f"Time (ms, median) at the global batch, batch sharded over N host devices "
              f"({os.cpu_count()} cores shared by all of them: information, not a target).", "",
              "| kernel | pass | " + " | ".join(f"N={k}" for k in times) + " |",
              "|---|---|" + "---:|" * len(times)]
    for key in times[1]:
        name, kind = key.split("|")
        lines.append(f"| {name} | {kind} | " + " | ".join(f"{times[k][key]:.1f}" for k in times) + " |")
    markdown = "\n".join(lines) + "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "many-devices.json").write_text(json.dumps({"communication": comm, "timings": times}, indent=2))
    (out_dir / "many-devices.md").write_text(markdown)
    return markdown


if __name__ == "__main__" and sys.argv[1] in ("measure", "communication", "timings"):
    count = int(sys.argv[2])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if sys.argv[1] == "measure":
        print(json.dumps({"devices": count, "rows": ROWS, "classes": CLASSES, "hidden": HIDDEN,
                          "programs": measure(count)}))
    elif sys.argv[1] == "communication":
        print(json.dumps(communication(count)))
    else:
        print(json.dumps(timings(count)))
