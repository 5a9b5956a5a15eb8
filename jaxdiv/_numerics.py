"""The few safe primitives every divergence in jaxdiv is built from.

Everything here works on the last axis of its inputs and is written so that
``-inf`` (zero probability) never produces NaN, neither in the value nor in any
derivative taken through it (the "double where" rule: an unselected branch of a
``where`` is fed harmless values, because its cotangent is zero but ``0 * inf``
is not).

The class-axis reductions go through :func:`row_max` and :func:`row_sum`, the
single place where a class axis split over devices (``axis_name`` inside
``shard_map``, see :func:`classes_split_over`) swaps in ``lax.pmax`` /
``lax.psum`` of the per-row partial results.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxdiv import _dispatch

# Above this |x| the direct forms of phi and psi lose less than their series'
# truncation; both series are cut where the next term is below 1e-9 relative
# (float32; float64 inputs take more terms, see _wide).
_PHI_SERIES_RADIUS = 0.5
_PSI_SERIES_RADIUS = 0.25


# The mesh axis the class axis is split over while a kernel is traced (None:
# each device holds whole rows). Set by classes_split_over around the tracing
# of every primal and derivative rule, which JAX may trace after the public
# function has returned, so no rule relies on its caller having set it.
_class_axis = None


@contextlib.contextmanager
def classes_split_over(axis_name):
    """Trace the row reductions inside as reductions across ``axis_name`` too."""
    global _class_axis
    previous, _class_axis = _class_axis, axis_name
    try:
        yield
    finally:
        _class_axis = previous


def classes_are_split() -> bool:
    """Whether the row reductions being traced span devices (see :func:`classes_split_over`)."""
    return _class_axis is not None


def row_max(x: jax.Array) -> jax.Array:
    """Max over the last axis (and over the devices holding the rest of the row); ``-inf`` for an empty axis."""
    local = jnp.max(x, axis=-1, initial=-jnp.inf)
    return local if _class_axis is None else jax.lax.pmax(local, _class_axis)


def row_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis (and over the devices holding the rest of the row)."""
    local = jnp.sum(x, axis=-1)
    return local if _class_axis is None else jax.lax.psum(local, _class_axis)


def class_offset(local: int, dtype=jnp.int32):
    """The class of a device's first column when each device holds ``local`` classes (0 for whole rows)."""
    if _class_axis is None:
        return jnp.zeros((), dtype)
    return (jax.lax.axis_index(_class_axis) * local).astype(dtype)


def class_index(shape, dtype) -> jax.Array:
    """The class of each element of a ``shape`` block of rows, counted across the devices."""
    index = jax.lax.broadcasted_iota(dtype, shape, len(shape) - 1)
    return index if _class_axis is None else index + class_offset(shape[-1], dtype)


def num_classes(local: int):
    """The number of classes of a row whose devices each hold ``local`` of them."""
    return local if _class_axis is None else local * jax.lax.psum(1, _class_axis)


def any_class(mask: jax.Array, axis_name=None) -> jax.Array:
    """Whether any class of a row is set, across the devices holding the row."""
    with classes_split_over(axis_name):
        return row_max(mask.astype(jnp.float32)) > 0


def check_axis_name(axis_name) -> None:
    """Raise unless ``axis_name`` is None or a mesh axis bound here (inside ``shard_map``)."""
    if axis_name is None:
        return
    try:
        jax.lax.axis_index(axis_name)
    except NameError:
        raise ValueError(
            f"axis_name={axis_name!r} names no mesh axis here: call inside jax.shard_map with the "
            "class axis split over that mesh axis (or pass axis_name=None for whole rows)."
        ) from None


def finite_or_zero(x: jax.Array) -> jax.Array:
    """``x`` where finite, else 0: a safe shift for rows whose maximum is ``-inf``."""
    return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def _wide(x: jax.Array) -> bool:
    """float64 input: the series below take more terms to stay within its rounding."""
    return x.dtype == jnp.float64


def _phi_over_x_squared(x: jax.Array) -> jax.Array:
    """Horner form of sum_{k>=0} x^k / (k+2)!, through x^7 (x^12 in float64), for |x| <= 1/2."""
    last = 12 if _wide(x) else 7
    acc = jnp.full_like(x, 1 / math.factorial(last + 2))
    for k in range(last - 1, -1, -1):
        acc = acc * x + 1 / math.factorial(k + 2)
    return acc


def phi_series(x: jax.Array) -> jax.Array:
    r"""Taylor series of :math:`\varphi(x) = e^x - 1 - x`, accurate for :math:`|x| \le 1/2`."""
    return _phi_over_x_squared(x) * x * x


def phi_over_x_series(x: jax.Array) -> jax.Array:
    r""":math:`\varphi(x) / x = (e^x - 1 - x) / x` by its series, for :math:`|x| \le 1/2` (0 at 0)."""
    return _phi_over_x_squared(x) * x


def expm1_series(x: jax.Array) -> jax.Array:
    r""":math:`e^x - 1` by its series, for :math:`|x| \le 1/2`: no transcendental call."""
    return x + phi_series(x)


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Veltkamp's split of ``a`` into two halves whose products with another half are exact."""
    factor = 134217729.0 if a.dtype == jnp.float64 else 4097.0   # 2^27 + 1, 2^12 + 1
    c = factor * a
    high = c - (c - a)
    return high, a - high


def two_product(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a * b`` as ``(product, error)`` with ``product + error`` exact (Dekker, 1971).

    For ``|a|, |b|`` well inside the dtype's range; needs no fused multiply-add.
    """
    product = a * b
    a_high, a_low = _split(a)
    b_high, b_low = _split(b)
    error = ((a_high * b_high - product) + a_high * b_low + a_low * b_high) + a_low * b_low
    return product, error


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a + b`` as ``(sum, error)`` with ``sum + error`` exact (Knuth's TwoSum; no ordering of |a|, |b| needed)."""
    total = a + b
    b_part = total - a
    error = (a - (total - b_part)) + (b - b_part)
    return total, error


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0``."""
    return jnp.sqrt(x)


# sqrt'(0) is infinite; at 0 (a distance between identical inputs, where the
# inner gradient is 0 too) the zero subgradient is used instead of inf * 0 = NaN.
@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = y > 0
    return y, dx * jnp.where(positive, 0.5 / jnp.where(positive, y, 1.0), 0.0)


@jax.custom_jvp
def expm1mx(x: jax.Array) -> jax.Array:
    r""":math:`\varphi(x) = e^x - 1 - x`, with full relative accuracy near 0.

    ``expm1(x) - x`` cancels to noise for small ``x`` (it returns 0 below ~1e-4 in
    float32); a short series replaces it there. ``phi(+-inf) = +inf``; ``phi`` is
    ``>= 0`` everywhere, with ``phi(0) = 0`` exactly.
    """
    small = jnp.abs(x) < _PHI_SERIES_RADIUS
    series = phi_series(jnp.where(small, x, jnp.zeros_like(x)))
    infinite = x == jnp.inf
    x_direct = jnp.where(small | infinite, jnp.ones_like(x), x)
    direct = jnp.where(infinite, jnp.inf, jnp.expm1(x_direct) - x_direct)
    return jnp.maximum(jnp.where(small, series, direct), 0)


# Closed form phi'(x) = expm1(x), and 0 where phi is +inf (x = +inf, or large
# enough to overflow): an infinite value is locally constant, as in every kernel.
# Autodiff through the series/direct selects keeps both branches' intermediates
# alive, 8x the memory.
@expm1mx.defjvp
def _expm1mx_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    value = expm1mx(x)
    slope = jnp.where(value == jnp.inf, jnp.zeros_like(x), jnp.expm1(jnp.where(value == jnp.inf, 0.0, x)))
    return value, slope * dx


def expm1mx_finite(x: jax.Array) -> jax.Array:
    r""":func:`expm1mx` for finite ``x``, written without compares or selects.

    XLA:CPU fuses this form into a following reduction (its fused reductions
    accept min/max/abs/exp but no compare or select), so an elementwise-then-sum
    divergence runs as one pass. The series is evaluated at ``x`` clipped to its
    radius and replaced, outside it, by the direct form through an exact 0/1
    weight. Infinite ``x`` gives NaN: callers fall back to :func:`expm1mx`.
    Its autodiff is NaN-free (no branch divides by zero or overflows).
    """
    radius = _PHI_SERIES_RADIUS
    clipped = x * (radius / jnp.maximum(jnp.abs(x), radius))
    outside = jnp.minimum(1.0, 1e30 * jnp.maximum(jnp.abs(x) - radius, 0.0))
    series = phi_series(clipped)
    return series + outside * ((jnp.expm1(x) - x) - series)


def neg_log1pmx(s: jax.Array) -> jax.Array:
    r""":math:`\psi(s) = s - \log(1 + s)` for :math:`s > -1`, accurate near 0.

    The negative of ``scipy.special.log1pmx``.

    ``psi`` is ``>= 0`` with ``psi(0) = 0`` exactly; it is the correction that
    turns a sum of per-class terms into a divergence once the normalisers of the
    two distributions differ.
    """
    small = jnp.abs(s) < _PSI_SERIES_RADIUS
    z = jnp.where(small, s, jnp.zeros_like(s))
    # s^2/2 - s^3/3 + s^4/4 - ..., through s^16 (next term < 1e-9 relative;
    # float64: through s^28, < 1e-16).
    acc = jnp.zeros_like(z)
    for k in range(28 if _wide(s) else 16, 1, -1):
        acc = acc * z + ((-1) ** k) / k
    series = acc * z * z
    s_direct = jnp.where(small, jnp.ones_like(s), s)
    direct = s_direct - jnp.log1p(s_direct)
    return jnp.maximum(jnp.where(small, series, direct), 0)


def _atanh_series_over_u(u: jax.Array, first: int) -> jax.Array:
    """sum_{k>=0} u^(2k) / (2k + first), through u^12 (u^24 in float64): 1e-9 (1e-16) relative for |u| <= 1/4."""
    u2 = u * u
    last = 12 if _wide(u) else 6
    acc = jnp.full_like(u, 1.0 / (first + 2 * last))
    for k in range(last - 1, -1, -1):
        acc = acc * u2 + 1.0 / (first + 2 * k)
    return acc


def log1p_near(s: jax.Array) -> jax.Array:
    r""":math:`\log(1 + s)` for :math:`s \in [-0.4, 2/3]`, as :math:`2\,\mathrm{atanh}(s / (2 + s))` by series.

    One division and a short polynomial, no compare or select, so it fuses.
    """
    u = s / (2.0 + s)
    return 2.0 * u * _atanh_series_over_u(u, 1)


def neg_log1pmx_near(s: jax.Array) -> jax.Array:
    r""":math:`\psi(s) = s - \log(1 + s)` for :math:`s \in [-0.4, 2/3]`, accurate near 0.

    With :math:`u = s / (2 + s)`, :math:`\psi = s^2 / (2 + s) - 2(u^3/3 + u^5/5 + \dots)`;
    neither part cancels the other on this interval.
    """
    u = s / (2.0 + s)
    return s * u - 2.0 * u * u * u * _atanh_series_over_u(u, 3)


class LogNormaliser(NamedTuple):
    """Row statistics of ``logits`` for the log-softmax, see :func:`log_normaliser`."""

    shift: jax.Array      # row max, 0 for a row with no finite logit  [...]
    centred: jax.Array    # logits - shift (<= 0, -inf stays -inf)     [..., C]
    exp_centred: jax.Array  # exp(centred), in [0, 1]                  [..., C]
    log_sum: jax.Array    # log sum exp(centred); -inf for an empty row [...]


def log_normaliser(logits: jax.Array) -> LogNormaliser:
    r"""Stable pieces of :math:`\log\sum_i e^{x_i} = m + \log(1 + \sum_{i \ne i^*} e^{x_i - m})`.

    The ``log1p`` form (Blanchard, Higham & Higham, 2021) keeps tiny entropies and
    confident cross-entropies accurate: the arg-max term, exactly 1, is left out of
    the sum instead of being added and then cancelled by the logarithm. Ties at the
    maximum are counted exactly.
    """
    shift = finite_or_zero(row_max(logits))
    centred = logits - shift[..., None]
    exp_centred = jnp.exp(centred)
    return LogNormaliser(shift, centred, exp_centred, log1p_sum_apart(exp_centred, centred == 0))


def log1p_sum_apart(ratios: jax.Array, at_max: jax.Array) -> jax.Array:
    """``log(sum ratios)`` for ratios to the row maximum, as ``log1p`` of all but one
    maximum: each entry at the maximum (``at_max``, ratio exactly 1) is counted
    rather than summed, so ties are exact; ``-inf`` for a row without a maximum."""
    rest = row_sum(jnp.where(at_max, jnp.zeros_like(ratios), ratios))
    ties = row_sum(at_max.astype(ratios.dtype)) - 1
    return jnp.log1p(rest + ties)   # ties = -1 only when the row has no mass


# On the CPU a block of rows is sized to stay cache-resident: XLA:CPU cannot
# fuse the selects of the stable formulas into its reductions, so each
# intermediate is materialised, and materialising whole [rows, C] arrays costs
# several passes over memory. Measured on a 2-core x86: 2^18-2^19 elements per
# block is fastest.
_BLOCK_ELEMENTS = 1 << 19

# Which branch of :func:`on_platform` runs: None picks by the lowering
# platform; tests set "cpu" or "accelerator" to run either one on the CPU.
_forced_branch: str | None = None


def forced_branch(name: str):
    """Trace :func:`on_platform`'s ``name`` branch whatever the platform (for tests)."""
    return _dispatch.switch_for_tests(sys.modules[__name__], "_forced_branch", name,
                                      ("cpu", "accelerator"), "branch")


# The branch of map_rows being traced, for the few row functions whose best
# formulation differs (read with current_branch()).
_tracing_branch: str = "cpu"


def current_branch() -> str:
    """``"cpu"`` or ``"accelerator"``: which branch of :func:`map_rows` is being traced."""
    return _tracing_branch


def _traced_as(name, fn):
    def traced(*args):
        global _tracing_branch
        previous, _tracing_branch = _tracing_branch, name
        try:
            return fn(*args)
        finally:
            _tracing_branch = previous

    return traced


def on_platform(*args, cpu, accelerator):
    """``cpu(*args)`` on the CPU, ``accelerator(*args)`` on GPU and TPU.

    The choice is made when the program is lowered (``lax.platform_dependent``),
    so a ``jax.export`` for several platforms keeps both branches and each
    device compiles only its own. Both must return the same shapes and dtypes.
    """
    if _forced_branch == "cpu":
        return cpu(*args)
    if _forced_branch == "accelerator":
        return accelerator(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=accelerator)


def promote(x: jax.Array) -> jax.Array:
    """A floating array in its compute dtype: at least float32 (16-bit storage is widened)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.result_type(x.dtype, jnp.float32))
    return x


def map_rows(fn, *arrays, linear=(), widen=True):
    """``fn(*arrays)`` evaluated over the rows, the one execution helper of every kernel.

    ``fn`` maps row-major arrays whose leading dimensions are the batch (those
    of ``arrays[0]`` but its last, the class axis) to a pytree of per-row
    statistics. The batch is the broadcast of the arrays' leading dimensions:
    an array whose leading dimensions are all 1 (one reference row against a
    batch) is handed over as it is, never broadcast to the batch in memory.

    On GPU and TPU ``fn`` runs once on the whole arrays: their compilers fuse
    the selects of the stable formulas into the reductions, so each statistic
    is a streaming pass, and any loop would only add kernel launches. On the
    CPU, whose fused reductions cannot hold a select, the rows go through a
    loop in cache-sized blocks, 16-bit arrays carried as their bits and widened
    block by block. Either way a batch sharded over devices (along any of its
    dimensions) stays sharded: see :func:`_strided_blocks`. ``linear`` lists
    the positions of tangents (bit casts have no transpose). ``widen=False``
    hands ``fn`` the arrays in their storage dtype, for an ``fn`` that widens
    them in each pass it makes (see :func:`log_ratio`'s ``read``).
    """
    nb = arrays[0].ndim - 1
    batch = tuple(np.broadcast_shapes(*(a.shape[:nb] for a in arrays)))
    rows = math.prod(batch)
    mapped, shared = [], []
    for a in arrays:
        inner = a.shape[nb:]
        if all(d == 1 for d in a.shape[:nb]) and rows != 1:
            shared.append(a)
            mapped.append(None)
        else:
            mapped.append(jnp.broadcast_to(a, batch + inner))
            shared.append(None)
    # Arrays without a class axis (per-row statistics) are split with the rows.
    num_classes = max(max((a.shape[-1] for a in arrays if a.ndim == nb + 1), default=1), 1)
    block = max(1, min(rows, _BLOCK_ELEMENTS // num_classes))
    mapped_positions = [i for i, m in enumerate(mapped) if m is not None]
    xs = tuple(m for m in mapped if m is not None)

    def run(xs, size):
        """``fn`` on blocks whose batch has shape ``size``."""
        it = iter(xs)
        args = [next(it) if s is None else s.reshape((1,) * len(size) + s.shape[nb:]) for s in shared]
        args = [promote(a) for a in args] if widen else args
        out = fn(*args)
        return jax.tree.map(lambda o: jnp.broadcast_to(o, size + o.shape[len(size):]), out)

    def blocked(xs):
        narrow = tuple(i not in linear and is_16_bit(x) for i, x in zip(mapped_positions, xs))
        outer = _outer_shape(batch, block)
        if outer is not None:
            return _strided_blocks(run, xs, narrow, batch, outer, bool(linear))
        return _contiguous_blocks(run, xs, narrow, batch, block, bool(linear))

    if rows // block <= 1 and _forced_branch is None:
        # One cache-sized block: both formulations are one pass, the CPU's serves all.
        return run(xs, batch)
    return on_platform(xs, cpu=_traced_as("cpu", blocked),
                       accelerator=_traced_as("accelerator", lambda xs: run(xs, batch)))


# A block takes, along each batch dimension ``d = o * s``, the ``o`` indices
# strided by ``s`` (index ``i * s + k`` is in block ``k``). The part of the
# batch a device owns under a sharding of any batch dimension is then a slice
# of every block, so the partitioner keeps the loop sharded; a loop over
# contiguous blocks walks across devices, and the partitioner gathers them
# instead. Meshes of up to this many devices per batch dimension always divide
# ``o``.
_SHARD_GRANULE = 8


def _outer_shape(batch: tuple, block: int):
    """Per batch dimension, how many of its indices a block takes (a divisor of
    it, a multiple of the shard granule where it allows), about ``block`` rows in
    all; None when the batch factors too poorly (blocks would be tiny), is odd
    along every dimension, or fits one block."""
    granules = [math.gcd(d, _SHARD_GRANULE) for d in batch]
    outer = list(granules)
    budget = max(block, math.prod(granules))
    # Fill from the last (contiguous) dimension outwards.
    for i in reversed(range(len(batch))):
        rest, g = math.prod(outer) // outer[i], granules[i]
        outer[i] = max((g * d for d in _divisors(batch[i] // g) if rest * g * d <= budget), default=g)
    size = math.prod(outer)
    # A batch odd along every dimension splits evenly over no mesh of 2, 4 or
    # 8 devices: contiguous blocks of the full size are faster than strided
    # ones of a divisor's (a prime row count: one row; JS value+grad at 1009 x
    # 32000 757 vs 1155 ms).
    if math.prod(granules) == 1 or size * 16 < block or size == math.prod(batch):
        return None
    return tuple(outer)


def _divisors(n: int):
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def _strided_blocks(run, xs, narrow, batch: tuple, outer: tuple, linear: bool):
    steps = tuple(d // o for d, o in zip(batch, outer))
    nb = len(batch)
    split = tuple(x for pair in zip(outer, steps) for x in pair)   # (o0, s0, o1, s1, ...)

    def starts(k):
        index = []
        for s in reversed(steps):
            index.append(k % s)
            k = k // s
        return [v for ki in reversed(index) for v in (0, ki)]

    # Each input seen as (o0, s0, o1, s1, ..., classes), reshaped outside the
    # loop: in the loop (under the checkpoint below), the transposed program
    # accumulated each step's cotangent into a whole-input array (JS value+grad
    # 2x slower at 1024 x 32000).
    views = tuple(x.reshape(split + x.shape[nb:]) for x in xs)

    def read_and_run(k, views):
        def read(v):
            return (jax.lax.dynamic_slice(v, starts(k) + [0] * (v.ndim - 2 * nb),
                                          [n for o in outer for n in (o, 1)] + list(v.shape[2 * nb:]))
                    .reshape(outer + v.shape[2 * nb:]))
        return run(tuple(_read_block(read, v, n, k) for v, n in zip(views, narrow)), outer)

    # Under reverse mode a slice read in the loop would be saved per step, a
    # whole input stacked; recomputed from the loop-invariant inputs, it is not.
    read_and_run = jax.checkpoint(read_and_run) if linear else read_and_run

    def body(k, out):
        def put(buf, o):
            o = o.reshape(tuple(n for d in outer for n in (d, 1)) + o.shape[nb:])
            return jax.lax.dynamic_update_slice(buf, o, starts(k) + [0] * (o.ndim - 2 * nb))
        return jax.tree.map(put, out, read_and_run(k, views))

    shapes = jax.eval_shape(lambda: read_and_run(0, views))
    out = jax.tree.map(lambda s: jnp.zeros(split + s.shape[nb:], s.dtype), shapes)
    out = jax.lax.fori_loop(0, math.prod(steps), body, out)
    return jax.tree.map(lambda o: o.reshape(batch + o.shape[2 * nb:]), out)


def _contiguous_blocks(run, xs, narrow, batch: tuple, block: int, linear: bool):
    """Rows flattened into whole blocks in a loop, the shorter last block on its own."""
    rows = math.prod(batch)
    full = rows // block
    # Flattened before the loop, as in _strided_blocks.
    flat = tuple(x.reshape((rows,) + x.shape[len(batch):]) for x in xs)

    def read_and_run(start, size, flat):
        def read(x):
            return jax.lax.dynamic_slice_in_dim(x, start, size)
        return run(tuple(_read_block(read, x, n, start) for x, n in zip(flat, narrow)), (size,))

    # Recomputed in reverse mode, as in _strided_blocks: saved, the blocks read
    # in the loop were stacked into a copy of each input.
    read_and_run = jax.checkpoint(read_and_run, static_argnums=(1,)) if linear else read_and_run
    if full <= 1:
        out = run(flat, (rows,))
    else:
        out = jax.lax.map(lambda k: read_and_run(k * block, block, flat), jnp.arange(full))
        out = jax.tree.map(lambda o: o.reshape((full * block,) + o.shape[2:]), out)
        if full * block < rows:
            last = read_and_run(full * block, rows - full * block, flat)
            out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, last)
    return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)


def is_16_bit(x) -> bool:
    """A bfloat16 or float16 array (computed in float32, stored narrow)."""
    return jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2


def _read_block(read, x, narrow: bool, k):
    """``read(x)``, a block of ``x`` at loop step ``k``.

    XLA:CPU computes every operation on a 16-bit float in float32 but the
    convert, so a loop's slice of a 16-bit input becomes a slice of the input
    widened as a whole before the loop: a float32 copy. Read in the branch of
    a conditional (never false, but not provably so), only the block is widened.
    """
    if not narrow:
        return read(x)
    shape = jax.eval_shape(read, x)
    return jax.lax.cond(k >= 0, read, lambda x: jnp.zeros(shape.shape, shape.dtype), x)


_ROW_STATS = "jaxdiv_row_stats"


def recompute_in_backward(fn):
    """Under reverse mode, keep only what :func:`row_stats` marks; recompute the rest.

    Wrapped around a function with a custom JVP rule, this makes the backward pass
    re-read the inputs instead of holding ``[..., C]`` temporaries (probabilities,
    coefficients) between the forward and the backward pass.
    """
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(_ROW_STATS))


def custom_jvp_over_classes(primal, jvp):
    """``build(axis_name, *static)``: ``primal`` with the custom JVP rule ``jvp``, both
    traced with the classes split over ``axis_name`` (None: whole rows), wrapped in
    :func:`recompute_in_backward`.

    ``primal(*static, *args)`` and ``jvp(*static, primals, tangents)`` (symbolic
    zeros on); ``static`` are hashable settings the rule does not differentiate.
    JAX traces a rule when the program is differentiated, possibly after the
    public function has returned: the rule sets the class axis itself.
    """

    @functools.lru_cache(maxsize=256)
    def build(axis_name, *static):
        @jax.custom_jvp
        def fn(*args):
            with classes_split_over(axis_name):
                return primal(*static, *args)

        def rule(primals, tangents):
            with classes_split_over(axis_name):
                return jvp(*static, primals, tangents)

        fn.defjvp(rule, symbolic_zeros=True)
        return recompute_in_backward(fn)

    return build


def row_stats(stats):
    """Mark per-row statistics as the residuals kept for the backward pass."""
    return jax.tree.map(lambda s: checkpoint_name(s, _ROW_STATS), stats)


@jax.custom_jvp
def log1p_scaled(total: jax.Array, h: jax.Array) -> jax.Array:
    """``log1p(h * total) / h``, equal to ``total`` at ``h = 0``."""
    z = jnp.maximum(h * total, -1.0)
    zero = z == 0
    ratio = jnp.where(zero, 1.0, jnp.log1p(z) / jnp.where(zero, 1.0, z))
    return jnp.where(jnp.isinf(total), jnp.inf, total * ratio)


# Closed form d/dtotal = 1 / (1 + h total); the quotient's own autodiff cancels
# catastrophically for tiny h * total.
@log1p_scaled.defjvp
def _log1p_scaled_jvp(primals, tangents):
    total, h = primals
    d_total, d_h = tangents
    value = log1p_scaled(total, h)
    denom = 1.0 + h * total
    live = jnp.isfinite(value) & (denom > 0)
    return value, d_total * jnp.where(live, 1.0 / jnp.where(live, denom, 1.0), 0.0)


# ------------------------------------------------------------------ log P / Q


def support(exp_centred: jax.Array) -> jax.Array:
    """The classes where P is nonzero in the working precision.

    A logit whose probability underflows (say -1e4 next to 0) is treated exactly
    like ``-inf``, so clipping ``-inf`` to a large negative number changes nothing.
    """
    return exp_centred > 0


def centred_support(centred: jax.Array) -> jax.Array:
    """:func:`support` from the centred logits ``x - max x``: where ``exp`` is a normal number.

    Below the smallest normal number, ``exp`` flushes to zero on GPUs and not on
    CPUs; excluding those probabilities (under 1.2e-38 of the largest in
    float32) makes every backend agree on the support.
    """
    return centred > _LOG_SMALLEST_NORMAL[centred.dtype == jnp.float64]


# log of the smallest normal float32 / float64 number, rounded up.
_LOG_SMALLEST_NORMAL = (math.log(float(np.finfo(np.float32).tiny)) + 1e-3,
                        math.log(float(np.finfo(np.float64).tiny)) + 1e-9)


def difference(q: jax.Array, p: jax.Array, read: jax.Array) -> jax.Array:
    """``q - p`` where ``read``, 0 elsewhere, without forming ``-inf - -inf``."""
    return jnp.where(read, q, 0.0) - jnp.where(read, p, 0.0)


def shifted_difference(
    q: jax.Array, p: jax.Array, shift_q: jax.Array, shift_p: jax.Array, read: jax.Array
) -> jax.Array:
    r"""``(q - shift_q) - (p - shift_p)`` where ``read``, 0 elsewhere, in the form that rounds less.

    Formed as ``(q - p) - (shift_q - shift_p)``, the difference of the raw
    logits is exact for nearby values (nearly identical distributions), but
    the result carries a rounding of the offset ``shift_q - shift_p``; formed
    from the centred logits it carries roundings of ``q - shift_q`` and
    ``p - shift_p`` instead. Each entry takes the form with the smaller error
    bound, so neither a common offset nor a large offset between the two rows
    (logits 1e6 apart, a masked row of -1e30) costs digits, and an offset that
    overflows (``3e38`` against ``-3e38``) is never used.
    """
    a = p - shift_p[..., None]
    b = q - shift_q[..., None]
    offset = (shift_q - shift_p)[..., None]
    raw = read & (jnp.abs(offset) <= jnp.abs(a) + jnp.abs(b))
    centred = read & ~raw
    from_raw = difference(q, p, raw) - jnp.where(raw, offset, 0.0)
    return jnp.where(raw, from_raw, difference(b, a, centred))


def invalid(row_stat: jax.Array) -> jax.Array:
    """NaN or ``+inf`` in a row statistic that is finite for valid logits.

    Normaliser sums of ``exp(x - max x)`` are at most the class count, and NaN or
    ``+inf`` in any read logit propagates into them, so checking them costs no
    pass over the classes.
    """
    return ~(row_stat < jnp.inf)


class LogRatio(NamedTuple):
    """Row statistics of a pair of logit arrays, see :func:`log_ratio`."""

    kl: jax.Array         # KL(P || Q); NaN for a row holding NaN or +inf
    shift_p: jax.Array    # max p (0 for a row without support)
    log_sum_p: jax.Array  # log sum exp(p - shift_p); -inf for a row without support
    shift_q: jax.Array    # max q (0 for a row without support)
    log_sum_q: jax.Array  # log sum exp(q - shift_q); -inf for a row without support
    shift_on: jax.Array   # max of q on the support of P (0 if none is finite)
    gap: jax.Array        # log Q - log P = ((q - shift_on) - (p - shift_p)) - gap

    @property
    def lse_p(self) -> jax.Array:
        return self.shift_p + self.log_sum_p

    @property
    def lse_q(self) -> jax.Array:
        return self.shift_q + self.log_sum_q


def log_ratio(p: jax.Array, q: jax.Array, *more: jax.Array, read=None) -> LogRatio:
    r"""Row statistics that give :math:`\log P - \log Q` to full accuracy, and :math:`KL(P \| Q)`.

    The difference of the two log-normalisers is the delicate part: computed as
    ``lse(q) - lse(p)`` it carries an absolute error of a rounding of the
    normalisers, which is the whole value of a divergence between nearly
    identical distributions. Here it is ``c + log1p(s) + softplus(x)``: with
    :math:`a = p - \max p`, :math:`b = q - \max_{\mathrm{supp} P} q`,
    :math:`r = b - a` (formed by :func:`shifted_difference`, exact for nearby
    values and unharmed by any offset between the rows) and
    :math:`c = \max_{\mathrm{supp} P} q - \max p`,
    :math:`s = \sum_{\mathrm{supp} P} P\,\mathrm{expm1}(r)` is a sum of terms as
    small as the differences themselves, and :math:`x` is the log ratio of Q's
    mass off and on the support of P.

    KL comes with it at no extra exponential:

    .. math::
      KL = \sum P \varphi(r) - \psi(s) + \mathrm{softplus}(x),

    where :math:`P\varphi(r) = (e^b - e^a(1 + r)) / S_p` away from 0.

    ``read(p, q, *more)``, when given, forms the logits from the arrays as
    stored (widened, tempered, masked): on GPU and TPU every pass applies it
    again, and only the stored arrays are held between passes. Logits formed
    once would be a new ``[rows, C]`` array that the passes share, and XLA
    keeps such an array in memory (bfloat16 KL on an H100: 402% of an input).
    """
    stored = (p, q, *more)
    read = read or (lambda *arrays: arrays[:2])
    p, q = read(*stored)
    shift_p, shift_all = finite_or_zero(row_max(p)), finite_or_zero(row_max(q))
    if current_branch() == "cpu":
        a = p - shift_p[..., None]
        # The same mask as centred_support spelled differently (a - T > 0 exactly
        # when a > T): XLA would otherwise compute it once, in the pass that
        # finds max_q_on, and keep it as a [rows, C] array for the pass that
        # forms the sums.
        max_q_on = row_max(jnp.where(a - _LOG_SMALLEST_NORMAL[a.dtype == jnp.float64] > 0, q, -jnp.inf))
        return _log_ratio_given(p, q, shift_p, shift_all, max_q_on)[0]
    # On GPU and TPU, a max pass then one pass of sums, shifting Q on P's support
    # by max q; that shift is max_q_on (found by the same pass) unless Q's
    # largest logit lies where P underflows. Only then does a third pass run,
    # for the whole batch (under vmap, where the condition is batched, always).
    # Both maxima end the first pass: the barrier keeps XLA from moving max q
    # into a later pass next to the reductions that also read q.
    stored, shift_p, shift_all = jax.lax.optimization_barrier((stored, shift_p, shift_all))
    stats, max_q_on = _log_ratio_given(*read(*stored), shift_p, shift_all, None)
    # (and the test for the third pass must not join the sums' per-row inputs in
    # one fusion: that would make the sums wait for max_q_on, a pass of its own)
    stats, max_q_on = jax.lax.optimization_barrier((stats, max_q_on))
    elsewhere = jnp.isfinite(max_q_on) & (max_q_on != shift_all)
    # (statistics of a shared reference row, [1], are per row once the third pass may run)
    stats = jax.tree.map(lambda s: jnp.broadcast_to(s, elsewhere.shape), stats)
    return jax.lax.cond(
        jnp.any(elsewhere),
        lambda: jax.tree.map(functools.partial(jnp.where, elsewhere),
                             _log_ratio_given(*read(*stored), shift_p, shift_all, max_q_on)[0], stats),
        lambda: stats)


def _log_ratio_given(p, q, shift_p, shift_all, max_q_on):
    """:func:`log_ratio`'s statistics from the row maxima of ``p`` and ``q`` and the
    maximum of ``q`` on P's support; for ``max_q_on=None``, shifted by ``max q``
    and returned with ``max_q_on`` found by the same pass."""
    a = p - shift_p[..., None]
    # The support from a compare of the logits, not from exp(a) > 0: a cheap
    # mask is recomputed by every pass that reads it, where an exponential
    # would be stored as a [rows, C] mask by the GPU and TPU compilers.
    supp = centred_support(a)
    e_a = jnp.where(supp, jnp.exp(a), jnp.where(jnp.isnan(a), a, 0.0))   # NaN reaches sum_p
    if max_q_on is None:
        max_q_on = row_max(jnp.where(supp, q, -jnp.inf))
        shift_on = shift_all
    else:
        shift_on = finite_or_zero(max_q_on)
    q_on_supp_finite = supp & (q > -jnp.inf)

    e_b = jnp.exp(q - jnp.where(supp, shift_on[..., None], shift_all[..., None]))
    r = shifted_difference(q, p, shift_on, shift_p, q_on_supp_finite)
    small = jnp.abs(r) < _PHI_SERIES_RADIUS
    phi = phi_series(jnp.where(small, r, 0.0))
    zero = jnp.zeros_like(e_a)
    # e^a * phi(r) and e^a * expm1(r), directly from e^b = e^a e^r when r is not small.
    # Q_i = 0 < P_i contributes +inf; folding it in here saves a pass.
    v = jnp.where(small, e_a * phi, e_b - e_a * (1 + r))
    v = jnp.where(supp, jnp.where(q_on_supp_finite, v, jnp.inf), zero)
    # Q_i = 0 < P_i contributes P_i * expm1(-inf) = -P_i.
    u = jnp.where(q_on_supp_finite, jnp.where(small, e_a * (r + phi), e_b - e_a), -e_a)

    sum_p = row_sum(e_a)
    sum_on = row_sum(jnp.where(supp, e_b, zero))
    sum_off = row_sum(jnp.where(supp, zero, e_b))
    has_p, has_on, has_off = sum_p > 0, sum_on > 0, sum_off > 0
    # NaN or +inf in p or q makes a normaliser sum non-finite (all other terms are <= 1).
    bad = invalid(sum_p) | invalid(sum_on + sum_off)
    sum_p = jnp.where(has_p, sum_p, 1.0)
    s = jnp.where(has_on, row_sum(u) / sum_p, 0.0)
    # x = log(Q mass off supp P / Q mass on it), -inf when nothing is off.
    x = jnp.where(
        has_on & has_off,
        (shift_all - shift_on)
        + jnp.log(jnp.where(has_off, sum_off, 1.0))
        - jnp.log(jnp.where(has_on, sum_on, 1.0)),
        -jnp.inf,
    )
    kl = jnp.maximum(row_sum(v) / sum_p - neg_log1pmx(s) + jax.nn.softplus(x), 0.0)
    kl = jnp.where(has_p, kl, 0.0)
    kl = jnp.where(bad, jnp.nan, kl)

    log_sum_p = jnp.where(has_p, jnp.log(sum_p), -jnp.inf)
    # Q's normaliser relative to shift_all: the on-support part is rescaled.
    scale_on = jnp.where(jnp.isfinite(max_q_on), jnp.exp(shift_on - shift_all), 0.0)
    sum_q = sum_off + sum_on * scale_on
    log_sum_q = jnp.where(sum_q > 0, jnp.log(jnp.where(sum_q > 0, sum_q, 1.0)), -jnp.inf)
    gap = jnp.log1p(s) + jax.nn.softplus(x)
    return LogRatio(kl, shift_p, log_sum_p, shift_all, log_sum_q, shift_on, gap), max_q_on
