"""Inside shard_map (batch sharded over 2 host devices), in a subprocess so the
device count does not leak into the rest of the suite."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import jaxdiv
    from jaxdiv import gaussian

    assert len(jax.devices()) == 2
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rng = np.random.default_rng(0)
    p, q = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
    p[0, 3] = -np.inf
    y = rng.integers(0, 16, 8)

    def losses(p, q, y):
        return (jaxdiv.kl_divergence(p, q), jaxdiv.cross_entropy(p, q), jaxdiv.entropy(p),
                jaxdiv.cross_entropy_with_integer_labels(q, y), gaussian.kl_standard_normal(p[:, 4:], q[:, 4:]))

    sharded = jax.jit(jax.shard_map(losses, mesh=mesh, in_specs=(P("batch"), P("batch"), P("batch")),
                                    out_specs=P("batch")))
    for got, want in zip(sharded(p, q, y), losses(p, q, y)):
        np.testing.assert_allclose(got, want, rtol=1e-6)

    def total(p, q):
        return jax.lax.psum(jaxdiv.kl_divergence(p, q).sum(), "batch")
    grad = jax.jit(jax.shard_map(jax.grad(total, argnums=(0, 1)), mesh=mesh,
                                 in_specs=(P("batch"), P("batch")), out_specs=P("batch")))
    for got, want in zip(grad(p, q), jax.grad(lambda a, b: jaxdiv.kl_divergence(a, b).sum(), argnums=(0, 1))(p, q)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    # a fused head, data parallel: the weight is the same on both devices and
    # gets the sum of their gradients, as jax.grad gives it for the whole batch
    from jaxdiv import fused
    h = rng.standard_normal((8, 4)).astype(np.float32)
    w = rng.standard_normal((4, 16)).astype(np.float32)

    def head(h, w, y):
        return jax.lax.psum(fused.linear_cross_entropy(h, w, y, reduction="sum", chunk_size=4), "batch")
    got = jax.jit(jax.shard_map(jax.value_and_grad(head, argnums=(0, 1)), mesh=mesh,
                                in_specs=(P("batch"), P(), P("batch")), out_specs=(P(), (P("batch"), P()))))(h, w, y)
    want = jax.value_and_grad(lambda h, w: fused.linear_cross_entropy(h, w, y, reduction="sum", chunk_size=4),
                              argnums=(0, 1))(h, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, r, rtol=2e-6, atol=1e-6)
    print("ok")
    """
)


def test_functions_work_inside_shard_map():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
