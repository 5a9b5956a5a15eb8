"""jaxdiv.probs: the family on probability vectors, histograms and counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

import jaxdiv
from jaxdiv import probs
from tests import reference as ref
from tests.inputs import rel_err

# name -> (probs function of (p, q, **kw), logits function of (p, q, **kw))
PAIRS = {
    "kl": (probs.kl_divergence, jaxdiv.kl_divergence),
    "cross_entropy": (probs.cross_entropy, jaxdiv.cross_entropy),
    "entropy": (lambda p, q, **kw: probs.entropy(p, **kw), lambda p, q, **kw: jaxdiv.entropy(p, **kw)),
    "js": (probs.js_divergence, jaxdiv.js_divergence),
    "js_distance": (probs.js_distance, jaxdiv.js_distance),
    "tv": (probs.total_variation, jaxdiv.total_variation),
    "hellinger": (probs.hellinger_distance, jaxdiv.hellinger_distance),
    "renyi_0.5": (
        lambda p, q, **kw: probs.renyi_divergence(p, q, 0.5, **kw),
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 0.5, **kw),
    ),
    "renyi_2": (
        lambda p, q, **kw: probs.renyi_divergence(p, q, 2.0, **kw),
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 2.0, **kw),
    ),
}


def histograms(rng, shape, zeros=0.0):
    x = rng.random(shape).astype(np.float32)
    x[rng.random(shape) < zeros] = 0.0
    x[..., 0] += 0.1
    return x


# ------------------------------------------------------------------ SciPy


@pytest.mark.parametrize("base", [None, 2.0])
def test_match_scipy(rng, base):
    p, q = histograms(rng, (4, 12), 0.2), histograms(rng, (4, 12))
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    np.testing.assert_allclose(
        probs.kl_divergence(p, q, base=base), scipy.stats.entropy(p64, q64, base=base, axis=-1), rtol=2e-6
    )
    np.testing.assert_allclose(probs.entropy(p, base=base), scipy.stats.entropy(p64, base=base, axis=-1), rtol=2e-6)
    js = scipy.spatial.distance.jensenshannon(p64, q64, base=base, axis=-1)
    np.testing.assert_allclose(probs.js_distance(p, q, base=base), js, rtol=2e-6)
    np.testing.assert_allclose(probs.js_divergence(p, q, base=base), js**2, rtol=4e-6)
    ce = scipy.stats.entropy(p64, base=base, axis=-1) + scipy.stats.entropy(p64, q64, base=base, axis=-1)
    np.testing.assert_allclose(probs.cross_entropy(p, q, base=base), ce, rtol=2e-6)


@pytest.mark.parametrize("name", PAIRS)
def test_agrees_with_logits_version(rng, name):
    in_probs, in_logits = PAIRS[name]
    p, q = histograms(rng, (5, 20), 0.2), histograms(rng, (5, 20))
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log(q)
    np.testing.assert_allclose(in_probs(p, q), in_logits(lp, lq), rtol=5e-6)
    mask = rng.random(20) < 0.8
    np.testing.assert_allclose(in_probs(p, q, where=mask), in_logits(lp, lq, where=mask), rtol=5e-6)


@pytest.mark.parametrize("name", PAIRS)
def test_counts_equal_their_normalised_probabilities(rng, name):
    f, _ = PAIRS[name]
    counts_p = rng.integers(0, 50, (3, 10)).astype(np.float32)
    counts_q = rng.integers(1, 50, (3, 10)).astype(np.float32)
    p = counts_p / counts_p.sum(-1, keepdims=True)
    q = counts_q / counts_q.sum(-1, keepdims=True)
    np.testing.assert_allclose(f(counts_p, counts_q), f(p, q), rtol=2e-6)


def test_smoothing_is_a_pseudo_count(rng):
    counts_p = np.array([[10.0, 0.0, 30.0], [0.0, 0.0, 1.0]], np.float32)
    counts_q = np.array([[20.0, 10.0, 0.0], [5.0, 5.0, 0.0]], np.float32)
    assert np.all(np.isinf(probs.kl_divergence(counts_p, counts_q)))
    for eps in [0.5, 1.0]:
        want = scipy.stats.entropy(counts_p + eps, counts_q + eps, axis=-1)
        np.testing.assert_allclose(probs.kl_divergence(counts_p, counts_q, eps=eps), want, rtol=2e-6)
    # masked classes get no pseudo-count
    keep = np.array([True, True, False])
    want = scipy.stats.entropy(counts_p[:, :2] + 1.0, counts_q[:, :2] + 1.0, axis=-1)
    np.testing.assert_allclose(probs.kl_divergence(counts_p, counts_q, eps=1.0, where=keep), want, rtol=2e-6)


# -------------------------------------------------------- accuracy, zeros


def test_nearly_identical_histograms(rng):
    p = histograms(rng, (2, 64))
    q = (p * (1 + 1e-5 * rng.standard_normal(p.shape))).astype(np.float32)
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p.astype(np.float64)), np.log(q.astype(np.float64))
    for name, f, param in [
        ("js", probs.js_divergence, None),
        ("tv", probs.total_variation, None),
        ("hellinger_squared", functools.partial(probs.hellinger_distance, squared=True), None),
        ("renyi", functools.partial(probs.renyi_divergence, alpha=2.0), 2.0),
    ]:
        want = np.array([ref.family_mpmath(name, lp[i], lq[i], param) for i in range(2)])
        assert rel_err(f(p, q), want) <= 1e-4, name
    want_kl = np.array([ref.kl_mpmath(lp[i], lq[i]) for i in range(2)])
    assert np.all(want_kl < 1e-9)
    assert rel_err(probs.kl_divergence(p, q), want_kl) <= 1e-4


def test_confident_entropy(rng):
    p = np.array([[1.0, 1e-7, 1e-8], [1.0, 0.0, 0.0]], np.float32)
    want = scipy.stats.entropy(p.astype(np.float64), axis=-1)
    np.testing.assert_allclose(probs.entropy(p), want, rtol=2e-6)
    assert probs.entropy(p)[1] == 0.0


@pytest.mark.parametrize("name", PAIRS)
def test_identical_and_zero_rows(rng, name):
    f, _ = PAIRS[name]
    p = histograms(rng, (4, 9), 0.3)
    if name not in ("entropy", "cross_entropy"):
        np.testing.assert_array_equal(f(p, p), 0.0)
    zero = np.zeros((1, 9), np.float32)
    assert f(zero, p[:1])[0] == 0.0
    for g in jax.jit(jax.grad(lambda a, b: f(a, b).sum(), (0, 1)))(zero, p[:1]):
        np.testing.assert_array_equal(g, 0.0)


def test_gradients_at_zero_entries_are_zero_and_finite(rng):
    p = np.array([0.5, 0.0, 0.5], np.float32)
    q = np.array([0.25, 0.5, 0.25], np.float32)
    for name, (f, _) in PAIRS.items():
        gp, gq = jax.jit(jax.grad(lambda a, b: f(a, b), (0, 1)))(p, q)
        assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq)), name
        if name != "entropy":
            assert gp[1] == 0.0, name
    # +inf value (Q_i = 0 < P_i): zero gradient, as jax.scipy.special.rel_entr.
    gp, gq = jax.jit(jax.grad(probs.kl_divergence, (0, 1)))(q, p)
    np.testing.assert_array_equal(gp, 0.0)
    np.testing.assert_array_equal(gq, 0.0)


def test_gradient_matches_autodiff_of_the_normalised_formula(x64, rng):
    p, q = histograms(rng, (3, 6)).astype(np.float64), histograms(rng, (3, 6)).astype(np.float64)

    def textbook(a, b):
        pa, qb = a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)
        return jnp.sum(pa * jnp.log(pa / qb), -1).sum()

    want = jax.jit(jax.grad(textbook, (0, 1)))(p, q)
    got = jax.jit(jax.grad(lambda a, b: probs.kl_divergence(a, b).sum(), (0, 1)))(p, q)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["kl", "cross_entropy", "entropy", "tv", "hellinger", "renyi"])
def test_second_derivatives_match_the_textbook_formula(x64, rng, name):
    # The terms are the logits' (second order in test_f_divergences_x64); what is
    # new here is the normalisation's chain rule. Against exact float64
    # Hessians of the textbook formula, in both modes: two compiled programs,
    # where check_grads's finite differences took 13 (2-3x the time).
    # Renyi's order is a traced argument: one program for both orders.
    p, q = histograms(rng, (2, 5)).astype(np.float64) + 0.1, histograms(rng, (2, 5)).astype(np.float64) + 0.1
    got = jax.jit(ref.hessians(PAIRS[name][0] if name != "renyi" else probs.renyi_divergence, (0, 1)))

    @jax.jit
    def want(a, b, *alpha):
        return jax.hessian(lambda a, b: jnp.sum(ref.textbook(
            name, a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True), *alpha)), (0, 1))(a, b)

    for alpha in ((0.5,), (2.0,)) if name == "renyi" else ((),):
        reference = want(p, q, *alpha)
        for mode in got(p, q, *alpha):
            for g, w in zip(jax.tree.leaves(mode), jax.tree.leaves(reference)):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"{name} {alpha}")


@pytest.mark.parametrize("name", ["js", "js_distance"])
def test_check_grads_first_order_js(x64, rng, name):
    from jax.test_util import check_grads

    # The JS family's second-order programs take ~20 s each to compile: first
    # order here, second order on logits in test_f_divergences_x64.
    p, q = histograms(rng, (2, 5)).astype(np.float64) + 0.1, histograms(rng, (2, 5)).astype(np.float64) + 0.1
    check_grads(jax.jit(PAIRS[name][0]), (p, q), order=1, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------- invalid input


def test_negative_or_nan_entries_poison_only_their_row(rng):
    p, q = histograms(rng, (3, 5)), histograms(rng, (3, 5))
    clean = np.asarray(probs.js_divergence(p, q))
    p_bad = p.copy()
    p_bad[1, 2] = -0.1
    got = np.asarray(probs.js_divergence(p_bad, q))
    assert np.isnan(got[1])
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])
    p_bad[1, 2] = np.nan
    assert np.isnan(probs.kl_divergence(p_bad, q)[1])


def test_errors():
    with pytest.raises(ValueError, match=r"p shape \(3,\), q shape \(4,\)"):
        probs.kl_divergence(np.ones(3, np.float32), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="complex64"):
        probs.entropy(np.ones(3, np.complex64))
    # integer counts (np.bincount's output) are counts, as in scipy.stats.entropy
    np.testing.assert_allclose(probs.entropy(np.ones(3, int)), np.log(3), rtol=1e-6)
    with pytest.raises(ValueError, match="eps must be a non-negative pseudo-count"):
        probs.kl_divergence(np.ones(3, np.float32), np.ones(3, np.float32), eps=-1.0)
