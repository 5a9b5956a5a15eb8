"""Inside shard_map (batch sharded over 2 host devices), in a subprocess so the
device count does not leak into the rest of the suite."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
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
    print("ok")
    """
)


def test_functions_work_inside_shard_map():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
