"""Per-position reductions and the cross-entropy assembly shared by :mod:`jaxdiv.losses` and :mod:`jaxdiv.fused`.

A loss is a value per position (token, example) that is reduced over the
valid positions; both public loss modules reduce and assemble options the same
way, from this one place.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv import _checks

Array = jax.Array

REDUCTIONS = ("none", "sum", "mean")
DISTILLATION_KINDS = ("forward_kl", "reverse_kl", "jsd")


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den``, and 0 (with a zero gradient) where ``den`` is 0: an empty batch.

    A NaN numerator or denominator (an out-of-range label's weight) stays NaN.
    """
    ok = den > 0
    empty = (den == 0) & ~jnp.isnan(num)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.where(empty, 0.0, jnp.nan))


def reduce_positions(values: Array, weights: Array, reduction: str) -> Array:
    """Reduce per-position ``values`` (already 0 at masked positions)."""
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    return safe_divide(total, jnp.sum(weights))


def counts(valid: Optional[Array], shape, dtype) -> Array:
    """1 at valid positions, 0 at masked ones."""
    if valid is None:
        return jnp.ones(shape, dtype)
    return valid.astype(dtype)


def is_static_zero(value) -> bool:
    """A hyperparameter known at trace time to be 0: its term is left out of the graph."""
    return _checks._is_concrete(value) and float(value) == 0.0


class CrossEntropyAux(NamedTuple):
    """Auxiliary outputs of :func:`jaxdiv.losses.softmax_cross_entropy` (``return_aux=True``).

    Attributes:
      log_normaliser: :math:`\\log\\sum_c e^{x_c}` per position (after the
        soft-cap; 0 at masked or ignored positions), the quantity z-loss keeps
        near 0. Differentiable.
      z_loss: the z-loss part of the loss, reduced like the loss (so the
        cross-entropy part is ``loss - aux.z_loss``).
      accuracy: whether the label is an arg max of the logits (soft labels: a
        class of largest target probability), reduced like the loss over the
        valid positions, unweighted: a fraction for ``"mean"``, a count for
        ``"sum"``, 0/1 per position for ``"none"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 3.0]])
      >>> loss, aux = losses.softmax_cross_entropy(logits, jnp.array([0, 0]), return_aux=True)
      >>> print(f"{aux.accuracy:.2f}")  # the first label is the arg max, the second is not
      0.50
    """

    log_normaliser: Array
    z_loss: Array
    accuracy: Array


def softcap_value(logit_softcap) -> Optional[float]:
    if logit_softcap is None:
        return None
    if not _checks._is_concrete(logit_softcap):
        raise TypeError(
            f"logit_softcap must be a Python number (it is static), got {logit_softcap!r}."
        )
    _checks.scalar_parameter(logit_softcap, "logit_softcap", 0.0, np.inf, open_low=True, open_high=True)
    return float(logit_softcap)


def cross_entropy_from_stats(
    stats, valid, batch, dtype, *, label_weight, label_smoothing, smoothing, z_loss,
    reduction, return_aux, integer=True,
):
    """The loss of :func:`jaxdiv.losses.softmax_cross_entropy` from its per-row :class:`~jaxdiv._labels.LabelStats`.

    Shared with :func:`jaxdiv.fused.linear_cross_entropy`, whose kernel produces
    the same statistics without materialising the logits, so that both losses
    have one definition of every option.
    """
    valid_counts = counts(valid, batch, dtype)
    label_weight = valid_counts if label_weight is None else label_weight * valid_counts
    eps = jnp.asarray(label_smoothing, dtype)
    coef = (1.0 - eps) * (label_weight if integer else valid_counts)
    # coef = 0 (eps = 1, a zero class weight, a masked row) switches the term
    # off even where -log Q_y is +inf; a NaN (an out-of-range label, NaN
    # logits, a negative class weight) stays, whatever weight its clamped
    # label happened to pick.
    xent = jnp.where(coef > 0, coef * stats.nll,
                     jnp.where(jnp.isnan(stats.nll) | jnp.isnan(coef), jnp.nan, 0.0))
    if smoothing:
        xent = xent + eps * stats.uniform_nll
    lse = jnp.where(valid_counts > 0, stats.log_normaliser, 0.0)
    if is_static_zero(z_loss):
        z_term = jnp.zeros_like(xent)
    else:
        z_term = z_loss * jnp.square(jnp.where(jnp.isfinite(lse), lse, 0.0)) * valid_counts

    if reduction == "mean":
        loss = reduce_positions(xent, label_weight, "mean") + reduce_positions(z_term, valid_counts, "mean")
    else:
        loss = reduce_positions(xent + z_term, valid_counts, reduction)
    if not return_aux:
        return loss
    aux = CrossEntropyAux(
        log_normaliser=lse,
        z_loss=reduce_positions(z_term, valid_counts, reduction),
        accuracy=reduce_positions(stats.top1, valid_counts, reduction),
    )
    return loss, aux
