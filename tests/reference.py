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


def gaussian_kl(mp, vp, mq, vq):
    """float64 closed form; phi via expm1 with a series near 0."""
    mp, vp, mq, vq = (np.asarray(a, np.float64) for a in (mp, vp, mq, vq))
    d = vp - vq
    small = np.abs(d) < 1e-3
    ds = np.where(small, d, 0.0)
    phi = np.where(small, ds**2 / 2 + ds**3 / 6 + ds**4 / 24, np.expm1(d) - d)
    return 0.5 * np.sum(phi + (mp - mq) ** 2 * np.exp(-vq), axis=-1)
