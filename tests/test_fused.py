"""jaxdiv.fused: the fused linear-head losses equal the materialising composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxdiv
from jaxdiv import fused, losses

N, D, V = 24, 12, 1000
CHUNKS = (None, 250, 333, 7)   # one chunk (auto, here), dividing, non-dividing, tiny


def _head(seed=0, n=N, d=D, v=V, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (n, d), dtype)
    weight = (jax.random.normal(k[1], (d, v)) / np.sqrt(d) * 2).astype(dtype)
    bias = (0.5 * jax.random.normal(k[2], (v,))).astype(dtype)
    labels = jax.random.randint(k[3], (n,), 0, v)
    return hidden, weight, bias, labels


def _close_tree(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


def _scale_atol(tree, rtol):
    """An absolute tolerance of rtol times the largest entry: gradients hold exact zeros."""
    return rtol * max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def _ce_pair(labels, **opts):
    fused_loss = lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, **opts)
    chunk_free = {k: v for k, v in opts.items() if k not in ("chunk_size", "weight_layout")}
    plain = lambda h, w, b: losses.softmax_cross_entropy(h @ w + b, labels, **chunk_free)
    return fused_loss, plain


def _loss_and_grads(f, *args):
    value, grads = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))(*args)
    return value, grads


# --------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cross_entropy_equals_materialised_for_every_chunk(chunk):
    hidden, weight, bias, labels = _head()
    f, g = _ce_pair(labels, chunk_size=chunk)
    v1, g1 = _loss_and_grads(f, hidden, weight, bias)
    v2, g2 = _loss_and_grads(g, hidden, weight, bias)
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    _close_tree(g1, g2, rtol=1e-5, atol=_scale_atol(g2, 1e-6))


OPTIONS = [
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.2, z_loss=1e-2, logit_softcap=5.0, ignore_index=-100),
    dict(label_smoothing=1.0, reduction="sum"),
    dict(ignore_index=-100, reduction="none", logit_softcap=2.0),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(sorted(o)))
def test_cross_entropy_options_equal_materialised(opts, chunk=333):
    hidden, weight, bias, labels = _head(1)
    labels = labels.at[::5].set(-100) if "ignore_index" in opts else labels
    f, g = _ce_pair(labels, chunk_size=chunk, **opts)
    v1, g1 = _loss_and_grads(f, hidden, weight, bias)
    v2, g2 = _loss_and_grads(g, hidden, weight, bias)
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    _close_tree(g1, g2, rtol=1e-5, atol=_scale_atol(g2, 1e-6))
    # the per-position values too, and the auxiliary outputs
    aux1 = fused.linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=chunk, return_aux=True, **opts)[1]
    aux2 = losses.softmax_cross_entropy(hidden @ weight + bias, labels, return_aux=True, **opts)[1]
    _close_tree(aux1, aux2, rtol=2e-6, atol=1e-6)


def test_cross_entropy_transposed_weight_layout():
    hidden, weight, bias, labels = _head(2)
    expected = _loss_and_grads(lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, chunk_size=333),
                               hidden, weight, bias)
    got = _loss_and_grads(
        lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, chunk_size=333, weight_layout="vd"),
        hidden, weight.T, bias)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    _close_tree(got[1][0], expected[1][0], rtol=1e-5, atol=1e-7)
    _close_tree(got[1][1], expected[1][1].T, rtol=1e-5, atol=1e-7)


def test_cross_entropy_float64_gradients(x64):
    hidden, weight, bias, labels = _head(3, n=5, d=4, v=37, dtype=jnp.float64)
    f = jax.jit(lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, chunk_size=8, label_smoothing=0.1,
                                                           z_loss=1e-2, logit_softcap=4.0))
    check_grads(f, (hidden, weight, bias), order=1, modes=("rev",))
    g = lambda h, w, b: losses.softmax_cross_entropy(h @ w + b, labels, label_smoothing=0.1, z_loss=1e-2,
                                                     logit_softcap=4.0)
    v1, g1 = _loss_and_grads(f, hidden, weight, bias)
    v2, g2 = _loss_and_grads(g, hidden, weight, bias)
    assert v1.dtype == jnp.float64
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    _close_tree(g1, g2, rtol=1e-11, atol=1e-14)


def _ce_reference64(hidden, weight, labels):
    """Mean cross-entropy and its gradients in float64 NumPy (log-sum-exp with the max shifted out)."""
    h, w = np.asarray(hidden, np.float64), np.asarray(weight, np.float64)
    x = h @ w
    m = x.max(-1, keepdims=True)
    e = np.exp(x - m)
    rows = np.arange(len(labels))
    loss = np.mean(np.log(e.sum(-1)) + m[:, 0] - x[rows, labels])
    g = e / e.sum(-1, keepdims=True)
    g[rows, labels] -= 1
    g /= len(labels)
    return loss, g @ w.T, h.T @ g


def test_float32_accuracy_against_float64():
    hidden, weight, _, labels = _head(4, n=64, d=32, v=5003)
    loss, (dh, dw) = jax.jit(jax.value_and_grad(lambda h, w: fused.linear_cross_entropy(h, w, labels), (0, 1)))(hidden, weight)
    ref, rdh, rdw = _ce_reference64(hidden, weight, labels)
    assert abs(float(loss) - ref) / ref < 1e-5
    for g, r in ((dh, rdh), (dw, rdw)):
        assert np.max(np.abs(np.asarray(g, np.float64) - r)) / np.max(np.abs(r)) < 1e-4


def test_confident_predictions_keep_relative_accuracy():
    # label = arg max with a large margin: -log Q_y ~ 1e-9, which log(sum exp) would round to 0.
    hidden = jnp.eye(4, 8, dtype=jnp.float32) * 25.0
    weight = jnp.zeros((8, 300)).at[jnp.arange(4), jnp.arange(4)].set(1.0)
    labels = jnp.arange(4)
    loss = fused.linear_cross_entropy(hidden, weight, labels, reduction="none", chunk_size=64)
    expected = np.log1p(299 * np.exp(-25.0))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_huge_logits_stay_exact():
    hidden, weight, bias, labels = _head(5)
    shifted = bias + 1e4
    a = fused.linear_cross_entropy(hidden, weight, labels, bias=shifted, chunk_size=333, reduction="none")
    b = fused.linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=333, reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3)   # 1e4 + x rounds x to 1e-3 in float32
    assert np.all(np.isfinite(a))


def test_minus_inf_bias_removes_padded_classes():
    # A padded vocabulary: classes with bias -inf are outside the model's support.
    hidden, weight, bias, labels = _head(6, v=700)
    labels = labels % 600
    padded_bias = bias.at[600:].set(-jnp.inf)
    opts = dict(label_smoothing=0.1, z_loss=1e-3)
    f = lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, chunk_size=256, **opts)
    v, (dh, dw, db) = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(hidden, weight, padded_bias)
    v_ref, (dh_ref, dw_ref, db_ref) = jax.jit(jax.value_and_grad(
        lambda h, w, b: losses.softmax_cross_entropy(h @ w + b, labels, **opts), (0, 1, 2)
    ))(hidden, weight[:, :600], bias[:600])
    np.testing.assert_allclose(v, v_ref, rtol=2e-6)
    np.testing.assert_allclose(dh, dh_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw[:, :600], dw_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db[:600], db_ref, rtol=1e-5, atol=1e-7)
    assert np.all(dw[:, 600:] == 0) and np.all(db[600:] == 0)


def test_all_ignored_is_zero_with_zero_gradient():
    hidden, weight, bias, _ = _head(7)
    labels = jnp.full((N,), -100)
    f = lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, ignore_index=-100, z_loss=1e-3,
                                                   label_smoothing=0.1)
    v, grads = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(hidden, weight, bias)
    assert float(v) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0)


def test_masked_positions_are_never_read():
    hidden, weight, bias, labels = _head(8)
    where = jnp.arange(N) % 3 != 0
    poisoned = jnp.where(where[:, None], hidden, jnp.nan)
    f = lambda h, w: fused.linear_cross_entropy(h, w, labels, bias=bias, where=where, chunk_size=333)
    v1, (dh1, dw1) = jax.jit(jax.value_and_grad(f, (0, 1)))(poisoned, weight)
    v2, (dh2, dw2) = jax.jit(jax.value_and_grad(
        lambda h, w: losses.softmax_cross_entropy(h[where] @ w + bias, labels[where]), (0, 1)
    ))(hidden, weight)
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    assert np.all(np.asarray(dh1)[~np.asarray(where)] == 0)
    np.testing.assert_allclose(dh1[where], dh2[where], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw1, dw2, rtol=1e-5, atol=1e-7)


def test_out_of_range_label_is_nan_in_its_row_only():
    hidden, weight, bias, labels = _head(9)
    labels = labels.at[4].set(V)
    per_row = fused.linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none", chunk_size=333)
    assert np.isnan(per_row[4]) and np.all(np.isfinite(np.delete(np.asarray(per_row), 4)))
    # its gradient row is NaN (as in losses.softmax_cross_entropy), the others stay exact
    dh = jax.jit(jax.grad(lambda h: jnp.sum(fused.linear_cross_entropy(h, weight, labels, reduction="none"))))(hidden)
    assert np.all(np.isnan(dh[4])) and np.all(np.isfinite(np.delete(np.asarray(dh), 4, axis=0)))


def test_nan_hidden_state_poisons_its_row_only():
    hidden, weight, bias, labels = _head(10)
    per_row = fused.linear_cross_entropy(hidden.at[2, 0].set(jnp.nan), weight, labels, reduction="none",
                                         chunk_size=333)
    assert np.isnan(per_row[2]) and np.all(np.isfinite(np.delete(np.asarray(per_row), 2)))


def test_bf16_inputs_float32_loss_and_input_dtype_gradients():
    hidden, weight, bias, labels = _head(11, dtype=jnp.bfloat16)
    f = lambda h, w, b: fused.linear_cross_entropy(h, w, labels, bias=b, chunk_size=333)
    v, (dh, dw, db) = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(hidden, weight, bias)
    assert v.dtype == jnp.float32 and dh.dtype == dw.dtype == db.dtype == jnp.bfloat16
    # against float64 on the same (bf16-representable) values: the loss is not
    # quantised to the bf16 grid; the gradients carry bf16's rounding.
    h64, w64 = (np.asarray(a.astype(jnp.float32), np.float64) for a in (hidden, weight))
    x = h64 @ w64 + np.asarray(bias.astype(jnp.float32), np.float64)
    m = x.max(-1, keepdims=True)
    ref = np.mean(np.log(np.exp(x - m).sum(-1)) + m[:, 0] - x[np.arange(N), labels])
    assert abs(float(v) - ref) / ref < 1e-5
    unfused = jax.jit(jax.grad(lambda h, w: losses.softmax_cross_entropy(
        jnp.dot(h, w, preferred_element_type=jnp.float32) + bias.astype(jnp.float32), labels), (0, 1)))(hidden, weight)
    for a, b in zip((dh, dw), unfused):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= 1e-2 * np.max(np.abs(b))


def test_jit_eager_vmap_and_leading_batch_dims():
    hidden, weight, bias, labels = _head(12)
    f = lambda h, y: fused.linear_cross_entropy(h, weight, y, bias=bias, chunk_size=333, reduction="none")
    eager = f(hidden, labels)
    np.testing.assert_allclose(jax.jit(f)(hidden, labels), eager, rtol=1e-6)
    batched = jax.vmap(f)(hidden.reshape(4, 6, D), labels.reshape(4, 6))
    np.testing.assert_allclose(batched.reshape(-1), eager, rtol=1e-6)
    leading = f(hidden.reshape(2, 3, 4, D), labels.reshape(2, 3, 4))
    assert leading.shape == (2, 3, 4)
    np.testing.assert_allclose(leading.reshape(-1), eager, rtol=1e-6)
    # gradients under vmap: the weight is shared, its gradient summed
    mean = lambda h, y, w: fused.linear_cross_entropy(h, w, y, chunk_size=333)
    per = jax.vmap(jax.grad(mean, argnums=2), in_axes=(0, 0, None))(
        hidden.reshape(4, 6, D), labels.reshape(4, 6), weight)
    loop = [jax.grad(mean, argnums=2)(hidden[6 * i:6 * i + 6], labels[6 * i:6 * i + 6], weight) for i in range(4)]
    np.testing.assert_allclose(per, np.stack(loop), rtol=1e-5, atol=1e-7)


def test_auto_chunk_size():
    assert fused.auto_chunk_size(8192, 128256) == 512
    assert fused.auto_chunk_size(2048, 256000) == 2048
    assert fused.auto_chunk_size(1, 50) == 50
    assert fused.auto_chunk_size(1 << 20, 128256) == 256


def test_errors_name_what_was_expected():
    hidden, weight, bias, labels = _head(13)
    with pytest.raises(ValueError, match=r"weight of shape \[D, V\] with D = 12.*weight_layout='vd'"):
        fused.linear_cross_entropy(hidden, weight.T[:, :5], labels)
    with pytest.raises(ValueError, match=r"bias of shape \(1000,\).*got bias shape \(3,\)"):
        fused.linear_cross_entropy(hidden, weight, labels, bias=bias[:3])
    with pytest.raises(ValueError, match=r"labels of shape \(24,\).*got labels shape \(5,\)"):
        fused.linear_cross_entropy(hidden, weight, labels[:5])
    with pytest.raises(TypeError, match="labels must be an integer array"):
        fused.linear_cross_entropy(hidden, weight, labels.astype(jnp.float32))
    with pytest.raises(TypeError, match="hidden must be a real floating-point"):
        fused.linear_cross_entropy(labels[:, None], weight, labels)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fused.linear_cross_entropy(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="weight_layout must be one of"):
        fused.linear_cross_entropy(hidden, weight, labels, weight_layout="VD!")
    with pytest.raises(ValueError, match="precision must be"):
        fused.linear_cross_entropy(hidden, weight, labels, precision="fp8")
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        fused.linear_cross_entropy(hidden, weight, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"where of shape \(24,\)"):
        fused.linear_cross_entropy(hidden, weight, labels, where=jnp.ones((3,), bool))


# ---------------------------------------------------------------- distillation

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _teacher(seed=20, n=N, v=V):
    k = jax.random.split(jax.random.key(seed), 3)
    logits = 2.0 * jax.random.normal(k[0], (n, v))
    t_hidden = jax.random.normal(k[1], (n, 10))
    t_weight = jax.random.normal(k[2], (10, v)) / 2
    return logits, t_hidden, t_weight


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [None, 333])
def test_distillation_equals_materialised(kind, chunk):
    hidden, weight, bias, _ = _head(14)
    logits, _, _ = _teacher()
    opts = dict(temperature=2.0, kind=kind, beta=0.3)
    f = lambda h, w, b: fused.linear_distillation_loss(h, w, logits, student_bias=b, chunk_size=chunk, **opts)
    g = lambda h, w, b: losses.distillation_loss(h @ w + b, logits, **opts)
    v1, g1 = _loss_and_grads(f, hidden, weight, bias)
    v2, g2 = _loss_and_grads(g, hidden, weight, bias)
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    _close_tree(g1, g2, rtol=1e-5, atol=_scale_atol(g2, 1e-6))


@pytest.mark.parametrize("kind", KINDS)
def test_distillation_from_a_teacher_head(kind):
    hidden, weight, bias, _ = _head(15)
    _, t_hidden, t_weight = _teacher()
    t_bias = jnp.linspace(-1.0, 1.0, V)
    where = jnp.arange(N) % 4 != 1
    f = lambda h, w: fused.linear_distillation_loss(
        h, w.T, (t_hidden, t_weight.T, t_bias), kind=kind, where=where, reduction="none",
        chunk_size=256, weight_layout="vd")
    g = lambda h, w: losses.distillation_loss(h @ w, t_hidden @ t_weight + t_bias, kind=kind, where=where,
                                              reduction="none")
    v1, g1 = _loss_and_grads(f, hidden, weight)
    v2, g2 = _loss_and_grads(g, hidden, weight)
    np.testing.assert_allclose(f(hidden, weight), g(hidden, weight), rtol=2e-6, atol=1e-7)
    _close_tree(g1[0], g2[0], rtol=1e-5, atol=_scale_atol(g2, 1e-6))
    _close_tree(g1[1], g2[1], rtol=1e-5, atol=_scale_atol(g2, 1e-6))


def test_distillation_teacher_gets_no_gradient():
    hidden, weight, _, _ = _head(16)
    logits, t_hidden, t_weight = _teacher()
    d_logits = jax.jit(jax.grad(lambda t: fused.linear_distillation_loss(hidden, weight, t)))(logits)
    d_head = jax.jit(jax.grad(lambda th: fused.linear_distillation_loss(hidden, weight, (th, t_weight))))(t_hidden)
    assert np.all(np.asarray(d_logits) == 0) and np.all(np.asarray(d_head) == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_nearly_identical_distributions_keep_relative_accuracy(x64, kind):
    # Late distillation: the teacher is the student plus 1e-5 noise, KL ~ 1e-10.
    # One-hot hidden states make the float32 logit product exact, so the
    # float64 reference sees the very logits the fused kernel computes.
    n, d, v = 8, 16, 4000
    hidden = jnp.eye(n, d, dtype=jnp.float32)
    weight = (2.0 * jax.random.normal(jax.random.key(17), (d, v))).astype(jnp.float32)
    noise = jax.random.normal(jax.random.key(3), (n, v)).astype(jnp.float32)
    student = weight[:n]
    teacher = student + 1e-5 * noise
    got = fused.linear_distillation_loss(hidden, weight, teacher, kind=kind, beta=0.3, reduction="none",
                                         chunk_size=999)
    t64, s64 = jnp.asarray(teacher, jnp.float64), jnp.asarray(student, jnp.float64)
    expected = losses.distillation_loss(s64, t64, kind=kind, beta=0.3, reduction="none")
    assert got.dtype == jnp.float32
    assert np.all(np.asarray(expected) < 1e-9)   # ~ what float32 log-softmax rounds to
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_linear_kl_divergence_is_the_family_kl():
    hidden, weight, _, _ = _head(18)
    logits, _, _ = _teacher()
    np.testing.assert_allclose(
        fused.linear_kl_divergence(hidden, weight, logits, reduction="none", chunk_size=333),
        jaxdiv.kl_divergence(logits, hidden @ weight), rtol=2e-6)
    np.testing.assert_allclose(
        fused.linear_kl_divergence(hidden, weight, logits, temperature=3.0, reverse=True, chunk_size=333),
        jnp.mean(jaxdiv.kl_divergence(hidden @ weight / 3.0, logits / 3.0)), rtol=2e-6)


def test_distillation_with_minus_inf_teacher_logits_and_bf16():
    hidden, weight, _, _ = _head(19, dtype=jnp.bfloat16)
    logits, _, _ = _teacher()
    logits = logits.at[:, 900:].set(-jnp.inf)   # the teacher's padded classes
    for kind in KINDS:
        f = lambda h, w: fused.linear_distillation_loss(h, w, logits, kind=kind, chunk_size=256)
        v, (dh, dw) = jax.jit(jax.value_and_grad(f, (0, 1)))(hidden, weight)
        ref = losses.distillation_loss(jnp.dot(hidden, weight, preferred_element_type=jnp.float32), logits, kind=kind)
        assert v.dtype == jnp.float32 and dh.dtype == dw.dtype == jnp.bfloat16
        assert np.isfinite(float(v)) == np.isfinite(float(ref))
        if np.isfinite(float(ref)):
            np.testing.assert_allclose(v, ref, rtol=1e-5)
            assert np.all(np.isfinite(np.asarray(dh, np.float32)))


def test_distillation_errors():
    hidden, weight, _, _ = _head(21)
    logits, t_hidden, t_weight = _teacher()
    with pytest.raises(ValueError, match=r"teacher logits of shape \(24, 1000\)"):
        fused.linear_distillation_loss(hidden, weight, logits[:, :10])
    with pytest.raises(ValueError, match="teacher head over the student's positions"):
        fused.linear_distillation_loss(hidden, weight, (t_hidden[:3], t_weight))
    with pytest.raises(ValueError, match="kind must be one of"):
        fused.linear_distillation_loss(hidden, weight, logits, kind="kl")
    with pytest.raises(TypeError, match="temperature must be a Python number"):
        jax.jit(lambda t: fused.linear_distillation_loss(hidden, weight, logits, temperature=t))(2.0)
    with pytest.raises(ValueError, match="beta must lie in"):
        fused.linear_distillation_loss(hidden, weight, logits, kind="jsd", beta=1.0)


def test_precision_option_and_oversized_chunk():
    hidden, weight, bias, labels = _head(22)
    base = fused.linear_cross_entropy(hidden, weight, labels, bias=bias)
    for precision in ("highest", jax.lax.Precision.HIGHEST):
        got = fused.linear_cross_entropy(hidden, weight, labels, bias=bias, precision=precision, chunk_size=10**6)
        np.testing.assert_allclose(got, base, rtol=1e-6)


def test_forward_mode_is_refused_not_silently_wrong():
    # The rule is a VJP (README, known limits): jvp raises JAX's own error.
    hidden, weight, _, labels = _head(23)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda h: fused.linear_cross_entropy(h, weight, labels), (hidden,), (hidden,))
