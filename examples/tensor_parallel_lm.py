"""The byte LM of ``examples/byte_lm.py`` trained on a (data=2, model=2) mesh of 4 devices.

    .venv/bin/python -m examples.tensor_parallel_lm [--steps 100]

The batch is split over ``data`` (each device pair sees half of it) and the
output layer's vocabulary over ``model``: the tied ``[V, D]`` table and the
padding bias enter the loss as two halves of 160 classes, and
``fused.linear_cross_entropy(..., axis_name="model")`` combines the two
halves' row statistics with a ``pmax`` and a few ``psum`` of per-token
scalars. No device ever holds more than its half of a vocabulary chunk of
logits, and nothing of size ``V`` crosses the mesh but the table's gradient.
The rest of the model runs under plain ``jax.jit`` with the batch sharded.

On a machine without 4 accelerators it makes 4 host devices out of the CPU
(set before JAX starts). It prints the loss curve next to the single-device
run of the same steps: they agree to float32 rounding.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from examples import byte_lm  # noqa: E402
from jaxdiv import fused  # noqa: E402


def make_mesh() -> Mesh:
    if len(jax.devices()) < 4:
        raise RuntimeError(
            f"a (data=2, model=2) mesh needs 4 devices, found {len(jax.devices())}: on a CPU, set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=4 before JAX starts."
        )
    return Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))


def sharded_loss_fn(mesh, params, model, window, target, *, chunk_size=64, label_smoothing=0.05, z_loss=1e-4):
    hidden, table = model.apply(params, window)

    def head(hidden, table, bias, target):
        loss = fused.linear_cross_entropy(
            hidden, table, target, bias=bias, weight_layout="vd", chunk_size=chunk_size,
            label_smoothing=label_smoothing, z_loss=z_loss, axis_name="model",
        )
        return jax.lax.pmean(loss, "data")   # equal halves of the batch: the mean of the means

    return jax.shard_map(
        head, mesh=mesh,
        in_specs=(P("data", None), P("model", None), P("model"), P("data")), out_specs=P(),
    )(hidden, table, byte_lm.PADDING_BIAS, target)


def plain_loss_fn(params, model, window, target, **kwargs):
    return byte_lm.loss_fn(params, model, window, target, **kwargs)[0]


def train(steps=100, *, mesh=None, batch_size=256, chunk_size=64, learning_rate=2e-3, seed=0):
    """Loss per step; on ``mesh`` (tensor- and data-parallel) or, without, on one device."""
    train_data, _ = byte_lm.load_text()
    model = byte_lm.ByteLM()
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, byte_lm.CONTEXT), jnp.int32))
    optimiser = optax.adamw(learning_rate, weight_decay=1e-4)
    state = optimiser.init(params)
    if mesh is None:
        loss_fn = plain_loss_fn
    else:
        def loss_fn(*args, **kwargs):
            return sharded_loss_fn(mesh, *args, **kwargs)
        replicated = NamedSharding(mesh, P())
        params, state = jax.device_put((params, state), replicated)

    @jax.jit
    def step(params, state, window, target):
        loss, grads = jax.value_and_grad(loss_fn)(params, model, window, target, chunk_size=chunk_size)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        starts = rng.integers(0, len(train_data) - byte_lm.CONTEXT - 1, batch_size)
        window, target = byte_lm.windows(train_data, starts)
        if mesh is not None:
            batch = NamedSharding(mesh, P("data"))
            window, target = jax.device_put(window, batch), jax.device_put(target, batch)
        params, state, loss = step(params, state, window, target)
        history.append(float(loss))
    return history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    sharded = train(args.steps, mesh=make_mesh())
    single = train(args.steps)
    for i in range(0, args.steps, max(1, args.steps // 10)):
        print(f"step {i:4d}  mesh {sharded[i]:.6f}  one device {single[i]:.6f}")
    worst = max(abs(a - b) / abs(b) for a, b in zip(sharded, single))
    print(f"largest relative difference over {args.steps} steps: {worst:.2e}")


if __name__ == "__main__":
    main()
