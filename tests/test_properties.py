"""Property tests (hypothesis, derandomised): identities every input must satisfy."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxdiv

finite = st.floats(-30, 30, width=32, allow_nan=False, allow_infinity=False)
logit = st.one_of(finite, finite, finite, st.just(-np.inf))


@st.composite
def pairs(draw, allow_neg_inf=True):
    # A few class counts, not twelve: each new shape is a new compilation.
    n = draw(st.sampled_from([1, 2, 5, 12]))
    elements = logit if allow_neg_inf else finite
    p = draw(hnp.arrays(np.float32, (2, n), elements=elements))
    q = draw(hnp.arrays(np.float32, (2, n), elements=finite))
    return p, q


@given(pairs())
def test_kl_is_non_negative_and_zero_on_identical(pq):
    p, q = pq
    assert np.all(np.asarray(jaxdiv.kl_divergence(p, q)) >= 0)
    assert np.all(np.asarray(jaxdiv.kl_divergence(p, p)) == 0)


@given(pairs())
def test_cross_entropy_is_entropy_plus_kl(pq):
    p, q = pq
    ce = np.asarray(jaxdiv.cross_entropy(p, q), np.float64)
    h_plus_kl = np.asarray(jaxdiv.entropy(p), np.float64) + np.asarray(jaxdiv.kl_divergence(p, q))
    np.testing.assert_allclose(ce, h_plus_kl, rtol=1e-5, atol=1e-5)


@given(pairs(), st.floats(-20, 20, width=32))
def test_shift_invariance(pq, shift):
    p, q = pq
    shifted = (q + np.float32(shift)).astype(np.float32)
    np.testing.assert_allclose(
        jaxdiv.kl_divergence(p, q), jaxdiv.kl_divergence(p, shifted), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(jaxdiv.entropy(q), jaxdiv.entropy(shifted), rtol=1e-5, atol=1e-6)


@given(pairs(), st.randoms(use_true_random=False))
def test_permutation_invariance(pq, random):
    p, q = pq
    perm = np.arange(p.shape[-1])
    random.shuffle(perm)
    for f in (jaxdiv.kl_divergence, jaxdiv.cross_entropy):
        np.testing.assert_allclose(f(p, q), f(p[:, perm], q[:, perm]), rtol=1e-5, atol=1e-6)


@given(pairs(allow_neg_inf=False))
def test_entropy_bounded_by_log_num_classes(pq):
    p, _ = pq
    h = np.asarray(jaxdiv.entropy(p))
    assert np.all(h >= 0) and np.all(h <= np.log(p.shape[-1]) * (1 + 1e-6) + 1e-6)


@given(pairs(), st.integers(0, 11))
def test_integer_labels_equal_one_hot_cross_entropy(pq, label):
    _, q = pq
    assume(label < q.shape[-1])
    onehot = jnp.where(jnp.arange(q.shape[-1]) == label, 0.0, -jnp.inf)
    np.testing.assert_allclose(
        jaxdiv.cross_entropy_with_integer_labels(q, np.full(2, label)),
        jaxdiv.cross_entropy(onehot, q),
        rtol=1e-6,
    )


# ------------------------------------------------------------ the KL family

LOG2 = np.float32(np.log(2))


@given(pairs())
def test_symmetric_and_bounded(pq):
    p, q = pq
    js, js_qp = np.asarray(jaxdiv.js_divergence(p, q)), np.asarray(jaxdiv.js_divergence(q, p))
    tv, h = np.asarray(jaxdiv.total_variation(p, q)), np.asarray(jaxdiv.hellinger_distance(p, q))
    np.testing.assert_array_equal(js, js_qp)
    np.testing.assert_array_equal(tv, jaxdiv.total_variation(q, p))
    np.testing.assert_array_equal(h, jaxdiv.hellinger_distance(q, p))
    assert np.all((0 <= js) & (js <= LOG2))
    assert np.all((0 <= tv) & (tv <= 1)) and np.all((0 <= h) & (h <= 1))
    # Hellinger bounds TV: H^2 <= TV <= sqrt(2) H (with rounding slack).
    assert np.all(h**2 <= tv * (1 + 1e-5) + 1e-7)
    assert np.all(tv <= np.sqrt(2) * h * (1 + 1e-5) + 1e-7)
    assert np.all(np.asarray(jaxdiv.js_divergence(p, p)) == 0)


@given(pairs())
def test_pinsker(pq):
    p, q = pq
    kl = np.asarray(jaxdiv.kl_divergence(p, q), np.float64)
    tv = np.asarray(jaxdiv.total_variation(p, q), np.float64)
    assert np.all(tv <= np.sqrt(kl / 2) * (1 + 1e-5) + 1e-7)


# The order is traced, so the examples share one compilation per shape (an
# eager call compiles once per value of its static options).
_renyi = jax.jit(jaxdiv.renyi_divergence)


@settings(max_examples=20)
@given(pairs(), st.floats(0.05, 0.95), st.floats(1.05, 6.0))
def test_renyi_is_monotone_in_alpha_and_brackets_kl(pq, low, high):
    p, q = pq
    d_low = np.asarray(_renyi(p, q, low), np.float64)
    d_half = np.asarray(_renyi(p, q, 0.5 * (low + 1)), np.float64)
    kl = np.asarray(_renyi(p, q, 1.0), np.float64)
    d_high = np.asarray(_renyi(p, q, high), np.float64)
    for a, b in [(d_low, d_half), (d_half, kl), (kl, d_high)]:
        assert np.all(a <= b * (1 + 1e-5) + 1e-6)
    np.testing.assert_allclose(kl, jaxdiv.kl_divergence(p, q), rtol=1e-5, atol=1e-6)
    near = np.asarray(_renyi(p, q, 1 + 1e-4), np.float64)
    finite = np.isfinite(kl)
    np.testing.assert_allclose(near[finite], kl[finite], rtol=1e-2, atol=1e-5)


@given(pairs())
def test_logits_and_probability_versions_agree(pq):
    p, q = pq
    assume(np.all(np.isfinite(p.max(-1))))   # rows with some probability
    pp, qp = np.exp(p - p.max(-1, keepdims=True)), np.exp(q - q.max(-1, keepdims=True))
    np.testing.assert_allclose(
        jaxdiv.probs.js_divergence(pp, qp), jaxdiv.js_divergence(np.log(pp), np.log(qp)), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        jaxdiv.probs.total_variation(pp, qp), jaxdiv.total_variation(np.log(pp), np.log(qp)), rtol=1e-4, atol=1e-7
    )
