"""float64: second derivatives against exact Hessians of the definitions, and float64 accuracy.

Every test here runs under the ``x64`` fixture, so float64 does not leak into
the rest of the suite.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from tests import reference as ref

pytestmark = pytest.mark.usefixtures("x64")

NEG_INF = -np.inf
LABELS = np.array([2, 0, 4, 1])


def _inputs(rng, zeros):
    # Rows 0-2 hold zero probabilities, row 3 none: one call covers both cases.
    p = rng.standard_normal((4, 5))
    q = rng.standard_normal((4, 5))
    if zeros:
        p[0, 1] = p[2, 3] = NEG_INF
        q[0, 1] = NEG_INF          # zero in both
        q[1, 2] = NEG_INF          # zero in Q only, where P is not the reference
        p[1, 2] = NEG_INF
    return jnp.asarray(p), jnp.asarray(q)


FUNCTIONS = {
    "kl": lambda p, q: jaxdiv.kl_divergence(p, q),
    "cross_entropy": lambda p, q: jaxdiv.cross_entropy(p, q),
    "entropy": lambda p, q: jaxdiv.entropy(p),
    "labels": lambda p, q: jaxdiv.cross_entropy_with_integer_labels(q, LABELS),
}


def _textbook(name, p, q):
    P, Q = jax.nn.softmax(p, -1), jax.nn.softmax(q, -1)
    if name == "labels":
        return -jnp.log(jnp.take_along_axis(Q, LABELS[:, None], -1)[:, 0])
    return ref.textbook(name, P, Q)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_second_derivatives_match_the_textbook_formulas(rng, name):
    # Against exact float64 Hessians of the definitions on softmax, forward-over-
    # forward and reverse-over-reverse: to 1e-9 with two compiled programs,
    # where check_grads's finite differences checked to 1e-5 with ~13.
    p, q = _inputs(rng, zeros=True)
    # The -inf entries (zero probabilities) are held fixed and the finite ones
    # differentiated.
    zero_p, zero_q = jnp.isneginf(p), jnp.isneginf(q)

    def zeros_put_back(f):
        return lambda p_finite, q_finite: f(jnp.where(zero_p, -jnp.inf, p_finite), jnp.where(zero_q, -jnp.inf, q_finite))

    args = (jnp.where(zero_p, 0.0, p), jnp.where(zero_q, 0.0, q))
    ref.assert_hessians_match(zeros_put_back(FUNCTIONS[name]), zeros_put_back(functools.partial(_textbook, name)),
                              args, atol=1e-11)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jacfwd_equals_jacrev(rng, name):
    p, q = _inputs(rng, zeros=True)
    f = FUNCTIONS[name]
    for argnum in (0, 1):
        fwd = jax.jacfwd(f, argnums=argnum)(p, q)
        rev = jax.jacrev(f, argnums=argnum)(p, q)
        assert np.all(np.isfinite(fwd))
        np.testing.assert_allclose(fwd, rev, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["kl", "cross_entropy", "entropy"])
def test_hessians_agree_across_modes(rng, name):
    p, q = _inputs(rng, zeros=True)
    f = lambda p, q: FUNCTIONS[name](p, q).sum()
    h_ff = jax.jacfwd(jax.jacfwd(f, argnums=(0, 1)), argnums=(0, 1))(p, q)
    h_rr = jax.jacrev(jax.jacrev(f, argnums=(0, 1)), argnums=(0, 1))(p, q)
    for a, b in zip(jax.tree.leaves(h_ff), jax.tree.leaves(h_rr)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_float64_values_against_reference(rng):
    p, q = rng.standard_normal((4, 30)) * 3, rng.standard_normal((4, 30)) * 3
    np.testing.assert_allclose(jaxdiv.kl_divergence(p, q), ref.kl(p, q), rtol=1e-11)
    np.testing.assert_allclose(jaxdiv.cross_entropy(p, q), ref.cross_entropy(p, q), rtol=1e-11)
    np.testing.assert_allclose(jaxdiv.entropy(p), ref.entropy(p), rtol=1e-11)


def test_float64_nearly_identical_against_mpmath(rng):
    p = rng.standard_normal((1, 40))
    q = p + 1e-9 * rng.standard_normal(p.shape)
    want = ref.kl_mpmath(p[0], q[0], dps=60)
    assert want < 1e-16
    np.testing.assert_allclose(jaxdiv.kl_divergence(p, q)[0], want, rtol=1e-9)
