r"""The cross-entropy kernel behind every label loss: integer or soft targets, one pass.

For logits :math:`x` (optionally soft-capped), :math:`Q = \mathrm{softmax}(x)` and
a target (an integer label :math:`y`, or probabilities :math:`t`), one pass over
the classes gives the per-row statistics that every option of
:func:`jaxdiv.losses.softmax_cross_entropy` is assembled from:

* ``nll``: :math:`-\log Q_y`, or :math:`\sum_c w_c t_c (-\log Q_c)` for soft targets;
* ``log_normaliser``: :math:`\log \sum_c e^{x_c}` (what z-loss squares);
* ``uniform_nll``: :math:`\frac{1}{n}\sum_{c: x_c > -\infty} w_c (-\log Q_c)`, the
  cross-entropy against the uniform distribution over the ``n`` classes the
  model can predict (label smoothing's second part), from the normaliser and
  the row sum of the logits: no one-hot or smoothed target is ever built;
* ``top1``: 1 where the label is an arg max of the logits (accuracy, for free:
  the label's centred logit is 0).

Each :math:`-\log Q_c = \log(1 + \sum_{j \ne j^*} e^{x_j - m}) - (x_c - m)` is a
sum of non-negative parts, so confident predictions keep full accuracy.

Rows dropped by ``valid`` (masked or ignored positions) are never read: their
statistics are 0 (``log_normaliser`` ``-inf``) and their gradient is exactly 0.
The closed-form tangents are ``d log_normaliser = <Q, dx>``,
``d nll = d log_normaliser - dx_y`` (soft: ``<w t, d log_normaliser - dx>``),
and likewise for ``uniform_nll``; only the per-row statistics are kept for the
backward pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxdiv import _online
from jaxdiv._numerics import (
    class_index,
    class_offset,
    custom_jvp_over_classes,
    finite_or_zero,
    invalid,
    log_normaliser,
    map_rows,
    num_classes,
    promote,
    row_max,
    row_stats,
    row_sum,
)
from jaxdiv._pallas import RowPass, cotangent_times, differentiable

Array = jax.Array


class LabelStats(NamedTuple):
    """Per-row statistics of :func:`label_stats`, all of the batch shape."""

    nll: Array             # -log Q_y (soft: sum_c w_c t_c (-log Q_c)); 0 at dropped rows
    log_normaliser: Array  # log sum exp(x); -inf at dropped rows and rows without support
    uniform_nll: Array     # sum_{x_c > -inf} w_c (-log Q_c) / n; 0 unless smoothing is asked
    top1: Array            # 1.0 where the label is an arg max of the logits, else 0.0
    # With smoothing: the finite logits' count and class weight, kept so that
    # the backward pass need not read the logits again for them.
    count: Optional[Array] = None
    total_weight: Optional[Array] = None


def _softcap(x: Array, cap: Optional[float]) -> Array:
    """``cap * tanh(x / cap)``; ``-inf`` stays ``-inf`` (zero probability) and ``+inf``, NaN stay invalid."""
    if cap is None:
        return x
    return jnp.where(jnp.abs(x) < jnp.inf, cap * jnp.tanh(x / cap), x)


def _softcap_slope(x: Array, cap: Optional[float]) -> Array:
    """d softcap / dx = 1 - tanh^2, and 0 at infinite logits."""
    t = jnp.tanh(jnp.where(jnp.abs(x) < jnp.inf, x, 0.0) / cap)
    return jnp.where(jnp.abs(x) < jnp.inf, 1.0 - t * t, 0.0)


def _prepare(x: Array, valid: Optional[Array], cap: Optional[float]) -> Array:
    x = _softcap(x, cap)
    if valid is None:
        return x
    return jnp.where(valid[..., None], x, -jnp.inf)


def _rows(cap, smoothing, weights, x, target, valid=None) -> LabelStats:
    x = _prepare(x, valid, cap)
    norm = log_normaliser(x)
    has_mass = norm.log_sum > -jnp.inf
    bad = invalid(norm.log_sum)
    if jnp.issubdtype(target.dtype, jnp.integer):
        in_range = (target >= 0) & (target < num_classes(x.shape[-1]))
        # Picked from x, then centred: a gather out of the centred logits would
        # have the TPU store them whole (the same float either way). With the
        # classes split over devices, the device holding the label supplies it.
        local = target - class_offset(x.shape[-1], target.dtype)
        owned = (local >= 0) & (local < x.shape[-1])
        index = jnp.clip(local, 0, max(x.shape[-1] - 1, 0))[..., None]
        picked = jnp.take_along_axis(x, index, axis=-1)
        picked = row_max(jnp.where(owned[..., None], picked, -jnp.inf)) - norm.shift
        finite = picked > -jnp.inf
        nll = jnp.where(finite, norm.log_sum - jnp.where(finite, picked, 0.0), jnp.inf)
        nll = jnp.where(jnp.isfinite(norm.log_sum), nll, jnp.inf)
        nll = jnp.where(in_range, nll, jnp.nan)
        top1 = (picked == 0) & in_range
    else:
        read = x > -jnp.inf
        weighted = target if weights is None else target * weights
        neg_log_q = jnp.where(read, norm.log_sum[..., None] - jnp.where(read, norm.centred, 0.0), jnp.inf)
        # 0 * log 0 = 0: a zero target contributes nothing, whatever Q_c is.
        nll = row_sum(jnp.where(weighted != 0, weighted * neg_log_q, 0.0))
        top1 = row_max(jnp.where(norm.centred == 0, target, -jnp.inf)) >= row_max(target)
    if smoothing:
        read = x > -jnp.inf
        count = row_sum(read.astype(x.dtype))
        centred = jnp.where(read, norm.centred, 0.0)
        if weights is None:
            total_weight, weighted_centred = count, row_sum(centred)
        else:
            w = jnp.where(read, weights, 0.0)
            total_weight, weighted_centred = row_sum(w), row_sum(w * centred)
        # sum_c w_c (log_sum - centred_c): both parts are >= 0, nothing cancels.
        uniform = (total_weight * norm.log_sum - weighted_centred) / jnp.maximum(count, 1.0)
        uniform = jnp.where(has_mass, uniform, 0.0)
        smoothing_sums = (count, total_weight)
    else:
        uniform = jnp.zeros_like(norm.log_sum)
        smoothing_sums = (None, None)
    lse = norm.shift + norm.log_sum
    if valid is not None:
        nll = jnp.where(valid, nll, 0.0)
        top1 = top1 & valid
    nll = jnp.where(bad, jnp.nan, nll)
    uniform = jnp.where(bad, jnp.nan, uniform)
    return LabelStats(nll, lse, uniform, top1.astype(x.dtype), *smoothing_sums)


def _label_stats(cap, smoothing, logits, target, valid, weights) -> LabelStats:
    rows = functools.partial(_rows, cap, smoothing, weights)
    if valid is None:
        return map_rows(rows, logits, target)
    return map_rows(rows, logits, target, valid)


# Closed forms (Q - onehot, Q - t, Q - uniform) instead of autodiff through the
# selects, which would leak NaN at -inf logits and store [..., C] intermediates.
def _label_stats_jvp(cap, smoothing, primals, tangents):
    logits, target, valid, weights = primals
    dlogits = tangents[0]
    stats = row_stats(_label_stats(cap, smoothing, logits, target, valid, weights))
    if isinstance(dlogits, SymbolicZero):
        return stats, jax.tree.map(jnp.zeros_like, stats)
    logits, target = promote(logits), promote(target)
    x = _prepare(logits, valid, cap)
    if cap is not None:
        dlogits = dlogits * _softcap_slope(logits, cap)
    if valid is not None:
        dlogits = jnp.where(valid[..., None], dlogits, 0.0)
    probs = jnp.exp(x - finite_or_zero(stats.log_normaliser)[..., None])
    d_lse = row_sum(probs * dlogits)
    if jnp.issubdtype(target.dtype, jnp.integer):
        # onehot as a compare, not a gather: its transpose is then an elementwise
        # loop fused with the softmax, not a scatter into the gradient.
        iota = class_index(x.shape, target.dtype)
        d_picked = row_sum(jnp.where(iota == target[..., None], dlogits, 0.0))
        in_range = (target >= 0) & (target < num_classes(x.shape[-1]))
        # An out-of-range label poisons its own row's gradient, linearly.
        d_nll = (d_lse - d_picked) * jnp.where(in_range, 1.0, jnp.nan)
    else:
        weighted = target if weights is None else target * weights
        d_nll = row_sum(weighted) * d_lse - row_sum(weighted * dlogits)
    zero = jnp.zeros_like(d_lse)
    if smoothing:
        read = x > -jnp.inf
        w = read.astype(x.dtype) if weights is None else jnp.where(read, weights, 0.0)
        d_uniform = (stats.total_weight * d_lse - row_sum(w * dlogits)) / jnp.maximum(stats.count, 1.0)
        tangent = LabelStats(d_nll, d_lse, d_uniform, zero, zero, zero)
    else:
        tangent = LabelStats(d_nll, d_lse, zero, zero)
    return stats, tangent


_label_stats_over = custom_jvp_over_classes(_label_stats, _label_stats_jvp)


def label_stats(
    logits: Array,
    target: Array,
    *,
    valid: Optional[Array] = None,
    weights: Optional[Array] = None,
    softcap: Optional[float] = None,
    smoothing: bool = False,
    axis_name: Optional[str] = None,
) -> LabelStats:
    """Per-row :class:`LabelStats` of ``logits`` ``[..., C]`` against ``target``.

    Args:
      logits: prepared logits, class axis last, float32 or float64.
      target: integer labels of the batch shape, or target probabilities of the
        logits' shape (not differentiated).
      valid: optional boolean of the batch shape; False rows are dropped.
      weights: optional class weights ``[C]`` (not differentiated).
      softcap: ``cap`` of ``cap * tanh(x / cap)``, applied to the logits first.
      smoothing: whether to compute ``uniform_nll``.
      axis_name: the mesh axis the classes are split over (inside ``shard_map``).
    """
    return _label_stats_over(axis_name, softcap, smoothing)(logits, target, valid, weights)


# ---------------------------------------------- one pass over the logits (Pallas)


def _one_pass_step(cap):
    def step(state, tiles, cols, args, classes):
        labels, valid = args
        x = jnp.where(valid > 0, _softcap(tiles[0], cap), -jnp.inf)
        return _online.label_update(state, x, cols, labels, classes)
    return step


def _one_pass_rows(cap, x, labels, valid):
    stats = _label_stats(cap, True, x, labels, valid > 0, None)
    # The XLA kernel zeroes dropped rows itself; the kernel's caller does (see below).
    nll = jnp.where(valid > 0, stats.nll, jnp.inf)
    return nll, stats.log_normaliser, stats.uniform_nll, stats.top1, stats.count


def _one_pass_backward(cap, arrays, args, results, cotangents):
    """The transpose of :func:`_label_stats_jvp` (integer labels, no class weights)."""
    (logits,) = arrays
    labels, valid = args
    nll, lse, uniform, _, count = results
    g_nll, g_lse, g_uniform = (c[..., None] for c in cotangents[:3])
    raw = promote(logits)
    x = jnp.where(valid[..., None] > 0, _softcap(raw, cap), -jnp.inf)
    probs = jnp.exp(x - finite_or_zero(lse)[..., None])
    n = jnp.maximum(count, 1.0)[..., None]
    onehot = class_index(x.shape, labels.dtype) == labels[..., None]
    # An out-of-range label poisons its own row's gradient, as in the XLA path.
    in_range = (labels >= 0) & (labels < x.shape[-1])
    d_nll = jnp.where(in_range[..., None], probs - onehot, jnp.nan)
    d_uniform = (count[..., None] / n) * probs - jnp.where(x > -jnp.inf, 1.0, 0.0) / n
    grad = sum(cotangent_times(g, d) for g, d in
               ((g_nll, d_nll), (g_lse, probs), (g_uniform, d_uniform)))
    if cap is not None:
        grad = grad * _softcap_slope(raw, cap)
    return (jnp.where(valid[..., None] > 0, grad, 0.0).astype(logits.dtype),), (None, None)


@functools.lru_cache(maxsize=None)
def _one_pass(cap):
    stat = RowPass(_online.label_init, _one_pass_step(cap), _online.label_finish,
                   functools.partial(_one_pass_rows, cap))
    return differentiable(stat, functools.partial(_one_pass_backward, cap))


def label_stats_one_pass(
    logits: Array,
    labels: Array,
    *,
    valid: Optional[Array] = None,
    softcap: Optional[float] = None,
) -> LabelStats:
    """:func:`label_stats` for integer labels without class weights, in one Pallas pass.

    Raises ``NotImplementedError`` where the kernels do not apply (see
    :func:`jaxdiv._pallas.row_pass`). ``uniform_nll`` is always computed (it
    costs no exponential).
    """
    batch = logits.shape[:-1]
    labels = jnp.broadcast_to(labels, batch).astype(jnp.int32)
    valid_rows = jnp.ones(batch, jnp.float32) if valid is None else jnp.broadcast_to(valid, batch).astype(jnp.float32)
    nll, lse, uniform, top1, count = _one_pass(softcap)((logits,), (labels, valid_rows))
    if valid is not None:
        nll = jnp.where(valid, nll, 0.0)
    return LabelStats(nll, lse, uniform, top1, count, count)
