"""jaxdiv.losses against float64 references: optax where it has the quantity, the PyTorch / textbook definitions written out in NumPy where it does not."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiv
from jaxdiv import losses
from tests import reference as ref
from tests.inputs import logits as make_logits
from tests.inputs import rel_err, with_zeros

IGNORE = -100



def _labels_with_ignored(rng, shape, num_classes, frac=0.3):
    y = rng.integers(0, num_classes, shape)
    y[rng.random(shape) < frac] = IGNORE
    y.flat[0] = 0   # at least one valid position
    return y


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_matches_pytorch_definition(rng, smoothing, weighted, reduction):
    # 3-D input [batch, time, classes] with ignored tokens: "mean" is over the
    # valid tokens of every leading dim (weighted by class weight, as PyTorch).
    x = make_logits(rng, (3, 4, 7), scale=2.0)
    y = _labels_with_ignored(rng, (3, 4), 7)
    w = rng.uniform(0.2, 2.0, 7).astype(np.float32) if weighted else None
    got = losses.softmax_cross_entropy(
        x, y, ignore_index=IGNORE, label_smoothing=smoothing, class_weights=w, reduction=reduction
    )
    want = ref.torch_cross_entropy(
        x, y, weight=w, ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction
    )
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_mean_is_over_valid_tokens_not_batchmean(rng):
    # PyTorch's "batchmean" divides by the first dimension only.
    x = make_logits(rng, (2, 5, 4))
    y = _labels_with_ignored(rng, (2, 5), 4)
    total = losses.softmax_cross_entropy(x, y, ignore_index=IGNORE, reduction="sum")
    mean = losses.softmax_cross_entropy(x, y, ignore_index=IGNORE)
    np.testing.assert_allclose(mean, total / np.sum(y != IGNORE), rtol=1e-6)
    assert not np.isclose(mean, total / 2)


def test_integer_labels_match_optax_float64(rng, x64):
    x = rng.standard_normal((6, 9)) * 3
    y = rng.integers(0, 9, 6)
    got = losses.softmax_cross_entropy(x, y, reduction="none")
    want = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    g_got = jax.jit(jax.grad(lambda a: losses.softmax_cross_entropy(a, y, reduction="sum")))(x)
    g_want = jax.jit(jax.grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, y).sum()))(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_soft_labels_match_optax_float64(rng, x64, smoothing):
    x = rng.standard_normal((5, 6)) * 2
    t = rng.dirichlet(np.ones(6), 5)
    t[0, 2] = 0.0
    t[0] /= t[0].sum()
    got = losses.softmax_cross_entropy(x, t, label_smoothing=smoothing, reduction="none")
    want = optax.softmax_cross_entropy(jnp.asarray(x), optax.smooth_labels(jnp.asarray(t), smoothing))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    g_got = jax.jit(jax.grad(lambda a: losses.softmax_cross_entropy(a, t, label_smoothing=smoothing)))(x)
    g_want = jax.jit(jax.grad(
        lambda a: optax.softmax_cross_entropy(a, optax.smooth_labels(jnp.asarray(t), smoothing)).mean()
    ))(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-10, atol=1e-14)


def test_integer_smoothing_equals_smoothed_onehot_in_optax(rng, x64):
    # optax has no label smoothing for integer labels (optax#1486); the textbook
    # definition is CE against the smoothed one-hot.
    x = rng.standard_normal((4, 5))
    y = np.array([0, 4, 2, 2])
    onehot = optax.smooth_labels(jax.nn.one_hot(y, 5, dtype=jnp.float64), 0.3)
    want = optax.softmax_cross_entropy(jnp.asarray(x), onehot)
    got = losses.softmax_cross_entropy(x, y, label_smoothing=0.3, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_z_loss_softcap_and_aux(rng):
    x = make_logits(rng, (5, 8), scale=4.0)
    y = rng.integers(0, 8, 5)
    y[1] = int(np.argmax(x[1]))
    cap, z = 3.0, 1e-3
    loss, aux = losses.softmax_cross_entropy(
        x, y, logit_softcap=cap, z_loss=z, reduction="none", return_aux=True
    )
    capped = cap * np.tanh(x.astype(np.float64) / cap)
    lse = ref.logsumexp(capped)
    want = ref.integer_cross_entropy(capped, y) + z * lse**2
    np.testing.assert_allclose(loss, want, rtol=2e-6)
    np.testing.assert_allclose(aux.log_normaliser, lse, rtol=2e-6)
    np.testing.assert_allclose(aux.z_loss, z * lse**2, rtol=2e-6)
    np.testing.assert_array_equal(aux.accuracy, np.argmax(capped, -1) == y)
    mean, aux_mean = losses.softmax_cross_entropy(
        x, y, logit_softcap=cap, z_loss=z, return_aux=True
    )
    np.testing.assert_allclose(mean, want.mean(), rtol=2e-6)
    np.testing.assert_allclose(aux_mean.accuracy, np.mean(np.argmax(capped, -1) == y))


def test_gradient_closed_form_with_every_option(rng, x64):
    x = rng.standard_normal((4, 6)) * 2
    y = np.array([1, IGNORE, 5, 0])
    w = jnp.asarray(rng.uniform(0.5, 1.5, 6))
    eps, z, cap = 0.1, 1e-2, 4.0

    def naive(a):
        c = cap * jnp.tanh(a / cap)
        logq = jax.nn.log_softmax(c)
        keep = y != IGNORE
        ys = jnp.where(keep, y, 0)
        nll = -jnp.take_along_axis(logq, ys[:, None], -1)[:, 0] * w[ys]
        smooth = -jnp.sum(logq * w, -1) / 6
        lse = jax.nn.logsumexp(c, -1)
        ce = jnp.sum(((1 - eps) * nll + eps * smooth) * keep) / jnp.sum(w[ys] * keep)
        return ce + z * jnp.sum(lse**2 * keep) / keep.sum()

    def ours(a):
        return losses.softmax_cross_entropy(
            a, y, ignore_index=IGNORE, label_smoothing=eps, z_loss=z,
            logit_softcap=cap, class_weights=w,
        )

    np.testing.assert_allclose(ours(x), naive(x), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(naive)(x), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(jax.jacfwd(ours)(x), jax.grad(naive)(x), rtol=1e-10, atol=1e-15)
    ref.assert_hessians_match(ours, naive, (x,))


def test_all_ignored_is_zero_with_zero_gradient():
    # torch gives NaN (pytorch#70348).
    x = jnp.array([[1.0, 2.0], [jnp.nan, 0.0]])
    y = jnp.array([IGNORE, IGNORE])
    for reduction in ("mean", "sum", "none"):
        f = lambda a: jnp.sum(losses.softmax_cross_entropy(
            a, y, ignore_index=IGNORE, z_loss=1e-3, label_smoothing=0.1, reduction=reduction))
        value, grad = jax.jit(jax.value_and_grad(f))(x)
        assert value == 0.0
        np.testing.assert_array_equal(grad, 0.0)
    loss, aux = losses.softmax_cross_entropy(x, y, ignore_index=IGNORE, return_aux=True)
    assert loss == 0.0 and aux.accuracy == 0.0 and aux.z_loss == 0.0


def test_masked_and_ignored_positions_are_never_read(rng):
    x = make_logits(rng, (4, 5))
    y = np.array([1, 2, IGNORE, 3])
    keep = np.array([True, False, True, True])
    garbage = x.copy()
    garbage[1] = np.nan
    garbage[2] = np.inf
    f = lambda a: losses.softmax_cross_entropy(
        a, y, where=keep, ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-3)
    value, grad = jax.jit(jax.value_and_grad(f))(garbage)
    grad = np.asarray(grad)
    sliced = lambda a: losses.softmax_cross_entropy(a, y[[0, 3]], label_smoothing=0.1, z_loss=1e-3)
    v_want, g_want = jax.jit(jax.value_and_grad(sliced))(x[[0, 3]])
    np.testing.assert_allclose(value, v_want, rtol=1e-6)
    np.testing.assert_array_equal(grad[[1, 2]], 0.0)
    np.testing.assert_allclose(grad[[0, 3]], g_want, rtol=1e-6)


def test_smoothing_at_minus_inf_logits_is_finite(rng):
    # The textbook / PyTorch formula puts smoothing mass on a -inf class: loss
    # and gradient inf/NaN. Here the uniform part spans the finite classes, so
    # the result equals smoothing over the classes that remain.
    x = make_logits(rng, (3, 6))
    x[:, 4:] = -np.inf
    y = np.array([0, 3, 1])
    f = lambda a, **kw: losses.softmax_cross_entropy(a, y, label_smoothing=0.2, **kw)
    value, grad = jax.jit(jax.value_and_grad(f))(x)
    want, g_want = jax.jit(jax.value_and_grad(f))(x[:, :4])
    np.testing.assert_allclose(value, want, rtol=1e-6)
    np.testing.assert_allclose(grad[:, :4], g_want, rtol=1e-6)
    np.testing.assert_array_equal(grad[:, 4:], 0.0)
    with np.errstate(all="ignore"):
        assert np.isinf(ref.torch_cross_entropy(x, y, label_smoothing=0.2))
    # Forward mode too: optax's safe CE had a NaN Jacobian at -inf (optax#1762).
    assert np.all(np.isfinite(jax.jacfwd(f)(jnp.asarray(x))))


def test_label_on_minus_inf_class_is_inf_with_finite_gradient(rng):
    x = jnp.array([[0.0, -jnp.inf, 1.0]])
    value, grad = jax.jit(jax.value_and_grad(lambda a: losses.softmax_cross_entropy(a, jnp.array([1]))))(x)
    assert value == np.inf
    assert np.all(np.isfinite(grad))


def test_zero_class_weight_switches_off_an_infinite_term():
    x = jnp.array([[0.0, -jnp.inf], [0.0, 0.0]])
    got = losses.softmax_cross_entropy(x, jnp.array([1, 0]), class_weights=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(got, np.log(2), rtol=1e-6)


def test_out_of_range_label_is_nan_in_its_row_only(rng):
    x = make_logits(rng, (3, 4))
    got = np.asarray(losses.softmax_cross_entropy(x, np.array([0, 7, 1]), reduction="none"))
    assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2]]))
    grad = np.asarray(jax.jit(jax.grad(lambda a: losses.softmax_cross_entropy(a, np.array([0, 7, 1]), reduction="sum")))(x))
    assert np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[[0, 2]]))


def test_bf16_loss_is_float32_and_not_quantised(rng):
    # optax returns the integer-label loss rounded to bf16 (optax#1020).
    x = make_logits(rng, (64, 50), scale=3.0)
    y = rng.integers(0, 50, 64)
    xb = jnp.asarray(x, jnp.bfloat16)
    loss = losses.softmax_cross_entropy(xb, y, label_smoothing=0.1, z_loss=1e-4)
    assert loss.dtype == jnp.float32
    x_rounded = np.asarray(xb.astype(jnp.float32))
    want = ref.torch_cross_entropy(x_rounded, y, label_smoothing=0.1) + 1e-4 * np.mean(ref.logsumexp(x_rounded) ** 2)
    assert rel_err(loss, want) < 2e-6
    grad = jax.jit(jax.grad(lambda a: losses.softmax_cross_entropy(a, y, label_smoothing=0.1)))(xb)
    assert grad.dtype == jnp.bfloat16


def test_axis_jit_vmap_and_no_retrace(rng):
    x = make_logits(rng, (3, 5, 4))
    y = rng.integers(0, 5, (3, 4))
    kw = dict(label_smoothing=0.1, z_loss=1e-3, reduction="none")
    moved = losses.softmax_cross_entropy(x, y, axis=1, **kw)
    np.testing.assert_allclose(moved, losses.softmax_cross_entropy(np.moveaxis(x, 1, -1), y, **kw), rtol=1e-6)
    traces = []

    # Smoothing and z-loss weights may be traced (schedules): one trace for all values.
    @jax.jit
    def f(a, b, smoothing, z):
        traces.append(1)
        return losses.softmax_cross_entropy(a, b, label_smoothing=smoothing, z_loss=z, reduction="none")

    for smoothing, z in ((0.1, 1e-3), (0.3, 1e-2)):
        want = losses.softmax_cross_entropy(x[:, :, 0], y[:, 0], label_smoothing=smoothing, z_loss=z, reduction="none")
        np.testing.assert_allclose(f(x[:, :, 0], y[:, 0], smoothing, z), want, rtol=1e-6)
    assert len(traces) == 1
    batched = jax.vmap(lambda a, b: losses.softmax_cross_entropy(a, b, **kw), in_axes=(2, 1))(x, y)
    np.testing.assert_allclose(batched.T, moved, rtol=1e-6)


def test_huge_logits(rng):
    x = np.array([[1e9, -1e9, 0.0], [-1e9, -1e9, -1e9]], np.float32)
    got = losses.softmax_cross_entropy(x, np.array([0, 2]), label_smoothing=0.3, reduction="none")
    np.testing.assert_allclose(got, [0.3 * 3e9 / 3, np.log(3)], rtol=1e-6)


def test_confident_prediction_keeps_relative_accuracy():
    x = np.array([[20.0, 0.0, 0.0]], np.float32)
    got = losses.softmax_cross_entropy(x, np.array([0]), reduction="none")
    assert rel_err(got, ref.integer_cross_entropy(x, [0])) < 2e-6   # ~4e-9


def test_cross_entropy_errors(rng):
    x = make_logits(rng, (3, 4))
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'batchmean'"):
        losses.softmax_cross_entropy(x, y, reduction="batchmean")
    with pytest.raises(ValueError, match=r"class_weights of shape \(4,\).*got shape \(3,\)"):
        losses.softmax_cross_entropy(x, y, class_weights=np.ones(3))
    with pytest.raises(ValueError, match=r"where of shape \(3,\).*got where shape \(3, 4\)"):
        losses.softmax_cross_entropy(x, y, where=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="ignore_index applies to integer labels"):
        losses.softmax_cross_entropy(x, np.full((3, 4), 0.25, np.float32), ignore_index=-100)
    with pytest.raises(TypeError, match="integer class indices or floating-point"):
        losses.softmax_cross_entropy(x, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0.0, 1.0\]"):
        losses.softmax_cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="expected labels of shape"):
        losses.softmax_cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="same number of classes"):
        losses.softmax_cross_entropy(x, np.full((3, 5), 0.2, np.float32))
    with pytest.raises(TypeError, match="logit_softcap must be a Python number"):
        jax.jit(lambda c: losses.softmax_cross_entropy(x, y, logit_softcap=c))(3.0)
    with pytest.raises(TypeError, match="logits must be a real floating-point"):
        losses.softmax_cross_entropy(np.ones((3, 4), np.int32), y)


def test_empty_batch(rng):
    x = np.zeros((0, 4), np.float32)
    y = np.zeros((0,), np.int32)
    assert losses.softmax_cross_entropy(x, y) == 0.0
    assert losses.softmax_cross_entropy(x, y, reduction="none").shape == (0,)


# ----------------------------------------------------------------- distillation


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_distillation_matches_reference(rng, kind):
    s = with_zeros(rng, make_logits(rng, (2, 3, 7), scale=2.0))
    t = make_logits(rng, (2, 3, 7), scale=2.0)
    if kind == "reverse_kl":
        s, t = t, s   # -inf in the teacher, where the student's KL term vanishes
    T, beta = 2.5, 0.3
    got = losses.distillation_loss(s, t, temperature=T, kind=kind, beta=beta, reduction="none")
    s64, t64 = s.astype(np.float64) / T, t.astype(np.float64) / T
    want = {
        "forward_kl": lambda: ref.kl(t64, s64),
        "reverse_kl": lambda: ref.kl(s64, t64),
        "jsd": lambda: ref.js(t64, s64, beta),
    }[kind]() * T**2
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(
        losses.distillation_loss(s, t, temperature=T, kind=kind, beta=beta), want.mean(), rtol=1e-5
    )


def test_distillation_forward_kl_matches_optax_float64(rng, x64):
    s, t = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    T = 3.0
    want = optax.kl_divergence(jax.nn.log_softmax(s / T), jax.nn.softmax(t / T)) * T**2
    np.testing.assert_allclose(losses.distillation_loss(s, t, temperature=T, reduction="none"), want, rtol=1e-10)
    g = jax.jit(jax.grad(lambda a: losses.distillation_loss(a, t, temperature=T, reduction="sum")))(s)
    g_want = jax.jit(jax.grad(lambda a: jnp.sum(optax.kl_divergence(jax.nn.log_softmax(a / T), jax.nn.softmax(t / T))) * T**2))(s)
    np.testing.assert_allclose(g, g_want, rtol=1e-10, atol=1e-15)
    # Hinton's T^2: the gradient is T (S - P), the same magnitude at every T.
    np.testing.assert_allclose(g, T * (jax.nn.softmax(s / T) - jax.nn.softmax(t / T)), rtol=1e-10, atol=1e-15)


def test_distillation_teacher_gradient_only_when_asked(rng):
    s, t = make_logits(rng, (3, 5)), make_logits(rng, (3, 5))
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        g_t = jax.jit(jax.grad(lambda b: losses.distillation_loss(s, b, kind=kind), argnums=0))(t)
        np.testing.assert_array_equal(g_t, 0.0)
        g_t = jax.jit(jax.grad(lambda b: losses.distillation_loss(s, b, kind=kind, teacher_gradient=True)))(t)
        assert np.all(np.isfinite(g_t)) and np.any(g_t != 0)


def test_distillation_masked_positions_and_identical_inputs(rng):
    s = make_logits(rng, (4, 6))
    t = make_logits(rng, (4, 6))
    keep = np.array([True, False, True, False])
    garbage = s.copy()
    garbage[1] = np.nan
    f = lambda a: losses.distillation_loss(a, t, temperature=2.0, kind="jsd", where=keep)
    value, grad = jax.jit(jax.value_and_grad(f))(garbage)
    want = losses.distillation_loss(s[keep], t[keep], temperature=2.0, kind="jsd")
    np.testing.assert_allclose(value, want, rtol=1e-6)
    np.testing.assert_array_equal(grad[~keep], 0.0)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert losses.distillation_loss(s, s, kind=kind, temperature=3.0) == 0.0
    assert losses.distillation_loss(s, t, where=np.zeros(4, bool)) == 0.0


def test_distillation_nearly_identical_keeps_accuracy(rng):
    # Late in distillation student and teacher agree; the textbook form cancels.
    t = make_logits(rng, (1, 50))
    s = t + (1e-3 * rng.standard_normal((1, 50))).astype(np.float32)
    got = losses.distillation_loss(s, t, temperature=2.0, reduction="none")
    want = ref.kl_mpmath(t[0] / np.float32(2.0), s[0] / np.float32(2.0)) * 4
    assert rel_err(got[0], want) < 1e-4


def test_distillation_errors(rng):
    s = make_logits(rng, (2, 3))
    with pytest.raises(ValueError, match=r"kind must be one of .* got 'kl'"):
        losses.distillation_loss(s, s, kind="kl")
    with pytest.raises(ValueError, match=r"beta must lie in \(0.0, 1.0\)"):
        losses.distillation_loss(s, s, kind="jsd", beta=0.0)
    with pytest.raises(ValueError, match=r"temperature must lie in \(0.0"):
        losses.distillation_loss(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="same number of classes"):
        losses.distillation_loss(s, make_logits(rng, (2, 4)))


# ---------------------------------------------------------------- KL penalties


def _policy(rng, n=6):
    logits = rng.standard_normal(n)
    ref_logits = logits + 0.5 * rng.standard_normal(n)
    return logits, ref_logits


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimator_values(rng, estimator):
    lp = np.log(rng.uniform(0.01, 1, 20)).astype(np.float32)
    rp = np.log(rng.uniform(0.01, 1, 20)).astype(np.float32)
    r = rp.astype(np.float64) - lp
    want = {"k1": -r, "k2": r**2 / 2, "k3": np.expm1(r) - r}[estimator]
    got = losses.kl_penalty(lp, rp, estimator=estimator, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_k1_and_k3_are_unbiased_for_the_value(rng, x64):
    # Exact expectation over tokens a ~ pi: sum_a pi(a) k(a) = KL(pi || ref).
    logits, ref_logits = _policy(rng)
    pi, lp, lr = jax.nn.softmax(logits), jax.nn.log_softmax(logits), jax.nn.log_softmax(ref_logits)
    kl = jaxdiv.kl_divergence(logits, ref_logits)
    for estimator in ("k1", "k3"):
        expected = jnp.sum(pi * losses.kl_penalty(lp, lr, estimator=estimator, reduction="none"))
        np.testing.assert_allclose(expected, kl, rtol=1e-12)
    k2 = jnp.sum(pi * losses.kl_penalty(lp, lr, estimator="k2", reduction="none"))
    assert abs(k2 - kl) > 1e-4 * kl   # biased


def test_estimator_gradients_in_expectation(rng, x64):
    # E_{a ~ pi}[grad k(a)] with the sample held fixed (the score-function view):
    # k1 -> 0, k2 -> grad KL(pi || ref), k3 -> grad KL(ref || pi).
    logits, ref_logits = _policy(rng)
    pi = jax.nn.softmax(logits)
    lr = jax.nn.log_softmax(ref_logits)

    def expected_grad(estimator):
        per_token = jax.jacrev(
            lambda x: losses.kl_penalty(jax.nn.log_softmax(x), lr, estimator=estimator, reduction="none")
        )(logits)
        return pi @ per_token

    np.testing.assert_allclose(expected_grad("k1"), 0.0, atol=1e-15)
    np.testing.assert_allclose(
        expected_grad("k2"), jax.jit(jax.grad(lambda x: jaxdiv.kl_divergence(x, ref_logits)))(logits), rtol=1e-10
    )
    np.testing.assert_allclose(
        expected_grad("k3"), jax.jit(jax.grad(lambda x: jaxdiv.kl_divergence(ref_logits, x)))(logits), rtol=1e-10
    )


def test_k3_near_equality_and_edge_values():
    lp = np.float32([-1.0, -2.0, -np.inf, -1.0, 0.0])
    rp = np.float32([-1.0 + 1e-4, -2.0, -np.inf, -np.inf, -3.0])
    got = losses.kl_penalty(lp, rp, reduction="none")
    r = np.float64(np.float32(-1.0 + 1e-4)) + 1.0
    assert rel_err(got[0], r**2 / 2 + r**3 / 6) < 1e-5   # expm1(r) - r in float32 would be ~1e-3 off
    assert got[1] == 0.0 and got[2] == 0.0 and got[3] == np.inf
    grads = np.asarray(jax.jit(jax.grad(lambda a: losses.kl_penalty(a, rp, reduction="sum")))(lp))
    i = [0, 1, 4]
    np.testing.assert_allclose(grads[i], -np.expm1(rp[i].astype(np.float64) - lp[i]), rtol=1e-5)
    assert np.all(np.isfinite(grads))
    g_ref = jax.jit(jax.grad(lambda b: losses.kl_penalty(lp, b, reduction="sum")))(rp)
    np.testing.assert_array_equal(g_ref, 0.0)


def test_k3_derivative_where_the_policy_has_no_mass():
    # r = ref - lp = +inf: k3 is +inf and stays so under any finite change of lp,
    # so the closed-form slope expm1(r) is replaced by 0 in both modes, not inf * 0.
    lp = jnp.float32([-jnp.inf, -1.0])
    rp = jnp.float32([-2.0, -1.5])
    value = losses.kl_penalty(lp, rp, reduction="none")
    assert value[0] == np.inf
    rev = jax.jit(jax.grad(lambda a: losses.kl_penalty(a, rp, reduction="none")[0]))(lp)
    _, fwd = jax.jvp(lambda a: losses.kl_penalty(a, rp, reduction="none"), (lp,), (jnp.ones(2),))
    np.testing.assert_array_equal(rev, [0.0, 0.0])
    assert fwd[0] == 0.0
    np.testing.assert_allclose(fwd[1], -np.expm1(-0.5), rtol=1e-6)


def test_kl_penalty_mask_and_errors(rng):
    lp = np.log(rng.uniform(0.1, 1, (2, 5))).astype(np.float32)
    rp = np.log(rng.uniform(0.1, 1, (2, 5))).astype(np.float32)
    keep = rng.random((2, 5)) < 0.6
    keep[0, 0] = True
    garbage = lp.copy()
    garbage[~keep] = np.nan
    value, grad = jax.jit(jax.value_and_grad(lambda a: losses.kl_penalty(a, rp, where=keep)))(garbage)
    np.testing.assert_allclose(value, losses.kl_penalty(lp[keep], rp[keep]), rtol=1e-6)
    np.testing.assert_array_equal(grad[~keep], 0.0)
    with pytest.raises(ValueError, match=r"estimator must be one of .* got 'k4'"):
        losses.kl_penalty(lp, rp, estimator="k4")
    with pytest.raises(ValueError, match=r"log_probs shape \(2, 5\), ref_log_probs shape \(3,\)"):
        losses.kl_penalty(lp, rp[0, :3])


def test_kl_penalty_from_logits_is_the_categorical_kl(rng):
    x, r = make_logits(rng, (2, 3, 8)), make_logits(rng, (2, 3, 8))
    np.testing.assert_allclose(
        losses.kl_penalty_from_logits(x, r, reduction="none"), jaxdiv.kl_divergence(x, r), rtol=1e-6
    )
    keep = np.array([[True, True, False], [False, True, True]])
    np.testing.assert_allclose(
        losses.kl_penalty_from_logits(x, r, where=keep), np.asarray(jaxdiv.kl_divergence(x, r))[keep].mean(), rtol=1e-6
    )
    g_ref = jax.jit(jax.grad(lambda b: losses.kl_penalty_from_logits(x, b)))(r)
    np.testing.assert_array_equal(g_ref, 0.0)


# ----------------------------------------------------------------------- binary


def test_binary_cross_entropy_matches_optax_float64(rng, x64):
    x = rng.standard_normal((4, 5)) * 4
    y = rng.uniform(0, 1, (4, 5))
    y[0] = 0.0
    y[1] = 1.0
    want = optax.sigmoid_binary_cross_entropy(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(losses.binary_cross_entropy(x, y, reduction="none"), want, rtol=1e-10)
    g = jax.jit(jax.grad(lambda a: losses.binary_cross_entropy(a, y, reduction="sum")))(x)
    np.testing.assert_allclose(g, jax.nn.sigmoid(x) - y, rtol=1e-10, atol=1e-15)
    ref.assert_hessians_match(lambda a: losses.binary_cross_entropy(a, y, pos_weight=2.0),
                              lambda a: jnp.mean(2 * y * jax.nn.softplus(-a) + (1 - y) * jax.nn.softplus(a)), (x,))


def test_binary_cross_entropy_at_probabilities_zero_and_one():
    # log(sigmoid(x)) formulations are NaN at +-inf logits (pytorch#15288).
    x = jnp.array([jnp.inf, -jnp.inf, jnp.inf, -jnp.inf, 30.0, -30.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    value = losses.binary_cross_entropy(x, y, reduction="none")
    np.testing.assert_array_equal(value[:4], [0.0, 0.0, np.inf, np.inf])
    np.testing.assert_allclose(value[4:], ref.binary_cross_entropy(x[4:], y[4:]), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda a: losses.binary_cross_entropy(a, y, reduction="sum")))(x)
    np.testing.assert_array_equal(grad[:4], [0.0, 0.0, 1.0, -1.0])
    fwd = jax.jacfwd(lambda a: losses.binary_cross_entropy(a, y, reduction="none"))(x)
    assert np.all(np.isfinite(fwd))
    with np.errstate(all="ignore"):
        naive = -(y * np.log(1 / (1 + np.exp(-np.asarray(x)))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-np.asarray(x)))))
    assert np.isnan(naive[0]) or np.isnan(naive[1])


def test_binary_pos_weight_mask_and_errors(rng):
    x = make_logits(rng, (3, 4), scale=3.0)
    y = (rng.random((3, 4)) < 0.5).astype(np.float32)
    w = np.float32([1.0, 2.0, 3.0, 0.5])
    got = losses.binary_cross_entropy(x, y, pos_weight=w, reduction="none")
    np.testing.assert_allclose(got, ref.binary_cross_entropy(x, y, w), rtol=2e-6)
    keep = rng.random((3, 4)) < 0.5
    keep[0, 0] = True
    garbage = np.where(keep, x, np.nan).astype(np.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda a: losses.binary_cross_entropy(a, y, where=keep)))(garbage)
    np.testing.assert_allclose(value, ref.binary_cross_entropy(x, y)[keep].mean(), rtol=2e-6)
    np.testing.assert_array_equal(grad[~keep], 0.0)
    assert losses.binary_cross_entropy(jnp.ones(3, jnp.bfloat16), jnp.ones(3)).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"logits shape \(4,\), got labels shape \(3, 4\)"):
        losses.binary_cross_entropy(x[0], y)


def test_bernoulli_kl_values_edges_and_accuracy(rng):
    a = np.float32([0.5, -2.0, 3.0, np.inf, -np.inf, np.inf, 1.0])
    b = np.float32([-0.5, 1.0, 3.0, 0.0, 0.0, np.inf, np.inf])
    got = jaxdiv.bernoulli_kl_divergence(a, b)
    for i in range(3):
        assert rel_err(got[i], ref.bernoulli_kl_mpmath(a[i], b[i])) < 1e-5 or got[i] == 0.0
    assert got[2] == 0.0
    np.testing.assert_allclose(got[3:5], np.log(2), rtol=1e-6)   # p = 1 or 0 against 1/2
    assert got[5] == 0.0 and got[6] == np.inf
    # Nearly equal: the textbook formula cancels in float32.
    x = np.float32(0.3)
    y = np.float32(0.3 + 1e-4)
    assert rel_err(jaxdiv.bernoulli_kl_divergence(x, y), ref.bernoulli_kl_mpmath(x, y)) < 1e-4
    grads = jax.jit(jax.grad(lambda p, q: jnp.sum(jaxdiv.bernoulli_kl_divergence(p, q)), argnums=(0, 1)))(a, b)
    assert all(np.all(np.isfinite(g)) for g in grads)
    # d/db KL = sigmoid(b) - sigmoid(a) (the two-class Q - P)
    np.testing.assert_allclose(grads[1][:3], jax.nn.sigmoid(b[:3]) - jax.nn.sigmoid(a[:3]), rtol=1e-5)


def test_bernoulli_kl_second_order(rng, x64):
    a, b = rng.standard_normal(5) * 2, rng.standard_normal(5) * 2
    a[0] = 0.0   # the kink of min/max: the two-class logits stay differentiable

    def textbook(p, q):
        lp, lq, lnp, lnq = (jax.nn.log_sigmoid(t) for t in (p, q, -p, -q))
        return jnp.exp(lp) * (lp - lq) + jnp.exp(lnp) * (lnp - lnq)

    ref.assert_hessians_match(jaxdiv.bernoulli_kl_divergence, textbook, (a, b))


# -------------------------------------------------------------------------- VAE


def test_vae_kl_matches_gaussian_and_free_bits(rng):
    m = make_logits(rng, (6, 4))
    v = make_logits(rng, (6, 4), scale=0.5)
    per_dim = 0.5 * (m.astype(np.float64) ** 2 + np.exp(v) - 1 - v)
    np.testing.assert_allclose(losses.vae_kl(m, v), per_dim.sum(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.vae_kl(m, v, reduction="none"), jaxdiv.gaussian.kl_standard_normal(m, v), rtol=1e-6)
    lam = float(np.median(per_dim.mean(0)))
    want = np.maximum(per_dim.mean(0), lam).sum()
    np.testing.assert_allclose(losses.vae_kl(m, v, free_bits=lam), want, rtol=1e-6)
    np.testing.assert_allclose(losses.vae_kl(m, v, free_bits=lam, reduction="sum"), 6 * want, rtol=1e-6)
    # Dimensions under the floor get no gradient.
    g = jax.jit(jax.grad(lambda a: losses.vae_kl(a, v, free_bits=lam)))(m)
    below = per_dim.mean(0) < lam
    np.testing.assert_array_equal(g[:, below], 0.0)
    assert np.all(g[:, ~below][m[:, ~below] != 0] != 0)


def test_vae_kl_mask_axis_and_errors(rng):
    m, v = make_logits(rng, (4, 3)), make_logits(rng, (4, 3))
    keep = np.array([True, False, True, True])
    garbage = np.where(keep[:, None], m, np.nan).astype(np.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda a: losses.vae_kl(a, v, where=keep, free_bits=0.1)))(garbage)
    np.testing.assert_allclose(value, losses.vae_kl(m[keep], v[keep], free_bits=0.1), rtol=1e-6)
    np.testing.assert_array_equal(grad[~keep], 0.0)
    np.testing.assert_allclose(losses.vae_kl(m.T, v.T, axis=0), losses.vae_kl(m, v), rtol=1e-6)
    assert losses.vae_kl(m, v, where=np.zeros(4, bool), free_bits=0.1) == 0.0
    with pytest.raises(ValueError, match="free_bits floors the batch average"):
        losses.vae_kl(m, v, free_bits=0.1, reduction="none")
    with pytest.raises(ValueError, match=r"free_bits must lie in \[0.0"):
        losses.vae_kl(m, v, free_bits=-1.0)


# ------------------------------------------------------------------- properties


# Smoothing and z-loss traced: one compilation per shape, not per example.
_padded_value_and_grad = jax.jit(jax.value_and_grad(
    lambda a, b, smoothing, z: losses.softmax_cross_entropy(
        a, b, ignore_index=IGNORE, label_smoothing=smoothing, z_loss=z)))


@hypothesis.given(
    padding=st.integers(0, 5),
    smoothing=st.sampled_from([0.0, 0.1]),
    z=st.sampled_from([0.0, 1e-3]),
    seed=st.integers(0, 2**16),
)
@hypothesis.settings(max_examples=8)
def test_padding_with_ignored_positions_changes_nothing(padding, smoothing, z, seed):
    # A token-mean loss must not depend on how much padding the batch carries.
    rng = np.random.default_rng(seed)
    x = make_logits(rng, (4 + padding, 6), scale=2.0)
    y = rng.integers(0, 6, 4 + padding)
    y[4:] = IGNORE
    value, grad = _padded_value_and_grad(x, y, smoothing, z)
    v_want, g_want = _padded_value_and_grad(x[:4], y[:4], smoothing, z)
    np.testing.assert_allclose(value, v_want, rtol=1e-6)
    np.testing.assert_allclose(grad[:4], g_want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(grad[4:], 0.0)


@hypothesis.given(seed=st.integers(0, 2**16), eps=st.floats(0.0, 1.0))
@hypothesis.settings(max_examples=15)
def test_smoothing_interpolates_label_and_uniform_losses(seed, eps):
    rng = np.random.default_rng(seed)
    x = make_logits(rng, (3, 5), scale=3.0)
    y = rng.integers(0, 5, 3)
    loss = lambda e: losses.softmax_cross_entropy(x, y, label_smoothing=e, reduction="none")
    np.testing.assert_allclose(loss(eps), (1 - eps) * loss(0.0) + eps * loss(1.0), rtol=2e-6, atol=1e-7)
    assert np.all(np.asarray(loss(eps)) >= 0)


def test_bf16_distillation_and_kl_penalty_return_float32(rng):
    s = jnp.asarray(make_logits(rng, (4, 9)), jnp.bfloat16)
    t = jnp.asarray(make_logits(rng, (4, 9)), jnp.bfloat16)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        value = losses.distillation_loss(s, t, kind=kind, temperature=2.0)
        assert value.dtype == jnp.float32
        want = losses.distillation_loss(s.astype(jnp.float32), t.astype(jnp.float32), kind=kind, temperature=2.0)
        np.testing.assert_allclose(value, want, rtol=1e-6)
        assert jax.jit(jax.grad(lambda a: losses.distillation_loss(a, t, kind=kind)))(s).dtype == jnp.bfloat16
    assert losses.kl_penalty(s[:, 0], t[:, 0]).dtype == jnp.float32


def test_distillation_traced_temperature_and_second_order(rng, x64):
    s, t = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    f = jax.jit(lambda a, temp: losses.distillation_loss(a, t, temperature=temp))
    np.testing.assert_allclose(f(s, 2.5), losses.distillation_loss(s, t, temperature=2.5), rtol=1e-12)
    # The tempered KL kernel; JS at temperature is the JS kernel (checked to
    # second order in test_f_divergences_x64) on multiplied logits.
    temp = 1.7
    ref.assert_hessians_match(
        lambda a: losses.distillation_loss(a, t, temperature=temp),
        lambda a: temp**2 * jnp.mean(ref.textbook("kl", jax.nn.softmax(t / temp), jax.nn.softmax(a / temp))), (s,))


def test_penalty_and_vae_second_order(rng, x64):
    lp, rp = np.log(rng.uniform(0.05, 1, 6)), np.log(rng.uniform(0.05, 1, 6))
    lp[0] = rp[0] + 1e-3   # near equality, inside k3's series
    estimators = {"k1": lambda r: -r, "k2": lambda r: r**2 / 2, "k3": lambda r: jnp.exp(r) - 1 - r}
    for estimator, k in estimators.items():
        ref.assert_hessians_match(lambda a: losses.kl_penalty(a, rp, estimator=estimator),
                                  lambda a: jnp.mean(k(rp - a)), (lp,))
    m, v = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def per_dimension(a, b):
        return 0.5 * (a**2 + jnp.exp(b) - 1 - b)

    ref.assert_hessians_match(losses.vae_kl, lambda a, b: jnp.mean(jnp.sum(per_dimension(a, b), -1)), (m, v))
    # Dimension means straddle the floor: some floored (zero Hessian), some not.
    means = np.mean(per_dimension(m, v), 0)
    free_bits = float(np.median(means))   # of four: between two of them, at no kink
    assert np.any(means < free_bits) and np.any(means > free_bits)
    ref.assert_hessians_match(lambda a, b: losses.vae_kl(a, b, free_bits=free_bits),
                              lambda a, b: jnp.sum(jnp.maximum(free_bits, jnp.mean(per_dimension(a, b), 0))), (m, v))
