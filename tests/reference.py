"""Independent float64 references (NumPy, and mpmath where float64 cancels).

These follow the textbook definitions directly; the only concession to
accuracy is ``expm1`` for nearly identical distributions, where the textbook
sum cancels even in float64.
"""

from __future__ import annotations

import mpmath
import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis; ``-inf`` stays ``-inf``; empty rows all ``-inf``."""
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def kl(p_logits, q_logits) -> np.ndarray:
    """KL(P || Q) = sum_supp P phi(d) + Q(outside supp P), d = log Q - log P, phi(d) = e^d - 1 - d.

    ``P phi(d)`` is a series near ``d = 0`` and ``Q - P - P d`` elsewhere
    (``P e^d = Q``), so neither cancels nor overflows in float64.
    """
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    supp = lp > -np.inf
    with np.errstate(invalid="ignore"):
        d = np.where(supp, lq - lp, 0.0)
    probs_p, probs_q = np.exp(lp), np.exp(lq)
    small = np.abs(d) < 1e-3
    ds = np.where(small, d, 0.0)
    series = probs_p * (ds**2 / 2 + ds**3 / 6 + ds**4 / 24 + ds**5 / 120)
    with np.errstate(invalid="ignore"):
        direct = probs_q - probs_p - probs_p * d
    inner = np.where(supp, np.where(small, series, direct), 0.0)
    out = np.sum(inner, -1) + np.sum(np.where(supp, 0.0, probs_q), -1)
    out = np.where(np.any(supp & (lq == -np.inf), -1), np.inf, out)
    return np.where(np.any(supp, -1), out, 0.0)


def cross_entropy(p_logits, q_logits) -> np.ndarray:
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    supp = lp > -np.inf
    with np.errstate(invalid="ignore"):
        terms = np.where(supp, -np.exp(lp) * lq, 0.0)
    return np.sum(terms, -1)


def entropy(logits) -> np.ndarray:
    return cross_entropy(logits, logits)


def integer_cross_entropy(logits, labels) -> np.ndarray:
    lq = log_softmax(logits)
    return -np.take_along_axis(lq, np.asarray(labels)[..., None], -1)[..., 0]


def kl_mpmath(p_logits, q_logits, dps: int = 50) -> float:
    """KL of one row in arbitrary precision (the float32 inputs taken exactly)."""
    with mpmath.workdps(dps):
        p = [mpmath.mpf(float(v)) for v in np.asarray(p_logits).ravel()]
        q = [mpmath.mpf(float(v)) for v in np.asarray(q_logits).ravel()]
        lse_p = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in p))
        lse_q = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in q))
        return float(
            mpmath.fsum(mpmath.exp(a - lse_p) * ((a - lse_p) - (b - lse_q)) for a, b in zip(p, q))
        )


def textbook_kl_float32(p_logits, q_logits) -> np.ndarray:
    """sum(p * (log p - log q)) in float32, as users write it (for comparison only)."""
    p_logits = np.asarray(p_logits, np.float32)
    q_logits = np.asarray(q_logits, np.float32)

    def log_sm(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lp, lq = log_sm(p_logits), log_sm(q_logits)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def expm1mx(d) -> np.ndarray:
    """phi(d) = e^d - 1 - d in float64: expm1 away from 0, its series near 0."""
    d = np.asarray(d, np.float64)
    small = np.abs(d) < 1e-3
    ds = np.where(small, d, 0.0)
    return np.where(small, ds**2 / 2 + ds**3 / 6 + ds**4 / 24, np.expm1(d) - d)


def gaussian_kl(mp, vp, mq, vq):
    """float64 closed form, phi through :func:`expm1mx`."""
    mp, vp, mq, vq = (np.asarray(a, np.float64) for a in (mp, vp, mq, vq))
    return 0.5 * np.sum(expm1mx(vp - vq) + (mp - mq) ** 2 * np.exp(-vq), axis=-1)


# ------------------------------------------------------------ the KL family


def _probs(p_logits, q_logits):
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return lp, lq, np.exp(lp), np.exp(lq)


def _xlogy(x, log_y):
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, x * np.where(x > 0, log_y, 0.0), 0.0)


def js(p_logits, q_logits, beta=0.5) -> np.ndarray:
    """beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q (textbook, float64)."""
    lp, lq, p, q = _probs(p_logits, q_logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm = np.log(beta * p + (1 - beta) * q)
        return beta * np.sum(_xlogy(p, lp - lm), -1) + (1 - beta) * np.sum(_xlogy(q, lq - lm), -1)


def total_variation(p_logits, q_logits) -> np.ndarray:
    _, _, p, q = _probs(p_logits, q_logits)
    return 0.5 * np.sum(np.abs(p - q), -1)


def hellinger_squared(p_logits, q_logits) -> np.ndarray:
    _, _, p, q = _probs(p_logits, q_logits)
    return 0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1)


def renyi(p_logits, q_logits, alpha) -> np.ndarray:
    """log(sum P^a Q^(1-a)) / (a - 1) through a float64 log-sum-exp; KL at a = 1."""
    if alpha == 1:
        return kl(p_logits, q_logits)
    lp, lq, p, q = _probs(p_logits, q_logits)
    # Support in log space: a probability that underflows still has a finite log.
    p, q = (lp > -np.inf).astype(float), (lq > -np.inf).astype(float)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, alpha * lp + (1 - alpha) * np.where(q > 0, lq, -np.inf), -np.inf)
    m = np.max(terms, -1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = (m + np.log(np.sum(np.exp(terms - np.where(np.isfinite(m), m, 0)), -1, keepdims=True)))[..., 0]
        out = np.where(np.any(p > 0, -1), lse / (alpha - 1), 0.0)
    # alpha > 1 with Q_i = 0 < P_i: +inf.
    if alpha > 1:
        out = np.where(np.any((p > 0) & (q == 0), -1), np.inf, out)
    return out


def family_mpmath(name: str, p_logits, q_logits, param=None, dps: int = 50) -> float:
    """One row of JS / TV / squared Hellinger / Renyi in arbitrary precision."""
    with mpmath.workdps(dps):
        a = [mpmath.mpf(float(v)) for v in np.asarray(p_logits).ravel()]
        b = [mpmath.mpf(float(v)) for v in np.asarray(q_logits).ravel()]
        lse_a = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in a))
        lse_b = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in b))
        p = [mpmath.exp(v - lse_a) for v in a]
        q = [mpmath.exp(v - lse_b) for v in b]
        if name == "js":
            w = mpmath.mpf(0.5 if param is None else param)
            m = [w * x + (1 - w) * y for x, y in zip(p, q)]
            value = w * mpmath.fsum(x * mpmath.log(x / z) for x, z in zip(p, m)) + (
                1 - w
            ) * mpmath.fsum(y * mpmath.log(y / z) for y, z in zip(q, m))
        elif name == "tv":
            value = mpmath.fsum(abs(x - y) for x, y in zip(p, q)) / 2
        elif name == "hellinger_squared":
            value = mpmath.fsum((mpmath.sqrt(x) - mpmath.sqrt(y)) ** 2 for x, y in zip(p, q)) / 2
        elif name == "renyi":
            alpha = mpmath.mpf(param)
            value = mpmath.log(
                mpmath.fsum(mpmath.exp(alpha * (u - lse_a) + (1 - alpha) * (v - lse_b)) for u, v in zip(a, b))
            ) / (alpha - 1)
        else:
            raise ValueError(name)
        return float(value)


# ---------------------------------------------------------------------- losses


def torch_cross_entropy(logits, labels, *, weight=None, ignore_index=-100,
                        label_smoothing=0.0, reduction="mean") -> np.ndarray:
    """``torch.nn.functional.cross_entropy`` for class indices, written out from PyTorch's documentation.

    l_n = (1 - eps) w_{y_n} (-log q_{n,y_n}) + eps / C sum_c w_c (-log q_{n,c}),
    0 where y_n == ignore_index; "mean" divides the sum by sum_n w_{y_n} over
    the positions that are not ignored.
    """
    x = np.asarray(logits, np.float64)
    num_classes = x.shape[-1]
    y = np.asarray(labels).reshape(-1)
    logq = log_softmax(x.reshape(-1, num_classes))
    w = np.ones(num_classes) if weight is None else np.asarray(weight, np.float64)
    keep = y != ignore_index
    ys = np.where(keep, y, 0)
    nll = -logq[np.arange(len(ys)), ys] * w[ys] * keep
    smooth = -np.sum(logq * w, -1) * keep
    per = (1 - label_smoothing) * nll + label_smoothing / num_classes * smooth
    if reduction == "none":
        return per.reshape(np.shape(labels))
    if reduction == "sum":
        return per.sum()
    return per.sum() / np.sum(w[ys] * keep)


def soft_cross_entropy(logits, targets) -> np.ndarray:
    """-sum_c t_c log softmax(x)_c, with 0 log 0 = 0."""
    logq = log_softmax(logits)
    t = np.asarray(targets, np.float64)
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(t > 0, t * logq, 0.0), -1)


def logsumexp(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = np.max(x, -1, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), -1, keepdims=True)))[..., 0]


def binary_cross_entropy(x, y, pos_weight=1.0) -> np.ndarray:
    """-w y log sigmoid(x) - (1 - y) log(1 - sigmoid(x)) in float64, 0 log 0 = 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    log_sig = -np.logaddexp(0.0, -x)
    log_one_minus = -np.logaddexp(0.0, x)
    with np.errstate(invalid="ignore"):
        pos = np.where(y > 0, -pos_weight * y * log_sig, 0.0)
        neg = np.where(y < 1, -(1 - y) * log_one_minus, 0.0)
    return pos + neg


def bernoulli_kl_mpmath(a: float, b: float, dps: int = 50) -> float:
    """KL(Bern(sigmoid(a)) || Bern(sigmoid(b))) at high precision."""
    with mpmath.workdps(dps):
        a, b = mpmath.mpf(float(a)), mpmath.mpf(float(b))
        p, q = 1 / (1 + mpmath.exp(-a)), 1 / (1 + mpmath.exp(-b))
        return float(p * mpmath.log(p / q) + (1 - p) * mpmath.log((1 - p) / (1 - q)))


# ------------------------------------------- differentiable textbook formulas
#
# The same definitions in jax.numpy (never jaxdiv), for exact float64
# derivatives to compare jaxdiv's against: a Hessian of these is exact up to
# rounding, where check_grads's finite differences check to ~1e-5 and compile
# about 13 programs per function.


def safe(f, x):
    """``f(x)`` where ``x > 0``, else 0, with finite derivatives (the double ``where``)."""
    import jax.numpy as jnp

    return jnp.where(x > 0, f(jnp.where(x > 0, x, 1.0)), 0.0)


def textbook(name: str, P, Q=None, parameter=None):
    """A divergence of probability rows ``P``, ``Q`` (last axis) by its definition.

    ``parameter`` is JS's ``beta`` (``"js"``) or Renyi's order (``"renyi"``);
    zero entries of ``P`` are allowed where the value stays finite.
    """
    import jax.numpy as jnp

    def xlogy(a, b):
        # a log b, and 0 where a = 0 (whatever b), with finite derivatives there.
        support = a > 0
        return jnp.where(support, a * jnp.log(jnp.where(support, b, 1.0)), 0.0)

    def kl(a, b):
        return jnp.sum(xlogy(a, a) - xlogy(a, b), -1)

    def js(beta):
        m = beta * P + (1 - beta) * Q
        return beta * kl(P, m) + (1 - beta) * kl(Q, m)

    if name == "renyi" and isinstance(parameter, (int, float)) and parameter == 1:
        name = "kl"
    return {
        "kl": lambda: kl(P, Q),
        "cross_entropy": lambda: -jnp.sum(xlogy(P, Q), -1),
        "entropy": lambda: -jnp.sum(xlogy(P, P), -1),
        "js": lambda: js(parameter),
        "js_distance": lambda: jnp.sqrt(js(0.5)),
        "tv": lambda: 0.5 * jnp.sum(jnp.abs(P - Q), -1),
        "hellinger_squared": lambda: 0.5 * jnp.sum((safe(jnp.sqrt, P) - jnp.sqrt(Q)) ** 2, -1),
        "hellinger": lambda: jnp.sqrt(0.5 * jnp.sum((safe(jnp.sqrt, P) - jnp.sqrt(Q)) ** 2, -1)),
        "renyi": lambda: jnp.log(jnp.sum(safe(lambda t: t**parameter, P) * Q ** (1 - parameter), -1))
        / (parameter - 1),
        "jeffreys": lambda: kl(P, Q) + kl(Q, P),
        "chi2": lambda: jnp.sum((P - Q) ** 2 / Q, -1),
    }[name]()


def gaussian_textbook(name: str, *args):
    """Gaussian divergences by their definitions, for autodiff in float64.

    Diagonal ones take (mean, log-variance) pairs, ``*_scale`` (mean, standard
    deviation), ``*_tril`` (mean, lower Cholesky factor); the event is the last
    axis (last two for a factor) and is summed over.
    """
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    log_2pi = np.log(2 * np.pi)
    if name in ("kl_divergence_tril", "cross_entropy_tril"):
        mp, lp, mq, lq = args
        lp, lq = jnp.tril(lp), jnp.tril(lq)   # a factor's upper triangle is not read
        k = mp.shape[-1]
        a = solve_triangular(lq, lp, lower=True)                       # Lq^-1 Lp
        b = solve_triangular(lq, (mq - mp)[..., None], lower=True)[..., 0]
        logdet_q = 2 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lq, axis1=-2, axis2=-1))), -1)
        logdet_p = 2 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lp, axis1=-2, axis2=-1))), -1)
        trace, mahalanobis = jnp.sum(a**2, (-2, -1)), jnp.sum(b**2, -1)
        if name == "kl_divergence_tril":
            return 0.5 * (trace + mahalanobis - k + logdet_q - logdet_p)
        return 0.5 * (k * log_2pi + logdet_q + trace + mahalanobis)
    if name == "entropy_tril":
        (l,) = args
        k = l.shape[-1]
        return 0.5 * k * (1 + log_2pi) + jnp.sum(jnp.log(jnp.abs(jnp.diagonal(l, axis1=-2, axis2=-1))), -1)
    if name == "entropy":
        (v,) = args
        return 0.5 * jnp.sum(1 + log_2pi + v, -1)
    if name == "kl_standard_normal":
        m, v = args
        return 0.5 * jnp.sum(jnp.exp(v) + m**2 - 1 - v, -1)
    if name == "kl_divergence_scale":
        mp, sp, mq, sq = args
        return jnp.sum(jnp.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5, -1)
    mp, vp, mq, vq = args
    if name == "kl_divergence":
        return 0.5 * jnp.sum(jnp.exp(vp - vq) + (mp - mq) ** 2 * jnp.exp(-vq) - 1 + vq - vp, -1)
    if name == "cross_entropy":
        return 0.5 * jnp.sum(log_2pi + vq + (jnp.exp(vp) + (mp - mq) ** 2) * jnp.exp(-vq), -1)
    raise ValueError(name)


def hessians(f, argnums, axis=None):
    """Forward-over-forward and reverse-over-reverse Hessians of ``f`` summed over ``axis``."""
    import jax
    import jax.numpy as jnp

    def total(*args):
        return jnp.sum(f(*args), axis)

    forward = jax.jacfwd(jax.jacfwd(total, argnums), argnums)
    reverse = jax.jacrev(jax.jacrev(total, argnums), argnums)
    return lambda *args: (forward(*args), reverse(*args))


def assert_hessians_match(ours, textbook, args, rtol=1e-9, atol=1e-12):
    """Both modes' Hessians of ``sum ours`` over every argument equal the exact
    (and finite) float64 Hessian of ``sum textbook``."""
    import jax
    import jax.numpy as jnp

    argnums = tuple(range(len(args)))
    want = jax.tree.leaves(jax.jit(jax.hessian(lambda *a: jnp.sum(textbook(*a)), argnums))(*args))
    assert all(np.isfinite(w).all() for w in want)
    for mode, hessian in zip(("fwd-fwd", "rev-rev"), jax.jit(hessians(ours, argnums))(*args)):
        for g, w in zip(jax.tree.leaves(hessian), want, strict=True):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=mode)
