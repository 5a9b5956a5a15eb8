"""Fused linear-head losses (``jaxdiv.fused``) against materialising the logits.

A case is a loss of a linear head ``hidden [N, D] @ weight [D, V]`` at one
shape ``N x D x V``. Implementations:

* ``fused``: :mod:`jaxdiv.fused` (vocabulary chunks, logits never materialised);
* ``materialised``: ``hidden @ weight`` then the same loss from
  :mod:`jaxdiv.losses` (what the fused loss must equal, and beat on memory);
* ``optax``: ``hidden @ weight`` then optax's cross-entropy, the usual JAX code.

``fwd+bwd`` is a training step's work: the loss and the gradients with respect
to the hidden states and the weight.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.cases import Prepared
from jaxdiv import fused, losses

TEMPERATURE = 2.0


@dataclasses.dataclass(frozen=True)
class LinearKernel:
    impls: dict            # impl -> loss(hidden, weight, target)
    target: str            # "labels" or "teacher" (logits)
    reference: Callable    # float64 NumPy: (h, w, target) -> (loss, d_hidden, d_weight)
    note: str = ""


def _softmax64(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _ce_reference(h, w, labels):
    logits = h @ w
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    rows = np.arange(len(labels))
    loss = np.mean(lse - logits[rows, labels])
    g = _softmax64(logits)
    g[rows, labels] -= 1.0
    g /= len(labels)
    return loss, g @ w.T, h.T @ g


def _distill_reference(h, w, teacher):
    s, p = _softmax64(h @ w / TEMPERATURE), _softmax64(teacher / TEMPERATURE)
    log_s = np.log(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - log_s), 0.0).sum(-1)
    loss = TEMPERATURE**2 * kl.mean()
    g = TEMPERATURE * (s - p) / len(h)
    return loss, g @ w.T, h.T @ g


def _optax_ce(h, w, labels):
    import optax

    logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


LINEAR_KERNELS = {
    "linear_ce": LinearKernel(
        impls={
            "fused": lambda h, w, y: fused.linear_cross_entropy(h, w, y),
            "materialised": lambda h, w, y: losses.softmax_cross_entropy(h @ w, y),
            "optax": _optax_ce,
        },
        target="labels",
        reference=_ce_reference,
        note="integer-label cross-entropy, mean over tokens",
    ),
    "linear_distill": LinearKernel(
        impls={
            "fused": lambda h, w, t: fused.linear_distillation_loss(h, w, t, temperature=TEMPERATURE),
            "materialised": lambda h, w, t: losses.distillation_loss(h @ w, t, temperature=TEMPERATURE),
        },
        target="teacher",
        reference=_distill_reference,
        note=f"forward KL(teacher || student) x T^2 at T = {TEMPERATURE:g}, teacher given as logits",
    ),
}
LINEAR_IMPLS = ("fused", "materialised", "optax")


@dataclasses.dataclass
class LinearInputs:
    shape: tuple   # (N, D, V)
    dtype: str
    args: tuple    # (hidden, weight, target)


def make_linear_inputs(kernel: str, shape, dtype: str = "float32", seed: int = 0) -> LinearInputs:
    """Hidden states ~ N(0, 1), weight ~ N(0, 1/D) (logits of order 1), random labels or teacher logits."""
    n, d, v = shape
    kh, kw, kt = jax.random.split(jax.random.key(seed), 3)
    dt = jnp.dtype(dtype)
    hidden = jax.random.normal(kh, (n, d), jnp.float32).astype(dt)
    weight = (jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)).astype(dt)
    if LINEAR_KERNELS[kernel].target == "labels":
        target = jax.random.randint(kt, (n,), 0, v)
    else:
        target = (2.0 * jax.random.normal(kt, (n, v), jnp.float32)).astype(dt)
    return LinearInputs(tuple(shape), dtype, (hidden, weight, target))


def linear_function(kernel: str, impl: str, mode: str) -> Optional[Callable]:
    loss = LINEAR_KERNELS[kernel].impls.get(impl)
    if loss is None:
        return None
    if mode == "fwd":
        return loss
    return jax.value_and_grad(loss, argnums=(0, 1))


def prepare_linear(kernel: str, impl: str, mode: str, inputs: LinearInputs) -> Optional[Prepared]:
    """The compiled call of one case with XLA's temporary and peak memory; None if it does not exist."""
    fn = linear_function(kernel, impl, mode)
    if fn is None:
        return None
    compiled = jax.jit(fn).lower(*inputs.args).compile()
    prepared = Prepared([lambda: jax.block_until_ready(compiled(*inputs.args))])
    stats = compiled.memory_analysis()
    if stats is not None:
        prepared.temp_bytes = int(stats.temp_size_in_bytes)
        prepared.peak_bytes = int(getattr(stats, "peak_memory_in_bytes", 0)) or int(
            stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        )
    return prepared


ACCURACY_SHAPE = (256, 128, 10007)   # a prime vocabulary: the last chunk never divides


def linear_accuracy(kernel: str, impl: str, dtype: str = "float32", shape=ACCURACY_SHAPE) -> Optional[dict]:
    """Relative errors of the loss and of the gradients against float64 on the same inputs.

    The gradient error is the largest over the two gradients of
    ``max |g - g_ref| / max |g_ref|`` (normwise, so tiny entries do not dominate).
    """
    fn = linear_function(kernel, impl, "fwd+bwd")
    if fn is None:
        return None
    inputs = make_linear_inputs(kernel, shape, dtype, seed=1)
    loss, grads = jax.jit(fn)(*inputs.args)
    as64 = [np.asarray(jnp.asarray(a, jnp.float32), np.float64) if jnp.issubdtype(a.dtype, jnp.floating)
            else np.asarray(a) for a in inputs.args]
    ref_loss, *ref_grads = LINEAR_KERNELS[kernel].reference(*as64)
    grad_err = max(
        float(np.max(np.abs(np.asarray(g, np.float64) - r)) / np.max(np.abs(r)))
        for g, r in zip(grads, ref_grads)
    )
    return {"rel_err_loss": abs(float(loss) - ref_loss) / abs(ref_loss), "rel_err_grads": grad_err}
