"""Gaussian divergences: closed forms in float64, Monte Carlo, SciPy, edge cases, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxdiv import gaussian
from tests import reference as ref
from tests.inputs import rel_err
from tests.reference import gaussian_kl as ref_kl_diag


def ref_kl_full(mp, lp, mq, lq):
    """float64 textbook formula with explicit covariances and inverses."""
    mp, lp, mq, lq = (np.asarray(a, np.float64) for a in (mp, lp, mq, lq))
    sp, sq = lp @ np.swapaxes(lp, -1, -2), lq @ np.swapaxes(lq, -1, -2)
    sq_inv = np.linalg.inv(sq)
    diff = mq - mp
    d = mp.shape[-1]
    return 0.5 * (
        np.trace(sq_inv @ sp, axis1=-2, axis2=-1)
        + np.einsum("...i,...ij,...j->...", diff, sq_inv, diff)
        - d
        + np.linalg.slogdet(sq)[1]
        - np.linalg.slogdet(sp)[1]
    )


def random_tril(rng, shape, d, condition=None):
    a = rng.standard_normal(shape + (d, d))
    if condition is not None:
        # Eigenvalues spread log-uniformly over [1, condition].
        q, _ = np.linalg.qr(rng.standard_normal(shape + (d, d)))
        eig = np.logspace(0, np.log10(condition), d)
        cov = q @ (eig[..., :, None] * np.swapaxes(q, -1, -2))
        return np.linalg.cholesky(cov)
    return np.linalg.cholesky(a @ np.swapaxes(a, -1, -2) + d * np.eye(d))


def diag_params(rng, shape, spread=1.0):
    return (
        rng.standard_normal(shape).astype(np.float32),
        (spread * rng.standard_normal(shape)).astype(np.float32),
    )


# ----------------------------------------------------------------- diagonal


def test_diagonal_kl_matches_closed_form(rng):
    mp, vp = diag_params(rng, (5, 16))
    mq, vq = diag_params(rng, (5, 16))
    got = gaussian.kl_divergence(mp, vp, mq, vq)
    assert got.shape == (5,) and got.dtype == jnp.float32
    assert rel_err(got, ref_kl_diag(mp, vp, mq, vq)) <= 1e-5


def test_diagonal_kl_matches_full_covariance_reference(rng):
    mp, vp = diag_params(rng, (3, 4))
    mq, vq = diag_params(rng, (3, 4))
    lp = np.eye(4) * np.exp(vp.astype(np.float64) / 2)[..., None]
    lq = np.eye(4) * np.exp(vq.astype(np.float64) / 2)[..., None]
    np.testing.assert_allclose(gaussian.kl_divergence(mp, vp, mq, vq), ref_kl_full(mp, lp, mq, lq), rtol=1e-5)


def test_standard_normal_and_scale_forms_agree(rng):
    m, v = diag_params(rng, (4, 10))
    zeros = np.zeros_like(m)
    np.testing.assert_allclose(gaussian.kl_standard_normal(m, v), ref_kl_diag(m, v, zeros, zeros), rtol=1e-5)
    mq, vq = diag_params(rng, (4, 10))
    np.testing.assert_allclose(
        gaussian.kl_divergence_scale(m, np.exp(v / 2), mq, np.exp(vq / 2)),
        ref_kl_diag(m, v, mq, vq),
        rtol=2e-5,
    )


def test_univariate_is_an_event_of_size_one():
    got = gaussian.kl_divergence([1.0], [0.5], [0.0], [0.0])
    np.testing.assert_allclose(got, ref_kl_diag([1.0], [0.5], [0.0], [0.0]), rtol=1e-6)


@pytest.mark.parametrize("mean_diff, log_var_diff", [(1e-6, 1e-7), (0.0, 1e-7), (1e-6, 0.0), (1e-3, 1e-4)])
def test_nearly_identical_gaussians_are_accurate(rng, mean_diff, log_var_diff):
    mp, vp = diag_params(rng, (8, 32))
    mq = (mp + mean_diff * rng.standard_normal(mp.shape)).astype(np.float32)
    vq = (vp + log_var_diff * rng.standard_normal(vp.shape)).astype(np.float32)
    want = ref_kl_diag(mp, vp, mq, vq)
    assert np.all(want > 0)
    assert rel_err(gaussian.kl_divergence(mp, vp, mq, vq), want) <= 1e-5
    assert rel_err(gaussian.kl_standard_normal(mp - mq, vp - vq), ref_kl_diag(mp - mq, vp - vq, 0 * mp, 0 * vp)) <= 1e-5


def test_textbook_vae_formula_is_noise_near_the_prior(rng):
    mean = (1e-4 * rng.standard_normal((8, 64))).astype(np.float32)
    log_var = (1e-4 * rng.standard_normal((8, 64))).astype(np.float32)
    textbook = -0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var), -1)
    want = ref_kl_diag(mean, log_var, 0 * mean, 0 * log_var)
    assert rel_err(textbook, want) > 1e-2
    assert rel_err(gaussian.kl_standard_normal(mean, log_var), want) <= 1e-5


def test_identical_gives_exactly_zero_and_never_negative(rng):
    m, v = diag_params(rng, (16, 8), spread=10.0)
    assert np.all(np.asarray(gaussian.kl_divergence(m, v, m, v)) == 0.0)
    assert np.all(np.asarray(gaussian.kl_standard_normal(np.zeros(4), np.zeros(4))) == 0.0)
    lp = random_tril(rng, (3,), 4).astype(np.float32)
    assert np.all(np.asarray(gaussian.kl_divergence_tril(m[:3, :4], lp, m[:3, :4], lp)) == 0.0)
    mq = (m + 1e-7 * rng.standard_normal(m.shape)).astype(np.float32)
    assert np.all(np.asarray(gaussian.kl_divergence(m, v, mq, v)) >= 0)


@pytest.mark.parametrize("lv", [-80.0, -50.0, 50.0, 80.0])
def test_extreme_log_variances_are_finite_or_inf_never_nan(lv):
    m = np.array([0.0, 1.0, 0.0], np.float32)
    for vp, vq in [(lv, 0.0), (0.0, lv), (lv, lv), (lv, -lv)]:
        args = (m, np.full(3, vp, np.float32), 0 * m, np.full(3, vq, np.float32))
        value = gaussian.kl_divergence(*args)
        want = ref_kl_diag(*args)
        assert not np.isnan(value)
        if np.isfinite(want) and want < 3e38:
            np.testing.assert_allclose(value, want, rtol=1e-5)
        else:
            assert value == np.inf
        grads = jax.jit(jax.grad(lambda *a: gaussian.kl_divergence(*a), argnums=(0, 1, 2, 3)))(*args)
        assert not any(np.any(np.isnan(g)) for g in grads)
        if np.isfinite(value):
            assert all(np.all(np.isfinite(g)) for g in grads)


def test_zero_variance_q_gives_inf():
    assert gaussian.kl_divergence([0.0], [0.0], [0.0], [-np.inf]) == np.inf
    assert gaussian.kl_divergence([0.0], [-np.inf], [1.0], [-np.inf]) == np.inf
    assert gaussian.kl_divergence([1.0], [-np.inf], [1.0], [-np.inf]) == 0.0
    assert gaussian.kl_divergence_scale([0.0], [1.0], [0.0], [0.0]) == np.inf


@pytest.mark.parametrize("fn", [gaussian.kl_divergence, gaussian.cross_entropy, "scale"])
def test_mask_equals_slicing_with_zero_gradient(rng, fn):
    mp, vp = diag_params(rng, (3, 6))
    mq, vq = diag_params(rng, (3, 6))
    if fn == "scale":
        fn, vp, vq = gaussian.kl_divergence_scale, np.exp(vp / 2), np.exp(vq / 2)
    keep = np.array([1, 1, 0, 1, 0, 1], bool)
    poisoned = [a.copy() for a in (mp, vp, mq, vq)]
    for a in poisoned:
        a[:, ~keep] = np.nan
    np.testing.assert_allclose(
        fn(*poisoned, where=keep),
        fn(mp[:, keep], vp[:, keep], mq[:, keep], vq[:, keep]),
        rtol=1e-6,
    )
    grads = jax.jit(jax.grad(lambda *a: fn(*a, where=keep).sum(), argnums=(0, 1, 2, 3)))(*poisoned)
    for g in grads:
        assert np.all(np.asarray(g)[:, ~keep] == 0.0) and np.all(np.isfinite(g))


def test_broadcasting_and_axis(rng):
    mp, vp = diag_params(rng, (7, 5))
    prior_mean, prior_var = np.zeros(5, np.float32), np.zeros(5, np.float32)
    np.testing.assert_allclose(
        gaussian.kl_divergence(mp, vp, prior_mean, prior_var), gaussian.kl_standard_normal(mp, vp), rtol=1e-6
    )
    np.testing.assert_allclose(
        gaussian.kl_divergence(mp.T, vp.T, 0.0, 0.0, axis=0), gaussian.kl_standard_normal(mp, vp), rtol=1e-6
    )


def test_cross_entropy_and_entropy(rng):
    mp, vp = diag_params(rng, (4, 6))
    mq, vq = diag_params(rng, (4, 6))
    h = gaussian.entropy(vp)
    want_h = [scipy.stats.multivariate_normal(mp[i], np.diag(np.exp(vp[i].astype(np.float64)))).entropy() for i in range(4)]
    np.testing.assert_allclose(h, want_h, rtol=1e-5)
    np.testing.assert_allclose(
        gaussian.cross_entropy(mp, vp, mq, vq), np.asarray(want_h) + ref_kl_diag(mp, vp, mq, vq), rtol=1e-5
    )


def test_monte_carlo_diagonal(rng):
    mp, vp = np.array([0.3, -1.0, 0.5]), np.array([0.2, -0.5, 0.1])
    mq, vq = np.array([0.0, -0.5, 1.0]), np.array([0.0, 0.3, -0.2])
    x = mp + np.exp(vp / 2) * rng.standard_normal((400_000, 3))
    logp = scipy.stats.norm(mp, np.exp(vp / 2)).logpdf(x).sum(-1)
    logq = scipy.stats.norm(mq, np.exp(vq / 2)).logpdf(x).sum(-1)
    np.testing.assert_allclose(gaussian.kl_divergence(mp, vp, mq, vq), np.mean(logp - logq), rtol=1e-2)


# --------------------------------------------------------------- full covariance


def test_full_covariance_matches_textbook(rng):
    lp, lq = random_tril(rng, (4,), 5), random_tril(rng, (4,), 5)
    mp, mq = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    args = [a.astype(np.float32) for a in (mp, lp, mq, lq)]
    assert rel_err(gaussian.kl_divergence_tril(*args), ref_kl_full(*args)) <= 1e-5


@pytest.mark.parametrize("condition", [1e2, 1e4])
def test_full_covariance_ill_conditioned(rng, condition):
    lp = random_tril(rng, (4,), 6, condition)
    lq = random_tril(rng, (4,), 6, condition)
    mp, mq = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    args = [a.astype(np.float32) for a in (mp, lp, mq, lq)]
    assert rel_err(gaussian.kl_divergence_tril(*args), ref_kl_full(*args)) <= 1e-4


def test_full_equals_diagonal_for_diagonal_factors(rng):
    mp, vp = diag_params(rng, (3, 4))
    mq, vq = diag_params(rng, (3, 4))
    lp = jnp.eye(4) * jnp.exp(vp / 2)[..., None]
    lq = jnp.eye(4) * jnp.exp(vq / 2)[..., None]
    np.testing.assert_allclose(
        gaussian.kl_divergence_tril(mp, lp, mq, lq), gaussian.kl_divergence(mp, vp, mq, vq), rtol=2e-6
    )


def test_full_covariance_entropies_match_scipy(rng):
    lp, lq = random_tril(rng, (), 3), random_tril(rng, (), 3)
    mp, mq = rng.standard_normal(3), rng.standard_normal(3)
    p = scipy.stats.multivariate_normal(mp, lp @ lp.T)
    np.testing.assert_allclose(gaussian.entropy_tril(lp), p.entropy(), rtol=1e-5)
    np.testing.assert_allclose(
        gaussian.cross_entropy_tril(mp, lp, mq, lq), p.entropy() + ref_kl_full(mp, lp, mq, lq), rtol=1e-5
    )


def test_monte_carlo_full_covariance(rng):
    lp, lq = random_tril(rng, (), 3), random_tril(rng, (), 3)
    mp, mq = 0.3 * rng.standard_normal(3), 0.3 * rng.standard_normal(3)
    p = scipy.stats.multivariate_normal(mp, lp @ lp.T)
    q = scipy.stats.multivariate_normal(mq, lq @ lq.T)
    x = p.rvs(400_000, random_state=np.random.default_rng(3))
    np.testing.assert_allclose(
        gaussian.kl_divergence_tril(mp, lp, mq, lq), np.mean(p.logpdf(x) - q.logpdf(x)), rtol=1e-2
    )


def test_full_covariance_broadcasts_one_prior(rng):
    lp = random_tril(rng, (6,), 3).astype(np.float32)
    mp = rng.standard_normal((6, 3)).astype(np.float32)
    out = gaussian.kl_divergence_tril(mp, lp, np.zeros(3, np.float32), np.eye(3, dtype=np.float32))
    want = ref_kl_full(mp, lp, np.zeros((6, 3)), np.broadcast_to(np.eye(3), (6, 3, 3)))
    np.testing.assert_allclose(out, want, rtol=1e-5)


# ------------------------------------------------- transformations, dtypes, errors


def test_jit_vmap_grad_agree(rng):
    mp, vp = diag_params(rng, (6, 4))
    mq, vq = diag_params(rng, (6, 4))
    eager = gaussian.kl_divergence(mp, vp, mq, vq)
    np.testing.assert_allclose(jax.jit(gaussian.kl_divergence)(mp, vp, mq, vq), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(gaussian.kl_divergence)(mp, vp, mq, vq), eager, rtol=1e-6)
    g = jax.jit(jax.grad(lambda m, v: gaussian.kl_standard_normal(m, v).sum(), argnums=(0, 1)))(mp, vp)
    np.testing.assert_allclose(g[0], mp, rtol=1e-6)
    np.testing.assert_allclose(g[1], 0.5 * np.expm1(vp.astype(np.float64)), rtol=1e-5, atol=1e-7)


def test_16_bit_inputs_computed_in_float32(rng):
    mp, vp = (jnp.asarray(a, jnp.bfloat16) for a in diag_params(rng, (4, 8)))
    out = gaussian.kl_standard_normal(mp, vp)
    assert out.dtype == jnp.float32
    want = ref_kl_diag(np.asarray(mp, np.float32), np.asarray(vp, np.float32), 0 * np.ones(8), 0 * np.ones(8))
    np.testing.assert_allclose(out, want, rtol=1e-5)
    g = jax.jit(jax.grad(lambda m: gaussian.kl_standard_normal(m, vp).sum()))(mp)
    assert g.dtype == jnp.bfloat16


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"mean_p shape \(2, 3\).*mean_q shape \(2, 4\)"):
        gaussian.kl_divergence(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"square lower-triangular.*scale_tril_p shape \(3, 2\)"):
        gaussian.kl_divergence_tril(np.zeros(3), np.zeros((3, 2)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"same event size.*mean_q shape \(2,\)"):
        gaussian.kl_divergence_tril(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(TypeError, match="log_var must be a real floating-point array"):
        gaussian.entropy(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="where must be a boolean array, got dtype float32"):
        gaussian.kl_standard_normal(np.zeros(3), np.zeros(3), where=np.ones(3, np.float32))


# ------------------------------------------------------------- float64 gradients


SECOND_ORDER = ["kl_divergence", "kl_standard_normal", "kl_divergence_scale", "cross_entropy", "entropy",
                "kl_divergence_tril", "cross_entropy_tril", "entropy_tril"]


def test_second_order_covers_every_function():
    assert sorted(SECOND_ORDER) == sorted(gaussian.__all__)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_derivatives_match_the_textbook_formulas(rng, name):
    # Against exact float64 Hessians of the closed forms, forward-over-forward
    # and reverse-over-reverse: checked to 1e-9 with three compiled programs,
    # where check_grads's finite differences checked to 1e-5 with ~13.
    mp, vp, mq, vq = (rng.standard_normal((2, 3)) for _ in range(4))
    lp, lq = random_tril(rng, (2,), 3), random_tril(rng, (2,), 3)
    cases = {
        "kl_standard_normal": [(mp, vp)], "entropy": [(vp,)], "entropy_tril": [(lp,)],
        "kl_divergence_scale": [(mp, np.exp(vp), mq, np.exp(vq))],
        "kl_divergence_tril": [(mp, lp, mq, lq)], "cross_entropy_tril": [(mp, lp, mq, lq)],
        # Nearly equal log-variances: the series branch of phi is differentiated too.
        "kl_divergence": [(mp, vp, mq, vq), (mp, vp, mp + 1e-3, vp + 1e-3)],
        "cross_entropy": [(mp, vp, mq, vq)],
    }[name]
    for args in cases:
        ref.assert_hessians_match(getattr(gaussian, name), lambda *a: ref.gaussian_textbook(name, *a), args,
                                  atol=1e-11)
