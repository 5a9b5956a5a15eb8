"""Categorical divergences on logits, float32 (float64 lives in test_categorical_x64.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

import jaxdiv
from tests import reference as ref
from tests.inputs import logits, rel_err, with_zeros

NEG_INF = -np.inf

# name -> (jaxdiv function of (p, q), float64 reference of (p, q))
PAIRWISE = {
    "kl": (jaxdiv.kl_divergence, ref.kl),
    "cross_entropy": (jaxdiv.cross_entropy, ref.cross_entropy),
    "entropy": (lambda p, q, **kw: jaxdiv.entropy(p, **kw), lambda p, q: ref.entropy(p)),
}


# ------------------------------------------------------------- 1. reference


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("shape", [(7,), (3, 11), (2, 3, 50)])
def test_values_match_float64_reference(rng, name, shape):
    f, reference = PAIRWISE[name]
    p, q = logits(rng, shape, 3.0), logits(rng, shape, 3.0)
    got = f(p, q)
    assert got.shape == shape[:-1] and got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(p, q), rtol=2e-6, atol=0)


def test_integer_cross_entropy_matches_reference(rng):
    x = logits(rng, (5, 4, 9), 4.0)
    y = rng.integers(0, 9, (5, 4))
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(x, y), ref.integer_cross_entropy(x, y), rtol=2e-6
    )


def test_values_match_scipy(rng):
    p, q = logits(rng, (4, 20)), logits(rng, (4, 20))
    pk, qk = scipy.special.softmax(p.astype(np.float64), -1), scipy.special.softmax(q.astype(np.float64), -1)
    np.testing.assert_allclose(jaxdiv.kl_divergence(p, q), scipy.stats.entropy(pk, qk, axis=-1), rtol=2e-6)
    np.testing.assert_allclose(
        jaxdiv.kl_divergence(p, q), scipy.special.rel_entr(pk, qk).sum(-1), rtol=2e-6
    )
    np.testing.assert_allclose(jaxdiv.entropy(p), scipy.stats.entropy(pk, axis=-1), rtol=2e-6)


# ------------------------------------------------------- 2. accuracy regimes


@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 10.0, 100.0, 1e4])
def test_kl_accurate_at_every_logit_scale(rng, scale):
    p, q = logits(rng, (16, 200), scale), logits(rng, (16, 200), scale)
    assert rel_err(jaxdiv.kl_divergence(p, q), ref.kl(p, q)) <= 1e-5


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
def test_kl_accurate_for_nearly_identical_distributions(rng, eps):
    p = logits(rng, (16, 500), 2.0)
    q = (p + eps * rng.standard_normal(p.shape)).astype(np.float32)
    want = ref.kl(p, q)
    assert rel_err(jaxdiv.kl_divergence(p, q), want) <= 1e-5
    assert rel_err(jaxdiv.kl_divergence(q, p), ref.kl(q, p)) <= 1e-5


def test_kl_tiny_values_against_mpmath(rng):
    p = logits(rng, (1, 64))
    q = (p + 1e-6 * rng.standard_normal(p.shape)).astype(np.float32)
    want = ref.kl_mpmath(p[0], q[0])
    assert 1e-14 < want < 1e-10
    assert rel_err(jaxdiv.kl_divergence(p, q)[0], want) <= 1e-5


def test_textbook_formula_fails_where_jaxdiv_does_not(rng):
    # The reason for the stable form: the float32 textbook sum is noise here.
    p = logits(rng, (8, 1000))
    q = (p + 1e-4 * rng.standard_normal(p.shape)).astype(np.float32)
    want = ref.kl(p, q)
    assert rel_err(ref.textbook_kl_float32(p, q), want) > 1e-2
    assert rel_err(jaxdiv.kl_divergence(p, q), want) <= 1e-5


def test_kl_accurate_with_zero_probabilities_near_equality(rng):
    p = with_zeros(rng, logits(rng, (16, 300)))
    q = np.where(np.isfinite(p), p + 1e-5 * rng.standard_normal(p.shape), 0.0).astype(np.float32)
    q = np.where(np.isfinite(p), q, -30.0).astype(np.float32)  # Q has a little mass off supp P
    assert rel_err(jaxdiv.kl_divergence(p, q), ref.kl(p, q)) <= 1e-5


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
def test_confident_cross_entropy_and_tiny_entropy(rng, scale):
    # Large logit scales make P nearly one-hot: CE and entropy fall to 1e-20 and below.
    p, q = logits(rng, (16, 100), scale), logits(rng, (16, 100), scale)
    q[:, :] = p + 0.1 * rng.standard_normal(p.shape).astype(np.float32)
    assert rel_err(jaxdiv.entropy(p), ref.entropy(p)) <= 2e-6
    assert rel_err(jaxdiv.cross_entropy(p, q), ref.cross_entropy(p, q)) <= 2e-6
    y = np.argmax(p, -1)
    assert rel_err(
        jaxdiv.cross_entropy_with_integer_labels(p, y), ref.integer_cross_entropy(p, y)
    ) <= 2e-6


# ------------------------------------------------------------- 3. exact zeros


@pytest.mark.parametrize("zeros", [False, True])
def test_identical_inputs_give_exactly_zero(rng, zeros):
    p = logits(rng, (32, 100), 5.0)
    if zeros:
        p = with_zeros(rng, p)
    kl = jaxdiv.kl_divergence(p, p)
    assert np.all(np.asarray(kl) == 0.0)
    # Logits on a 1/8 grid shifted by 4 are exactly the same distribution.
    grid = np.round(p * 8) / 8
    assert np.all(np.asarray(jaxdiv.kl_divergence(grid, grid + 4.0)) == 0.0)


def test_kl_never_negative(rng):
    p = logits(rng, (256, 64))
    q = (p + 1e-7 * rng.standard_normal(p.shape)).astype(np.float32)
    assert np.all(np.asarray(jaxdiv.kl_divergence(p, q)) >= 0)
    assert np.all(np.asarray(jaxdiv.kl_divergence(q, p)) >= 0)


# ------------------------------------------------ 4. zero-probability rules


def test_zero_probability_terms_vanish():
    p = np.log(np.array([0.5, 0.5, 0.0], np.float32))
    for q_last in [0.0, 10.0, NEG_INF, -1e30]:
        q = np.array([0.0, 0.0, q_last], np.float32)
        np.testing.assert_allclose(jaxdiv.kl_divergence(p, q), ref.kl(p, q), rtol=1e-6)


def test_mass_where_q_has_none_is_inf_not_nan():
    p = np.zeros(3, np.float32)
    q = np.array([0.0, 0.0, NEG_INF], np.float32)
    assert jaxdiv.kl_divergence(p, q) == np.inf
    assert jaxdiv.cross_entropy(p, q) == np.inf
    assert jaxdiv.cross_entropy_with_integer_labels(q, 2) == np.inf
    gq = jax.jit(jax.grad(jaxdiv.kl_divergence, argnums=1))(p, q)
    np.testing.assert_allclose(gq, [1 / 2 - 1 / 3, 1 / 2 - 1 / 3, -1 / 3], rtol=1e-6)
    gp = jax.jit(jax.grad(jaxdiv.kl_divergence))(p, q)
    np.testing.assert_array_equal(gp, 0.0)


@pytest.mark.parametrize("name", PAIRWISE)
def test_row_without_support_is_zero_with_zero_gradient(name):
    f, _ = PAIRWISE[name]
    p = np.array([[NEG_INF] * 4, [0.0, 1.0, 2.0, 3.0]], np.float32)
    q = np.array([[1.0, 2.0, NEG_INF, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    out = f(p, q)
    assert out[0] == 0.0
    g = jax.jit(jax.grad(lambda p, q: f(p, q)[0], argnums=(0, 1)))(p, q)
    for gi in g:
        np.testing.assert_array_equal(gi, 0.0)
    masked = f(q, q, where=np.zeros(4, bool))
    np.testing.assert_array_equal(masked, 0.0)


@pytest.mark.parametrize("position", range(6))
def test_single_finite_logit_among_minus_inf(position):
    p = np.full(6, NEG_INF, np.float32)
    p[position] = 1.5
    q = np.linspace(-2, 2, 6).astype(np.float32)
    want = -ref.log_softmax(q)[position]
    np.testing.assert_allclose(jaxdiv.kl_divergence(p, q), want, rtol=2e-6)
    np.testing.assert_allclose(jaxdiv.cross_entropy(p, q), want, rtol=2e-6)
    assert jaxdiv.entropy(p) == 0.0
    assert jaxdiv.kl_divergence(p, p) == 0.0
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(q, position), want, rtol=2e-6
    )
    gp, gq = jax.jit(jax.grad(jaxdiv.kl_divergence, argnums=(0, 1)))(p, q)
    np.testing.assert_array_equal(gp, 0.0)   # P is one-hot whatever its finite logit
    onehot = np.eye(6)[position]
    np.testing.assert_allclose(gq, scipy.special.softmax(q.astype(np.float64)) - onehot, atol=1e-6)


# ----------------------------------------------------- 5. -inf vs clipped


@pytest.mark.parametrize("name", PAIRWISE)
def test_minus_inf_equals_clipped(rng, name):
    f, _ = PAIRWISE[name]
    p = with_zeros(rng, logits(rng, (8, 40)))
    q = logits(rng, (8, 40))
    q = np.where(np.isfinite(p), q, np.where(rng.random(q.shape) < 0.5, NEG_INF, q)).astype(np.float32)
    clip = lambda x: np.maximum(x, -1e4).astype(np.float32)
    np.testing.assert_allclose(f(p, q), f(clip(p), clip(q)), rtol=1e-6)
    g = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))
    for got, want in zip(g(p, q), g(clip(p), clip(q))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_integer_cross_entropy_minus_inf_equals_clipped(rng):
    x = with_zeros(rng, logits(rng, (8, 40)))
    y = np.zeros(8, np.int32)
    g = jax.jit(jax.value_and_grad(lambda x: jaxdiv.cross_entropy_with_integer_labels(x, y).sum()))
    (v1, g1), (v2, g2) = g(x), g(np.maximum(x, -1e4))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------ 6. gradients


def test_kl_gradients_are_the_closed_forms(rng):
    p = with_zeros(rng, logits(rng, (4, 30)))
    q = logits(rng, (4, 30))
    gp, gq = jax.jit(jax.grad(lambda a, b: jaxdiv.kl_divergence(a, b).sum(), argnums=(0, 1)))(p, q)
    lp, lq = ref.log_softmax(p), ref.log_softmax(q)
    probs_p, probs_q = np.exp(lp), np.exp(lq)
    kl = ref.kl(p, q)[:, None]
    with np.errstate(invalid="ignore"):
        want_p = np.where(probs_p > 0, probs_p * (lp - lq - kl), 0.0)
    np.testing.assert_allclose(gq, probs_q - probs_p, atol=2e-7)
    np.testing.assert_allclose(gp, want_p, atol=2e-7)


def test_cross_entropy_and_entropy_gradients_are_the_closed_forms(rng):
    p = with_zeros(rng, logits(rng, (4, 30)))
    q = logits(rng, (4, 30))
    lp, lq = ref.log_softmax(p), ref.log_softmax(q)
    probs_p, probs_q = np.exp(lp), np.exp(lq)
    h = ref.entropy(p)[:, None]
    ce = ref.cross_entropy(p, q)[:, None]
    gp, gq = jax.jit(jax.grad(lambda a, b: jaxdiv.cross_entropy(a, b).sum(), argnums=(0, 1)))(p, q)
    np.testing.assert_allclose(gq, probs_q - probs_p, atol=2e-7)
    np.testing.assert_allclose(gp, np.where(probs_p > 0, probs_p * (-lq - ce), 0.0), atol=2e-6)
    g = jax.jit(jax.grad(lambda a: jaxdiv.entropy(a).sum()))(p)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(g, np.where(probs_p > 0, -probs_p * (lp + h), 0.0), atol=2e-6)


def test_integer_cross_entropy_gradient_is_softmax_minus_onehot(rng):
    x = logits(rng, (6, 10))
    y = rng.integers(0, 10, 6)
    mask = rng.random((6, 10)) < 0.8
    mask[np.arange(6), y] = True
    g = jax.jit(jax.grad(lambda x: jaxdiv.cross_entropy_with_integer_labels(x, y, where=mask).sum()))(x)
    masked = np.where(mask, x, NEG_INF)
    want = np.exp(ref.log_softmax(masked)) - np.eye(10)[y]
    np.testing.assert_allclose(g, want, atol=2e-7)
    assert np.all(np.asarray(g)[~mask] == 0.0)


@pytest.mark.parametrize("name", list(PAIRWISE) + ["labels"])
def test_forward_and_reverse_mode_agree(rng, name):
    p = with_zeros(rng, logits(rng, (3, 7)))
    q = logits(rng, (3, 7))
    if name == "labels":
        f = lambda a, b: jaxdiv.cross_entropy_with_integer_labels(a, np.array([0, 1, 0])) + 0 * b.sum()
    else:
        f = PAIRWISE[name][0]
    for argnum in (0, 1):
        fwd = jax.jacfwd(f, argnums=argnum)(p, q)
        rev = jax.jacrev(f, argnums=argnum)(p, q)
        assert np.all(np.isfinite(fwd))
        np.testing.assert_allclose(fwd, rev, atol=1e-7)


def test_hessian_vector_products_are_finite_and_symmetric(rng):
    p = with_zeros(rng, logits(rng, (5,)))
    q = logits(rng, (5,))
    h = jax.hessian(jaxdiv.kl_divergence, argnums=1)(p, q)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, np.asarray(h).T, atol=1e-6)
    probs_q = np.exp(ref.log_softmax(q))
    np.testing.assert_allclose(h, np.diag(probs_q) - np.outer(probs_q, probs_q), atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_debug_nans_does_not_trip_on_edge_inputs(jit):
    p = np.array([[0.0, NEG_INF, 1.0], [NEG_INF] * 3, [1e9, -1e9, NEG_INF]], np.float32)
    q = np.array([[0.0, 2.0, NEG_INF], [0.0, 0.0, 0.0], [1e9, NEG_INF, NEG_INF]], np.float32)
    y = np.array([0, 1, 2])
    fns = [
        lambda a, b: jaxdiv.kl_divergence(a, b).sum(),
        lambda a, b: jaxdiv.cross_entropy(a, b).sum(),
        lambda a, b: jaxdiv.entropy(a).sum(),
        lambda a, b: jaxdiv.cross_entropy_with_integer_labels(b, y).sum(),
    ]
    with jax.debug_nans(True):
        for f in fns:
            g = jax.jit(jax.grad(f, argnums=(0, 1)))
            g = jax.jit(g) if jit else g
            for gi in g(p, q):
                assert not np.any(np.isnan(gi))
            jax.jvp(functools.partial(f, p), (q,), (np.ones_like(q),))


# ---------------------------------------------------------- 7. masks, axes


@pytest.mark.parametrize("name", PAIRWISE)
def test_mask_equals_slicing_and_ignores_nan(rng, name):
    f, _ = PAIRWISE[name]
    p, q = logits(rng, (3, 12)), logits(rng, (3, 12))
    keep = np.ones(12, bool)
    keep[[2, 5, 9]] = False
    want = f(p[:, keep], q[:, keep])
    poisoned_p, poisoned_q = p.copy(), q.copy()
    poisoned_p[:, ~keep] = np.nan
    poisoned_q[:, ~keep] = np.inf
    np.testing.assert_allclose(f(poisoned_p, poisoned_q, where=keep), want, rtol=1e-6)
    g = jax.jit(jax.grad(lambda a, b: f(a, b, where=keep).sum(), argnums=(0, 1)))(poisoned_p, poisoned_q)
    g_sliced = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(p[:, keep], q[:, keep])
    for gi, gs in zip(g, g_sliced):
        assert np.all(np.asarray(gi)[:, ~keep] == 0.0)
        np.testing.assert_allclose(np.asarray(gi)[:, keep], gs, atol=1e-7)


def test_integer_labels_mask_equals_slicing(rng):
    x = logits(rng, (4, 9))
    keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1], bool)
    y_full = np.array([0, 3, 8, 5])
    y_sliced = np.searchsorted(np.flatnonzero(keep), y_full)
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(x, y_full, where=keep),
        jaxdiv.cross_entropy_with_integer_labels(x[:, keep], y_sliced),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", PAIRWISE)
def test_axis_equals_transposing(rng, name):
    f, _ = PAIRWISE[name]
    p, q = logits(rng, (5, 4, 3)), logits(rng, (5, 4, 3))
    np.testing.assert_allclose(f(p, q, axis=0), f(p.transpose(1, 2, 0), q.transpose(1, 2, 0)), rtol=1e-6)
    np.testing.assert_allclose(f(p, q, axis=1), f(p.transpose(0, 2, 1), q.transpose(0, 2, 1)), rtol=1e-6)


def test_integer_labels_axis(rng):
    x = logits(rng, (7, 4))
    y = rng.integers(0, 7, 4)
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(x, y, axis=0),
        jaxdiv.cross_entropy_with_integer_labels(x.T, y),
        rtol=1e-6,
    )


# ------------------------------------------------------ 8. transformations


@pytest.mark.parametrize("name", PAIRWISE)
def test_eager_jit_vmap_agree(rng, name):
    f, _ = PAIRWISE[name]
    p, q = logits(rng, (6, 4, 10)), logits(rng, (6, 4, 10))
    eager = f(p, q)
    np.testing.assert_allclose(jax.jit(f)(p, q), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(p, q), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.vmap(f))(p, q), eager, rtol=1e-6)


def test_broadcasting_one_reference_against_a_batch(rng):
    p = logits(rng, (10,))
    q = logits(rng, (3, 5, 10))
    got = jaxdiv.kl_divergence(p, q)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, ref.kl(np.broadcast_to(p, q.shape), q), rtol=2e-6)
    gp = jax.jit(jax.grad(lambda a: jaxdiv.kl_divergence(a, q).sum()))(p)
    gp_loop = sum(jax.jit(jax.grad(jaxdiv.kl_divergence))(p, qi) for qi in q.reshape(-1, 10))
    np.testing.assert_allclose(gp, gp_loop, atol=1e-6)


def test_large_batch_spans_several_row_blocks(rng):
    # More rows than one block holds: the blocked map must agree row by row.
    p, q = logits(rng, (4099, 300)), logits(rng, (4099, 300))
    np.testing.assert_allclose(jaxdiv.kl_divergence(p, q), ref.kl(p, q), rtol=2e-6)
    y = rng.integers(0, 300, 4099)
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(p, y), ref.integer_cross_entropy(p, y), rtol=2e-6
    )


def test_traced_base_compiles_once_and_matches_static(rng):
    """``base`` may be traced (a learned or swept value): one trace serves every value."""
    traces = []

    @jax.jit
    def loss(p, q, base):
        traces.append(1)
        return jaxdiv.kl_divergence(p, q, base=base)

    p, q = logits(rng, (4, 8)), logits(rng, (4, 8))
    for base in (2.0, 10.0, np.e):
        np.testing.assert_allclose(loss(p, q, base), jaxdiv.kl_divergence(p, q, base=base), rtol=1e-6)
    assert len(traces) == 1


# ------------------------------------------------------------------ 9. dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", PAIRWISE)
def test_16_bit_inputs_compute_in_float32(rng, dtype, name):
    f, reference = PAIRWISE[name]
    p = jnp.asarray(logits(rng, (4, 50), 3.0), dtype)
    q = jnp.asarray(logits(rng, (4, 50), 3.0), dtype)
    out = f(p, q)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference(np.asarray(p, np.float32), np.asarray(q, np.float32)), rtol=2e-6)
    gp, gq = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(p, q)
    assert gp.dtype == dtype and gq.dtype == dtype


def test_bfloat16_loss_is_not_quantised(rng):
    x = jnp.asarray(logits(rng, (64, 1000)), jnp.bfloat16)
    y = rng.integers(0, 1000, 64)
    loss = jaxdiv.cross_entropy_with_integer_labels(x, y)
    assert loss.dtype == jnp.float32
    want = ref.integer_cross_entropy(np.asarray(x, np.float32), y)
    np.testing.assert_allclose(loss, want, rtol=2e-6)
    on_bf16_grid = np.asarray(loss) == np.asarray(loss.astype(jnp.bfloat16), np.float32)
    assert not on_bf16_grid.all()


# ------------------------------------------------------------- 10. extremes


@pytest.mark.parametrize("big", [1e4, 1e9])
def test_huge_logits_mixed_with_minus_inf(big):
    p = np.array([[big, -big, 0.0, NEG_INF], [-big, -big, NEG_INF, -big]], np.float32)
    q = np.array([[big, 0.0, -big, 1.0], [-big, -big, -big, -big]], np.float32)
    for name, (f, reference) in PAIRWISE.items():
        got, want = f(p, q), reference(p, q)
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30, err_msg=name)
        for g in jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(p, q):
            assert np.all(np.isfinite(g)), name


@pytest.mark.parametrize("value", [-1e9, -1e4, 0.0, 1e4, 1e9])
def test_uniform_logits_give_log_num_classes(value):
    x = np.full((2, 11), value, np.float32)
    # To the last bit or two: compiled, XLA's exp/log round differently from op by op.
    np.testing.assert_allclose(jaxdiv.entropy(x), np.log(11.0), rtol=2.5e-7)
    np.testing.assert_allclose(jaxdiv.cross_entropy_with_integer_labels(x, [0, 10]), np.log(11.0), rtol=2.5e-7)
    assert np.all(np.asarray(jaxdiv.kl_divergence(x, x)) == 0.0)


# ------------------------------------------------------- 11. NaN containment


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", PAIRWISE)
def test_nan_stays_in_its_row(rng, bad, name):
    f, _ = PAIRWISE[name]
    p, q = logits(rng, (3, 8)), logits(rng, (3, 8))
    clean_value = f(p, q)
    clean_grad = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(p, q)
    for which in (0, 1):
        if name == "entropy" and which == 1:
            continue
        args = [p.copy(), q.copy()]
        args[which][1, 3] = bad
        out = f(*args)
        assert np.isnan(out[1])
        np.testing.assert_array_equal(np.asarray(out)[[0, 2]], np.asarray(clean_value)[[0, 2]])
        grads = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(*args)
        for g, g0 in zip(grads, clean_grad):
            np.testing.assert_array_equal(np.asarray(g)[[0, 2]], np.asarray(g0)[[0, 2]])


def test_integer_labels_nan_and_out_of_range_stay_in_their_row(rng):
    x = logits(rng, (4, 5))
    x[1, 2] = np.nan
    out = jaxdiv.cross_entropy_with_integer_labels(x, np.array([0, 0, 5, -1]))
    assert np.isnan(out[1]) and np.isnan(out[2]) and np.isnan(out[3])
    np.testing.assert_allclose(out[0], ref.integer_cross_entropy(x[:1], [0])[0], rtol=2e-6)
    g = jax.jit(jax.grad(lambda x: jaxdiv.cross_entropy_with_integer_labels(x, np.array([0, 0, 5, -1]))[0]))(x)
    assert np.all(np.isfinite(np.asarray(g)[0]))  # rows 1-3 are the bad ones


# ------------------------------------------------------------------ 12. shapes


@pytest.mark.parametrize("name", PAIRWISE)
def test_shapes_empty_single_class_and_scalar(rng, name):
    f, _ = PAIRWISE[name]
    assert f(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)).shape == (0,)
    assert f(np.zeros((3, 0, 5), np.float32), np.zeros((3, 0, 5), np.float32)).shape == (3, 0)
    one = f(logits(rng, (4, 1)), logits(rng, (4, 1)))
    np.testing.assert_array_equal(one, 0.0)
    scalar = f(logits(rng, (6,)), logits(rng, (6,)))
    assert scalar.shape == ()
    none = f(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32))
    np.testing.assert_array_equal(none, 0.0)


def test_integer_labels_shapes(rng):
    assert jaxdiv.cross_entropy_with_integer_labels(np.zeros((0, 4), np.float32), np.zeros(0, int)).shape == (0,)
    np.testing.assert_array_equal(jaxdiv.cross_entropy_with_integer_labels(logits(rng, (3, 1)), [0, 0, 0]), 0.0)
    assert jaxdiv.cross_entropy_with_integer_labels(logits(rng, (5,)), 2).shape == ()


# ------------------------------------------------------------------ 13. errors


def test_mismatched_class_counts_name_both_shapes():
    with pytest.raises(ValueError, match=r"p_logits shape \(2, 3\).*q_logits shape \(2, 4\)"):
        jaxdiv.kl_divergence(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"broadcast.*\(2, 3\).*\(5, 3\)"):
        jaxdiv.cross_entropy(np.zeros((2, 3)), np.zeros((5, 3)))


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_non_float_logits_raise_type_error(dtype):
    with pytest.raises(TypeError, match=f"p_logits must be a real floating-point array.*{np.dtype(dtype)}"):
        jaxdiv.kl_divergence(np.zeros(3, dtype), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="logits must be a real floating-point"):
        jaxdiv.entropy(np.zeros(3, dtype))


def test_bad_axis_raises():
    with pytest.raises(ValueError, match=r"axis 2 is out of range for inputs of rank 2.*\[-2, 1\]"):
        jaxdiv.kl_divergence(np.zeros((2, 3)), np.zeros((2, 3)), axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        jaxdiv.entropy(np.zeros(3), axis=0.5)


def test_bad_where_raises():
    with pytest.raises(TypeError, match="where must be a boolean array"):
        jaxdiv.entropy(np.zeros(3), where=np.ones(3))
    with pytest.raises(ValueError, match=r"where shape \(4,\)"):
        jaxdiv.entropy(np.zeros((2, 3)), where=np.ones(4, bool))


def test_bad_labels_raise():
    with pytest.raises(ValueError, match=r"labels of shape \(2, 3\).*logits shape \(2, 3, 5\).*labels shape \(2, 4\)"):
        jaxdiv.cross_entropy_with_integer_labels(np.zeros((2, 3, 5)), np.zeros((2, 4), int))
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float32"):
        jaxdiv.cross_entropy_with_integer_labels(np.zeros((2, 5)), np.zeros(2, np.float32))


def test_validate_labels():
    assert jaxdiv.validate_labels(np.array([0, 4]), 5) is not None
    with pytest.raises(ValueError, match=r"\[0, 5\).*2 out of range.*-1 at index \(1,\)"):
        jaxdiv.validate_labels(np.array([0, -1, 5]), 5)


# ------------------------------------------- 16. regressions of other libraries


def test_optax_896_minus_inf_logit_with_zero_target_weight():
    # optax.softmax_cross_entropy gives NaN: 0 * -inf in sum(targets * log_softmax).
    target = np.log(np.array([0.0, 1.0, 0.0], np.float32))
    model = np.array([NEG_INF, 0.0, 1.0], np.float32)
    value, grads = jax.jit(jax.value_and_grad(jaxdiv.cross_entropy, argnums=(0, 1)))(target, model)
    np.testing.assert_allclose(value, -ref.log_softmax(model)[1], rtol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_optax_1762_forward_mode_jacobian_at_minus_inf():
    model = np.array([NEG_INF, 0.0, 1.0], np.float32)
    target = np.log(np.array([0.0, 0.5, 0.5], np.float32))
    for f in (jaxdiv.cross_entropy, jaxdiv.kl_divergence):
        jac = jax.jacfwd(f, argnums=(0, 1))(target, model)
        assert all(np.all(np.isfinite(j)) for j in jac)


def test_optax_1786_gradient_wrt_zero_probability_targets():
    # Differentiating w.r.t. the target where it is 0 is NaN in optax and torch.
    # Here for the logit form; probability inputs belong to jaxdiv.probs.
    probs = np.array([0.0, 0.25, 0.75], np.float32)
    g = jax.jit(jax.grad(lambda p: jaxdiv.kl_divergence(p, jnp.zeros(3))))(np.log(probs))
    assert g[0] == 0.0 and np.all(np.isfinite(g))


def test_optax_1020_bfloat16_integer_label_loss_is_float32():
    x = jnp.asarray([[10.0, 0.0, 0.0]], jnp.bfloat16)
    loss = jaxdiv.cross_entropy_with_integer_labels(x, [0])
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(np.float32([[10, 0, 0]]), [0]), rtol=2e-6)


def test_torch_70348_everything_masked_gives_zero_not_nan(rng):
    p, q = logits(rng, (4, 6)), logits(rng, (4, 6))
    none = np.zeros((4, 6), bool)
    for f in (jaxdiv.kl_divergence, jaxdiv.cross_entropy):
        value, grads = jax.jit(jax.value_and_grad(lambda a, b: f(a, b, where=none).mean(), argnums=(0, 1)))(p, q)
        assert value == 0.0
        for g in grads:
            np.testing.assert_array_equal(g, 0.0)
