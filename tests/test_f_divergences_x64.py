"""float64: the family's gradients checked numerically to second order, both modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from tests import reference as ref

pytestmark = pytest.mark.usefixtures("x64")

FUNCTIONS = {
    "js": jaxdiv.js_divergence,
    "js_beta": lambda p, q: jaxdiv.js_divergence(p, q, beta=0.2),
    "js_distance": jaxdiv.js_distance,
    "tv": jaxdiv.total_variation,
    "hellinger": jaxdiv.hellinger_distance,
    "hellinger_squared": lambda p, q: jaxdiv.hellinger_distance(p, q, squared=True),
    "renyi_0.4": lambda p, q: jaxdiv.renyi_divergence(p, q, 0.4),
    "renyi_1": lambda p, q: jaxdiv.renyi_divergence(p, q, 1.0),
    "renyi_3": lambda p, q: jaxdiv.renyi_divergence(p, q, 3.0),
    "jeffreys": jaxdiv.jeffreys_divergence,
    "f_chi2": lambda p, q: jaxdiv.f_divergence(p, q, lambda t: (t - 1) ** 2),
}


# Second order, one compiled program per group, checked at each of its
# parameters: beta and the order are traced arguments (as a scheduled or learned
# one would be), so Renyi's three orders or JS's two betas compile once; a
# distance and its square share their computation (30-35% less compile than
# apart). Zero probabilities of P (where Q > 0) are taken where the divergence
# stays finite and smooth.
def _js_pair(p, q, beta):
    return jnp.stack([jaxdiv.js_divergence(p, q, beta=beta), jaxdiv.js_distance(p, q)])


def _hellinger_pair(p, q, _):
    return jnp.stack([jaxdiv.hellinger_distance(p, q), jaxdiv.hellinger_distance(p, q, squared=True)])


SECOND_ORDER = {
    # group: (names covered, program, [(parameter, with zero probabilities)])
    "js+js_distance": (["js", "js_beta", "js_distance"], _js_pair, [(0.5, True), (0.2, True)]),
    "tv": (["tv"], lambda p, q, _: jaxdiv.total_variation(p, q), [(None, True)]),
    "hellinger": (["hellinger", "hellinger_squared"], _hellinger_pair, [(None, True)]),
    "renyi": (["renyi_0.4", "renyi_1", "renyi_3"], lambda p, q, a: jaxdiv.renyi_divergence(p, q, a),
              [(0.4, True), (1.0, False), (3.0, False)]),
    "jeffreys": (["jeffreys"], lambda p, q, _: jaxdiv.jeffreys_divergence(p, q), [(None, False)]),
    "f_chi2": (["f_chi2"], lambda p, q, _: jaxdiv.f_divergence(p, q, lambda t: (t - 1) ** 2), [(None, False)]),
}


def test_second_order_groups_cover_every_function():
    assert sorted(n for names, _, _ in SECOND_ORDER.values() for n in names) == sorted(FUNCTIONS)


def _textbook(group, p, q, parameter):
    """The group's outputs by their definitions on P = softmax(p), Q = softmax(q)."""
    P, Q = jax.nn.softmax(p, -1), jax.nn.softmax(q, -1)
    names = {"js+js_distance": ("js", "js_distance"), "hellinger": ("hellinger", "hellinger_squared"),
             "f_chi2": ("chi2",)}.get(group, (group,))
    outputs = [ref.textbook(name, P, Q, parameter) for name in names]
    return jnp.stack(outputs) if len(outputs) > 1 else outputs[0]


@pytest.mark.parametrize("group", SECOND_ORDER)
def test_second_derivatives_match_the_textbook_formulas(rng, group):
    # Against exact float64 Hessians of the textbook formulas on softmax, both
    # modes: one compiled program per group and mode pair, where check_grads's
    # finite differences compiled ~13 (and checked to 1e-5 only).
    _, fn, cases = SECOND_ORDER[group]
    p, q = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    zeros = np.zeros_like(p, bool)
    # P = 0 where Q > 0 in rows 0 and 2; row 1 has no zero: one call covers both.
    zeros[0, 1] = zeros[2, 3] = True

    # The -inf entries are held fixed and the finite ones differentiated.
    @jax.jit
    def program(p_finite, q_finite, parameter, zero_p):
        return ref.hessians(lambda a, b: fn(jnp.where(zero_p, -jnp.inf, a), b, parameter), (0, 1), axis=-1)(
            p_finite, q_finite)

    for parameter, with_zeros in cases:
        mask = zeros if with_zeros else np.zeros_like(zeros)
        want = jax.jacfwd(jax.jacrev(lambda a, b: jnp.sum(_textbook(
            group, jnp.where(mask, -jnp.inf, a), b, parameter), -1), (0, 1)), (0, 1))(p, q)
        for mode, got in zip(("fwd-fwd", "rev-rev"), program(p, q, parameter, mask)):
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert g.dtype == jnp.float64
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=f"{group} {parameter} {mode}")


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_renyi_gradients_of_log_space_rows_and_of_q_zeros_match_the_definition(alpha):
    # Rows 1-2 are so far apart that sum P^a Q^(1-a) overflows (a > 1) or
    # cancels against 1 (a < 1), and take the log-space sum; their gradient was
    # autodiff through a lax.cond that held 7x one input (CPU; 23 GiB on a TPU
    # v5e) and is now the terms' own. Row 3 (a < 1) has Q_i = 0 < P_i, whose
    # derivative by p_i was scaled by a (0.280 where the definition gives 0.451).
    p = np.array([[0.3, -0.2, 1.1, 0.4], [0, -800, 1, -5], [0, -40, -40, -40], [0.3, -0.2, 1.1, 0.4]])
    q = np.array([[0.1, 0.5, 0.7, 0.2], [-800, 0, -3, -2], [-40, 0, -40, -40], [0.1, 0.5, 0.7, 0.2]])
    q_zero = np.zeros_like(q, bool)
    q_zero[3, 2] = alpha < 1   # a > 1 there: D = +inf

    def ours(a, b):
        return jaxdiv.renyi_divergence(a, jnp.where(q_zero, -jnp.inf, b), alpha)

    def definition(a, b):
        lp, lq = jax.nn.log_softmax(a), jax.nn.log_softmax(jnp.where(q_zero, -jnp.inf, b))
        return jax.nn.logsumexp(alpha * lp + (1 - alpha) * lq, -1) / (alpha - 1)

    np.testing.assert_allclose(ours(p, q), definition(p, q), rtol=1e-12)
    for mode in (jax.jacrev, jax.jacfwd):
        for got, want in zip(mode(lambda a, b: ours(a, b).sum(), (0, 1))(p, q),
                             jax.jacrev(lambda a, b: definition(a, b).sum(), (0, 1))(p, q)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14, err_msg=mode.__name__)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jacfwd_equals_jacrev(rng, name):
    p, q = rng.standard_normal(6), rng.standard_normal(6)
    for a, b in zip(jax.jacfwd(FUNCTIONS[name], (0, 1))(p, q), jax.jacrev(FUNCTIONS[name], (0, 1))(p, q)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_float64_values(rng):
    # The series near l = 0 take more terms in float64: full float64 accuracy.
    p, q = rng.standard_normal((4, 20)), rng.standard_normal((4, 20))
    np.testing.assert_allclose(jaxdiv.js_divergence(p, q), ref.js(p, q), rtol=1e-13)
    np.testing.assert_allclose(jaxdiv.total_variation(p, q), ref.total_variation(p, q), rtol=1e-13)
    np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, 2.5), ref.renyi(p, q, 2.5), rtol=1e-13)


@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_float64_near_equality_against_mpmath(rng, eps):
    p = rng.standard_normal(20)
    q = p + eps * rng.standard_normal(20)
    for name, got in [
        ("js", jaxdiv.js_divergence(p, q)),
        ("tv", jaxdiv.total_variation(p, q)),
        ("hellinger_squared", jaxdiv.hellinger_distance(p, q, squared=True)),
    ]:
        assert abs(float(got) / ref.family_mpmath(name, p, q) - 1) < 1e-14, name
