"""GPU and TPU execution, checked on the CPU.

Every public function is lowered for ``cuda``, ``rocm`` and ``tpu`` (no device
needed: lowering is platform-independent StableHLO) and must contain no loop
but the fused heads' chunk loop, while the CPU lowering of the same program
keeps its row-block loop. The accelerator branch is plain XLA, so it also runs
here: its values and gradients must match the CPU branch's across the
contract's edge cases. Compiling for an H100 or a TPU v5e is the benchmarks'
accelerator-model report (it needs the CUDA plugin and libtpu).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv import _numerics, fused, gaussian, losses, probs

ACCELERATORS = ("cuda", "rocm", "tpu")

# [rows, classes] large enough that the CPU branch runs 4 blocks of rows; only
# traced, never run.
ROWS, CLASSES = 32, 1 << 16


def _x(shape=(ROWS, CLASSES), dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _labels(shape=(ROWS,)):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


# name -> (function, abstract arguments, positions to differentiate)
X, Y, G = _x(), _labels(), _x((1 << 20, 64))
CATEGORICAL = {
    "kl_divergence": (jaxdiv.kl_divergence, (X, X), (0, 1)),
    "cross_entropy": (jaxdiv.cross_entropy, (X, X), (0, 1)),
    "entropy": (jaxdiv.entropy, (X,), (0,)),
    "cross_entropy_with_integer_labels": (jaxdiv.cross_entropy_with_integer_labels, (X, Y), (0,)),
    "bernoulli_kl_divergence": (jaxdiv.bernoulli_kl_divergence, (X, X), (0, 1)),
    "js_divergence": (jaxdiv.js_divergence, (X, X), (0, 1)),
    "js_distance": (jaxdiv.js_distance, (X, X), (0, 1)),
    "total_variation": (jaxdiv.total_variation, (X, X), (0, 1)),
    "hellinger_distance": (jaxdiv.hellinger_distance, (X, X), (0, 1)),
    "renyi_divergence": (lambda p, q: jaxdiv.renyi_divergence(p, q, 0.5), (X, X), (0, 1)),
    "jeffreys_divergence": (jaxdiv.jeffreys_divergence, (X, X), (0, 1)),
    "f_divergence": (lambda p, q: jaxdiv.f_divergence(p, q, lambda t: (t - 1) ** 2), (X, X), (0, 1)),
    "probs.kl_divergence": (probs.kl_divergence, (X, X), (0, 1)),
    "probs.cross_entropy": (probs.cross_entropy, (X, X), (0, 1)),
    "probs.entropy": (probs.entropy, (X,), (0,)),
    "probs.js_divergence": (probs.js_divergence, (X, X), (0, 1)),
    "probs.js_distance": (probs.js_distance, (X, X), (0, 1)),
    "probs.total_variation": (probs.total_variation, (X, X), (0, 1)),
    "probs.hellinger_distance": (probs.hellinger_distance, (X, X), (0, 1)),
    "probs.renyi_divergence": (lambda p, q: probs.renyi_divergence(p, q, 2.0), (X, X), (0, 1)),
    "softmax_cross_entropy": (
        lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4), (X, Y), (0,)),
    "softmax_cross_entropy(soft labels)": (losses.softmax_cross_entropy, (X, X), (0, 1)),
    "distillation_loss(forward_kl)": (losses.distillation_loss, (X, X), (0, 1)),
    "distillation_loss(reverse_kl)": (
        lambda s, t: losses.distillation_loss(s, t, kind="reverse_kl", temperature=2.0), (X, X), (0, 1)),
    "distillation_loss(jsd)": (lambda s, t: losses.distillation_loss(s, t, kind="jsd"), (X, X), (0, 1)),
    "kl_penalty_from_logits": (losses.kl_penalty_from_logits, (X, X), (0, 1)),
    "kl_penalty": (losses.kl_penalty, (X, X), (0, 1)),
    "binary_cross_entropy": (losses.binary_cross_entropy, (X, X), (0,)),
    "vae_kl": (losses.vae_kl, (G, G), (0, 1)),
    "gaussian.kl_divergence": (gaussian.kl_divergence, (G, G, G, G), (0, 1, 2, 3)),
    "gaussian.kl_standard_normal": (gaussian.kl_standard_normal, (G, G), (0, 1)),
    "gaussian.kl_divergence_scale": (gaussian.kl_divergence_scale, (G, G, G, G), (0, 1, 2, 3)),
    "gaussian.cross_entropy": (gaussian.cross_entropy, (G, G, G, G), (0, 1, 2, 3)),
    "gaussian.entropy": (gaussian.entropy, (G,), (0,)),
}
H, W = _x((256, 64)), _x((64, 4096))
FUSED = {
    "fused.linear_cross_entropy": (
        lambda h, w, y: fused.linear_cross_entropy(h, w, y, chunk_size=512), (H, W, _labels((256,))), (0, 1)),
    "fused.linear_distillation_loss": (
        lambda h, w, t: fused.linear_distillation_loss(h, w, t, chunk_size=512), (H, W, _x((256, 4096))), (0, 1)),
    "fused.linear_kl_divergence": (
        lambda h, w, t: fused.linear_kl_divergence(h, w, t, chunk_size=512), (H, W, _x((256, 4096))), (0, 1)),
}


def _scalar(fn):
    return lambda *a: jnp.sum(fn(*a))


def _programs(fn, args, argnums, jvp=True):
    """value, grad, value under vmap, and a jvp of the first input (custom_vjp heads have none)."""
    yield "value", fn, args
    yield "grad", jax.grad(_scalar(fn), argnums=argnums), args
    batched = tuple(jax.ShapeDtypeStruct((2,) + a.shape, a.dtype) for a in args)
    yield "vmap", jax.vmap(fn), batched
    if jvp and jnp.issubdtype(args[0].dtype, jnp.floating):
        yield "jvp", (lambda *a: jax.jvp(lambda x: fn(x, *a[1:]), (a[0],), (a[0],))), args


def _loops(fn, args, platforms):
    # One lowering for several platforms holds each one's branch: none may loop.
    return jax.jit(fn).trace(*args).lower(lowering_platforms=platforms).as_text().count("stablehlo.while")


@pytest.mark.parametrize("name", list(CATEGORICAL))
def test_no_loop_on_accelerators(name):
    fn, args, argnums = CATEGORICAL[name]
    for kind, program, program_args in _programs(fn, args, argnums):
        assert _loops(program, program_args, ACCELERATORS) == 0, (name, kind)


def test_the_cpu_keeps_its_row_blocks():
    # The control for the test above: the same program loops on the CPU.
    fn, args, argnums = CATEGORICAL["kl_divergence"]
    assert _loops(fn, args, ("cpu",)) >= 1
    assert _loops(jax.grad(_scalar(fn), argnums=argnums), args, ("cpu",)) >= 1
    # and a lowering for several platforms keeps the CPU's loop beside the GPU's branch
    assert _loops(fn, args, ("cuda", "cpu")) >= 1


@pytest.mark.parametrize("name", list(FUSED))
def test_fused_heads_loop_only_over_chunks(name):
    fn, args, argnums = FUSED[name]
    for kind, program, program_args in _programs(fn, args, argnums, jvp=False):
        for platform in ACCELERATORS:
            text = jax.jit(program).trace(*program_args).lower(lowering_platforms=(platform,)).as_text()
            # one chunk loop per pass (two for distillation's normalise-then-sum), forward and backward
            assert text.count("stablehlo.while") <= 4, (name, kind, platform)


def test_fused_heads_take_wider_chunks_on_accelerators():
    # 16384 tokens x 151936 classes: at most 64 chunks on GPU and TPU.
    tokens, vocab = 16384, 151936
    assert fused.auto_chunk_size(tokens, vocab, "cpu") == 256
    assert -(-vocab // fused.auto_chunk_size(tokens, vocab, "accelerator")) <= 64
    h, w, y = _x((tokens, 64)), _x((64, vocab)), _labels((tokens,))
    for platform, kind in (("cpu", "cpu"), ("cuda", "accelerator"), ("tpu", "accelerator")):
        text = jax.jit(fused.linear_cross_entropy).trace(h, w, y).lower(lowering_platforms=(platform,)).as_text()
        # the weight's chunk, [hidden, chunk], is sliced out inside the loop
        chunk = fused.auto_chunk_size(tokens, vocab, kind)
        assert f"tensor<64x{chunk}xf32>" in text, platform
    with pytest.raises(ValueError, match="platform"):
        fused.auto_chunk_size(tokens, vocab, "gpu")


def test_multi_platform_export_keeps_both_branches():
    exported = jax.export.export(jax.jit(jaxdiv.kl_divergence), platforms=("cpu", "cuda"))(X, X)
    assert exported.platforms == ("cpu", "cuda")
    assert "stablehlo.while" in exported.mlir_module()


# ------------------------------------------------- the accelerator branch, run here


def _edge_logits(rows=13, classes=40, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, classes)).astype(np.float32) * 3
    q = p + rng.standard_normal((rows, classes)).astype(np.float32) * 0.5
    p[0, :5] = -np.inf                 # zeros in P
    q[1, 7] = -np.inf                  # Q = 0 < P: KL +inf
    p[2] = -np.inf                     # P without mass
    p[3, :] = 0.0                      # ties everywhere
    p[4, 3] = p[4, 9] = 50.0           # a tie at the maximum
    q[5] = p[5]                        # identical rows
    p[6, 2] = np.nan                   # NaN row
    p[7] = -1e30                       # masked row
    p[8, 1:] = -np.inf                 # one-hot
    q[9] = p[9] + 1e4                  # an offset
    p[10, :4] = -200.0                 # Q's largest logit where P underflows:
    q[10, 2] = q[10].max() + 100.0     # (its KL takes a third pass on GPU/TPU)
    return p, q


FUNCTIONS = {
    "kl": lambda p, q: jaxdiv.kl_divergence(p, q),
    "cross_entropy": lambda p, q: jaxdiv.cross_entropy(p, q),
    "entropy": lambda p, q: jaxdiv.entropy(p),
    "integer CE": lambda p, q: jaxdiv.cross_entropy_with_integer_labels(q, jnp.arange(q.shape[0]) % q.shape[1]),
    "js": lambda p, q: jaxdiv.js_divergence(p, q),
    "tv": lambda p, q: jaxdiv.total_variation(p, q),
    "hellinger": lambda p, q: jaxdiv.hellinger_distance(p, q),
    "renyi": lambda p, q: jaxdiv.renyi_divergence(p, q, 0.5),
    "jeffreys": lambda p, q: jaxdiv.jeffreys_divergence(p, q),
    # The barrier stops XLA from rewriting log(exp(x)) as x inside jaxdiv,
    # which turns a probability that underflowed to 0 (exp(-1e30)) back into
    # a tiny positive one when the exp is compiled in the same fusion.
    "probs.kl": lambda p, q: probs.kl_divergence(*jax.lax.optimization_barrier((jnp.exp(p), jnp.exp(q)))),
    "distillation": lambda p, q: losses.distillation_loss(p, q, temperature=2.0, reduction="none"),
    "softmax_cross_entropy": lambda p, q: losses.softmax_cross_entropy(
        q, jnp.arange(q.shape[0]) % q.shape[1], label_smoothing=0.1, z_loss=1e-3, reduction="none"),
}


def _value_and_grads(fn, p, q, branch, monkeypatch):
    # A small block makes the CPU branch loop over these small arrays.
    monkeypatch.setattr(_numerics, "_BLOCK_ELEMENTS", 200)
    jax.clear_caches()   # traces are cached regardless of the forced branch

    def total(a, b):
        value = fn(a, b)
        return jnp.sum(jnp.where(jnp.isfinite(value), value, 0.0)), value

    # One program for both: the gradient's holds the forward computation.
    with _numerics.forced_branch(branch):
        grads, value = jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))(p, q)
    return value, grads


# 24 rows take the CPU's strided blocks (8 rows each); 13, a prime, its contiguous
# blocks with a shorter last one.
@pytest.mark.parametrize("name, rows", [(name, 24) for name in FUNCTIONS] + [("kl", 13), ("js", 13)])
def test_accelerator_branch_matches_the_cpu_branch(name, rows, monkeypatch):
    p, q = _edge_logits(rows)
    fn = FUNCTIONS[name]
    cpu_value, cpu_grads = _value_and_grads(fn, p, q, "cpu", monkeypatch)
    acc_value, acc_grads = _value_and_grads(fn, p, q, "accelerator", monkeypatch)
    np.testing.assert_allclose(acc_value, cpu_value, rtol=2e-6, atol=1e-7)
    # Rows with NaN or +inf inputs have NaN values on both branches; where
    # their gradients hold NaN may differ (see the README's known limits).
    valid = ~np.isnan(np.asarray(cpu_value))
    for a, c in zip(acc_grads, cpu_grads):
        np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(c)[valid], rtol=2e-5, atol=1e-7)


def test_accelerator_branch_bfloat16_and_shared_reference_row(monkeypatch):
    p, q = _edge_logits(seed=1)
    p, q = p[:, :16].astype(jnp.bfloat16), q[:1, :16].astype(jnp.bfloat16)   # one reference row
    fn = FUNCTIONS["kl"]
    cpu_value, cpu_grads = _value_and_grads(fn, p, q, "cpu", monkeypatch)
    acc_value, acc_grads = _value_and_grads(fn, p, q, "accelerator", monkeypatch)
    np.testing.assert_allclose(np.asarray(acc_value, np.float32), np.asarray(cpu_value, np.float32), rtol=1e-6)
    for a, c in zip(acc_grads, cpu_grads):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(c, np.float32), rtol=1e-2, atol=1e-3)


def test_forced_branch_rejects_unknown_names():
    with pytest.raises(ValueError, match="'cpu' or 'accelerator'"):
        with _numerics.forced_branch("gpu"):
            pass


def test_accelerator_model_counts_loop_iterations_and_windows():
    # The report's HLO reader on a CPU-compiled program: a loop of 8 blocks
    # counts its body 8 times, and slicing one row out of an operand counts
    # the row, not the operand.
    from benchmarks.accelerator_model import kernel_profile

    x = jnp.zeros((64, 1000), jnp.float32)
    looped = jax.jit(lambda x: jax.lax.map(lambda r: jnp.sum(jnp.exp(r)), x.reshape(8, 8, 1000)))
    profile = kernel_profile(looped.lower(x).compile().as_text())
    assert profile["loops"] == 1 and profile["launches"] >= 8
    whole = kernel_profile(jax.jit(lambda x: jnp.sum(jnp.exp(x), -1)).lower(x).compile().as_text())
    assert whole["loops"] == 0 and whole["traffic"] >= x.nbytes
    row = kernel_profile(jax.jit(lambda x, i: jax.lax.dynamic_slice_in_dim(x, i, 1) * 2).lower(x, 3).compile().as_text())
    assert row["traffic"] < x.nbytes / 10


def test_accelerator_model_retries_a_program_too_big_with_its_inputs_donated(monkeypatch):
    # The v5e's "exceeds available HBM" cannot happen on the CPU: a jit whose
    # compile refuses undonated inputs stands in for it. Another error is not
    # retried.
    from benchmarks import accelerator_model

    real_jit = jax.jit

    def jit(fn, donate_argnums=(), message="RESOURCE_EXHAUSTED: Ran out of memory on HBM"):
        compiled = real_jit(fn, donate_argnums=donate_argnums)
        if donate_argnums:
            return compiled

        class Refused:
            def trace(self, *args):
                return self

            def lower(self):
                return self

            def compile(self):
                raise RuntimeError(message)
        return Refused()

    x = jax.ShapeDtypeStruct((8, 128), jnp.float32)
    monkeypatch.setattr(jax, "jit", jit)
    row = accelerator_model._compile_one(lambda a, b: jnp.sum(a * b), [x, x])
    assert row["compiles"] and row["donated"] and row["error"].startswith("RESOURCE_EXHAUSTED")
    assert "inputs donated" in accelerator_model._format_row(
        {"target": "TPU v5e", "kernel": "k", "branch": "pallas", "temp_fraction": 0.0, "traffic_ratio": 1.0, **row})
    monkeypatch.setattr(jax, "jit", lambda fn, donate_argnums=(): jit(fn, donate_argnums, "INTERNAL: other"))
    row = accelerator_model._compile_one(lambda a, b: jnp.sum(a * b), [x, x])
    assert not row["compiles"] and row["error"] == "INTERNAL: other"


STORED_PASSES = {
    "kl": jaxdiv.kl_divergence,
    "distillation T=2": lambda a, b: jaxdiv.losses.distillation_loss(a, b, temperature=2.0,
                                                                     reduction="none"),
    "js": jaxdiv.js_divergence,
    "hellinger": jaxdiv.hellinger_distance,
    "renyi": lambda a, b: jaxdiv.renyi_divergence(a, b, 0.5),
}


@pytest.mark.parametrize("reference_row", [False, True])
@pytest.mark.parametrize("name", sorted(STORED_PASSES))
def test_passes_hold_the_stored_arrays_not_widened_copies(name, reference_row):
    """Between the passes of the log-ratio statistics on GPU and TPU only the inputs
    as stored are held.

    Widened (bfloat16 -> float32), tempered or broadcast logits handed to the
    barrier that ends the max pass, or to the third pass's cond, were [rows, C]
    arrays that XLA kept in memory: 402% of a bfloat16 input compiled for an H100.
    """
    p = jax.ShapeDtypeStruct((1 if reference_row else ROWS, CLASSES), jnp.bfloat16)
    q = jax.ShapeDtypeStruct((ROWS, CLASSES), jnp.bfloat16)
    text = jax.jit(STORED_PASSES[name]).trace(p, q).lower(lowering_platforms=("cuda",)).as_text()
    barriers = [line for line in text.splitlines() if "optimization_barrier" in line]
    assert barriers and any(f"{ROWS}x{CLASSES}xbf16" in line for line in barriers)
    assert not any(f"{ROWS}x{CLASSES}xf32" in line for line in barriers)
