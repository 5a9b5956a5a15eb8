"""Benchmark cases shared by the pytest-benchmark suite and the report command.

Each kernel is timed against the formulations users write today:

* ``numpy``: the textbook formula in float32 NumPy, as users write it;
* ``scipy``: SciPy's function where it has the quantity (float64, as SciPy
  computes), forward only;
* ``optax``: optax's composition, jitted (autodiff for the gradients); where
  optax has no such loss, the same formula hand-written in JAX;
* ``roofline``: a jitted pass that reads the inputs once with the minimum
  number of ``exp`` per element (and, for forward+backward, writes the
  gradient arrays) -- the practical floor on a CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv

KERNELS = ("kl", "ce_labels", "gaussian_kl", "js", "tv", "hellinger", "ce_options", "distill")

# Default sizes [rows, classes] (for gaussian_kl: [batch, latent dimensions]).
SIZES = {k: (4096, 32000) for k in KERNELS} | {"gaussian_kl": (65536, 256)}
MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass
class Inputs:
    """Logits for one case: several copies, rotated between timed calls."""

    p: list            # jax arrays [rows, classes]
    q: list
    labels: list       # int32 [rows]
    p_np: np.ndarray   # float32 NumPy copies of the first set (for numpy / accuracy)
    q_np: np.ndarray
    labels_np: np.ndarray

    @property
    def ignored_labels(self) -> list:
        """The labels with about 10% of the positions set to ``IGNORE`` (padding)."""
        return [with_ignored(y) for y in self.labels]


def make_inputs(rows: int, classes: int, dtype=jnp.float32, copies: int = 2, seed: int = 0) -> Inputs:
    keys = jax.random.split(jax.random.key(seed), 3 * copies)
    p = [jax.random.normal(keys[3 * i], (rows, classes), dtype) for i in range(copies)]
    q = [jax.random.normal(keys[3 * i + 1], (rows, classes), dtype) for i in range(copies)]
    labels = [jax.random.randint(keys[3 * i + 2], (rows,), 0, classes) for i in range(copies)]
    return Inputs(
        p, q, labels,
        np.asarray(p[0], np.float32), np.asarray(q[0], np.float32), np.asarray(labels[0]),
    )


# ---------------------------------------------------------------- the formulas

# The training-loss cases: cross-entropy with every common option, and distillation.
IGNORE, SMOOTHING, Z_LOSS, TEMPERATURE = -100, 0.1, 1e-4, 2.0


def with_ignored(labels, fraction: float = 0.1):
    """``labels`` with about ``fraction`` of the positions (every tenth) set to ``IGNORE``."""
    xp = np if isinstance(labels, np.ndarray) else jnp
    index = xp.arange(labels.shape[0])
    return xp.where(index % round(1 / fraction) == 3, IGNORE, labels)


def numpy_kl(p_logits, q_logits):
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def numpy_ce_labels(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[:, None], -1)[:, 0]


def numpy_vae_kl(mean, log_var):
    return -0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var), axis=-1)


def jax_vae_kl(mean, log_var):
    """The hand-written VAE term, as it appears in most JAX code bases."""
    return -0.5 * jnp.sum(1 + log_var - mean**2 - jnp.exp(log_var), axis=-1)


def _numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_js(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    m = 0.5 * (p + q)
    return 0.5 * np.sum(p * np.log(p / m), -1) + 0.5 * np.sum(q * np.log(q / m), -1)


def numpy_tv(p_logits, q_logits):
    return 0.5 * np.sum(np.abs(_numpy_softmax(p_logits) - _numpy_softmax(q_logits)), -1)


def numpy_hellinger(p_logits, q_logits):
    p, q = _numpy_softmax(p_logits), _numpy_softmax(q_logits)
    return np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1))


def scipy_kl(p_logits, q_logits):
    import scipy.special
    import scipy.stats

    p, q = scipy.special.softmax(p_logits, -1), scipy.special.softmax(q_logits, -1)
    return scipy.stats.entropy(p, q, axis=-1)


def scipy_js(p_logits, q_logits):
    import scipy.spatial.distance
    import scipy.special

    p, q = scipy.special.softmax(p_logits, -1), scipy.special.softmax(q_logits, -1)
    return scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2


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


def optax_kl(p_logits, q_logits):
    import optax

    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(q_logits), jax.nn.log_softmax(p_logits)
    )


def optax_ce_labels(logits, labels):
    import optax

    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def jaxdiv_ce_options(logits, labels):
    return jaxdiv.losses.softmax_cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=SMOOTHING, z_loss=Z_LOSS,
        reduction="none",
    )


def optax_ce_options(logits, labels):
    """optax has no ignore index or z-loss: smoothed one-hot targets, a mask and logsumexp."""
    import optax

    valid = labels != IGNORE
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), logits.shape[-1], dtype=logits.dtype)
    xent = optax.losses.softmax_cross_entropy(logits, optax.smooth_labels(onehot, SMOOTHING))
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.where(valid, xent + Z_LOSS * lse**2, 0.0)


def numpy_ce_options(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(-1, keepdims=True))
    log_probs = shifted - log_sum
    valid = labels != IGNORE
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[:, None], -1)[:, 0]
    xent = -(1 - SMOOTHING) * picked - SMOOTHING * log_probs.mean(-1)
    lse = (log_sum[:, 0] + logits.max(-1))
    return np.where(valid, xent + Z_LOSS * lse**2, 0.0)


def jaxdiv_distill(student, teacher):
    return jaxdiv.losses.distillation_loss(student, teacher, temperature=TEMPERATURE, reduction="none")


def optax_distill(student, teacher):
    import optax

    t = TEMPERATURE
    return optax.losses.kl_divergence(jax.nn.log_softmax(student / t), jax.nn.softmax(teacher / t)) * t**2


def numpy_distill(student, teacher):
    t = TEMPERATURE
    return numpy_kl(teacher / t, student / t) * t**2


def _roofline_two_inputs(p, q):
    return jnp.sum(jnp.exp(p) * jnp.exp(q), axis=-1)


def _roofline_two_inputs_grad(p, q):
    return jnp.exp(p), jnp.exp(q)


def _roofline_one_input(x, labels):
    return jnp.sum(jnp.exp(x), axis=-1)


def _roofline_one_input_grad(x, labels):
    return jnp.exp(x)


def _roofline_two_inputs_one_grad(p, q):
    return jnp.exp(p) * jnp.exp(q)


# kernel -> implementation -> function of (first, second) for the forward pass
FORWARD: dict[str, dict[str, Callable]] = {
    "kl": {
        "jaxdiv": jaxdiv.kl_divergence,
        "optax": optax_kl,
        "numpy": numpy_kl,
        "roofline": _roofline_two_inputs,
    },
    "ce_labels": {
        "jaxdiv": jaxdiv.cross_entropy_with_integer_labels,
        "optax": optax_ce_labels,
        "numpy": numpy_ce_labels,
        "roofline": _roofline_one_input,
    },
    # optax has no Gaussian KL: the baseline is the hand-written formula under jit.
    "gaussian_kl": {
        "jaxdiv": jaxdiv.gaussian.kl_standard_normal,
        "optax": jax_vae_kl,
        "numpy": numpy_vae_kl,
        "roofline": _roofline_two_inputs,
    },
}

FORWARD["kl"]["scipy"] = scipy_kl
FORWARD |= {
    "js": {"jaxdiv": jaxdiv.js_divergence, "optax": jax_js, "numpy": numpy_js,
           "scipy": scipy_js, "roofline": _roofline_two_inputs},
    "tv": {"jaxdiv": jaxdiv.total_variation, "optax": jax_tv, "numpy": numpy_tv,
           "roofline": _roofline_two_inputs},
    "hellinger": {"jaxdiv": jaxdiv.hellinger_distance, "optax": jax_hellinger,
                  "numpy": numpy_hellinger, "roofline": _roofline_two_inputs},
    "ce_options": {"jaxdiv": jaxdiv_ce_options, "optax": optax_ce_options,
                   "numpy": numpy_ce_options, "roofline": _roofline_one_input},
    "distill": {"jaxdiv": jaxdiv_distill, "optax": optax_distill, "numpy": numpy_distill,
                "roofline": _roofline_two_inputs},
}
IMPLS = ("jaxdiv", "optax", "numpy", "scipy", "roofline")

# What the "optax" column holds for each kernel (optax has no Gaussian KL, JS, TV or Hellinger).
BASELINE_NAME = {k: "optax" for k in KERNELS} | {"ce_options": "optax + one-hot + mask"} | {
    k: "hand-written JAX" for k in ("gaussian_kl", "js", "tv", "hellinger")
}

# The gradients a training step takes: the logits for the label losses, the
# student for distillation (the teacher is a constant), both inputs otherwise.
GRAD_ARGNUMS = {k: (0, 1) for k in KERNELS} | {"ce_labels": (0,), "ce_options": (0,), "distill": (0,)}
ROOFLINE_GRAD = {k: _roofline_two_inputs_grad for k in KERNELS} | {
    "ce_labels": _roofline_one_input_grad, "ce_options": _roofline_one_input_grad,
    "distill": _roofline_two_inputs_one_grad,
}


def _args(kernel: str, inputs: Inputs, i: int):
    if kernel == "ce_labels":
        return inputs.p[i], inputs.labels[i]
    if kernel == "ce_options":
        return inputs.p[i], inputs.ignored_labels[i]
    return inputs.p[i], inputs.q[i]


def _numpy_args(kernel: str, inputs: Inputs):
    if kernel == "ce_labels":
        return inputs.p_np, inputs.labels_np
    if kernel == "ce_options":
        return inputs.p_np, with_ignored(inputs.labels_np)
    return inputs.p_np, inputs.q_np


def _host_only(impl: str) -> bool:
    return impl in ("numpy", "scipy")


def jitted(kernel: str, impl: str, mode: str) -> Callable | None:
    """The jitted callable for one case, or None where it does not exist."""
    if _host_only(impl) or impl not in FORWARD[kernel]:
        return None
    if impl == "roofline":
        return jax.jit(FORWARD[kernel][impl] if mode == "fwd" else ROOFLINE_GRAD[kernel])
    f = FORWARD[kernel][impl]
    if mode == "fwd":
        return jax.jit(f)
    return jax.jit(jax.value_and_grad(lambda a, b: f(a, b).sum(), argnums=GRAD_ARGNUMS[kernel]))


def callables(kernel: str, impl: str, mode: str, inputs: Inputs) -> list[Callable[[], Any]] | None:
    """Zero-argument calls, one per input copy (rotated when timed); None if n/a."""
    if impl not in FORWARD[kernel]:
        return None
    if _host_only(impl):
        if mode != "fwd":
            return None
        args = _numpy_args(kernel, inputs)
        return [lambda: FORWARD[kernel][impl](*args)]
    f = jitted(kernel, impl, mode)
    return [
        (lambda a=_args(kernel, inputs, i): jax.block_until_ready(f(*a)))
        for i in range(len(inputs.p))
    ]


def temp_bytes(kernel: str, impl: str, mode: str, inputs: Inputs) -> int | None:
    """Compiled temporary memory (XLA ``memory_analysis``) of one case."""
    f = jitted(kernel, impl, mode)
    if f is None:
        return None
    stats = f.lower(*_args(kernel, inputs, 0)).compile().memory_analysis()
    return None if stats is None else int(stats.temp_size_in_bytes)


def median_time(calls: list[Callable[[], Any]], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up per input copy."""
    for call in calls:
        call()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        calls[i % len(calls)]()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------- accuracy


def accuracy_inputs(kernel: str, regime: str, rows: int = 64, classes: int = 4096, seed: int = 1):
    """float32 inputs for the accuracy columns.

    ``ordinary``: independent standard-normal logits. ``near``: for KL,
    ``q = p + 1e-4 * noise`` (KL ~ 1e-8, the regime of RLHF penalties and late
    distillation); for integer-label CE, confident predictions (logit scale 20,
    the label at the arg-max, CE down to ~1e-8); for the Gaussian KL, a
    posterior within 1e-4 of the standard-normal prior.
    """
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, classes)).astype(np.float32)
    if kernel == "gaussian_kl":
        # mean and log-variance; "near": a posterior 1e-4 away from the prior.
        scale = 1e-4 if regime == "near" else 1.0
        return (scale * p).astype(np.float32), (scale * rng.standard_normal(p.shape)).astype(np.float32)
    if kernel in ("kl", "js", "tv", "hellinger", "distill"):
        noise = 1e-4 if regime == "near" else None
        q = (p + noise * rng.standard_normal(p.shape) if noise else rng.standard_normal(p.shape))
        return p, q.astype(np.float32)
    if regime == "near":
        p = (20 * p).astype(np.float32)
        labels = np.argmax(p, -1).astype(np.int32)
    else:
        labels = rng.integers(0, classes, rows).astype(np.int32)
    return p, (with_ignored(labels) if kernel == "ce_options" else labels)


def relative_error(kernel: str, impl: str, regime: str) -> float | None:
    """Max float32 relative error against the float64 value of the same inputs."""
    from tests import reference

    if impl == "roofline" or impl not in FORWARD[kernel]:
        return None
    first, second = accuracy_inputs(kernel, regime)
    if kernel == "gaussian_kl":
        want = reference.gaussian_kl(first, second, 0 * first, 0 * second)
    elif kernel == "kl":
        want = reference.kl(first, second)
    elif kernel == "js":
        want = reference.js(first, second)
    elif kernel == "tv":
        want = reference.total_variation(first, second)
    elif kernel == "hellinger":
        want = np.sqrt(reference.hellinger_squared(first, second))
    elif kernel == "distill":
        t = np.float32(TEMPERATURE)
        want = reference.kl(second / t, first / t) * TEMPERATURE**2
    elif kernel == "ce_options":
        want = reference.torch_cross_entropy(
            first, second, ignore_index=IGNORE, label_smoothing=SMOOTHING, reduction="none"
        ) + Z_LOSS * reference.logsumexp(first) ** 2 * (second != IGNORE)
    else:
        want = reference.integer_cross_entropy(first, second)
    got = np.asarray(FORWARD[kernel][impl](first, second), np.float64)
    counted = want != 0   # ignored positions are 0 in every implementation
    return float(np.max(np.abs(got - want)[counted] / np.abs(want[counted])))


CLOSENESS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def kl_accuracy_sweep(rows: int = 64, classes: int = 4096, seed: int = 2) -> list[dict]:
    """KL relative error vs float64 as Q approaches P (``q = p + eps * noise``)."""
    from tests import reference

    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, classes)).astype(np.float32)
    noise = rng.standard_normal((rows, classes))
    out = []
    for eps in CLOSENESS:
        q = (p + eps * noise).astype(np.float32)
        want = reference.kl(p, q)
        row = {"eps": eps, "kl": float(np.median(want))}
        for impl in ("jaxdiv", "optax", "numpy"):
            got = np.asarray(FORWARD["kl"][impl](p, q), np.float64)
            row[impl] = float(np.max(np.abs(got - want) / want))
            row[impl + "_negative"] = int(np.sum(got < 0))
        out.append(row)
    return out
