"""Property tests (hypothesis, derandomised): identities every input must satisfy."""

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import jaxdiv

finite = st.floats(-30, 30, width=32, allow_nan=False, allow_infinity=False)
logit = st.one_of(finite, finite, finite, st.just(-np.inf))


@st.composite
def pairs(draw, allow_neg_inf=True):
    n = draw(st.integers(1, 12))
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
