r"""Training losses built on jaxdiv's kernels: one line in a training step, correct at the corners.

Every loss here takes per-position inputs (a position is one example, one
token, one pixel: every index of the inputs but the class axis) and shares
these conventions:

* ``where`` is a boolean mask over **positions** (the batch shape, i.e. the
  logits' shape without the class axis), not over classes. Masked positions
  are never read (NaN there changes nothing), contribute 0 and get an exactly
  zero gradient. To remove classes, give them ``-inf`` logits.
* ``reduction``: ``"none"`` returns one value per position (0 at masked
  positions); ``"sum"`` sums them; ``"mean"`` (the default) divides that sum
  by the number of valid positions **across all leading dimensions** (the
  token mean of language modelling, not PyTorch's ``batchmean``, which
  divides by the first dimension only; for that, use ``"sum"`` and divide by
  the batch size). With class weights the cross-entropy mean is weighted (see
  :func:`softmax_cross_entropy`). A batch with no valid position gives 0 and a
  zero gradient, never NaN.
* Values are returned in ``result_type(dtype, float32)`` (a bfloat16 model
  gets a float32 loss); gradients come back in the input dtype.

No loss re-implements a kernel: cross-entropy uses the label kernel of
:func:`jaxdiv.cross_entropy_with_integer_labels`, distillation and the exact KL
penalty the categorical KL and Jensen-Shannon kernels, Bernoulli KL the
categorical KL on two classes, and the VAE term :mod:`jaxdiv.gaussian`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv import _checks, gaussian
from jaxdiv._dispatch import eager_jit
from jaxdiv._labels import label_stats, label_stats_one_pass
from jaxdiv._pallas import check_implementation, choose
from jaxdiv._reductions import (
    DISTILLATION_KINDS as _KINDS,
    REDUCTIONS as _REDUCTIONS,
    CrossEntropyAux,
    counts as _counts,
    cross_entropy_from_stats as _cross_entropy_from_stats,
    is_static_zero as _is_static_zero,
    reduce_positions as _reduce,
    safe_divide as _safe_divide,
    softcap_value as _softcap_value,
)
from jaxdiv._numerics import check_axis_name, difference, expm1mx
from jaxdiv.categorical import _scaled_kl, _scaled_kl_one_pass, _tempered
from jaxdiv.f_divergences import js_divergence

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "CrossEntropyAux",
    "binary_cross_entropy",
    "distillation_loss",
    "kl_penalty",
    "kl_penalty_from_logits",
    "softmax_cross_entropy",
    "vae_kl",
]



# --------------------------------------------------------------- cross-entropy


def _class_weights(class_weights, num_classes: int, dtype) -> Optional[Array]:
    if class_weights is None:
        return None
    w = _checks.weights(class_weights, "class_weights")
    if w.shape != (num_classes,):
        raise ValueError(
            f"expected class_weights of shape ({num_classes},) (one per class), "
            f"got shape {tuple(w.shape)}."
        )
    return jax.lax.stop_gradient(w.astype(dtype))


def _label_weight(weights: Array, target: Array) -> Array:
    """``weights[target]``, NaN for a label outside ``[0, C)``: indexing would clamp
    it onto the last class and hide the NaN of its loss behind that class's weight."""
    in_range = (target >= 0) & (target < weights.shape[0])
    return jnp.where(in_range, weights[jnp.clip(target, 0, weights.shape[0] - 1)], jnp.nan)


@eager_jit
def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: Optional[float] = None,
    class_weights: Optional[ArrayLike] = None,
    reduction: str = "mean",
    return_aux: bool = False,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
):
    r"""Softmax cross-entropy with the options training code needs, in one pass over the logits.

    With :math:`x` the logits (soft-capped to :math:`c \tanh(x / c)` when
    ``logit_softcap = c``), :math:`Q = \mathrm{softmax}(x)`, label :math:`y`,
    smoothing :math:`\varepsilon`, class weights :math:`w` and the :math:`n`
    classes whose logit is not ``-inf``, the loss at one position is

    .. math::
      \ell = (1 - \varepsilon)\, w_y (-\log Q_y)
        + \frac{\varepsilon}{n} \sum_{c: x_c > -\infty} w_c (-\log Q_c)
        + \lambda_z \Big(\log \sum_c e^{x_c}\Big)^2,

    which is the textbook (and PyTorch) label smoothing, cross-entropy against
    :math:`(1 - \varepsilon)\,\mathrm{onehot}(y) + \varepsilon\,\mathrm{uniform}`,
    computed from the log-normaliser and the row sum of the logits (no
    one-hot or smoothed target is built), plus the z-loss of PaLM. For soft
    labels (floating ``labels`` of the logits' shape, probabilities :math:`t`)
    the first term is :math:`(1 - \varepsilon) \sum_c w_c t_c (-\log Q_c)`.

    The uniform part spans the classes whose logit is not ``-inf``: a class
    given ``-inf`` (a padded vocabulary entry) is outside the model's support
    and takes no smoothing mass, so the loss and its gradient stay finite
    where the textbook formula (and PyTorch) give ``inf``. With all logits
    finite, :math:`n = C` and the two agree.

    ``reduction="mean"`` divides the cross-entropy part by
    :math:`\sum_i w_{y_i}` over the valid positions (masked by ``where`` or
    labelled ``ignore_index`` are not valid), i.e. by their number when there
    are no class weights, as PyTorch does; the z-loss part by the number of
    valid positions. Soft labels divide by the number of valid positions.

    Args:
      logits: ``[..., C, ...]``, class axis ``axis``; any real value or
        ``-inf`` (a class the model cannot predict).
      labels: integer class indices of the logits' shape without the class
        axis, or floating target probabilities of the logits' shape
        (broadcastable; not differentiated).
      axis: the class axis of ``logits``.
      where: boolean mask over positions (the batch shape); False positions are
        not read and do not count.
      ignore_index: integer labels equal to it are ignored like masked
        positions (PyTorch's ``-100`` convention, say).
      label_smoothing: :math:`\varepsilon \in [0, 1]`.
      z_loss: :math:`\lambda_z \ge 0`, the weight of the squared log-normaliser.
      logit_softcap: :math:`c > 0` (a Python number), or None for no cap.
      class_weights: ``[C]`` non-negative weights :math:`w` (not differentiated);
        a negative or NaN weight makes the loss NaN.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``, see above.
      return_aux: also return a :class:`CrossEntropyAux`.
      axis_name: inside ``jax.shard_map`` with the class axis split over this
        mesh axis (vocabulary parallelism): per-row statistics are combined
        across it (``lax.pmax`` / ``lax.psum`` of per-row scalars); None: whole
        rows. ``class_weights`` are then this device's slice of them.
      implementation: ``"xla"`` (default) or ``"pallas"``: one pass over the
        logits in a Pallas kernel on GPU and TPU (integer labels without
        class weights; otherwise, on the CPU, and with ``axis_name``, the XLA
        path). Reverse-mode differentiation only.

    Returns:
      the loss (a scalar, or the batch shape for ``"none"``, 0 at masked and
      ignored positions), in ``result_type(dtype, float32)``; with
      ``return_aux``, ``(loss, aux)``. A label outside ``[0, C)`` that is not
      ``ignore_index`` gives NaN (values cannot raise under ``jit``; see
      :func:`jaxdiv.validate_labels`); a label whose logit is ``-inf`` gives
      ``+inf``.

    Gradient with respect to the logits, per position (before the soft-cap's
    :math:`1 - \tanh^2` factor):
    :math:`(1 - \varepsilon) w_y (Q - \mathrm{onehot}(y)) + \frac{\varepsilon}{n}(W Q - w \odot [x > -\infty]) + 2 \lambda_z \log\!\sum e^{x}\, Q`
    with :math:`W = \sum_{x_c > -\infty} w_c`, divided by the reduction's
    denominator; exactly 0 at ``-inf`` logits and at masked or ignored positions.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
      >>> labels = jnp.array([0, 1, -100])
      >>> loss = losses.softmax_cross_entropy(logits, labels, ignore_index=-100)
      >>> print(f"{loss:.6f}")  # mean of the two valid rows
      0.395495
      >>> loss, aux = losses.softmax_cross_entropy(
      ...     logits, labels, ignore_index=-100, label_smoothing=0.1, z_loss=1e-4,
      ...     return_aux=True)
      >>> print(f"{loss:.6f} {aux.accuracy:.2f}")
      0.495866 1.00
    """
    check_axis_name(axis_name)
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    label_smoothing = _checks.scalar_parameter(
        label_smoothing, "label_smoothing", 0.0, 1.0, open_low=False, open_high=False)
    z_loss = _checks.scalar_parameter(z_loss, "z_loss", 0.0, np.inf, open_low=False, open_high=True)
    cap = _softcap_value(logit_softcap)
    labels = jnp.asarray(labels)
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    if integer:
        (x,), num_classes = _checks.logits((logits,), ("logits",), axis=axis, where=None)
        target = _checks.integer_labels(labels, x.shape[:-1], jnp.shape(logits))
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        logits_shape = jnp.shape(logits)
        batch_of_logits = (
            tuple(np.delete(logits_shape, axis)) if -len(logits_shape) <= axis < len(logits_shape) else None)
        if labels.shape == batch_of_logits:
            raise TypeError(
                f"floating labels are soft labels (target probabilities of the logits' shape "
                f"{tuple(logits_shape)}), got labels shape {labels.shape} of dtype {labels.dtype}: "
                "class indices must be an integer array (labels.astype(int))."
            )
        if ignore_index is not None:
            raise ValueError(
                "ignore_index applies to integer labels; got floating (soft) labels "
                f"of dtype {labels.dtype}. Use where= to mask positions."
            )
        (x, target), num_classes = _checks.logits(
            (logits, labels), ("logits", "labels"), axis=axis, where=None
        )
        target = jax.lax.stop_gradient(target)
    else:
        raise TypeError(
            "labels must be integer class indices or floating-point target "
            f"probabilities, got dtype {labels.dtype}."
        )
    batch = x.shape[:-1]
    dtype = jnp.result_type(x.dtype, jnp.float32)   # 16-bit logits: a float32 loss
    valid = _checks.positions(
        where, batch, f"the logits shape {tuple(jnp.shape(logits))} without its class axis"
    )
    if ignore_index is not None:
        kept = target != ignore_index
        valid = kept if valid is None else valid & kept
    if integer and valid is not None:
        target = jnp.where(valid, target, 0)
    weights = _class_weights(class_weights, num_classes, dtype)
    smoothing = not _is_static_zero(label_smoothing)

    def one_pass():
        if not integer or weights is not None or axis_name is not None:
            raise NotImplementedError("the Pallas kernel takes integer labels, no class weights, whole rows")
        return label_stats_one_pass(x, target, valid=valid, softcap=cap)

    def xla():
        return label_stats(
            x, target, valid=valid, weights=weights, softcap=cap, smoothing=smoothing, axis_name=axis_name)

    stats = choose(implementation, one_pass, xla)

    return _cross_entropy_from_stats(
        stats, valid, batch, dtype,
        label_weight=None if (weights is None or not integer) else _label_weight(weights, target),
        label_smoothing=label_smoothing, smoothing=smoothing, z_loss=z_loss,
        reduction=reduction, return_aux=return_aux, integer=integer,
    )


# ---------------------------------------------------------------- distillation



@eager_jit
def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    beta: float = 0.5,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
    teacher_gradient: bool = False,
    axis_name: Optional[str] = None,
    implementation: str = "xla",
) -> Array:
    r"""Knowledge-distillation loss between a student's and a teacher's logits.

    With :math:`S = \mathrm{softmax}(s / T)`, :math:`P = \mathrm{softmax}(t / T)`
    (student and teacher at temperature :math:`T`), per position

    * ``"forward_kl"``: :math:`T^2\, KL(P \| S)`, mass-covering (Hinton et al., 2015);
    * ``"reverse_kl"``: :math:`T^2\, KL(S \| P)`, mode-seeking (MiniLLM);
    * ``"jsd"``: :math:`T^2\, JS_\beta(P, S) = T^2 [\beta KL(P \| M) + (1-\beta) KL(S \| M)]`,
      :math:`M = \beta P + (1 - \beta) S`, the generalised JSD of on-policy
      distillation (Agarwal et al., 2024): bounded (by
      :math:`T^2 h(\beta)`), finite for disjoint supports;
      :math:`JS_\beta / \beta \to KL(P \| S)` as :math:`\beta \to 0` and
      :math:`JS_\beta / (1 - \beta) \to KL(S \| P)` as :math:`\beta \to 1`.

    The factor :math:`T^2` is Hinton et al.'s: the gradient of the softened
    divergence shrinks like :math:`1 / T^2`, so the scaled loss keeps its
    gradient magnitude as :math:`T` changes and can be mixed with a
    label loss at a fixed weight.

    Each term is the accurate kernel of :func:`jaxdiv.kl_divergence` or
    :func:`jaxdiv.js_divergence` (exact 0 for equal logits, no cancellation
    late in training, ``-inf`` logits allowed).

    Args:
      student_logits: ``[..., C, ...]``.
      teacher_logits: the same shape (broadcastable); receives no gradient
        unless ``teacher_gradient=True``.
      temperature: :math:`T > 0`.
      kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
      beta: :math:`\beta \in (0, 1)` for ``"jsd"`` (the teacher's weight in
        the mixture); ignored otherwise.
      axis: the class axis.
      where: boolean mask over positions (the batch shape).
      reduction: ``"mean"`` (over valid positions), ``"sum"`` or ``"none"``.
      teacher_gradient: let gradients flow into ``teacher_logits``.
      axis_name: the mesh axis the class axis is split over inside
        ``jax.shard_map``, as for :func:`softmax_cross_entropy`.
      implementation: ``"xla"`` (default) or ``"pallas"``: ``"forward_kl"``
        and ``"reverse_kl"`` in one pass over both logits (temperature and
        mask applied inside the kernel) and ``"jsd"`` (two sweeps, on the
        tempered logits) on GPU and TPU; the XLA path on the CPU and with
        ``axis_name``. Reverse mode only.

    Returns:
      the loss, in ``result_type(dtype, float32)``. ``+inf`` for
      ``"forward_kl"`` where the teacher has mass on a class whose student
      logit is ``-inf`` (and likewise for ``"reverse_kl"``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> student = jnp.array([[1.0, 0.0, -1.0]])
      >>> teacher = jnp.array([[2.0, 0.0, -2.0]])
      >>> print(f"{losses.distillation_loss(student, teacher, temperature=2.0):.6f}")
      0.241076
    """
    check_axis_name(axis_name)
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    kind = _checks.choice(kind, "kind", _KINDS)
    check_implementation(implementation)
    temperature = _checks.scalar_parameter(
        temperature, "temperature", 0.0, np.inf, open_low=True, open_high=True)
    if kind == "jsd":
        beta = _checks.scalar_parameter(beta, "beta", 0.0, 1.0, open_low=True, open_high=True)
    (s, t), _ = _checks.logits(
        (student_logits, teacher_logits), ("student_logits", "teacher_logits"),
        axis=axis, where=None,
    )
    batch = s.shape[:-1]
    valid = _checks.positions(
        where, batch, f"the logits shape {tuple(s.shape)} without its class axis"
    )
    if not teacher_gradient:
        t = jax.lax.stop_gradient(t)
    unit_temperature = _checks._is_concrete(temperature) and float(temperature) == 1.0
    # Differentiable: a learned temperature gets d/dT of T^2 D(softmax(t/T), softmax(s/T)).
    inverse = None if unit_temperature else 1.0 / jnp.asarray(temperature, jnp.result_type(s.dtype, jnp.float32))
    # A masked position is a row without support: 0, zero gradient, never read.
    # The KL kernel applies 1/T and the mask inside its row blocks; JS gets
    # tempered, masked logits.
    if kind in ("forward_kl", "reverse_kl"):
        p, q = (t, s) if kind == "forward_kl" else (s, t)

        def one_pass():
            if axis_name is not None:
                raise NotImplementedError("the Pallas kernels read whole rows; axis_name splits them")
            return _scaled_kl_one_pass(p, q, inverse, valid)

        value = choose(implementation, one_pass, lambda: _scaled_kl(axis_name)(p, q, inverse, valid))
    else:
        s, t = _tempered(s, inverse, valid), _tempered(t, inverse, valid)
        value = js_divergence(t, s, beta=beta, axis_name=axis_name, implementation=implementation)
    if not unit_temperature:
        value = value * jnp.square(jnp.asarray(temperature, value.dtype))
    return _reduce(value, _counts(valid, batch, value.dtype), reduction)


# ------------------------------------------------------------ RL KL penalties

_ESTIMATORS = ("k1", "k2", "k3")


@eager_jit
def kl_penalty(
    log_probs: ArrayLike,
    ref_log_probs: ArrayLike,
    *,
    estimator: str = "k3",
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
) -> Array:
    r"""Sampled estimate of :math:`KL(\pi \| \pi_{ref})` from the log-probabilities of sampled tokens.

    For tokens :math:`a \sim \pi` with :math:`r = \log \pi_{ref}(a) - \log \pi(a)`
    (Schulman, "Approximating KL divergence", 2020):

    * ``"k1"``: :math:`-r`. Unbiased, high variance, can be negative. As a
      term of the loss its gradient :math:`\nabla \log \pi(a)` has expectation
      0: it does not pull towards the reference (k1 belongs in the reward,
      where the KL enters through the policy gradient).
    * ``"k2"``: :math:`r^2 / 2`. Biased (exact to second order for nearby
      policies), low variance, ``>= 0``. As a loss its gradient
      :math:`-r \nabla \log \pi(a)` has expectation
      :math:`\nabla KL(\pi \| \pi_{ref})`: the right gradient for a reverse-KL
      penalty.
    * ``"k3"``: :math:`e^r - 1 - r`. Unbiased, ``>= 0``, low variance (GRPO's
      penalty). As a loss its gradient :math:`(1 - e^r) \nabla \log \pi(a)` has
      expectation :math:`\nabla KL(\pi_{ref} \| \pi)`: the *forward* KL's
      gradient, not that of the value it estimates.

    (Expectations over :math:`a \sim \pi`, i.e. on-policy samples.)

    ``k3`` is evaluated with an accurate :math:`e^r - 1 - r` (no cancellation
    for nearly equal policies, exactly 0 when they agree). Gradients flow
    into ``log_probs`` only; the reference is treated as a constant.

    For the exact per-token KL from full logits, see :func:`kl_penalty_from_logits`.

    Args:
      log_probs: :math:`\log \pi(a)` of the sampled tokens, any shape.
      ref_log_probs: :math:`\log \pi_{ref}(a)`, broadcastable against ``log_probs``.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      where: boolean mask over tokens (padding, prompt tokens).
      reduction: ``"mean"`` (over valid tokens), ``"sum"`` or ``"none"``.

    Returns:
      the penalty in nats. ``k3`` is ``+inf`` where :math:`\pi_{ref}(a) = 0 < \pi(a)`;
      equal log-probabilities (``-inf`` included) give 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> logp, ref = jnp.log(jnp.array([0.5, 0.2])), jnp.log(jnp.array([0.4, 0.2]))
      >>> print(f"{losses.kl_penalty(logp, ref, estimator='k3'):.6f}")  # (0.8 - 1 - log 0.8) / 2
      0.011572
    """
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    estimator = _checks.choice(estimator, "estimator", _ESTIMATORS)
    lp = _checks.float_array(log_probs, "log_probs")
    ref = _checks.float_array(ref_log_probs, "ref_log_probs")
    try:
        shape = np.broadcast_shapes(lp.shape, ref.shape)
    except ValueError:
        raise ValueError(
            f"expected log_probs and ref_log_probs that broadcast, got log_probs shape "
            f"{tuple(lp.shape)}, ref_log_probs shape {tuple(ref.shape)}."
        ) from None
    dtype = jnp.result_type(lp, ref)
    lp = jnp.broadcast_to(lp.astype(dtype), shape)
    ref = jax.lax.stop_gradient(jnp.broadcast_to(ref.astype(dtype), shape))
    valid = _checks.positions(where, shape, "one per sampled token")
    if valid is not None:
        lp, ref = jnp.where(valid, lp, 0.0), jnp.where(valid, ref, 0.0)
    r = difference(ref, lp, ref != lp)
    if estimator == "k1":
        value = -r
    elif estimator == "k2":
        value = 0.5 * jnp.square(r)
    else:
        value = expm1mx(r)
    return _reduce(value, _counts(valid, shape, dtype), reduction)


@eager_jit
def kl_penalty_from_logits(
    logits: ArrayLike,
    ref_logits: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
    axis_name: Optional[str] = None,
) -> Array:
    r"""The exact per-token :math:`KL(\pi \| \pi_{ref})` from full logits, reduced over tokens.

    :func:`jaxdiv.kl_divergence` of the policy's logits against the
    reference's (accurate down to KL ~ 1e-12, the regime of RLHF penalties),
    with the reference treated as a constant. Its gradient is the exact
    reverse-KL gradient that :func:`kl_penalty`'s ``"k2"`` estimates.

    Args:
      logits: the policy's logits ``[..., V, ...]``.
      ref_logits: the reference model's logits, the same shape.
      axis: the vocabulary axis.
      where: boolean mask over tokens (the batch shape).
      reduction: ``"mean"`` (over valid tokens), ``"sum"`` or ``"none"``.
      axis_name: the mesh axis the class axis is split over inside
        ``jax.shard_map``, as for :func:`softmax_cross_entropy`.

    Returns:
      The KL in nats, reduced over the valid tokens (a scalar), or per token
      for ``"none"``; 0 with a zero gradient when no token is valid.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> print(f"{losses.kl_penalty_from_logits(jnp.zeros(4), jnp.zeros(4)):.1f}")
      0.0
    """
    return distillation_loss(
        logits, ref_logits, kind="reverse_kl", axis=axis, where=where, reduction=reduction,
        axis_name=axis_name,
    )


# ---------------------------------------------------------------------- binary


@jax.custom_jvp
def _binary_cross_entropy(x: Array, y: Array, pos_weight: Array) -> Array:
    # y softplus(-x) + (1 - y) softplus(x), where 0 * softplus(+-inf) is 0.
    positive = jnp.where(y != 0, pos_weight * y * jax.nn.softplus(-x), 0.0)
    negative = jnp.where(y != 1, (1.0 - y) * jax.nn.softplus(x), 0.0)
    return positive + negative


# Closed form sigmoid(x) (w y + 1 - y) - w y: finite at x = +-inf, where the
# selects' autodiff would multiply a zero cotangent by an infinite softplus.
@_binary_cross_entropy.defjvp
def _binary_cross_entropy_jvp(primals, tangents):
    x, y, pos_weight = primals
    value = _binary_cross_entropy(x, y, pos_weight)
    slope = jax.nn.sigmoid(x) * (pos_weight * y + 1.0 - y) - pos_weight * y
    return value, slope * tangents[0]


@eager_jit
def binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: Optional[ArrayLike] = None,
    pos_weight: Optional[ArrayLike] = None,
    reduction: str = "mean",
) -> Array:
    r"""Sigmoid (binary) cross-entropy from logits, element by element.

    .. math::
      \ell = -w\, y \log \sigma(x) - (1 - y) \log(1 - \sigma(x))
           = w\, y\, \mathrm{softplus}(-x) + (1 - y)\, \mathrm{softplus}(x),

    with :math:`0 \cdot \infty = 0`: logits of ``+-inf`` (probabilities 1
    and 0) give exact values and the finite gradient
    :math:`\sigma(x)(w y + 1 - y) - w y` where PyTorch and distrax give NaN.
    Multi-label classification is this loss over a ``[..., labels]`` array.

    Args:
      logits: any shape; any real value or ``+-inf``.
      labels: targets in ``[0, 1]`` (soft labels allowed), broadcastable to
        ``logits``; not differentiated (for a divergence between two
        Bernoullis use :func:`jaxdiv.bernoulli_kl_divergence`).
      where: boolean mask over elements.
      pos_weight: :math:`w \ge 0`, the weight of positive examples (PyTorch's
        ``pos_weight``), broadcastable; 1 by default. NaN for the elements a
        negative weight applies to.
      reduction: ``"mean"`` (over valid elements), ``"sum"`` or ``"none"``.

    Returns:
      A float32 (or wider) scalar, or the loss per element for ``"none"`` (0
      where masked); NaN where a label lies outside ``[0, 1]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> x, y = jnp.array([jnp.inf, -jnp.inf, 0.0]), jnp.array([1.0, 0.0, 1.0])
      >>> print(losses.binary_cross_entropy(x, y, reduction="none"))  # 0, 0, log 2
      [0.        0.        0.6931472]
      >>> print(jax.grad(losses.binary_cross_entropy)(x, y))
      [ 0.          0.         -0.16666667]
    """
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    x = _checks.float_array(logits, "logits")
    y = _checks.float_array(labels, "labels", counts=True)   # 0/1 integer labels, as optax takes
    w = None if pos_weight is None else _checks.weights(pos_weight, "pos_weight")
    arrays = [("logits", x), ("labels", y)] + ([] if w is None else [("pos_weight", w)])
    try:
        shape = np.broadcast_shapes(*(a.shape for _, a in arrays))
    except ValueError:
        raise ValueError(
            "expected logits, labels and pos_weight that broadcast, got "
            + ", ".join(f"{n} shape {tuple(a.shape)}" for n, a in arrays) + "."
        ) from None
    if shape != x.shape:
        raise ValueError(
            f"labels and pos_weight must broadcast to the logits shape {tuple(x.shape)}, "
            f"got " + ", ".join(f"{n} shape {tuple(a.shape)}" for n, a in arrays[1:]) + "."
        )
    dtype = jnp.result_type(*(a for _, a in arrays))
    x = x.astype(dtype)
    y = jax.lax.stop_gradient(jnp.broadcast_to(y.astype(dtype), shape))
    w = jnp.ones((), dtype) if w is None else jax.lax.stop_gradient(w.astype(dtype))
    w = jnp.broadcast_to(w, shape)
    valid = _checks.positions(where, shape, "one per element of the logits")
    if valid is not None:
        x, y = jnp.where(valid, x, 0.0), jnp.where(valid, y, 0.0)
        w = jnp.where(valid, w, 0.0)
    # A label outside [0, 1] or an invalid (NaN, negative) weight: NaN for the
    # element, value and gradient, through its label.
    y = jnp.where((y >= 0) & (y <= 1) & ~jnp.isnan(w), y, jnp.nan)
    value = _binary_cross_entropy(x, y, w)
    if valid is not None:
        value = jnp.where(valid, value, 0.0)
    return _reduce(value, _counts(valid, shape, dtype), reduction)


# ------------------------------------------------------------------------- VAE


@eager_jit
def vae_kl(
    mean: ArrayLike,
    log_var: ArrayLike,
    *,
    free_bits: float = 0.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
) -> Array:
    r"""The VAE's :math:`KL(q(z|x) \| N(0, I))`, optionally with free bits per latent dimension.

    Per example and latent dimension :math:`j`,
    :math:`KL_j = \tfrac12(\mu_j^2 + e^{v_j} - 1 - v_j)` (from
    :func:`jaxdiv.gaussian.kl_standard_normal`, accurate for posteriors close
    to the prior). Without free bits the loss is :math:`\sum_j KL_j` per
    example, reduced over examples. With ``free_bits`` :math:`\lambda > 0`
    (Kingma et al., 2016, "Improved variational inference with inverse
    autoregressive flow"), each dimension's KL averaged over the valid examples
    of the batch is floored:

    .. math::
      \mathcal{L}_{KL} = \sum_j \max\big(\lambda,\; \mathbb{E}_{x}[KL_j]\big),

    so a dimension using less than :math:`\lambda` nats receives no gradient
    pushing it further towards the prior (posterior collapse is resisted).
    ``"sum"`` multiplies this by the number of valid examples; ``"none"`` is
    not defined with free bits (the floor acts on a batch average).

    Args:
      mean: posterior means ``[..., D, ...]``, latent axis ``axis``.
      log_var: posterior log-variances, broadcastable against ``mean``.
      free_bits: :math:`\lambda \ge 0`, in nats per latent dimension.
      axis: the latent axis.
      where: boolean mask over examples (the batch shape).
      reduction: ``"mean"`` (over valid examples), ``"sum"`` or ``"none"``.

    Returns:
      The KL in nats summed over the latent axis and reduced over the valid
      examples (a scalar), or per example for ``"none"`` (refused with free
      bits, which depend on the whole batch).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiv import losses
      >>> mean, log_var = jnp.array([[0.1, 0.0], [0.3, 0.0]]), jnp.zeros((2, 2))
      >>> print(f"{losses.vae_kl(mean, log_var):.4f}")  # (0.01 + 0.09) / 2 / 2
      0.0250
      >>> print(f"{losses.vae_kl(mean, log_var, free_bits=0.1):.4f}")  # max(0.1, .025) + max(0.1, 0)
      0.2000
    """
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    free_bits = _checks.scalar_parameter(free_bits, "free_bits", 0.0, np.inf, open_low=False, open_high=True)
    floored = not _is_static_zero(free_bits)
    if floored and reduction == "none":
        raise ValueError(
            "free_bits floors the batch average of each dimension's KL, so it needs "
            "reduction='mean' or 'sum', got reduction='none'."
        )
    (m, v), _ = _checks.class_arrays(
        (mean, log_var), ("mean", "log_var"), axis=axis, where=None, fill=0.0
    )
    batch = m.shape[:-1]
    valid = _checks.positions(
        where, batch, f"the mean shape {tuple(m.shape)} without its latent axis"
    )
    if valid is not None:
        # A masked example becomes the prior itself: exactly 0, zero gradient.
        m, v = jnp.where(valid[..., None], m, 0.0), jnp.where(valid[..., None], v, 0.0)
    per_dim = gaussian.kl_standard_normal(m[..., None], v[..., None])   # [..., D]
    counts = _counts(valid, batch, per_dim.dtype)
    if not floored:
        return _reduce(jnp.sum(per_dim, axis=-1), counts, reduction)
    examples = jnp.sum(counts)
    dim_mean = _safe_divide(jnp.sum(per_dim.reshape(-1, per_dim.shape[-1]), axis=0), examples)
    value = jnp.sum(jnp.maximum(dim_mean, free_bits))
    value = jnp.where(examples > 0, value, 0.0)
    return value if reduction == "mean" else value * examples
