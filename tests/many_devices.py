"""Compiles every public kernel, loss and fused head with a batch-sharded input on
N host devices and reports, per program, the collectives in the compiled HLO and
the per-device compiled cost against the single-device program's.

Run as ``python -m tests.many_devices N`` (it sets the host device count before
JAX starts, so it needs its own process); prints one JSON object. Used by
``tests/test_many_devices.py`` and the benchmark report.
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
    """``{name: (fn, [(shape, dtype, sharded_axis or None)], argnums)}``: each a
    function of arrays, the inputs, and the inputs a gradient is taken for."""
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


def _collectives(text: str):
    """``[(op, elements)]`` of every collective in an optimised HLO module."""
    found = []
    for shapes, op in _OP.findall(text):
        elements = 0
        for _, dims in _SHAPE.findall(shapes):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            elements += n
        found.append((op, elements))
    return found


def _largest(text: str) -> int:
    """Elements of the largest array any instruction of the (per-device) program holds."""
    largest = 0
    for _, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        largest = max(largest, n)
    return largest


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
        for name, (fn, inputs, argnums) in programs().items():
            if model is not None and (name.startswith(("fused.", "gaussian.", "probs.", "losses.vae_kl", "js_distance"))
                                      or "[" in name):
                continue
            grad = jax.value_and_grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=argnums)
            for kind, program in (("forward", fn), ("value+grad", grad)):
                args = [spec(mesh, model, *i) for i in inputs]
                compiled = jax.jit(program).trace(*args).lower().compile()
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

    result = subprocess.run([sys.executable, "-m", "tests.many_devices", str(devices)], capture_output=True,
                            text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout)


if __name__ == "__main__":
    count = int(sys.argv[1])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps({"devices": count, "rows": ROWS, "classes": CLASSES, "hidden": HIDDEN,
                      "programs": measure(count)}))
