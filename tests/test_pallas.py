"""The one-pass Pallas kernels (``implementation="pallas"``), run on the CPU in Pallas's interpreter.

Both kernels (Triton's row programs with a column loop, Mosaic's grid with a
sequential column axis) run with tiles shrunk to a few classes, so a row of a
few dozen classes crosses many tiles: the running maxima move between tiles,
ties at the maximum straddle tiles, the last tile is ragged. Values are
checked against the float64 references of ``tests/reference.py``, gradients
against float64 closed forms and against the XLA path, and the lowerings for
``cuda`` and ``tpu`` must hold the kernels (compiling them for an H100 and a
TPU v5e is the accelerator-model report).
"""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv import _online, _pallas
from tests import reference
from tests.inputs import rel_err

# On a machine with a GPU ("gpu"), every test of both interpreted kernels also
# runs the compiled Triton kernel itself: `python3 -m pytest tests/test_pallas.py -k gpu`.
ON_GPU = jax.default_backend() == "gpu"
KERNELS = ("triton", "mosaic") + (("gpu",) if ON_GPU else ())
ROWS, CLASSES = 24, 45


def _kernel(kernel):
    """Run ``kernel`` in Pallas's interpreter, or ("gpu") compiled, as the platform chooses."""
    return contextlib.nullcontext() if kernel == "gpu" else _pallas.interpreted(kernel)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 classes a pair (16 for one input; the interpreter does not hold Mosaic
    to its (8, 128) tiling)."""
    monkeypatch.setattr(_pallas, "_TRITON_TILE", 16)
    monkeypatch.setattr(_pallas, "_TPU_ROWS", 8)
    monkeypatch.setattr(_pallas, "_TPU_COLS", 8)


def _hard_pair(rng, rows=ROWS, classes=CLASSES):
    """Logit pairs with every case the contract names, one per row."""
    p = (3 * rng.standard_normal((rows, classes))).astype(np.float32)
    q = (p + 1e-3 * rng.standard_normal((rows, classes))).astype(np.float32)
    q[1] = 5 * rng.standard_normal(classes)                 # far apart
    p[2, ::3] = -np.inf                                     # zeros in P
    q[3, 5] = -np.inf                                       # P > 0 = Q: +inf
    p[4] = -np.inf                                          # P without support: 0
    q[5] = -np.inf                                          # Q without support: +inf
    p[6, -2], q[6, -2] = 200.0, 190.0                       # the max arrives in the last tile
    p[7] = -1e30                                            # a masked row, uniform
    p[8] = 1.0                                              # ties at the max across every tile
    q[9] = 0.0
    p[10, 0] = np.nan                                       # NaN stays in its row
    q[11, 3] = np.inf
    p[12] = -np.inf
    p[12, 30] = 0.0                                         # one-hot P
    q[13] = p[13] + 1e4                                     # a common offset
    p[14] = np.linspace(-100, 100, classes)                 # r large, both signs
    q[14] = p[14][::-1]
    p[15, :20], p[15, 20:] = 0.0, 100.0                     # old support underflows later
    q[15, 20:] = -np.inf
    q[16, 40:] = 80.0                                       # Q's mass moves late
    p[17] = [3e38, -3e38] * (classes // 2) + [0.0]          # offsets that overflow
    q[17] = -p[17]
    return p, q


def _f64(x):
    return np.asarray(x, np.float64)


def _both_nan_or_close(got, want, rtol):
    """Same NaN and +inf rows; elsewhere within ``rtol`` (or below float32's smallest normal)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    assert np.array_equal(np.isposinf(got), np.isposinf(want)), (got, want)
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=float(np.finfo(np.float32).tiny))


VALUES = {
    "kl_divergence": (lambda p, q, **k: jaxdiv.kl_divergence(p, q, **k), reference.kl),
    "cross_entropy": (lambda p, q, **k: jaxdiv.cross_entropy(p, q, **k), reference.cross_entropy),
    "entropy": (lambda p, q, **k: jaxdiv.entropy(p, **k), lambda p, q: reference.entropy(p)),
}


def _check_values(name, p, q, got, xla):
    """``got`` against the float64 reference of ``name``, and against the XLA path's ``xla``."""
    got, xla = np.asarray(got), np.asarray(xla)
    with np.errstate(all="ignore"):
        want = VALUES[name][1](_f64(p), _f64(q))
    # The references know no NaN convention (a NaN or +inf logit gives NaN here).
    read = (p,) if name == "entropy" else (p, q)
    bad = np.any([(np.isnan(x) | (x == np.inf)).any(-1) for x in read], axis=0)
    want = np.where(bad, np.nan, want)
    if name != "entropy":
        want[5] = np.inf                        # Q without support (the reference's log 0 / 0)
    # Row 17 overflows float32 differences: the references compute it in float64.
    # Row 13's logits, offset by 1e4, are themselves rounded by ~1e-3: its tiny
    # KL (7e-9) is good to 2e-4 on either path.
    keep = (np.arange(ROWS) != 17) & (np.arange(ROWS) != 13)
    _both_nan_or_close(got[keep], want[keep], 2e-5)
    _both_nan_or_close(got[13], want[13], 5e-4)
    # And the kernel agrees with the XLA path, row 17 included.
    _both_nan_or_close(np.delete(got, 13), np.delete(xla, 13), 2e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_integer_label_kernel_matches_reference(kernel, rng, small_tiles):
    x = (3 * rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS).astype(np.int32)
    x[0] = 0.0                                   # ties everywhere
    x[1, labels[1]] = -np.inf                    # label on a zero-probability class: +inf
    x[2] = -np.inf                               # no support: +inf
    x[3, 4] = np.nan
    labels[4] = CLASSES + 3                      # out of range (lands in the ragged tile): NaN
    labels[5] = CLASSES - 1                      # the last class, in the ragged tile
    with _kernel(kernel):
        got = np.asarray(jax.jit(lambda a, y: jaxdiv.cross_entropy_with_integer_labels(
            a, y, implementation="pallas"))(x, labels))
    with np.errstate(all="ignore"):
        want = reference.integer_cross_entropy(_f64(x), np.minimum(labels, CLASSES - 1))
    want[[3, 4]] = np.nan
    want[2] = np.inf
    _both_nan_or_close(got, want, 2e-6)
    _both_nan_or_close(got, jaxdiv.cross_entropy_with_integer_labels(x, labels), 2e-6)


def _kl_gradients_f64(p, q):
    """float64 closed forms: dKL/dq = Q - P, dKL/dp = P (log P - log Q - KL)."""
    lp, lq = reference.log_softmax(p), reference.log_softmax(q)
    kl = reference.kl(p, q)[..., None]
    probs_p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        dp = np.where(probs_p > 0, probs_p * (lp - lq - kl), 0.0)
    return dp, np.exp(lq) - probs_p


@pytest.mark.parametrize("kernel", KERNELS)
def test_kl_gradients_match_float64_closed_forms(kernel, rng, small_tiles):
    p = (3 * rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    q = (p + 0.3 * rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    p[2, ::3] = -np.inf
    p[6, -2] = 40.0
    p[8] = 1.0
    with _kernel(kernel):
        dp, dq = jax.jit(jax.grad(lambda a, b: jaxdiv.kl_divergence(
            a, b, implementation="pallas").sum(), (0, 1)))(p, q)
    want_dp, want_dq = _kl_gradients_f64(_f64(p), _f64(q))
    np.testing.assert_allclose(dp, want_dp, rtol=0, atol=2e-6)
    np.testing.assert_allclose(dq, want_dq, rtol=0, atol=2e-6)
    assert np.all(np.asarray(dp)[np.isneginf(p)] == 0.0)


def _closed_form_gradients_f64(name, p, q, y):
    """float64 d value / d (p, q) per row, from the textbook closed forms (NaN in edge rows)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lp, lq = reference.log_softmax(p), reference.log_softmax(q)
        probs_p, probs_q = np.exp(lp), np.exp(lq)
        if name == "kl_divergence":
            kl = reference.kl(p, q)[:, None]
            return np.where(probs_p > 0, probs_p * (lp - lq - kl), 0.0), probs_q - probs_p
        if name == "cross_entropy":
            h = reference.cross_entropy(p, q)[:, None]
            return np.where(probs_p > 0, probs_p * (-lq - h), 0.0), probs_q - probs_p
        if name == "entropy":
            h = reference.entropy(p)[:, None]
            return np.where(probs_p > 0, probs_p * (-lp - h), 0.0), np.zeros_like(q)
    onehot = np.arange(q.shape[-1]) == y[:, None]
    return np.zeros_like(p), probs_q - onehot


GRADIENTS = {
    "kl_divergence": lambda p, q, y, **k: jaxdiv.kl_divergence(p, q, **k),
    "cross_entropy": lambda p, q, y, **k: jaxdiv.cross_entropy(p, q, **k),
    "entropy": lambda p, q, y, **k: jaxdiv.entropy(p, **k),
    "integer_labels": lambda p, q, y, **k: jaxdiv.cross_entropy_with_integer_labels(q, y, **k),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_kernel_values_and_gradients(name, kernel, rng, small_tiles):
    """Values against float64 references; gradients against float64 closed
    forms, at least as accurate as the XLA path's, on the edge rows. Rows
    whose value is not finite are masked out of the loss and must give exactly
    zero gradients (the XLA path leaks NaN there for a +inf logit of Q: row 11).
    One compiled program per path."""
    p, q = _hard_pair(rng)
    y = rng.integers(0, CLASSES, ROWS).astype(np.int32)
    fn = GRADIENTS[name]
    n = 17                                     # row 17's +inf differences: values only
    weights = np.where(np.arange(ROWS) < n, np.arange(1.0, ROWS + 1.0), 0.0)

    def values_and_grads(a, b, **k):
        values, pullback = jax.vjp(lambda a, b: fn(a, b, y, **k), a, b)
        return values, pullback(jnp.where(jnp.isfinite(values), weights, 0.0).astype(values.dtype))

    xla, xla_grads = jax.jit(values_and_grads)(p, q)
    with _kernel(kernel):
        got, got_grads = jax.jit(lambda a, b: values_and_grads(a, b, implementation="pallas"))(p, q)
    if name in VALUES:
        _check_values(name, p, q, got, xla)
    finite = np.isfinite(np.asarray(xla))[:n, None]
    # A row where P has no support (row 4) has zero gradients; the references give NaN there.
    with np.errstate(over="ignore"):   # +inf * 0 weights of rows whose value is not finite
        want = [np.where(finite, np.nan_to_num(w, nan=0.0) * weights[:n, None], 0.0)
                for w in _closed_form_gradients_f64(name, _f64(p[:n]), _f64(q[:n]), y[:n])]
    for g, x, w in zip(got_grads, xla_grads, want):
        g, x = np.asarray(g, np.float64)[:n], np.asarray(x, np.float64)[:n]
        assert not np.isnan(g).any()
        kernel_error = np.abs(g - w).max(-1)
        xla_error = np.where(np.isnan(x).any(-1), 0.0, np.abs(x - w).max(-1))
        # float32 roundings of the normalisers (|logits| up to 200 here) bound both.
        assert np.all(kernel_error <= 2 * xla_error + 2e-6 * weights[:n]), (kernel_error, xla_error)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bfloat16_is_read_as_stored_and_accumulated_in_float32(kernel, rng, small_tiles):
    p = (3 * rng.standard_normal((ROWS, CLASSES))).astype(jnp.bfloat16)
    q = (3 * rng.standard_normal((ROWS, CLASSES))).astype(jnp.bfloat16)
    fn = jax.jit(jax.value_and_grad(lambda a, b: jaxdiv.kl_divergence(
        a, b, implementation="pallas").sum(), (0, 1)))
    with _kernel(kernel):
        calls = _pallas_calls(jax.make_jaxpr(fn)(p, q).jaxpr)
        value, grads = fn(p, q)
    # The kernel takes the bfloat16 arrays themselves: no float32 copy is made first.
    # (Compiled, the call sits in a branch per platform: the lowering tests read it.)
    if kernel != "gpu":
        assert [[v.aval.dtype for v in eqn.invars] for eqn in calls] == [[jnp.bfloat16] * 2]
    want = reference.kl(_f64(p.astype(np.float32)), _f64(q.astype(np.float32))).sum()
    assert abs(float(value) - want) <= 1e-5 * abs(want)
    assert all(g.dtype == jnp.bfloat16 for g in grads)


def test_tiled_statistics_are_independent_of_the_tile_width(rng):
    """The online sums in plain JAX, from one class per tile to the whole row."""
    p, q = _hard_pair(rng)
    rows = np.r_[0:13, 14:17]                # not the 1e4 offset (see the values test)
    p, q = jnp.asarray(p[rows]), jnp.asarray(q[rows])
    whole = _online.run_whole_rows(_online.kl_init, _online.kl_update, _online.kl_finish, p, q).kl
    for tile in (1, 7):
        tiled = _online.run_in_tiles(_online.kl_init, _online.kl_update, _online.kl_finish,
                                     p, q, tile=tile).kl
        _both_nan_or_close(tiled, whole, 2e-5)


# ------------------------------------------------------------ lowering, choice


def _pallas_calls(jaxpr):
    """The ``pallas_call`` equations of a jaxpr, those in nested jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append(eqn)
            continue
        for param in eqn.params.values():
            for inner in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    found += _pallas_calls(inner)
    return found


def _lowered(fn, *args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


PUBLIC = {
    "kl_divergence": (lambda p, q, y: jaxdiv.kl_divergence(p, q, implementation="pallas"), (0, 1)),
    "cross_entropy": (lambda p, q, y: jaxdiv.cross_entropy(p, q, implementation="pallas"), (0, 1)),
    "entropy": (lambda p, q, y: jaxdiv.entropy(p, implementation="pallas"), (0,)),
    "integer_labels": (lambda p, q, y: jaxdiv.cross_entropy_with_integer_labels(
        q, y, implementation="pallas"), (1,)),
    "js_divergence": (lambda p, q, y: jaxdiv.js_divergence(p, q, implementation="pallas"), (0, 1)),
    "total_variation": (lambda p, q, y: jaxdiv.total_variation(p, q, implementation="pallas"), (0,)),
    "hellinger_distance": (lambda p, q, y: jaxdiv.hellinger_distance(
        p, q, implementation="pallas"), (1,)),
}


@pytest.mark.parametrize("platform, call", [("cuda", "__gpu"), ("tpu", "tpu_custom_call")])
@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_lowers_to_one_kernel_per_pass_on_gpu_and_tpu(name, platform, call):
    """Forward: the kernel alone reads the logits; backward: elementwise, no loop."""
    fn, argnums = PUBLIC[name]
    x = jax.ShapeDtypeStruct((64, 5000), jnp.float32)
    y = jax.ShapeDtypeStruct((64,), jnp.int32)
    value_and_grad = jax.value_and_grad(lambda p, q, y: fn(p, q, y).sum(), argnums)
    text = _lowered(value_and_grad, x, x, y, platform=platform)
    assert len(re.findall(rf"custom_call @{call}\b", text)) == 1
    assert "stablehlo.while" not in text


@pytest.mark.skipif(ON_GPU, reason="on a GPU the Triton kernel runs")
def test_the_cpu_runs_the_xla_path_and_float64_falls_through(rng):
    p, q = rng.standard_normal((2, 4, 9)).astype(np.float32)
    text = _lowered(lambda a, b: jaxdiv.kl_divergence(a, b, implementation="pallas"), p, q,
                    platform="cpu")
    assert "custom_call" not in text
    np.testing.assert_array_equal(jaxdiv.kl_divergence(p, q, implementation="pallas"),
                                  jaxdiv.kl_divergence(p, q))
    with jax.enable_x64(True):
        p64, q64 = p.astype(np.float64), q.astype(np.float64)
        jaxpr = str(jax.make_jaxpr(lambda a, b: jaxdiv.kl_divergence(
            a, b, implementation="pallas"))(p64, q64))
        assert "pallas_call" not in jaxpr


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match=r"implementation must be one of \('xla', 'pallas'\), got 'triton'"):
        jaxdiv.entropy(jnp.zeros(3), implementation="triton")


def test_forward_mode_is_refused_with_a_clear_error():
    """A Pallas call has no JVP rule: reverse mode only, as documented."""
    x = jnp.zeros((2, 3))
    with _pallas.interpreted("triton"), pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda a: jaxdiv.entropy(a, implementation="pallas"), (x,), (x,))


def test_broadcast_batch_dims_and_axis(rng, small_tiles):
    """One reference row against a batch, and a class axis that is not last."""
    p = rng.standard_normal((1, 45, 3)).astype(np.float32)
    q = rng.standard_normal((4, 45, 3)).astype(np.float32)
    with _pallas.interpreted("triton"):
        got = jaxdiv.kl_divergence(p, q, axis=1, implementation="pallas")
    want = reference.kl(np.moveaxis(_f64(np.broadcast_to(p, q.shape)), 1, -1),
                        np.moveaxis(_f64(q), 1, -1))
    assert got.shape == (4, 3)
    assert rel_err(got, want) < 2e-6


# ------------------------------------------------------------------ losses


def _loss_cases(rng):
    logits = (3 * rng.standard_normal((4, 6, CLASSES))).astype(np.float32)
    logits[0, 0, 7:] = -np.inf                         # a padded vocabulary
    logits[1, 2] = 0.0                                 # ties everywhere
    labels = rng.integers(0, CLASSES, (4, 6)).astype(np.int32)
    labels[2, 3] = -100                                # ignored
    where = np.ones((4, 6), bool)
    where[3, :2] = False
    logits[3, 0] = np.nan                              # masked: never read
    return logits, labels, where


SOFTMAX_OPTIONS = {
    "plain": {},
    "smoothing, z-loss": {"label_smoothing": 0.1, "z_loss": 1e-3},
    "softcap, smoothing, sum": {"logit_softcap": 5.0, "label_smoothing": 0.2, "reduction": "sum"},
    "none": {"reduction": "none", "label_smoothing": 0.05},
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("options", sorted(SOFTMAX_OPTIONS))
def test_softmax_cross_entropy_options_match_the_xla_path(options, kernel, rng, small_tiles):
    from jaxdiv import losses

    logits, labels, where = _loss_cases(rng)
    kw = dict(SOFTMAX_OPTIONS[options], ignore_index=-100, where=where, return_aux=True)

    def loss(x, **k):
        value, aux = losses.softmax_cross_entropy(x, labels, **kw, **k)
        return jnp.sum(value), (value, aux)

    (_, want), want_grad = jax.value_and_grad(loss, has_aux=True)(logits)
    with _kernel(kernel):
        (_, got), got_grad = jax.jit(jax.value_and_grad(
            lambda x: loss(x, implementation="pallas"), has_aux=True))(logits)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)
    assert not np.isnan(np.asarray(got_grad)).any()
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_distillation_with_a_learned_temperature_matches_the_xla_path(kind, kernel, rng, small_tiles):
    from jaxdiv import losses

    student, _, where = _loss_cases(rng)
    teacher = (student + rng.standard_normal(student.shape)).astype(np.float32)
    teacher[0, 1, 3] = -np.inf

    def loss(s, t, temperature, **k):
        return losses.distillation_loss(s, t, temperature=temperature, kind=kind, where=where,
                                        teacher_gradient=True, **k)

    want = jax.value_and_grad(loss, (0, 1, 2))(student, teacher, 2.5)
    with _kernel(kernel):
        got = jax.jit(jax.value_and_grad(
            lambda s, t, T: loss(s, t, T, implementation="pallas"), (0, 1, 2)))(student, teacher, 2.5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert not np.isnan(np.asarray(g)).any()
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7)


def test_cases_the_kernels_do_not_take_fall_through_to_xla(rng):
    """Class weights, soft labels and Renyi run the XLA path, even on a GPU."""
    from jaxdiv import losses

    x = jax.ShapeDtypeStruct((8, 300), jnp.float32)
    y = jax.ShapeDtypeStruct((8,), jnp.int32)
    weighted = lambda a, b: losses.softmax_cross_entropy(   # noqa: E731
        a, b, class_weights=jnp.ones(300), implementation="pallas")
    soft = lambda a, b: losses.softmax_cross_entropy(   # noqa: E731
        a, jax.nn.softmax(a), implementation="pallas")
    jsd = lambda a, b: losses.distillation_loss(a, a + 1, kind="jsd", implementation="pallas")  # noqa: E731
    plain = lambda a, b: losses.softmax_cross_entropy(a, b, implementation="pallas")  # noqa: E731
    assert "__gpu" not in _lowered(weighted, x, y, platform="cuda")
    assert "__gpu" not in _lowered(soft, x, y, platform="cuda")
    assert "__gpu" in _lowered(jsd, x, y, platform="cuda")
    assert "__gpu" in _lowered(plain, x, y, platform="cuda")
    with pytest.raises(ValueError, match="implementation must be one of"):
        losses.distillation_loss(jnp.zeros(3), jnp.zeros(3), kind="jsd", implementation="cuda")


# ------------------------------------------------------ the Jensen-Shannon family

FAMILY = {
    "js_divergence": (lambda p, q, **k: jaxdiv.js_divergence(p, q, **k), reference.js),
    "js_beta_0.2": (lambda p, q, **k: jaxdiv.js_divergence(p, q, beta=0.2, **k),
                    lambda p, q: reference.js(p, q, 0.2)),
    "total_variation": (lambda p, q, **k: jaxdiv.total_variation(p, q, **k), reference.total_variation),
    "hellinger_squared": (lambda p, q, **k: jaxdiv.hellinger_distance(p, q, squared=True, **k),
                          reference.hellinger_squared),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_kernel_values_and_gradients(name, kernel, rng, small_tiles):
    """Values against float64 references, gradients against the XLA path's
    (tested against float64 in test_f_divergences); one compiled program each."""
    p, q = _hard_pair(rng)
    fn, ref = FAMILY[name]
    weights = np.arange(1.0, ROWS + 1.0)

    def values_and_grads(a, b, **k):
        values, pullback = jax.vjp(lambda a, b: fn(a, b, **k), a, b)
        return values, pullback(jnp.where(jnp.isfinite(values), weights, 0.0).astype(values.dtype))

    with _kernel(kernel):
        got, got_grads = jax.jit(lambda a, b: values_and_grads(a, b, implementation="pallas"))(p, q)
    xla, xla_grads = jax.jit(values_and_grads)(p, q)
    with np.errstate(all="ignore"):
        want = ref(_f64(p), _f64(q))
    bad = np.any([(np.isnan(x) | (x == np.inf)).any(-1) for x in (p, q)], axis=0)
    want = np.where(bad, np.nan, want)
    want[[4, 5]] = 0.0                          # P or Q without support: 0 (symmetric family)
    keep = (np.arange(ROWS) != 17) & (np.arange(ROWS) != 13)   # see the KL test
    _both_nan_or_close(np.asarray(got)[keep], want[keep], 2e-5)
    _both_nan_or_close(np.asarray(got)[13], want[13], 5e-4)
    _both_nan_or_close(np.delete(got, 13), np.delete(xla, 13), 2e-5)
    rows = np.arange(17)                        # row 17's differences overflow: values only
    for g, w in zip(got_grads, xla_grads):
        g, w = np.asarray(g)[rows], np.asarray(w)[rows]
        assert not np.isnan(g).any()
        ok = ~np.isnan(w).any(-1)               # the XLA path leaks NaN at row 11 (see above)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_vmap_folds_the_mapped_axis_into_rows(kernel, rng, small_tiles):
    """Under vmap a kernel sees the mapped axis as more rows (values, gradients, lowering)."""
    p, q = rng.standard_normal((2, 3, 5, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, (3, 5)).astype(np.int32)

    def both(a, b, y, **k):
        value = jaxdiv.kl_divergence(a, b, **k) + jaxdiv.cross_entropy_with_integer_labels(a, y, **k)
        return value, jax.grad(lambda a, b: jaxdiv.js_divergence(a, b, **k).sum(), (0, 1))(a, b)

    want = jax.vmap(both)(p, q, labels)
    with _kernel(kernel):
        # q and the labels mapped, p shared: unmapped inputs are broadcast first.
        got = jax.jit(jax.vmap(lambda b, y: both(p[0], b, y, implementation="pallas")))(q, labels)
        want = jax.vmap(lambda b, y: both(p[0], b, y))(q, labels)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)


def test_vmap_lowers_to_one_kernel():
    x = jax.ShapeDtypeStruct((3, 64, 5000), jnp.float32)
    for platform in ("cuda", "tpu"):
        text = _lowered(jax.vmap(lambda a, b: jaxdiv.kl_divergence(a, b, implementation="pallas")),
                        x, x, platform=platform)
        assert len(re.findall(r"custom_call @(__gpu|tpu_custom_call)\b", text)) == 1


@pytest.mark.parametrize("kernel", KERNELS)
def test_class_masks_match_the_xla_path(kernel, rng, small_tiles):
    """``where=`` over classes (applied before the kernel): values and gradients, masked entries 0."""
    p, q = _hard_pair(rng)
    rows = np.r_[0:13, 14:17]                 # not the 1e4 offset (see the values test)
    p, q = p[rows], q[rows]
    where = rng.random(p.shape) < 0.7

    def both(a, b, **k):
        values, pullback = jax.vjp(lambda a, b: jaxdiv.kl_divergence(a, b, where=where, **k)
                                   + jaxdiv.js_divergence(a, b, where=where, **k), a, b)
        return values, pullback(jnp.where(jnp.isfinite(values), 1.0, 0.0))

    want = jax.jit(both)(p, q)
    with _kernel(kernel):
        got = jax.jit(lambda a, b: both(a, b, implementation="pallas"))(p, q)
    _both_nan_or_close(got[0], want[0], 2e-5)
    # A gradient is P times (log ratio - KL): where both are ~200 (row 14 here) the
    # value's float32 rounding, a few ulp of |value|, is all of the difference
    # (compiled for a GPU, one element moved by 1e-5 = 0.7 ulp of its KL).
    ulps = 4 * np.finfo(np.float32).eps * np.abs(np.nan_to_num(np.asarray(want[0])))[:, None]
    for g, w in zip(got[1], want[1]):
        g, w = np.asarray(g), np.asarray(w)
        assert np.all(g[~where] == 0.0) and not np.isnan(g).any()
        ok = ~np.isnan(w).any(-1)
        assert np.all(np.abs(g - w)[ok] <= (1e-5 * np.abs(w) + 2e-6 + ulps)[ok])


@pytest.mark.parametrize("kernel", KERNELS)
def test_ragged_row_blocks(kernel, rng, monkeypatch):
    """Blocks of 8 rows over 21 rows of 5 classes: the last block runs past the
    batch (Triton masks it, Mosaic drops its rows); its padding must not leak."""
    monkeypatch.setattr(_pallas, "_TRITON_TILE", 128)
    monkeypatch.setattr(_pallas, "_TPU_ROWS", 8)
    p, q = (3 * rng.standard_normal((2, 21, 5))).astype(np.float32)
    p[20, 1] = np.nan                        # the last row, in the ragged block
    labels = rng.integers(0, 5, 21).astype(np.int32)

    def values(a, b, **k):
        return (jaxdiv.kl_divergence(a, b, **k), jaxdiv.js_divergence(a, b, **k),
                jaxdiv.cross_entropy_with_integer_labels(b, labels, **k))

    with _kernel(kernel):
        got = jax.jit(lambda a, b: values(a, b, implementation="pallas"))(p, q)
    for g, w in zip(got, values(p, q)):
        _both_nan_or_close(g, w, 2e-6)
