r"""Linear-head losses that never materialise the ``[tokens, vocab]`` logits.

A language model's last layer maps hidden states :math:`h` (``[N, D]``) to
logits :math:`x = h W + b` (``[N, V]``); for a large vocabulary those logits,
and their gradient, dominate a training step's memory (8192 tokens x 128k
classes is 4 GB in float32, twice over with the gradient). The losses here
take :math:`h`, :math:`W`, :math:`b` instead, and walk the vocabulary in
chunks of ``chunk_size`` columns, so only ``[N, chunk_size]`` logits exist at
any time. They compute exactly what the materialising composition computes
(``jaxdiv.losses.softmax_cross_entropy(h @ W + b, labels, ...)``, and likewise
for distillation): same options, same conventions, same accuracy.

**Online normaliser.** One chunk at a time, a row keeps its running maximum
:math:`m` and :math:`r = \sum_{j \ne j^*} e^{x_j - m}` (the arg-max term, exactly
1, is kept out of the sum). Merging a chunk with statistics :math:`(m', r')`
into :math:`(m, r)` when :math:`m \ge m'` gives
:math:`(m,\; r + (r' + 1)\,e^{m' - m})`, and symmetrically; at the end
:math:`\log\sum_j e^{x_j} = m + \mathrm{log1p}(r)`, the accurate form of
:func:`jaxdiv.cross_entropy_with_integer_labels`. The target logit is picked
out of its chunk on the way, and :math:`-\log Q_y = (m - x_y) + \mathrm{log1p}(r)`
is a sum of two non-negative parts (confident predictions keep full relative
accuracy). Label smoothing needs :math:`\sum_j (x_j - m)` over the finite
logits, merged as :math:`S + n (m - m_{\rm new})`: every part is
:math:`\le 0`, so nothing cancels.

**Distillation** needs both distributions normalised before its terms can be
formed (the mixture of the Jensen-Shannon divergence is not separable), so it
takes two passes: the first merges the online normalisers of the student and
the teacher; the second forms, chunk by chunk, :math:`\log P`,
:math:`\log Q` and :math:`\ell = \log P - \log Q` (the difference of the raw
logits first, exact for nearby values) and sums per-class terms. KL is summed
in the form

.. math::
  KL(P \| Q) = \sum_{P > 0} P\,\varphi(-\ell) - \psi(u) - \mathrm{log1p}(-Q_{\rm off}),
  \qquad u = \sum_{P > 0} P\,\mathrm{expm1}(-\ell),

with :math:`\varphi(x) = e^x - 1 - x`, :math:`\psi(s) = s - \log(1 + s)` and
:math:`Q_{\rm off}` the mass of Q where P is 0. It is exact for any error
in the normalisers' difference (the rounding of two log-sum-exps, about
:math:`10^{-7} \log V` in float32, is absorbed by :math:`\psi(u)`), so nearly
identical distributions, late in distillation, keep full relative accuracy.
The Jensen-Shannon terms of :func:`jaxdiv.js_divergence` are quadratic in
that error, so the generalised JSD takes a middle pass that measures it,
:math:`\log(1 + u + Q_{\rm off}) = \log \sum Q - \log \sum P` as
computed, and removes it from :math:`\ell` before the terms are summed.

**Gradients.** A custom VJP keeps only per-row statistics (the
log-normalisers, for distillation also the value and two row sums) between
the forward and the backward pass; the backward pass recomputes each chunk's
logits, forms the logit gradient :math:`G` there (softmax minus one-hot for
cross-entropy, :math:`a - P \sum a` for a divergence with per-class
derivatives :math:`a`), and contracts it at once:
:math:`\partial h \mathrel{+}= G W_c^\top` (accumulated in float32),
:math:`\partial W_c = h^\top G`, :math:`\partial b_c = \sum_{\rm rows} G`
(each written once, never accumulated across chunks). Memory is
:math:`O(N \cdot \text{chunk} + D \cdot V)`; time is one more logit product
than the materialising version for cross-entropy (four instead of three),
two more for KL distillation and three more for JSD (each pass recomputes
the student's logits; a teacher given as a linear head is recomputed too).

bfloat16 / float16 hidden states and weights go into the products as they
are, with float32 accumulation (``preferred_element_type``); the normaliser,
the statistics and the logit gradient are float32; the loss is float32 and
the gradients come back in the inputs' dtypes. Forward-mode differentiation
(``jvp``, ``jacfwd``) is not supported (the rule is a VJP).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv import _checks, _terms
from jaxdiv._labels import LabelStats, _softcap, _softcap_slope
from jaxdiv._numerics import (
    check_axis_name, class_offset, classes_split_over, expm1mx, finite_or_zero, invalid, neg_log1pmx,
    num_classes, on_platform, row_max, row_sum, shifted_difference,
)
from jaxdiv._termwise import Pair, _log_ratio_field
from jaxdiv._reductions import (
    DISTILLATION_KINDS as _KINDS,
    REDUCTIONS as _REDUCTIONS,
    counts as _counts,
    cross_entropy_from_stats as _cross_entropy_from_stats,
    is_static_zero as _is_static_zero,
    reduce_positions as _reduce,
    softcap_value as _softcap_value,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "auto_chunk_size",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_kl_divergence",
]

_LAYOUTS = ("dv", "vd")
_PRECISIONS = {
    None: None,
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}

# Bytes of one [N, chunk] float32 block. On the CPU the products dominate the
# time, and on a 2-core x86 (2048 x 1024 x 32000) chunks of 512 to 4096
# columns ran within the machine's noise of each other while the compiled
# temporaries grew with the chunk (17 MiB at 512 columns, 161 MiB at 4096, 337
# MiB at 8192). On GPU and TPU each chunk is a few kernel launches and a
# re-read of the hidden states (and a pass over their gradient), so chunks are
# 16x wider: at most 64 chunks for 16384 tokens x 151936 classes.
_CHUNK_BYTES = {"cpu": 1 << 24, "accelerator": 1 << 28}
_MIN_CHUNK = 256


def auto_chunk_size(num_tokens: int, vocab_size: int, platform: str = "cpu") -> int:
    """The vocabulary chunk used when ``chunk_size`` is None.

    The largest power of two whose ``[num_tokens, chunk]`` float32 block fits
    in 16 MiB on the CPU (``platform="cpu"``) or 256 MiB on GPU and TPU
    (``platform="accelerator"``), at least 256 and at most ``vocab_size``.
    The fused losses pick the size for the platform they are compiled for.

    Args:
      num_tokens: the number of positions (every row of every ``vmap`` included).
      vocab_size: the number of classes ``V``.
      platform: ``"cpu"`` or ``"accelerator"``.

    Returns:
      The chunk, a Python int.

    Example:
      >>> from jaxdiv import fused
      >>> fused.auto_chunk_size(8192, 128256)  # 8192 x 512 float32 = 16 MiB
      512
      >>> fused.auto_chunk_size(16384, 151936, platform="accelerator")
      4096
    """
    if platform not in _CHUNK_BYTES:
        raise ValueError(f"platform must be 'cpu' or 'accelerator', got {platform!r}")
    columns = _CHUNK_BYTES[platform] // (4 * max(num_tokens, 1))
    chunk = 1 << max(int(math.log2(max(columns, 1))), int(math.log2(_MIN_CHUNK)))
    return max(1, min(chunk, vocab_size))


# ----------------------------------------------------------- the linear head


class _Config(NamedTuple):
    """Static settings of one fused evaluation (hashable: it is a nondiff argument)."""

    chunk: int
    vocab_axis: int       # of the weight: 1 for [D, V], 0 for [V, D]
    precision: Optional[jax.lax.Precision]
    softcap: Optional[float] = None
    smoothing: bool = False
    kind: str = "forward_kl"
    beta: float = 0.5
    inverse_temperature: float = 1.0
    teacher_is_logits: bool = True
    axis_name: Optional[str] = None   # the mesh axis the vocabulary is split over


def _with_classes_of(fn):
    """``fn(cfg, ...)`` traced with the vocabulary split over ``cfg.axis_name``
    (each rule sets it: JAX traces a backward rule after the caller returned)."""

    @functools.wraps(fn)
    def traced(cfg, *args):
        with classes_split_over(cfg.axis_name):
            return fn(cfg, *args)

    return traced


def _summed_like(grad: Optional[Array], primal) -> Optional[Array]:
    """``grad`` summed over the mesh axes it varies over and ``primal`` does not.

    Inside ``shard_map`` an input that is the same on several devices (the
    weight under data parallelism, the hidden states under a vocabulary
    split) gets the sum of every device's part of its gradient, as JAX's own
    differentiation gives it; a custom backward rule has to form that sum.
    """
    if grad is None:
        return None
    extra = tuple(sorted(_varying_axes(grad) - _varying_axes(primal)))
    return jax.lax.psum(grad, extra) if extra else grad


def _varying_axes(x) -> frozenset:
    """The manual mesh axes ``x`` varies over (JAX 0.10: ``manual_axis_type``; before: ``vma``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _compute_dtype(*arrays) -> jnp.dtype:
    return jnp.result_type(*(a.dtype for a in arrays if a is not None), jnp.float32)


def _logits(cfg: _Config, hidden: Array, weight: Array, bias: Optional[Array], start, size: int) -> Array:
    """``hidden @ W[:, start:start + size] + b[start:start + size]`` in the compute dtype."""
    w = jax.lax.dynamic_slice_in_dim(weight, start, size, axis=cfg.vocab_axis)
    contract = 0 if cfg.vocab_axis == 1 else 1
    dtype = _compute_dtype(hidden, weight)
    x = jax.lax.dot_general(
        hidden, w, (((1,), (contract,)), ((), ())),
        precision=cfg.precision, preferred_element_type=dtype,
    )
    if bias is not None:
        x = x + jax.lax.dynamic_slice_in_dim(bias, start, size).astype(dtype)
    return x


class _HeadGrads(NamedTuple):
    hidden: Array   # [N, D], accumulated in float32 (or float64)
    weight: Array   # the weight's shape and dtype, each chunk written once
    bias: Optional[Array]


def _zero_grads(hidden: Array, weight: Array, bias: Optional[Array]) -> _HeadGrads:
    return _HeadGrads(
        jnp.zeros(hidden.shape, _compute_dtype(hidden, weight)),
        jnp.zeros_like(weight),
        None if bias is None else jnp.zeros_like(bias),
    )


def _add_chunk_grads(
    cfg: _Config, grads: _HeadGrads, g: Array, hidden: Array, weight: Array, start, size: int
) -> _HeadGrads:
    """Contract the logit gradient ``g`` ``[N, size]`` of one chunk into the head's gradients."""
    w = jax.lax.dynamic_slice_in_dim(weight, start, size, axis=cfg.vocab_axis)
    acc = grads.hidden.dtype
    # The products take g in the inputs' dtype (bf16 for a bf16 model, as the
    # materialised logits' gradient would be) and accumulate in float32.
    g_in = g.astype(jnp.result_type(hidden.dtype, weight.dtype))
    w_axis = 1 if cfg.vocab_axis == 1 else 0
    d_hidden = jax.lax.dot_general(
        g_in, w, (((1,), (w_axis,)), ((), ())), precision=cfg.precision, preferred_element_type=acc
    )
    if cfg.vocab_axis == 1:   # [D, size] = h^T g
        d_w = jax.lax.dot_general(
            hidden, g_in, (((0,), (0,)), ((), ())), precision=cfg.precision, preferred_element_type=acc
        )
    else:                     # [size, D] = g^T h
        d_w = jax.lax.dot_general(
            g_in, hidden, (((0,), (0,)), ((), ())), precision=cfg.precision, preferred_element_type=acc
        )
    weight_grad = jax.lax.dynamic_update_slice_in_dim(
        grads.weight, d_w.astype(grads.weight.dtype), start, axis=cfg.vocab_axis
    )
    bias_grad = grads.bias
    if bias_grad is not None:
        bias_grad = jax.lax.dynamic_update_slice_in_dim(
            bias_grad, jnp.sum(g, axis=0).astype(bias_grad.dtype), start, axis=0
        )
    return _HeadGrads(grads.hidden + d_hidden, weight_grad, bias_grad)


def _over_chunks(step, carry, vocab_size: int, chunk: int, inputs=()):
    """``carry = step(carry, start, size)`` over ``[0, V)`` in chunks of ``chunk`` columns.

    The full chunks run in one ``lax.scan``; a shorter last chunk runs once
    after it with its own static size, so nothing is padded and no padded
    column can reach a normaliser. Inside ``shard_map``, when any of
    ``inputs`` varies over a mesh axis, the first chunk runs before the loop,
    so that the carry varies over the same axes as the loop's (elsewhere it
    stays in the loop: out of it, its block would not share the loop's buffers).
    """
    full, rest = divmod(vocab_size, chunk)
    first = 0
    if full == 1 or (full > 1 and any(_varying_axes(x) for x in jax.tree.leaves(inputs))):
        carry, first = step(carry, 0, chunk), 1
    if full > first:
        starts = jnp.arange(first, full, dtype=jnp.int32) * chunk
        carry, _ = jax.lax.scan(lambda c, start: (step(c, start, chunk), None), carry, starts)
    if rest:
        carry = step(carry, full * chunk, rest)
    return carry


# ----------------------------------------------------------- online normaliser


class _Normaliser(NamedTuple):
    """Running ``log sum exp`` of a row: ``max + log1p(rest)``; ``(-inf, -1)`` before any mass."""

    max: Array
    rest: Array    # sum_{j != argmax} exp(x_j - max), ties at the max counted exactly

    @property
    def log_sum_exp(self) -> Array:
        return self.max + jnp.log1p(self.rest)


def _empty_normaliser(rows: int, dtype) -> _Normaliser:
    return _Normaliser(jnp.full((rows,), -jnp.inf, dtype), jnp.full((rows,), -1.0, dtype))


def _chunk_normaliser(x: Array) -> _Normaliser:
    top = row_max(x)
    at_max = x == top[:, None]
    below = jnp.where(at_max, 0.0, jnp.exp(x - finite_or_zero(top)[:, None]))
    rest = row_sum(below) + (row_sum(at_max.astype(x.dtype)) - 1.0)
    # NaN or +inf among the logits makes the row invalid (NaN), as in log_normaliser.
    return _Normaliser(top, jnp.where(top < jnp.inf, rest, jnp.nan))


def _merge(a: _Normaliser, b: _Normaliser) -> _Normaliser:
    """The normaliser of the union of two sets of columns (see the module docstring)."""
    a_leads = a.max >= b.max
    top = jnp.maximum(a.max, b.max)
    low = jnp.minimum(a.max, b.max)
    # exp(low - top), and 0 when the trailing side has no mass (-inf - -inf is NaN).
    scale = jnp.exp(jnp.where(low > -jnp.inf, low - finite_or_zero(top), -jnp.inf))
    lead_rest = jnp.where(a_leads, a.rest, b.rest)
    trail_rest = jnp.where(a_leads, b.rest, a.rest)
    # An invalid side (rest NaN) stays NaN: NaN * 0 is NaN.
    return _Normaliser(top, lead_rest + (trail_rest + 1.0) * scale)


# ---------------------------------------------------------------- arguments


def _layout_axis(weight_layout: str) -> int:
    return 1 if _checks.choice(weight_layout, "weight_layout", _LAYOUTS) == "dv" else 0


def _precision(precision):
    if isinstance(precision, jax.lax.Precision):
        return precision
    if precision not in _PRECISIONS:
        raise ValueError(
            f"precision must be None, 'default', 'high', 'highest' or a jax.lax.Precision, got {precision!r}."
        )
    return _PRECISIONS[precision]


def _head(hidden, weight, bias, vocab_axis: int, names: tuple[str, str, str]):
    """Checked ``(hidden [N, D], weight, bias, batch shape, V)`` of a linear head."""
    h_name, w_name, b_name = names
    hidden, weight = jnp.asarray(hidden), jnp.asarray(weight)
    for name, a in ((h_name, hidden), (w_name, weight)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be a real floating-point array, got dtype {a.dtype}.")
    if hidden.ndim < 1:
        raise ValueError(f"expected {h_name} of shape [..., D], got a scalar.")
    layout = "[D, V]" if vocab_axis == 1 else "[V, D]"
    dim = hidden.shape[-1]
    if weight.ndim != 2 or weight.shape[1 - vocab_axis] != dim:
        raise ValueError(
            f"expected {w_name} of shape {layout} with D = {dim} (the last axis of "
            f"{h_name} shape {tuple(hidden.shape)}), got {w_name} shape {tuple(weight.shape)}"
            + ("; for a [V, D] weight pass weight_layout='vd'." if vocab_axis == 1 else
               "; for a [D, V] weight pass weight_layout='dv'.")
        )
    vocab = weight.shape[vocab_axis]
    if bias is not None:
        bias = jnp.asarray(bias)
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            raise TypeError(f"{b_name} must be a real floating-point array, got dtype {bias.dtype}.")
        if bias.shape != (vocab,):
            raise ValueError(
                f"expected {b_name} of shape ({vocab},) (one per class of {w_name} shape "
                f"{tuple(weight.shape)}), got {b_name} shape {tuple(bias.shape)}."
            )
    batch = hidden.shape[:-1]
    return hidden.reshape((-1, dim)), weight, bias, batch, vocab


def _vmapped_batch(x) -> int:
    """How many copies of ``x`` the enclosing ``vmap``s evaluate at once (1 outside any).

    Under ``vmap`` the loss sees one sequence, but every chunk is a block of
    all sequences' rows: sized for one, it would be the batch size times too
    large (5 GB instead of 65 MiB for 64 sequences of 512 tokens). The count is
    read from the tracers (``BatchTracer.val`` / ``.batch_dim``, through
    autodiff tracers' ``.primal``); it only sizes the chunk, so a JAX version
    whose tracers look different costs memory, never a wrong value.
    """
    batch = 1
    for _ in range(64):
        if not isinstance(x, jax.core.Tracer):
            break
        dim, val = getattr(x, "batch_dim", None), getattr(x, "val", None)
        if isinstance(dim, int) and hasattr(val, "shape"):
            batch *= int(val.shape[dim])
            x = val
        else:
            x = getattr(x, "primal", None)
    return batch


def _chunk_sizes(chunk_size, rows: int, vocab: int, hidden=None) -> tuple[int, int]:
    """The chunk on the CPU and on the accelerators (the same when the caller picks it)."""
    if chunk_size is None:
        tokens = rows * _vmapped_batch(hidden)
        return auto_chunk_size(tokens, vocab, "cpu"), auto_chunk_size(tokens, vocab, "accelerator")
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
    chunk = int(min(chunk_size, max(vocab, 1)))
    return chunk, chunk


def _per_platform(run, cfg: "_Config", chunks: tuple[int, int]):
    """``run(cfg)`` with the chunk of the platform the program is compiled for."""
    cpu, accelerator = chunks
    if cpu == accelerator:
        return run(cfg._replace(chunk=cpu))
    return on_platform(cpu=lambda: run(cfg._replace(chunk=cpu)),
                       accelerator=lambda: run(cfg._replace(chunk=accelerator)))


def _positions(where, batch, described) -> Optional[Array]:
    valid = _checks.positions(where, batch, described)
    return None if valid is None else valid.reshape(-1)


def _unread(hidden: Array, valid: Optional[Array]) -> Array:
    # Masked rows are never read: their hidden state is replaced before the
    # products, so NaN there reaches neither the value nor the weight gradient.
    return hidden if valid is None else jnp.where(valid[:, None], hidden, 0)


# ------------------------------------------------------- fused cross-entropy


class _LabelCarry(NamedTuple):
    norm: _Normaliser
    picked: Array     # the label's logit (0 until its chunk is seen)
    centred: Array    # sum over finite logits of (x - norm.max), for smoothing
    count: Array      # number of finite logits, for smoothing


def _label_pass(cfg: _Config, hidden, weight, bias, labels) -> _LabelCarry:
    rows, dtype = hidden.shape[0], _compute_dtype(hidden, weight)
    zeros = jnp.zeros((rows,), dtype)
    first = class_offset(weight.shape[cfg.vocab_axis], labels.dtype)   # this device's first class

    def step(carry: _LabelCarry, start, size):
        x = _softcap(_logits(cfg, hidden, weight, bias, start, size), cfg.softcap)
        column = jax.lax.broadcasted_iota(labels.dtype, x.shape, 1) + (start + first)
        picked = carry.picked + row_sum(jnp.where(column == labels[:, None], x, 0.0))
        local = _chunk_normaliser(x)
        norm = _merge(carry.norm, local)
        centred, count = carry.centred, carry.count
        if cfg.smoothing:
            finite = x > -jnp.inf
            n_local = row_sum(finite.astype(dtype))
            local_centred = row_sum(jnp.where(finite, x - finite_or_zero(local.max)[:, None], 0.0))
            # S + n (m_old - m_new): every part <= 0; empty sides contribute 0.
            centred = (
                jnp.where(count > 0, centred + count * (carry.norm.max - finite_or_zero(norm.max)), 0.0)
                + jnp.where(n_local > 0, local_centred + n_local * (local.max - finite_or_zero(norm.max)), 0.0)
            )
            count = count + n_local
        return _LabelCarry(norm, picked, centred, count)

    start = _LabelCarry(_empty_normaliser(rows, dtype), zeros, zeros, zeros)
    return _over_chunks(step, start, weight.shape[cfg.vocab_axis], cfg.chunk, (hidden, weight, labels))


def _label_stats_of(
    cfg: _Config, carry: _LabelCarry, labels: Array, valid: Optional[Array], vocab: int
) -> LabelStats:
    norm = carry.norm
    log_sum = jnp.log1p(norm.rest)
    bad = invalid(norm.rest)
    in_range = (labels >= 0) & (labels < num_classes(vocab))
    finite = carry.picked > -jnp.inf
    gap = norm.max - jnp.where(finite, carry.picked, 0.0)
    nll = jnp.where(finite & jnp.isfinite(log_sum), gap + log_sum, jnp.inf)
    nll = jnp.where(in_range, nll, jnp.nan)
    top1 = (carry.picked == norm.max) & finite & in_range
    uniform = jnp.zeros_like(log_sum)
    if cfg.smoothing:
        # sum_c (lse - x_c) / n = log1p(rest) - sum_c (x_c - max) / n: two parts >= 0.
        n = jnp.maximum(carry.count, 1.0)
        uniform = jnp.where(carry.count > 0, log_sum - carry.centred / n, 0.0)
    lse = norm.max + log_sum
    if valid is not None:
        nll = jnp.where(valid, nll, 0.0)
        uniform = jnp.where(valid, uniform, 0.0)
        lse = jnp.where(valid, lse, -jnp.inf)
        top1 = top1 & valid
    nll = jnp.where(bad, jnp.nan, nll)
    uniform = jnp.where(bad, jnp.nan, uniform)
    return LabelStats(nll, lse, uniform, top1.astype(nll.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_label_stats(cfg: _Config, hidden, weight, bias, labels, valid) -> LabelStats:
    return _linear_label_stats_fwd(cfg, hidden, weight, bias, labels, valid)[0]


@_with_classes_of
def _linear_label_stats_fwd(cfg, hidden, weight, bias, labels, valid):
    carry = _label_pass(cfg, hidden, weight, bias, labels)
    stats = _label_stats_of(cfg, carry, labels, valid, weight.shape[cfg.vocab_axis])
    return stats, (hidden, weight, bias, labels, valid, stats.log_normaliser, carry.count)


# Closed form softmax - onehot (and - uniform, for smoothing) formed chunk by
# chunk from the saved log-normaliser: nothing [N, V] is kept or rebuilt.
@_with_classes_of
def _linear_label_stats_bwd(cfg, residuals, cotangent):
    hidden, weight, bias, labels, valid, lse, count = residuals
    vocab = weight.shape[cfg.vocab_axis]
    first = class_offset(vocab, labels.dtype)
    in_range = (labels >= 0) & (labels < num_classes(vocab))
    # An out-of-range label poisons its own row's gradient.
    d_nll = cotangent.nll * jnp.where(in_range, 1.0, jnp.nan)
    d_uniform = cotangent.uniform_nll / jnp.maximum(count, 1.0)
    total = d_nll + cotangent.log_normaliser + cotangent.uniform_nll
    shift = finite_or_zero(lse)

    def step(grads, start, size):
        z = _logits(cfg, hidden, weight, bias, start, size)
        x = _softcap(z, cfg.softcap)
        column = jax.lax.broadcasted_iota(labels.dtype, x.shape, 1) + (start + first)
        g = total[:, None] * jnp.exp(x - shift[:, None])
        g = g - jnp.where(column == labels[:, None], d_nll[:, None], 0.0)
        if cfg.smoothing:
            g = g - jnp.where(x > -jnp.inf, d_uniform[:, None], 0.0)
        if cfg.softcap is not None:
            g = g * _softcap_slope(z, cfg.softcap)
        if valid is not None:
            g = jnp.where(valid[:, None], g, 0.0)
        return _add_chunk_grads(cfg, grads, g, hidden, weight, start, size)

    grads = _over_chunks(step, _zero_grads(hidden, weight, bias), vocab, cfg.chunk, (hidden, weight, labels))
    return (_summed_like(grads.hidden.astype(hidden.dtype), hidden), _summed_like(grads.weight, weight),
            _summed_like(grads.bias, bias), None, None)


_linear_label_stats.defvjp(_linear_label_stats_fwd, _linear_label_stats_bwd)


def linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: Optional[ArrayLike] = None,
    where: Optional[ArrayLike] = None,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: Optional[float] = None,
    reduction: str = "mean",
    return_aux: bool = False,
    chunk_size: Optional[int] = None,
    weight_layout: str = "dv",
    precision=None,
    axis_name: Optional[str] = None,
):
    r"""Softmax cross-entropy of a linear head, without materialising its logits.

    Equal to ``jaxdiv.losses.softmax_cross_entropy(hidden @ weight + bias,
    labels, ...)`` with the same options and conventions (see that function
    for the formula: label smoothing over the classes whose logit is not
    ``-inf``, PaLM's z-loss, Gemma's soft-cap, ``reduction`` over the valid
    positions), computed over vocabulary chunks with an online log-sum-exp
    (see the module docstring). Memory: ``[N, chunk_size]`` logits at a
    time, never ``[N, V]``.

    Args:
      hidden: ``[..., D]`` hidden states (float32, bfloat16, float16 or
        float64); every leading index is a position.
      weight: ``[D, V]`` (``weight_layout="dv"``, Flax's ``Dense`` kernel) or
        ``[V, D]`` (``weight_layout="vd"``: a tied embedding table, PyTorch's
        ``Linear.weight``).
      labels: integer classes of ``hidden``'s batch shape (broadcastable).
        Out of ``[0, V)`` and not ``ignore_index``: NaN for that position.
      bias: optional ``[V]``; ``-inf`` removes a class (a padded vocabulary
        entry), exactly like a ``-inf`` logit.
      where: boolean mask over positions; False positions are never read.
      ignore_index: labels equal to it are ignored like masked positions.
      label_smoothing: :math:`\varepsilon \in [0, 1]`.
      z_loss: weight of the squared log-normaliser, :math:`\ge 0`.
      logit_softcap: :math:`c > 0` for :math:`c \tanh(x / c)`, or None.
      reduction: ``"mean"`` (over valid positions), ``"sum"`` or ``"none"``.
      return_aux: also return a :class:`jaxdiv.losses.CrossEntropyAux`.
      chunk_size: vocabulary columns per chunk; None picks
        :func:`auto_chunk_size`. Any size works (a last, shorter chunk is
        handled exactly); it changes memory and speed, not the result beyond
        rounding.
      weight_layout: ``"dv"`` or ``"vd"``, see ``weight``.
      precision: ``None``, ``"default"``, ``"high"``, ``"highest"`` or a
        ``jax.lax.Precision`` for the products (on GPU and TPU the default
        may round float32 inputs to TF32 / bfloat16 passes). Accumulation is
        float32 (float64 for float64 inputs) whatever the input dtype.
      axis_name: inside ``jax.shard_map`` with the vocabulary split over this
        mesh axis (the weight's vocabulary axis and the bias sharded, the
        hidden states and labels whole on every device of the axis; tensor
        parallelism): per-row statistics are combined across it and the hidden
        states' gradient is summed over it. None: the whole vocabulary here.
    Returns:
      the loss (scalar, or the batch shape for ``"none"``) in
      ``result_type(dtype, float32)``; with ``return_aux``, ``(loss, aux)``.
      Gradients flow to ``hidden``, ``weight`` and ``bias`` (reverse mode),
      in their dtypes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv import fused, losses
      >>> kh, kw, kl = jax.random.split(jax.random.key(0), 3)
      >>> hidden = jax.random.normal(kh, (6, 16))
      >>> weight = jax.random.normal(kw, (16, 1000)) / 4
      >>> labels = jax.random.randint(kl, (6,), 0, 1000)
      >>> loss = fused.linear_cross_entropy(hidden, weight, labels, chunk_size=256)
      >>> reference = losses.softmax_cross_entropy(hidden @ weight, labels)
      >>> bool(jnp.allclose(loss, reference, rtol=1e-6))
      True
    """
    check_axis_name(axis_name)
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    label_smoothing = _checks.scalar_parameter(
        label_smoothing, "label_smoothing", 0.0, 1.0, open_low=False, open_high=False)
    z_loss = _checks.scalar_parameter(z_loss, "z_loss", 0.0, np.inf, open_low=False, open_high=True)
    cap = _softcap_value(logit_softcap)
    axis = _layout_axis(weight_layout)
    h, w, b, batch, vocab = _head(hidden, weight, bias, axis, ("hidden", "weight", "bias"))
    labels = _checks.integer_labels(
        labels, batch, None, f"the hidden shape {tuple(jnp.shape(hidden))} without its last axis"
    ).reshape(-1)
    valid = _positions(where, batch, f"the hidden shape {tuple(jnp.shape(hidden))} without its last axis")
    if ignore_index is not None:
        kept = labels != ignore_index
        valid = kept if valid is None else valid & kept
    if valid is not None:
        labels = jnp.where(valid, labels, 0)
    smoothing = not _is_static_zero(label_smoothing)
    cfg = _Config(
        chunk=0, vocab_axis=axis, precision=_precision(precision), softcap=cap, smoothing=smoothing,
        axis_name=axis_name,
    )
    h_read = _unread(h, valid)
    stats = _per_platform(
        lambda c: _linear_label_stats(c, h_read, w, b, labels, valid), cfg,
        _chunk_sizes(chunk_size, h.shape[0], vocab, h),
    )
    stats = jax.tree.map(lambda s: s.reshape(batch), stats)
    valid = None if valid is None else valid.reshape(batch)
    return _cross_entropy_from_stats(
        stats, valid, batch, stats.nll.dtype, label_weight=None,
        label_smoothing=label_smoothing, smoothing=smoothing, z_loss=z_loss,
        reduction=reduction, return_aux=return_aux,
    )


# -------------------------------------------------------- fused distillation


def _teacher_logits(cfg: _Config, teacher, dtype, start, size: int) -> Array:
    if cfg.teacher_is_logits:
        return jax.lax.dynamic_slice_in_dim(teacher, start, size, axis=1).astype(dtype)
    return _logits(cfg, *teacher, start, size)


def _side_logits(cfg: _Config, hidden, weight, bias, teacher, valid, start, size: int):
    """The student's and the teacher's tempered logits of one chunk, ``[N, size]`` each."""
    student = _logits(cfg, hidden, weight, bias, start, size)
    teacher = _teacher_logits(cfg, teacher, student.dtype, start, size)
    if valid is not None:
        teacher = jnp.where(valid[:, None], teacher, 0.0)
    if cfg.inverse_temperature != 1.0:
        student, teacher = student * cfg.inverse_temperature, teacher * cfg.inverse_temperature
    return student, teacher


def _student_is_p(cfg: _Config) -> bool:
    """Which side the student is in D(P, Q): P for reverse KL, Q for forward KL and JSD."""
    return cfg.kind == "reverse_kl"


def _oriented(cfg: _Config, student: Array, teacher: Array) -> tuple[Array, Array]:
    return (student, teacher) if _student_is_p(cfg) else (teacher, student)


def _terms_of(cfg: _Config):
    if cfg.kind == "jsd":
        return _terms.JENSEN_SHANNON, (cfg.beta, 1.0 - cfg.beta)
    return _terms.KL, ()


class _Normalisers(NamedTuple):
    """Final ``shift`` (the max, 0 without mass) and ``log_sum`` (``log1p(rest)``) of both sides."""

    shift_p: Array
    log_sum_p: Array
    shift_q: Array
    log_sum_q: Array


def _finalise(norm: _Normaliser) -> tuple[Array, Array]:
    return finite_or_zero(norm.max), jnp.log1p(norm.rest)


def _pair(x: Array, y: Array, n: _Normalisers, correction) -> Pair:
    """:class:`Pair` of one chunk: log P, log Q and their difference, raw logits first.

    ``correction`` (per row) is added to the log ratio: the rounding of the two
    normalisers, measured by :func:`_mass_sums` (0 where it is not needed).
    """
    log_p = (x - n.shift_p[:, None]) - finite_or_zero(n.log_sum_p)[:, None]
    log_q = (y - n.shift_q[:, None]) - finite_or_zero(n.log_sum_q)[:, None]
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    both = (p > 0) & (q > 0)
    offset = (finite_or_zero(n.log_sum_p) - finite_or_zero(n.log_sum_q)) - correction
    diff = shifted_difference(x, y, n.shift_p, n.shift_q, both)
    return Pair(p, q, log_p, log_q, _log_ratio_field(p, q, diff - jnp.asarray(offset)[..., None]))


def _mass_sums(t: Pair) -> tuple[Array, Array]:
    """``u = sum_{P>0} P expm1(-l)`` and Q's mass where P = 0, per row.

    Their sum is ``sum Q - sum P`` as computed, without cancellation (each
    term of ``u`` is as small as the log ratio): ``log1p(u + Q_off)`` is the
    error of the normalisers' difference in the log ratio.
    """
    on, both = t.p > 0, (t.p > 0) & (t.q > 0)
    ell = jnp.where(both, t.log_ratio, 0.0)
    # Q = 0 < P adds P expm1(-inf) = -P.
    u = jnp.where(both, t.p * jnp.expm1(-ell), jnp.where(on, -t.p, 0.0))
    return row_sum(u), row_sum(jnp.where(on, 0.0, t.q))


class _TermSums(NamedTuple):
    terms: Array    # JS: sum of the terms; KL: sum_{P>0} P phi(-l) (+inf where Q = 0 < P)
    u: Array        # KL: sum_{P>0} P expm1(-l)
    q_off: Array    # KL: Q's mass where P = 0
    sum_a: Array    # sum of dt/dlog P, for the gradient
    sum_b: Array    # sum of dt/dlog Q


def _term_sums(cfg: _Config, t: Pair) -> _TermSums:
    terms, params = _terms_of(cfg)
    a, b = row_sum(terms.d_log_p(t, params)), row_sum(terms.d_log_q(t, params))
    if cfg.kind == "jsd":
        zero = jnp.zeros_like(a)
        return _TermSums(row_sum(terms.term(t, params)), zero, zero, a, b)
    on, both = t.p > 0, (t.p > 0) & (t.q > 0)
    ell = jnp.where(both, t.log_ratio, 0.0)
    phi = jnp.where(on, jnp.where(both, t.p * expm1mx(-ell), jnp.inf), 0.0)
    return _TermSums(row_sum(phi), *_mass_sums(t), a, b)


def _divergence_pass(cfg: _Config, hidden, weight, bias, teacher, valid):
    rows, dtype = hidden.shape[0], _compute_dtype(hidden, weight)
    vocab = weight.shape[cfg.vocab_axis]

    def normalise(carry, start, size):
        student, teacher_x = _side_logits(cfg, hidden, weight, bias, teacher, valid, start, size)
        return (_merge(carry[0], _chunk_normaliser(student)), _merge(carry[1], _chunk_normaliser(teacher_x)))

    empty = _empty_normaliser(rows, dtype)
    norm_s, norm_t = _over_chunks(normalise, (empty, empty), vocab, cfg.chunk, (hidden, weight, teacher))
    (shift_p, log_sum_p), (shift_q, log_sum_q) = (
        (_finalise(norm_s), _finalise(norm_t)) if _student_is_p(cfg) else (_finalise(norm_t), _finalise(norm_s))
    )
    norms = _Normalisers(shift_p, log_sum_p, shift_q, log_sum_q)

    def pairs(start, size, correction):
        x, y = _oriented(cfg, *_side_logits(cfg, hidden, weight, bias, teacher, valid, start, size))
        return _pair(x, y, norms, correction)

    zeros = jnp.zeros((rows,), dtype)
    correction = zeros
    if cfg.kind == "jsd":
        # The JSD terms are quadratic in an error of the log ratio (KL's sum
        # absorbs it, see the module docstring): one more pass measures it.
        def mass(sums, start, size):
            return jax.tree.map(jnp.add, sums, _mass_sums(pairs(start, size, 0.0)))

        u, q_off = _over_chunks(mass, (zeros, zeros), vocab, cfg.chunk, (hidden, weight, teacher))
        correction = jnp.where(jnp.isfinite(u + q_off), jnp.log1p(jnp.maximum(u + q_off, -0.5)), 0.0)

    def accumulate(sums, start, size):
        return jax.tree.map(jnp.add, sums, _term_sums(cfg, pairs(start, size, correction)))

    sums = _over_chunks(accumulate, _TermSums(*(zeros,) * 5), vocab, cfg.chunk, (hidden, weight, teacher))

    terms, params = _terms_of(cfg)
    if cfg.kind == "jsd":
        value = jnp.minimum(jnp.maximum(sums.terms, 0.0), _terms._binary_entropy(params))
    else:
        # Exact for any rounding of the normalisers' difference (module docstring).
        value = sums.terms - neg_log1pmx(jnp.maximum(sums.u, -1.0)) - jnp.log1p(-jnp.minimum(sums.q_off, 1.0))
        value = jnp.where(sums.terms < jnp.inf, jnp.maximum(value, 0.0), jnp.inf)
    mass = log_sum_p > -jnp.inf
    if terms.symmetric:
        mass = mass & (log_sum_q > -jnp.inf)
    value = jnp.where(mass, value, 0.0)
    value = jnp.where(invalid(norm_s.rest) | invalid(norm_t.rest), jnp.nan, value)
    live = jnp.isfinite(value) & mass
    if valid is not None:
        value, live = jnp.where(valid, value, 0.0), live & valid
    return value, (norms, correction, sums.sum_a, sums.sum_b, live)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_divergence(cfg: _Config, hidden, weight, bias, teacher, valid) -> Array:
    return _linear_divergence_fwd(cfg, hidden, weight, bias, teacher, valid)[0]


@_with_classes_of
def _linear_divergence_fwd(cfg, hidden, weight, bias, teacher, valid):
    value, stats = _divergence_pass(cfg, hidden, weight, bias, teacher, valid)
    return value, (hidden, weight, bias, teacher, valid, stats)


# dD/dx_j = a_j - P_j sum(a) (and likewise for Q), the closed form of the
# categorical kernels, formed chunk by chunk from the saved row statistics.
@_with_classes_of
def _linear_divergence_bwd(cfg, residuals, cotangent):
    hidden, weight, bias, teacher, valid, (norms, correction, sum_a, sum_b, live) = residuals
    terms, params = _terms_of(cfg)
    scale = jnp.where(live, cotangent, 0.0) * cfg.inverse_temperature

    def step(grads, start, size):
        student, teacher_x = _side_logits(cfg, hidden, weight, bias, teacher, valid, start, size)
        t = _pair(*_oriented(cfg, student, teacher_x), norms, correction)
        if _student_is_p(cfg):
            coef = terms.d_log_p(t, params) - t.p * sum_a[:, None]
        else:
            coef = terms.d_log_q(t, params) - t.q * sum_b[:, None]
        g = jnp.where(live[:, None], coef, 0.0) * scale[:, None]
        return _add_chunk_grads(cfg, grads, g, hidden, weight, start, size)

    grads = _over_chunks(step, _zero_grads(hidden, weight, bias), weight.shape[cfg.vocab_axis], cfg.chunk,
                         (hidden, weight, teacher))
    no_teacher_grad = jax.tree.map(lambda _: None, teacher)
    return (_summed_like(grads.hidden.astype(hidden.dtype), hidden), _summed_like(grads.weight, weight),
            _summed_like(grads.bias, bias), no_teacher_grad, None)


_linear_divergence.defvjp(_linear_divergence_fwd, _linear_divergence_bwd)


def _static_float(value, name: str) -> float:
    if not _checks._is_concrete(value):
        raise TypeError(f"{name} must be a Python number for the fused losses (it is static), got {value!r}.")
    return float(value)


def _teacher(teacher, batch, vocab: int, axis: int, student_shape):
    """The teacher as ``([N, V] logits, True)`` or ``((hidden, weight, bias), False)``, checked."""
    if isinstance(teacher, (tuple, list)):
        if len(teacher) not in (2, 3):
            raise ValueError(
                "teacher must be logits [..., V], or (hidden, weight) / (hidden, weight, bias) "
                f"of a linear head; got a sequence of length {len(teacher)}."
            )
        h, w, b, t_batch, t_vocab = _head(
            teacher[0], teacher[1], teacher[2] if len(teacher) == 3 else None, axis,
            ("teacher hidden", "teacher weight", "teacher bias"),
        )
        if t_batch != batch or t_vocab != vocab:
            raise ValueError(
                f"expected a teacher head over the student's positions {tuple(batch)} and "
                f"vocabulary of {vocab} classes, got teacher hidden shape "
                f"{tuple(jnp.shape(teacher[0]))} and weight shape {tuple(jnp.shape(teacher[1]))}."
            )
        return jax.lax.stop_gradient((h, w, b)), False
    logits = jnp.asarray(teacher)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"teacher logits must be a real floating-point array, got dtype {logits.dtype}.")
    if logits.shape != tuple(batch) + (vocab,):
        raise ValueError(
            f"expected teacher logits of shape {tuple(batch) + (vocab,)} (the student hidden "
            f"shape {tuple(student_shape)} with D replaced by V = {vocab}), got shape {tuple(logits.shape)}."
        )
    return jax.lax.stop_gradient(logits.reshape((-1, vocab))), True


def linear_distillation_loss(
    student_hidden: ArrayLike,
    student_weight: ArrayLike,
    teacher,
    *,
    student_bias: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    beta: float = 0.5,
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
    weight_layout: str = "dv",
    precision=None,
    axis_name: Optional[str] = None,
) -> Array:
    r"""Knowledge distillation through a student's linear head, without materialising its logits.

    Equal to ``jaxdiv.losses.distillation_loss(student_hidden @ student_weight
    + student_bias, teacher_logits, temperature=..., kind=..., beta=...)``: with
    :math:`S = \mathrm{softmax}(s / T)` and :math:`P = \mathrm{softmax}(t / T)`,
    :math:`T^2 KL(P \| S)` (``"forward_kl"``), :math:`T^2 KL(S \| P)`
    (``"reverse_kl"``) or :math:`T^2 JS_\beta(P, S)` (``"jsd"``, the teacher
    weighted by :math:`\beta`), per position, reduced over the valid
    positions. The teacher is given as logits, or as its own linear head
    ``(hidden, weight)`` / ``(hidden, weight, bias)``, whose logits are then
    never materialised either. Two passes over the vocabulary (normalisers,
    then terms; see the module docstring), the accurate terms of
    :func:`jaxdiv.kl_divergence` and :func:`jaxdiv.js_divergence`.

    Args:
      student_hidden: ``[..., D]``.
      student_weight: ``[D, V]``, or ``[V, D]`` with ``weight_layout="vd"``.
      teacher: logits ``[..., V]`` over the same positions, or a tuple
        ``(hidden [..., D_t], weight [D_t, V] or [V, D_t][, bias [V]])`` in
        the same ``weight_layout``. Receives no gradient.
      student_bias: optional ``[V]``.
      temperature: :math:`T > 0`, a Python number.
      kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
      beta: :math:`\beta \in (0, 1)`, the teacher's weight in the JSD mixture.
      where: boolean mask over positions; False positions are never read.
      reduction: ``"mean"`` (over valid positions), ``"sum"`` or ``"none"``.
      chunk_size, weight_layout, precision: as in :func:`linear_cross_entropy`.
      axis_name: inside ``jax.shard_map`` with the vocabulary split over this
        mesh axis (the weight's vocabulary axis and the bias sharded, the
        hidden states and labels whole on every device of the axis; tensor
        parallelism): per-row statistics are combined across it and the hidden
        states' gradient is summed over it. None: the whole vocabulary here.
    Returns:
      the loss in ``result_type(dtype, float32)``; gradients flow to the
      student's hidden states, weight and bias (reverse mode).

    Example:
      >>> import jax
      >>> from jaxdiv import fused, losses
      >>> kh, kw, kt = jax.random.split(jax.random.key(0), 3)
      >>> hidden = jax.random.normal(kh, (4, 8))
      >>> weight = jax.random.normal(kw, (8, 300)) / 3
      >>> teacher = jax.random.normal(kt, (4, 300))
      >>> loss = fused.linear_distillation_loss(hidden, weight, teacher, temperature=2.0, chunk_size=128)
      >>> reference = losses.distillation_loss(hidden @ weight, teacher, temperature=2.0)
      >>> print(f"{loss:.5f} {reference:.5f}")
      1.11977 1.11977
    """
    check_axis_name(axis_name)
    reduction = _checks.choice(reduction, "reduction", _REDUCTIONS)
    kind = _checks.choice(kind, "kind", _KINDS)
    temperature = _static_float(temperature, "temperature")
    _checks.scalar_parameter(temperature, "temperature", 0.0, np.inf, open_low=True, open_high=True)
    beta = _static_float(beta, "beta")
    if kind == "jsd":
        _checks.scalar_parameter(beta, "beta", 0.0, 1.0, open_low=True, open_high=True)
    axis = _layout_axis(weight_layout)
    h, w, b, batch, vocab = _head(
        student_hidden, student_weight, student_bias, axis,
        ("student_hidden", "student_weight", "student_bias"),
    )
    teacher, teacher_is_logits = _teacher(teacher, batch, vocab, axis, jnp.shape(student_hidden))
    valid = _positions(where, batch, f"the student hidden shape {tuple(jnp.shape(student_hidden))} without its last axis")
    if not teacher_is_logits:
        teacher = (_unread(teacher[0], valid),) + tuple(teacher[1:])
    cfg = _Config(
        chunk=0, vocab_axis=axis, precision=_precision(precision), kind=kind, beta=beta,
        inverse_temperature=1.0 / temperature, teacher_is_logits=teacher_is_logits, axis_name=axis_name,
    )
    h_read = _unread(h, valid)
    value = _per_platform(
        lambda c: _linear_divergence(c, h_read, w, b, teacher, valid), cfg,
        _chunk_sizes(chunk_size, h.shape[0], vocab, h),
    ).reshape(batch)
    if temperature != 1.0:
        value = value * temperature**2
    valid = None if valid is None else valid.reshape(batch)
    return _reduce(value, _counts(valid, batch, value.dtype), reduction)


def linear_kl_divergence(
    student_hidden: ArrayLike,
    student_weight: ArrayLike,
    teacher,
    *,
    student_bias: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    reverse: bool = False,
    where: Optional[ArrayLike] = None,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
    weight_layout: str = "dv",
    precision=None,
    axis_name: Optional[str] = None,
) -> Array:
    r"""KL divergence between a teacher and a student's linear head, without the student's logits.

    :math:`KL(P \| S)`, the teacher :math:`P` first as in
    :func:`jaxdiv.kl_divergence` (``reverse=True``: :math:`KL(S \| P)`), at
    temperature :math:`T` and **without** distillation's :math:`T^2` factor:
    ``jaxdiv.kl_divergence(teacher_logits / T, (h @ W + b) / T)`` reduced over
    positions. For a KL penalty towards a reference policy's logits, say.

    Args:
      student_hidden: ``[..., D]``, every leading index a position.
      student_weight: ``[D, V]`` (``weight_layout="dv"``) or ``[V, D]`` (``"vd"``).
      teacher: the teacher's logits ``[..., V]``, or its head ``(hidden, weight[, bias])``.
      student_bias: optional ``[V]``; ``-inf`` removes a class.
      temperature: :math:`T > 0`, a Python number.
      reverse: compute :math:`KL(S \| P)` instead.
      where: boolean mask over positions.
      reduction: ``"mean"`` (over valid positions), ``"sum"`` or ``"none"``.
      chunk_size, weight_layout, precision: as in :func:`linear_cross_entropy`.
      axis_name: as in :func:`linear_distillation_loss`.

    Returns:
      The KL in nats (float32), reduced over the valid positions, or per
      position for ``"none"``.

    Example:
      >>> import jax, jaxdiv
      >>> from jaxdiv import fused
      >>> kh, kw, kt = jax.random.split(jax.random.key(1), 3)
      >>> hidden = jax.random.normal(kh, (4, 8))
      >>> weight = jax.random.normal(kw, (8, 300)) / 3
      >>> teacher = jax.random.normal(kt, (4, 300))
      >>> kl = fused.linear_kl_divergence(hidden, weight, teacher, chunk_size=100)
      >>> print(f"{kl:.5f} {jaxdiv.kl_divergence(teacher, hidden @ weight).mean():.5f}")
      0.95452 0.95452
    """
    value = linear_distillation_loss(
        student_hidden, student_weight, teacher, student_bias=student_bias,
        temperature=temperature, kind="reverse_kl" if reverse else "forward_kl",
        where=where, reduction=reduction, chunk_size=chunk_size,
        weight_layout=weight_layout, precision=precision, axis_name=axis_name,
    )
    temperature = float(temperature)
    return value if temperature == 1.0 else value / temperature**2
