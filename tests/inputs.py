"""Test inputs and the error measure shared by the test modules."""

import numpy as np


def rel_err(got, want):
    """Max relative error of ``got`` against ``want`` (float64)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))


def logits(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def with_zeros(rng, x, frac=0.3):
    """Put -inf (zero probability) at random places, keeping one finite entry per row."""
    x = x.copy()
    mask = rng.random(x.shape) < frac
    mask[..., 0] = False
    x[mask] = -np.inf
    return x
