"""JS, TV, Hellinger, Renyi, Jeffreys and f-divergences on logits, float32.

float64 gradient checks live in test_f_divergences_x64.py; properties in
test_properties.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
from jax.scipy.special import xlogy

import jaxdiv
from tests import reference as ref
from tests.inputs import logits, rel_err, with_zeros

NEG_INF = -np.inf
LOG2 = float(np.log(2))

# name -> (jaxdiv function of (p, q, **kw), float64 reference of (p, q))
FAMILY = {
    "js": (jaxdiv.js_divergence, ref.js),
    "js_beta": (
        functools.partial(jaxdiv.js_divergence, beta=0.3),
        functools.partial(ref.js, beta=0.3),
    ),
    "js_distance": (jaxdiv.js_distance, lambda p, q: np.sqrt(ref.js(p, q))),
    "tv": (jaxdiv.total_variation, ref.total_variation),
    "hellinger": (jaxdiv.hellinger_distance, lambda p, q: np.sqrt(ref.hellinger_squared(p, q))),
    "hellinger_squared": (
        functools.partial(jaxdiv.hellinger_distance, squared=True),
        ref.hellinger_squared,
    ),
    "renyi_0.5": (
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 0.5, **kw),
        lambda p, q: ref.renyi(p, q, 0.5),
    ),
    "renyi_1": (
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 1.0, **kw),
        lambda p, q: ref.renyi(p, q, 1.0),
    ),
    "renyi_2": (
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 2.0, **kw),
        lambda p, q: ref.renyi(p, q, 2.0),
    ),
    "jeffreys": (jaxdiv.jeffreys_divergence, lambda p, q: ref.kl(p, q) + ref.kl(q, p)),
    "f_kl": (
        lambda p, q, **kw: jaxdiv.f_divergence(p, q, lambda t: xlogy(t, t) - (t - 1), **kw),
        ref.kl,
    ),
}
SYMMETRIC = ["js", "js_distance", "tv", "hellinger", "hellinger_squared", "jeffreys"]
# name -> the family's upper bound
BOUNDED = {"js": LOG2, "js_distance": np.sqrt(LOG2), "tv": 1.0, "hellinger": 1.0, "hellinger_squared": 1.0}
# divergences that stay finite whatever the supports
FINITE = ["js", "js_beta", "js_distance", "tv", "hellinger", "hellinger_squared"]


# Gradients are taken under jax.jit: an eager jax.grad compiles the forward
# program and its transpose apart (twice the compile of one jitted gradient).
# Eager differentiation keeps the closed-form gradient tests of section 6.

# ------------------------------------------------------------- 1. reference


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("shape", [(7,), (3, 11), (2, 3, 50)])
def test_values_match_float64_reference(rng, name, shape):
    f, reference = FAMILY[name]
    p, q = logits(rng, shape, 2.0), logits(rng, shape, 2.0)
    got = f(p, q)
    assert got.shape == shape[:-1] and got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(p, q), rtol=5e-6, atol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_values_with_zero_probabilities_match_reference(rng, name):
    f, reference = FAMILY[name]
    p = with_zeros(rng, logits(rng, (6, 20), 2.0))
    q = with_zeros(rng, logits(rng, (6, 20), 2.0))
    q[:3] = np.where(np.isfinite(p[:3]), q[:3], NEG_INF)  # P's support inside Q's...
    q[:3, 0] = 0.5                                        # ...and Q positive where P is
    np.testing.assert_allclose(f(p, q), reference(p, q), rtol=5e-6, atol=0)


def test_match_scipy(rng):
    p, q = logits(rng, (4, 20)), logits(rng, (4, 20))
    pk = scipy.special.softmax(p.astype(np.float64), -1)
    qk = scipy.special.softmax(q.astype(np.float64), -1)
    for base in [None, 2.0, 10.0]:
        want = scipy.spatial.distance.jensenshannon(pk, qk, base=base, axis=-1)
        np.testing.assert_allclose(jaxdiv.js_distance(p, q, base=base), want, rtol=2e-6)
        np.testing.assert_allclose(jaxdiv.js_divergence(p, q, base=base), want**2, rtol=4e-6)


@pytest.mark.parametrize("base", [2.0, 10.0, np.e])
def test_base_converts_every_information_quantity(rng, base):
    p, q = logits(rng, (3, 9)), logits(rng, (3, 9))
    scale = np.log(base)
    for f in [
        jaxdiv.kl_divergence,
        jaxdiv.cross_entropy,
        jaxdiv.js_divergence,
        jaxdiv.jeffreys_divergence,
        lambda p, q, **kw: jaxdiv.renyi_divergence(p, q, 0.7, **kw),
        lambda p, q, **kw: jaxdiv.entropy(p, **kw),
        lambda p, q, **kw: jaxdiv.cross_entropy_with_integer_labels(p, np.array([0, 3, 8]), **kw),
    ]:
        np.testing.assert_allclose(f(p, q, base=base), f(p, q) / scale, rtol=1e-6)
    assert jaxdiv.entropy(jnp.zeros(4), base=2) == 2.0


def test_renyi_special_orders():
    p = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    q = np.log(np.array([0.2, 0.3, 0.5], np.float32))
    P, Q = np.exp(p.astype(np.float64)), np.exp(q.astype(np.float64))
    bhattacharyya = np.sum(np.sqrt(P * Q))
    np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, 0.5), -2 * np.log(bhattacharyya), rtol=2e-6)
    np.testing.assert_allclose(
        jaxdiv.hellinger_distance(p, q, squared=True), 1 - bhattacharyya, rtol=2e-6
    )
    chi2 = np.sum((P - Q) ** 2 / Q)
    np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, 2.0), np.log1p(chi2), rtol=2e-6)
    # alpha = 1 is KL, and nearby orders tend to it continuously.
    kl = float(jaxdiv.kl_divergence(p, q))
    np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, 1.0), kl, rtol=1e-6)
    for h in [1e-3, 1e-5, 1e-7]:
        for alpha in [1 - h, 1 + h]:
            np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, alpha), ref.renyi(p, q, alpha), rtol=2e-6)
            assert abs(float(jaxdiv.renyi_divergence(p, q, alpha)) - kl) <= 2 * h * kl + 1e-7


def test_generalised_js_endpoints_and_mirror(rng):
    p, q = logits(rng, (4, 30), 2.0), logits(rng, (4, 30), 2.0)
    np.testing.assert_array_equal(jaxdiv.js_divergence(p, q, beta=0.0), 0.0)
    np.testing.assert_array_equal(jaxdiv.js_divergence(p, q, beta=1.0), 0.0)
    # JS_b(P, Q) = JS_(1-b)(Q, P), bit for bit.
    np.testing.assert_array_equal(
        jaxdiv.js_divergence(p, q, beta=0.25), jaxdiv.js_divergence(q, p, beta=0.75)
    )
    # JS_b / b -> KL(P || Q) as b -> 0, JS_b / (1 - b) -> KL(Q || P) as b -> 1.
    p, q = logits(rng, (4, 30)), logits(rng, (4, 30))
    b = 2.0**-17   # 1 - b is exact in float32
    np.testing.assert_allclose(jaxdiv.js_divergence(p, q, beta=b) / b, ref.kl(p, q), rtol=1e-3)
    np.testing.assert_allclose(jaxdiv.js_divergence(q, p, beta=1 - b) / b, ref.kl(p, q), rtol=1e-3)


def test_f_divergence_generators_give_the_named_divergences(rng):
    p = with_zeros(rng, logits(rng, (5, 12), 2.0))
    q = logits(rng, (5, 12), 2.0)
    tv = jaxdiv.f_divergence(p, q, lambda t: 0.5 * jnp.abs(t - 1), slope_at_infinity=0.5)
    np.testing.assert_allclose(tv, ref.total_variation(p, q), rtol=5e-6)
    h2 = jaxdiv.f_divergence(p, q, lambda t: 0.5 * (jnp.sqrt(t) - 1) ** 2, slope_at_infinity=0.5)
    np.testing.assert_allclose(h2, ref.hellinger_squared(p, q), rtol=5e-6)
    chi2 = jaxdiv.f_divergence(q, p, lambda t: (t - 1) ** 2)
    np.testing.assert_allclose(np.log1p(chi2), ref.renyi(q, p, 2.0), rtol=5e-6)
    # Q = 0 < P with the default slope: +inf, like KL.
    assert np.all(np.isinf(jaxdiv.f_divergence(q, p, lambda t: (t - 1) ** 2)[np.any(np.isinf(p), -1)]))
    g = jax.grad(lambda a, b: jaxdiv.f_divergence(a, b, lambda t: xlogy(t, t)).sum(), (0, 1))(p, q)
    want = jax.grad(lambda a, b: jaxdiv.kl_divergence(a, b).sum(), (0, 1))(p, q)
    for got_i, want_i in zip(g, want):
        np.testing.assert_allclose(got_i, want_i, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------- 2. accuracy regimes


@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 10.0, 100.0, 1e4])
@pytest.mark.parametrize("name", ["js", "tv", "hellinger_squared", "renyi_0.5", "renyi_2", "jeffreys"])
def test_accurate_at_every_logit_scale(rng, name, scale):
    f, reference = FAMILY[name]
    p, q = logits(rng, (8, 200), scale), logits(rng, (8, 200), scale)
    assert rel_err(f(p, q), reference(p, q)) <= 1e-5


@pytest.mark.parametrize(
    "name, param", [("js", 0.5), ("js", 0.1), ("tv", None), ("hellinger_squared", None), ("renyi", 0.5), ("renyi", 1.0001), ("renyi", 3.0)]
)
@pytest.mark.parametrize("scale, eps", [(1.0, 1e-3), (1.0, 1e-6), (1e-3, 1e-3)])
def test_nearly_identical_distributions_against_mpmath(rng, name, param, scale, eps):
    # Divergences down to 1e-10 and far below: float32 relative error <= 1e-4.
    p = logits(rng, (2, 64), scale)
    q = (p + scale * eps * rng.standard_normal(p.shape)).astype(np.float32)
    kwargs = {"js": {"beta": param}, "renyi": {"alpha": param}}.get(name, {})
    f = {
        "js": jaxdiv.js_divergence,
        "tv": jaxdiv.total_variation,
        "hellinger_squared": functools.partial(jaxdiv.hellinger_distance, squared=True),
        "renyi": jaxdiv.renyi_divergence,
    }[name]
    got = f(p, q, **kwargs)
    want = np.array([ref.family_mpmath(name, p[i], q[i], param) for i in range(2)])
    assert np.all(want > 0) and np.all(want < 1e-3)
    assert rel_err(got, want) <= 1e-4


def test_textbook_js_is_noise_where_jaxdiv_is_not(rng):
    p = logits(rng, (1, 256))
    q = (p + 1e-4 * rng.standard_normal(p.shape)).astype(np.float32)
    want = ref.family_mpmath("js", p[0], q[0])
    pf, qf = scipy.special.softmax(p, -1).astype(np.float32), scipy.special.softmax(q, -1).astype(np.float32)
    mf = (pf + qf) / 2
    textbook = 0.5 * np.sum(pf * np.log(pf / mf)) + 0.5 * np.sum(qf * np.log(qf / mf))
    assert abs(textbook - want) / want > 1e-2
    assert rel_err(jaxdiv.js_divergence(p, q)[0], want) <= 1e-4


# ------------------------------------------------------------- 3. exact zeros


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("zeros", [False, True])
def test_identical_inputs_give_exactly_zero(rng, name, zeros):
    f, _ = FAMILY[name]
    p = logits(rng, (16, 50), 5.0)
    if zeros:
        p = with_zeros(rng, p)
    np.testing.assert_array_equal(f(p, p), 0.0)
    grid = np.round(p * 8) / 8   # shifted by 4: the same distribution, exactly
    np.testing.assert_array_equal(f(grid, grid + 4.0), 0.0)


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_bit_for_bit(rng, name):
    f, _ = FAMILY[name]
    p = with_zeros(rng, logits(rng, (64, 40), 3.0))
    q = with_zeros(rng, logits(rng, (64, 40), 3.0))
    q[:16] = p[:16] + 1e-6                   # nearly equal rows
    q[16:24] = p[16:24][:, ::-1]             # permutations of each other
    np.testing.assert_array_equal(f(p, q), f(q, p))
    gp, gq = jax.grad(lambda a, b: f(a, b).sum(), (0, 1))(p, q)
    gq2, gp2 = jax.grad(lambda a, b: f(a, b).sum(), (0, 1))(q, p)
    np.testing.assert_array_equal(gp, gp2)
    np.testing.assert_array_equal(gq, gq2)


@pytest.mark.parametrize("name", list(BOUNDED))
def test_bounded_after_rounding(rng, name):
    f, _ = FAMILY[name]
    p = np.full((3, 5), NEG_INF, np.float32)
    q = np.full((3, 5), NEG_INF, np.float32)
    p[:, :2] = [[0.0, 0.0], [5.0, -3.0], [1e4, 0.0]]
    q[:, 2:] = logits(rng, (3, 3), 3.0)          # disjoint supports: the maximum
    got = np.asarray(f(p, q))
    assert np.all(got <= np.float32(BOUNDED[name]))
    np.testing.assert_allclose(got, BOUNDED[name], rtol=1e-6)


# ------------------------------------------------ 4. zero-probability rules


def test_disjoint_supports():
    p = np.array([0.0, 1.0, NEG_INF, NEG_INF], np.float32)
    q = np.array([NEG_INF, NEG_INF, 2.0, 0.0], np.float32)
    assert jaxdiv.js_divergence(p, q) == np.float32(LOG2)
    assert jaxdiv.total_variation(p, q) == 1.0
    np.testing.assert_allclose(jaxdiv.hellinger_distance(p, q), 1.0, rtol=1e-7)
    for alpha in [0.3, 1.0, 2.0]:
        assert jaxdiv.renyi_divergence(p, q, alpha) == np.inf
    assert jaxdiv.jeffreys_divergence(p, q) == np.inf
    for name in FINITE:
        f, _ = FAMILY[name]
        g = jax.grad(f, (0, 1))(p, q)
        assert all(np.all(np.isfinite(gi)) for gi in g), name


def test_renyi_support_rules():
    # Q = 0 where P > 0: +inf for alpha >= 1, finite below (P^a Q^(1-a) = 0 there).
    p = np.log(np.array([0.5, 0.25, 0.25], np.float32))
    q = np.log(np.array([0.5, 0.5, 0.0], np.float32))
    for alpha in [1.0, 1.5, 4.0]:
        assert jaxdiv.renyi_divergence(p, q, alpha) == np.inf
    for alpha in [0.2, 0.5, 0.9]:
        want = np.log(0.5**alpha * 0.5 ** (1 - alpha) + 0.25**alpha * 0.5 ** (1 - alpha)) / (alpha - 1)
        np.testing.assert_allclose(jaxdiv.renyi_divergence(p, q, alpha), want, rtol=2e-6)
        g = jax.grad(jaxdiv.renyi_divergence, (0, 1))(p, q, alpha)
        assert all(np.all(np.isfinite(gi)) for gi in g)
    # P = 0 where Q > 0: nothing for every order.
    np.testing.assert_allclose(jaxdiv.renyi_divergence(q, p, 2.0), ref.renyi(q, p, 2.0), rtol=2e-6)


@pytest.mark.parametrize("name", FAMILY)
def test_row_without_support_is_zero_with_zero_gradient(name):
    f, _ = FAMILY[name]
    p = np.array([[NEG_INF] * 4, [0.0, 1.0, 2.0, 3.0]], np.float32)
    q = np.array([[1.0, 2.0, NEG_INF, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    assert f(p, q)[0] == 0.0
    for gi in jax.jit(jax.grad(lambda p, q: f(p, q)[0], argnums=(0, 1)))(p, q):
        np.testing.assert_array_equal(gi, 0.0)
    np.testing.assert_array_equal(f(q, q, where=np.zeros(4, bool)), 0.0)


@pytest.mark.parametrize("name", FAMILY)
def test_single_finite_logit_among_minus_inf(name):
    # Row i of p has its only finite logit at position i: every position swept.
    f, reference = FAMILY[name]
    p = np.full((5, 5), NEG_INF, np.float32)
    np.fill_diagonal(p, 1.5)
    q = np.broadcast_to(np.linspace(-2, 2, 5).astype(np.float32), (5, 5))
    np.testing.assert_allclose(f(p, q), reference(p, q), rtol=5e-6)
    np.testing.assert_array_equal(f(p, p), 0.0)
    gp, gq = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), (0, 1)))(p, q)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
    if np.all(np.isfinite(f(p, q))):   # zero-probability classes of P get no gradient
        np.testing.assert_array_equal(np.where(np.isinf(p), gp, 0.0), 0.0)


# ------------------------------------------------------ 5. -inf vs clipped


@pytest.mark.parametrize("name", [n for n in FAMILY if n not in ("jeffreys", "renyi_2", "renyi_7")])
def test_minus_inf_equals_clipped(rng, name):
    # (Exempt: Jeffreys contains KL(Q || P), and kl_divergence reads its second
    # argument's logits exactly, so a clipped P_i = e^-1e4 next to Q_i > 0 is a
    # large finite term, not +inf; Renyi of order > 1 likewise recomputes such
    # rows in log space.)
    f, _ = FAMILY[name]
    p = with_zeros(rng, logits(rng, (6, 16), 2.0))
    q = logits(rng, (6, 16), 2.0)
    q[:, 5] = NEG_INF
    p_clip, q_clip = np.maximum(p, -1e4), np.maximum(q, -1e4)
    np.testing.assert_allclose(f(p, q), f(p_clip, q_clip), rtol=1e-6)
    g = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.where(jnp.isfinite(v := f(a, b)), v, 0.0)), (0, 1)))
    for got, want in zip(g(p, q), g(p_clip, q_clip)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- 6. gradients


def test_js_gradient_closed_form(rng):
    p, q = logits(rng, (3, 10), 2.0), logits(rng, (3, 10), 2.0)
    beta = 0.3
    P = scipy.special.softmax(p.astype(np.float64), -1)
    Q = scipy.special.softmax(q.astype(np.float64), -1)
    M = beta * P + (1 - beta) * Q
    kl_pm = np.sum(P * np.log(P / M), -1, keepdims=True)
    kl_qm = np.sum(Q * np.log(Q / M), -1, keepdims=True)
    gp, gq = jax.grad(lambda a, b: jaxdiv.js_divergence(a, b, beta=beta).sum(), (0, 1))(p, q)
    np.testing.assert_allclose(gp, beta * P * (np.log(P / M) - kl_pm), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(gq, (1 - beta) * Q * (np.log(Q / M) - kl_qm), rtol=1e-4, atol=1e-7)


def test_tv_and_hellinger_gradient_closed_forms(rng):
    p, q = logits(rng, (3, 10), 2.0), logits(rng, (3, 10), 2.0)
    P = scipy.special.softmax(p.astype(np.float64), -1)
    Q = scipy.special.softmax(q.astype(np.float64), -1)

    def through_softmax(a, probs):   # d/dlogits from d/dlog P
        return a - probs * a.sum(-1, keepdims=True)

    gp = jax.grad(lambda a: jaxdiv.total_variation(a, q).sum())(p)
    np.testing.assert_allclose(gp, through_softmax(0.5 * np.sign(P - Q) * P, P), rtol=1e-4, atol=1e-7)
    gq = jax.grad(lambda b: jaxdiv.hellinger_distance(p, b, squared=True).sum())(q)
    want = through_softmax(0.5 * np.sqrt(Q) * (np.sqrt(Q) - np.sqrt(P)), Q)
    np.testing.assert_allclose(gq, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", FAMILY)
def test_jvp_agrees_with_vjp_and_no_nan_at_edges(rng, name):
    f, _ = FAMILY[name]
    p = with_zeros(rng, logits(rng, (4, 9), 2.0))
    q = with_zeros(rng, logits(rng, (4, 9), 2.0))
    q = np.where(np.isfinite(p), np.maximum(q, -3.0), NEG_INF).astype(np.float32)  # finite values
    dp, dq = logits(rng, p.shape), logits(rng, q.shape)
    dp, dq = np.where(np.isfinite(p), dp, 0.0), np.where(np.isfinite(q), dq, 0.0)
    value, tangent = jax.jvp(f, (p, q), (dp, dq))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(tangent))
    grad = jax.jit(jax.grad(lambda a, b: f(a, b).sum(), (0, 1)))
    gp, gq = grad(p, q)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
    np.testing.assert_allclose(
        tangent.sum(), np.sum(gp * dp) + np.sum(gq * dq), rtol=1e-4, atol=1e-6
    )
    with jax.debug_nans(True):
        jax.block_until_ready(grad(p, q))
        jax.block_until_ready(jax.jacfwd(f, (0, 1))(p[0], q[0]))


def test_distances_have_zero_gradient_at_identical_inputs(rng):
    p = logits(rng, (2, 6))
    for f in [jaxdiv.js_distance, jaxdiv.hellinger_distance]:
        for g in jax.grad(lambda a, b: f(a, b).sum(), (0, 1))(p, p):
            np.testing.assert_array_equal(g, 0.0)


def test_parameters_are_not_differentiated(rng):
    p, q = logits(rng, (5,)), logits(rng, (5,))
    with pytest.raises(NotImplementedError, match="alpha, beta"):
        jax.grad(lambda b: jaxdiv.js_divergence(p, q, beta=b))(0.3)
    # stop_gradient, as the message says, works; so does a traced, jitted order.
    assert jax.grad(lambda b: jaxdiv.js_divergence(p, q, beta=jax.lax.stop_gradient(b)))(0.3) == 0.0
    np.testing.assert_allclose(
        jax.jit(lambda a: jaxdiv.renyi_divergence(p, q, a))(2.0), jaxdiv.renyi_divergence(p, q, 2.0), rtol=1e-6
    )


# ------------------------------------------------------- 7. masks and axes


@pytest.mark.parametrize("name", FAMILY)
def test_mask_equals_slicing_and_ignores_garbage(rng, name):
    f, _ = FAMILY[name]
    p, q = logits(rng, (3, 8), 2.0), logits(rng, (3, 8), 2.0)
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    want = f(p[:, keep], q[:, keep])
    p_bad, q_bad = p.copy(), q.copy()
    p_bad[:, ~keep], q_bad[:, ~keep] = np.nan, np.inf
    np.testing.assert_allclose(f(p_bad, q_bad, where=keep), want, rtol=2e-6)
    gp, gq = jax.jit(jax.grad(lambda a, b: f(a, b, where=keep).sum(), (0, 1)))(p_bad, q_bad)
    assert np.all(gp[:, ~keep] == 0) and np.all(gq[:, ~keep] == 0)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))


@pytest.mark.parametrize("name", FAMILY)
def test_axis_zero_equals_transpose(rng, name):
    f, _ = FAMILY[name]
    p, q = logits(rng, (7, 3)), logits(rng, (7, 3))
    # Transposed inputs compile to differently fused programs: equal to rounding.
    np.testing.assert_allclose(f(p, q, axis=0), f(p.T, q.T), rtol=1e-6)


# --------------------------------------------------------- 8. transformations


@pytest.mark.parametrize("name", FAMILY)
def test_eager_jit_vmap_and_broadcasting_agree(rng, name):
    f, _ = FAMILY[name]
    p, q = logits(rng, (2, 3, 10)), logits(rng, (2, 3, 10))
    eager = f(p, q)
    np.testing.assert_allclose(jax.jit(f)(p, q), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(p, q), eager, rtol=1e-6)
    one = p[0, 0]
    np.testing.assert_allclose(f(one, q), f(np.broadcast_to(one, q.shape), q), rtol=1e-6)


def test_traced_alpha_and_beta_compile_once_and_match_static(rng):
    """alpha and beta may be traced (a sweep, a schedule): one trace serves every value."""
    traces = []

    @jax.jit
    def loss(p, q, alpha, beta):
        traces.append(1)
        return jaxdiv.js_divergence(p, q, beta=beta), jaxdiv.renyi_divergence(p, q, alpha)

    p, q = logits(rng, (4, 6)), logits(rng, (4, 6))
    for alpha, beta in ((2.0, 0.5), (0.3, 0.1), (5.0, 0.9)):
        js, renyi = loss(p, q, alpha, beta)
        np.testing.assert_allclose(js, jaxdiv.js_divergence(p, q, beta=beta), rtol=1e-6)
        np.testing.assert_allclose(renyi, jaxdiv.renyi_divergence(p, q, alpha), rtol=1e-6)
    assert len(traces) == 1


# ----------------------------------------------------------------- 9. dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ["js", "tv", "hellinger", "renyi_2"])
def test_16_bit_inputs_computed_in_float32(rng, name, dtype):
    f, reference = FAMILY[name]
    p, q = jnp.asarray(logits(rng, (4, 30)), dtype), jnp.asarray(logits(rng, (4, 30)), dtype)
    got = f(p, q)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(np.asarray(p, np.float32), np.asarray(q, np.float32)), rtol=1e-5)
    gp = jax.grad(lambda a: f(a, q).sum())(p)
    assert gp.dtype == dtype and np.all(np.isfinite(np.asarray(gp, np.float32)))


# ---------------------------------------------------------- 10. huge and tiny


@pytest.mark.parametrize("name", FAMILY)
def test_huge_logits_with_minus_inf(name):
    f, reference = FAMILY[name]
    p = np.array([[1e9, -1e9, NEG_INF, 1e9], [1e4, -1e4, 0.0, NEG_INF]], np.float32)
    q = np.array([[1e9, 1e9, NEG_INF, 1e9 - 64], [1e4, 1e4 - 1, 1e4 - 3, 1e4 - 5]], np.float32)
    got = np.asarray(f(p, q))
    assert not np.any(np.isnan(got))
    np.testing.assert_allclose(got, reference(p, q), rtol=2e-6)


# ------------------------------------------------------- 11. NaN containment


@pytest.mark.parametrize("name", FAMILY)
def test_nan_stays_in_its_row(rng, name):
    f, _ = FAMILY[name]
    p, q = logits(rng, (3, 6)), logits(rng, (3, 6))
    clean = f(p, q)
    p_bad = p.copy()
    p_bad[1, 2] = np.nan
    got, clean = np.asarray(f(p_bad, q)), np.asarray(clean)
    assert np.isnan(got[1])
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])
    grad = jax.jit(jax.grad(lambda a: f(a, q).sum()))
    g_bad, g = np.asarray(grad(p_bad)), np.asarray(grad(p))
    np.testing.assert_array_equal(g_bad[[0, 2]], g[[0, 2]])


# ---------------------------------------------------------------- 12. shapes


@pytest.mark.parametrize("name", FAMILY)
def test_shapes(name):
    f, _ = FAMILY[name]
    assert f(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)).shape == (0,)
    np.testing.assert_array_equal(f(np.zeros((3, 1), np.float32), np.ones((3, 1), np.float32)), 0.0)
    assert f(np.zeros(4, np.float32), np.arange(4, dtype=np.float32)).shape == ()


# ---------------------------------------------------------------- 13. errors


def test_errors_name_what_was_expected_and_given():
    p, q = np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)
    for f in [jaxdiv.js_divergence, jaxdiv.total_variation, jaxdiv.hellinger_distance, jaxdiv.jeffreys_divergence]:
        with pytest.raises(ValueError, match=r"p_logits shape \(2, 3\), q_logits shape \(2, 4\)"):
            f(p, q)
        with pytest.raises(TypeError, match="int32"):
            f(np.zeros(3, np.int32), np.zeros(3, np.float32))
        with pytest.raises(ValueError, match="axis 2 is out of range"):
            f(p, p, axis=2)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0.0, inf\), got 0"):
        jaxdiv.renyi_divergence(p, p, 0)
    with pytest.raises(ValueError, match=r"beta must lie in \[0.0, 1.0\], got 1.5"):
        jaxdiv.js_divergence(p, p, beta=1.5)
    with pytest.raises(ValueError, match="base must be a positive number other than 1"):
        jaxdiv.kl_divergence(p, p, base=1)
    with pytest.raises(TypeError, match="f must be a callable"):
        jaxdiv.f_divergence(p, p, 2.0)


# -------------------------------------------- 16. regressions of other code


def test_naive_js_gradient_is_nan_where_jaxdiv_is_finite():
    # The usual hand-written JS: log M = logaddexp(log P, log Q) - log 2, then
    # 0.5 (KL(P||M) + KL(Q||M)) via P * (log P - log M). At -inf logits the
    # gradient is NaN (0 * -inf in the backward pass).
    def naive(p, q):
        lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
        lm = jnp.logaddexp(lp, lq) - jnp.log(2.0)
        return 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm) + jnp.exp(lq) * (lq - lm))

    p = np.array([0.0, 1.0, NEG_INF], np.float32)
    q = np.array([NEG_INF, 0.0, 1.0], np.float32)
    assert np.isnan(naive(p, q))
    g = jax.grad(jaxdiv.js_divergence, (0, 1))(p, q)
    assert all(np.all(np.isfinite(gi)) for gi in g)
    np.testing.assert_allclose(jaxdiv.js_divergence(p, q), ref.js(p, q), rtol=2e-6)


def test_scipy_jensenshannon_is_nan_on_nearly_equal_float32_input(rng):
    # SciPy sums the textbook terms in the input's float32: near equality the
    # divergence rounds negative and its square root is NaN.
    p = logits(rng, (64, 1024))
    q = (p + 1e-5 * rng.standard_normal(p.shape)).astype(np.float32)
    pk, qk = scipy.special.softmax(p, -1), scipy.special.softmax(q, -1)
    with np.errstate(invalid="ignore"):
        assert np.any(np.isnan(scipy.spatial.distance.jensenshannon(pk, qk, axis=-1)))
    got = jaxdiv.js_distance(p, q)
    assert np.all(np.isfinite(got)) and np.all(np.asarray(got) > 0)
    want = np.sqrt([ref.family_mpmath("js", p[i], q[i]) for i in range(4)])
    np.testing.assert_allclose(got[:4], want, rtol=1e-4)
