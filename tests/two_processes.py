"""One of two processes on localhost running jaxdiv on JAX's distributed runtime
(CPU backend, collectives over loopback through gloo): 2 host devices each, a
(data=2, model=2) mesh whose model axis spans the processes, so each process
owns half of the vocabulary and its devices each half of the batch.

Run as ``python -m tests.two_processes PROCESS_ID PORT``; each process compares
the losses and gradients with the whole arrays on its own device and prints
one JSON object. Used by ``tests/test_many_devices.py``.
"""

from __future__ import annotations

import json
import os
import sys


def main(process_id: int, port: int) -> dict:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=120)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxdiv
    from jaxdiv import losses
    from tests.vocab_parallel import edge_logits

    p, q, labels, _ = edge_logits(np.float32)
    # model-major: the model axis runs across the processes
    devices = np.array([[d for d in jax.devices() if d.process_index == i] for i in range(2)]).T
    mesh = Mesh(devices, ("data", "model"))
    rows, local = P("data", "model"), jax.local_devices()[0]

    def global_array(x, spec):
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

    def total(fn):
        def loss(a, b, y, ax):
            v = fn(a, b, y, ax)
            v = jnp.where(jnp.isfinite(v), v, 0.0).sum()
            return v if ax is None else jax.lax.psum(v, "data")
        return loss

    functions = {
        "kl_divergence": lambda a, b, y, ax: jaxdiv.kl_divergence(a, b, axis_name=ax),
        "js_divergence": lambda a, b, y, ax: jaxdiv.js_divergence(a, b, axis_name=ax),
        "cross_entropy_with_integer_labels": lambda a, b, y, ax: jaxdiv.cross_entropy_with_integer_labels(
            b, y, axis_name=ax),
        "softmax_cross_entropy": lambda a, b, y, ax: losses.softmax_cross_entropy(
            b, y, label_smoothing=0.1, z_loss=1e-3, reduction="none", axis_name=ax),
        "distillation_loss": lambda a, b, y, ax: losses.distillation_loss(
            b, a, temperature=2.0, reduction="none", axis_name=ax),
    }
    args = (global_array(p, rows), global_array(q, rows), global_array(labels, P("data")))
    specs = (rows, rows, P("data"))
    worst = {}
    for name, fn in functions.items():
        want = fn(*(jax.device_put(x, local) for x in (p, q, labels)), None)
        got = jax.jit(jax.shard_map(lambda *x, fn=fn: fn(*x, "model"), mesh=mesh, in_specs=specs,
                                    out_specs=P("data")))(*args)
        got = multihost_utils.process_allgather(got, tiled=True)
        want_g = jax.grad(total(fn), (0, 1))(*(jax.device_put(x, local) for x in (p, q, labels)), None)
        got_g = jax.jit(jax.shard_map(jax.grad(lambda *x, fn=fn: total(fn)(*x, "model"), (0, 1)), mesh=mesh,
                                      in_specs=specs, out_specs=(rows, rows)))(*args)
        got_g = [multihost_utils.process_allgather(g, tiled=True) for g in got_g]
        worst[name] = _errors([(got, want), *zip(got_g, want_g)])

    # Data parallel under plain jit, the batch split across the processes.
    batch_mesh = Mesh(devices.T, ("data", "model"))
    by_rows = NamedSharding(batch_mesh, P("data", None))
    sharded = [jax.make_array_from_callback(x.shape, by_rows, lambda index, x=x: x[index]) for x in (p, q)]
    kl_total = total(functions["kl_divergence"])
    value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: kl_total(a, b, None, None), (0, 1)))
    got_v, got_g = value_and_grad(*sharded)
    want_v, want_g = value_and_grad(*(jax.device_put(x, local) for x in (p, q)))
    got_g = [multihost_utils.process_allgather(g, tiled=True) for g in got_g]
    worst["kl_divergence data-parallel jit"] = _errors([(multihost_utils.process_allgather(got_v, tiled=True), want_v),
                                                        *zip(got_g, want_g)])
    jax.distributed.shutdown()
    return {"process": process_id, "devices": len(jax.devices()), "worst": worst}


def _errors(pairs) -> list:
    """Per pair, the largest difference relative to the largest finite entry; inf if NaNs differ."""
    import numpy as np

    errors = []
    for g, w in pairs:
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:   # a replicated scalar gathers one copy per process
            g = g.reshape((-1,) + w.shape)[0]
        if not np.array_equal(np.isnan(g), np.isnan(w)):
            errors.append(float("inf"))
            continue
        differ = ~np.isnan(w) & (g != w)
        scale = max(float(np.max(np.abs(w[np.isfinite(w)]), initial=1.0)), 1.0)
        with np.errstate(invalid="ignore"):
            errors.append(float(np.max(np.abs(g - w)[differ] / scale, initial=0.0)))
    return errors


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
