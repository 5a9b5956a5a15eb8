"""What users write today, for each benchmarked quantity.

* ``numpy_*``: the textbook formula in float32 NumPy (``softmax``, then ``log``),
  the baseline the project promises to beat;
* ``scipy_*``: SciPy's function where it has the quantity (float64 inside);
* ``optax_*``: optax's composition, jitted by the harness (autodiff for the
  gradients);
* ``jax_*``: the same formula hand-written in JAX, where optax has no such loss.

PyTorch's versions live in ``torch_baselines.py`` (imported only when torch is
installed). The constants below fix the options of the training-loss cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IGNORE = -100       # ignore index of ce_options: every tenth label
SMOOTHING = 0.1     # label smoothing of ce_options
Z_LOSS = 1e-4       # z-loss of ce_options
TEMPERATURE = 2.0   # distillation temperature
ALPHA = 2.0         # Renyi order


def with_ignored(labels, fraction: float = 0.1):
    """``labels`` with every ``1 / fraction``-th position set to ``IGNORE`` (padding)."""
    xp = np if isinstance(labels, np.ndarray) else jnp
    index = xp.arange(labels.shape[0])
    return xp.where(index % round(1 / fraction) == 3, IGNORE, labels)


# ------------------------------------------------------------------- NumPy


def _numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_log_softmax(x):
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def numpy_kl(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def numpy_ce_labels(logits, labels):
    return -np.take_along_axis(_numpy_log_softmax(logits), labels[:, None], -1)[:, 0]


def numpy_ce_soft(p_logits, q_logits):
    return -np.sum(_numpy_softmax(p_logits) * _numpy_log_softmax(q_logits), axis=-1)


def numpy_entropy(logits):
    p = _numpy_softmax(logits)
    return -np.sum(p * np.log(p), axis=-1)


def numpy_js(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    m = 0.5 * (p + q)
    return 0.5 * np.sum(p * np.log(p / m), -1) + 0.5 * np.sum(q * np.log(q / m), -1)


def numpy_tv(p_logits, q_logits):
    return 0.5 * np.sum(np.abs(_numpy_softmax(p_logits) - _numpy_softmax(q_logits)), -1)


def numpy_hellinger(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    return np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1))


def numpy_renyi(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    return np.log(np.sum(p**ALPHA * q ** (1 - ALPHA), -1)) / (ALPHA - 1)


def numpy_gaussian_kl(mean, log_var):
    return -0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var), axis=-1)


def numpy_ce_options(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(-1, keepdims=True))
    log_probs = shifted - log_sum
    valid = labels != IGNORE
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[:, None], -1)[:, 0]
    xent = -(1 - SMOOTHING) * picked - SMOOTHING * log_probs.mean(-1)
    lse = log_sum[:, 0] + logits.max(-1)
    return np.where(valid, xent + Z_LOSS * lse**2, 0.0)


def numpy_distill(student, teacher):
    t = TEMPERATURE
    return numpy_kl(teacher / t, student / t) * t**2


def numpy_bce(logits, labels):
    p = 1 / (1 + np.exp(-logits))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def numpy_kl_penalty(log_probs, ref_log_probs):
    r = ref_log_probs - log_probs
    return np.exp(r) - 1 - r


# ------------------------------------------------------------------- SciPy


def scipy_kl(p_logits, q_logits):
    import scipy.special
    import scipy.stats

    p, q = scipy.special.softmax(p_logits, -1), scipy.special.softmax(q_logits, -1)
    return scipy.stats.entropy(p, q, axis=-1)


def scipy_entropy(logits):
    import scipy.special
    import scipy.stats

    return scipy.stats.entropy(scipy.special.softmax(logits, -1), axis=-1)


def scipy_js(p_logits, q_logits):
    import scipy.spatial.distance
    import scipy.special

    p, q = scipy.special.softmax(p_logits, -1), scipy.special.softmax(q_logits, -1)
    return scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2


# ------------------------------------------------------------------- optax


def optax_kl(p_logits, q_logits):
    import optax

    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(q_logits), jax.nn.log_softmax(p_logits)
    )


def optax_ce_labels(logits, labels):
    import optax

    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def optax_ce_soft(p_logits, q_logits):
    import optax

    return optax.losses.softmax_cross_entropy(q_logits, jax.nn.softmax(p_logits))


def optax_ce_options(logits, labels):
    """optax has no ignore index or z-loss: smoothed one-hot targets, a mask and logsumexp."""
    import optax

    valid = labels != IGNORE
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), logits.shape[-1], dtype=logits.dtype)
    xent = optax.losses.softmax_cross_entropy(logits, optax.smooth_labels(onehot, SMOOTHING))
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.where(valid, xent + Z_LOSS * lse**2, 0.0)


def optax_distill(student, teacher):
    import optax

    t = TEMPERATURE
    return optax.losses.kl_divergence(jax.nn.log_softmax(student / t), jax.nn.softmax(teacher / t)) * t**2


def optax_bce(logits, labels):
    import optax

    return optax.losses.sigmoid_binary_cross_entropy(logits, labels)


# ------------------------------------------------- hand-written JAX (no optax)


def jax_entropy(logits):
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_p) * log_p, -1)


def jax_js(p_logits, q_logits):
    """JS as hand-written in JAX: the mixture through logaddexp."""
    lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    lm = jnp.logaddexp(lp, lq) - jnp.log(2.0)
    return 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm) + jnp.exp(lq) * (lq - lm), -1)


def jax_tv(p_logits, q_logits):
    return 0.5 * jnp.sum(jnp.abs(jax.nn.softmax(p_logits) - jax.nn.softmax(q_logits)), -1)


def jax_hellinger(p_logits, q_logits):
    p, q = jax.nn.softmax(p_logits), jax.nn.softmax(q_logits)
    return jnp.sqrt(0.5 * jnp.sum((jnp.sqrt(p) - jnp.sqrt(q)) ** 2, -1))


def jax_renyi(p_logits, q_logits):
    lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jax.nn.logsumexp(ALPHA * lp + (1 - ALPHA) * lq, -1) / (ALPHA - 1)


def jax_gaussian_kl(mean, log_var):
    """The VAE term as it appears in most JAX code bases."""
    return -0.5 * jnp.sum(1 + log_var - mean**2 - jnp.exp(log_var), axis=-1)


def jax_kl_penalty(log_probs, ref_log_probs):
    """The k3 estimator as written in RLHF code: exp(r) - 1 - r."""
    r = ref_log_probs - log_probs
    return jnp.exp(r) - 1 - r
