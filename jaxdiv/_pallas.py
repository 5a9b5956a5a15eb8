"""Pallas kernels that read each row of logits once: the ``implementation="pallas"`` path.

A :class:`RowPass` is a per-row statistic of :mod:`jaxdiv._online` (state,
tile update, finish) with its whole-row XLA twin. :func:`row_pass` evaluates it:

* on a GPU, one Triton program per block of rows walks the classes in column
  tiles, carrying the state in registers, and writes only per-row results;
* on a TPU, Mosaic runs a ``(row blocks, column tiles)`` grid whose column
  axis is sequential, the state in VMEM scratch;
* on the CPU (no Pallas backend) the XLA twin runs: the same numbers through
  the kernels of :mod:`jaxdiv._numerics`.

The choice is made when the program is lowered, as for every kernel
(``lax.platform_dependent``), so an export for several platforms keeps each
one's path. Tests run both kernels on the CPU in Pallas's interpreter
(:func:`interpreted`). Inputs are read in their storage dtype (16-bit logits
cost half the bytes) and widened to float32 tile by tile.

What a kernel cannot take (float64, classes split over devices) raises
``NotImplementedError`` at trace time, and :func:`choose` falls through to the
XLA path, as openxla/tokamax and Levanter's kernels do. The tiles are fixed,
so on-chip memory is bounded by construction (see :func:`_tpu_tiles`) rather
than discovered by a failed compile.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxdiv import _dispatch, _numerics

IMPLEMENTATIONS = ("xla", "pallas")

# Which kernel row_pass traces regardless of the platform, interpreted: None,
# "triton" or "mosaic" (tests, on the CPU).
_interpreted: Optional[str] = None


def interpreted(kernel: str):
    """Trace :func:`row_pass`'s ``kernel`` (``"triton"`` or ``"mosaic"``) in Pallas's interpreter."""
    return _dispatch.switch_for_tests(sys.modules[__name__], "_interpreted", kernel,
                                      ("triton", "mosaic"), "kernel")


def check_implementation(implementation) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


def choose(implementation: str, pallas: Callable[[], jax.Array], xla: Callable[[], jax.Array]):
    """``pallas()`` when asked for and possible, else ``xla()`` (on ``NotImplementedError``)."""
    if check_implementation(implementation) == "pallas":
        try:
            return pallas()
        except NotImplementedError:
            pass
    return xla()


class RowPass(NamedTuple):
    """A per-row statistic: online ``init/step/finish`` and its whole-row XLA twin.

    ``step(state, tiles, cols, args, classes)`` takes the float32 tiles
    ``[rows, cols]`` (``-inf`` past the row's end), their class indices
    ``cols`` ``[1, cols]``, the per-row arguments as ``[rows, 1]`` arrays and
    the number of classes. ``finish(state)`` and ``xla(*arrays, *row_args)``
    return the same tuple of per-row arrays (``[rows, 1]`` and ``[rows]``).
    """

    init: Callable
    step: Callable
    finish: Callable
    xla: Callable
    then: Optional["Sweep"] = None


class Sweep(NamedTuple):
    """A second sweep over the row's tiles, given the first one's results ``first``.

    For statistics that need the row's normalisers before their terms (the
    Jensen-Shannon family): ``step(state, tiles, cols, args, classes, first)``
    and ``finish(state, first, args)``, which gives the kernel's results.
    """

    init: Callable
    step: Callable
    finish: Callable


def tiles_only(update: Callable) -> Callable:
    """A ``step`` for an update that reads the tiles alone."""
    return lambda state, tiles, cols, args, classes: update(state, *tiles)


def cotangent_times(g: jax.Array, coef: jax.Array) -> jax.Array:
    """``g * coef``, exactly 0 where ``g`` is: a row the caller masked out gets a
    zero gradient, even where its coefficients are NaN (a NaN row's)."""
    return jnp.where(g == 0, 0.0, g * coef)


def differentiable(stat: RowPass, backward: Callable) -> Callable:
    """``f(arrays, row_args)``: :func:`row_pass` with a custom VJP.

    The kernel's per-row results are the only residuals. ``backward(arrays,
    row_args, results, cotangents)`` returns the gradients of the arrays and
    of the row arguments (None for integer ones): an elementwise re-read of
    the inputs, which XLA fuses into one pass on every backend. Reverse mode
    only: a Pallas call has no JVP rule.
    """

    @jax.custom_vjp
    def value(arrays, row_args):
        return row_pass(stat, arrays, row_args)

    def forward(arrays, row_args):
        results = row_pass(stat, arrays, row_args)
        return results, (arrays, row_args, results)

    def backward_rule(saved, cotangents):
        arrays, row_args, results = saved
        return backward(arrays, row_args, results, cotangents)

    value.defvjp(forward, backward_rule)
    return value


def row_pass(stat: RowPass, arrays: tuple, row_args: tuple = ()):
    """``stat`` over the rows of ``arrays`` (``[..., C]``, same shape), per-row results of the batch shape.

    ``row_args`` are per-row inputs of the batch shape (integer labels).
    """
    for a in arrays:
        if a.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise NotImplementedError(f"Pallas kernels take 16- or 32-bit floats, got {a.dtype}")
    if _numerics.classes_are_split():
        raise NotImplementedError("Pallas kernels read whole rows; the classes are split over devices")
    n = len(arrays)

    def on_rows(fn):
        """``fn`` of ``[rows, C]`` arrays and ``[rows]`` arguments, on any leading dimensions."""
        def run(*xs):
            lead = xs[0].shape[:-1]
            out = fn(*(x.reshape(-1, x.shape[-1]) for x in xs[:n]), *(r.reshape(-1) for r in xs[n:]))
            return jax.tree.map(lambda t: t.reshape(lead), out)
        return run

    def triton(*xs):
        return _triton(stat, xs[:n], xs[n:], interpret=_interpreted == "triton")

    def mosaic(*xs):
        return _mosaic(stat, xs[:n], xs[n:], interpret=_interpreted == "mosaic")

    def xla(*xs):
        return stat.xla(*(_numerics.promote(x) for x in xs))

    def kernel(*xs):
        if _interpreted == "triton":
            return triton(*xs)
        if _interpreted == "mosaic":
            return mosaic(*xs)
        return jax.lax.platform_dependent(*xs, cuda=triton, tpu=mosaic, default=xla)

    # Under vmap the mapped axis is one more leading dimension: the kernel
    # takes its rows as more rows (Pallas's own batching would add a grid
    # axis, which Mosaic's dimension semantics do not expect).
    @jax.custom_batching.custom_vmap
    def run(*xs):
        if _interpreted:   # the interpreters' callbacks cannot be partitioned (tests: one device)
            return on_rows(kernel)(*xs)
        return _split_over_rows(on_rows(kernel), xs, jax.eval_shape(on_rows(xla), *xs))

    @run.def_vmap
    def _(axis_size, batched, *xs):
        out = run(*(x if b else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, b in zip(xs, batched)))
        return out, jax.tree.map(lambda _: True, out)

    return run(*arrays, *row_args)


def _split_over_rows(kernel: Callable, xs: tuple, out_shapes):
    """``kernel(*xs)``, run on each device's rows when ``jit`` partitions the inputs.

    A Pallas call is a custom call that XLA cannot partition (Mosaic refuses
    to lower it under a sharded ``jit``; a GPU would gather the inputs). Rows
    are independent, so each device runs the kernel on its own part of the
    leading (batch) dimensions, whichever are sharded, with the class axis
    whole. ``out_shapes``: the results' structure (batch-shaped arrays).
    """
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    leaves, tree = jax.tree.flatten(out_shapes)
    lead = xs[0].ndim - 1

    def flat_kernel(*xs):
        return tuple(jax.tree.leaves(kernel(*xs)))

    def batch_shardings(mesh, arg_shapes):
        spec = tuple(getattr(arg_shapes[0].sharding, "spec", ()))
        batch = (spec + (None,) * lead)[:lead]
        return NamedSharding(mesh, PartitionSpec(*batch, None)), NamedSharding(mesh, PartitionSpec(*batch))

    def infer(mesh, arg_shapes, result_shape):
        return tuple(batch_shardings(mesh, arg_shapes)[1] for _ in leaves)

    def partition(mesh, arg_shapes, result_shape):
        arrays, rows = batch_shardings(mesh, arg_shapes)
        args = tuple(arrays if a.ndim == lead + 1 else rows for a in arg_shapes)
        return mesh, flat_kernel, tuple(rows for _ in leaves), args

    split = custom_partitioning(flat_kernel)
    batch = " ".join(f"b{i}" for i in range(lead))
    operands = ", ".join(f"{batch} c" if x.ndim == lead + 1 else batch for x in xs)
    split.def_partition(partition=partition, infer_sharding_from_operands=infer,
                        sharding_rule=f"{operands} -> {', '.join(batch for _ in leaves)}",
                        need_replication_factors=("c",))
    return jax.tree.unflatten(tree, split(*xs))


def _kernel_name(stat: RowPass) -> str:
    # The accelerator-model report counts a two-sweep kernel's reads twice by this name.
    return "jaxdiv_row_pass" if stat.then is None else "jaxdiv_two_sweeps"


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))



def _out_structs(stat: RowPass, rows: int, tiles, args):
    """The first sweep's and the kernel's results for ``rows`` rows: ``[rows, 1]`` float32 each."""
    def probe(tiles, args):
        cols = jnp.zeros((1, tiles[0].shape[1]), jnp.int32)
        first = stat.finish(stat.step(stat.init(rows), tiles, cols, args, 1))
        if stat.then is None:
            return first, first
        then = stat.then
        return first, then.finish(then.step(then.init(rows), tiles, cols, args, 1, first), first, args)
    return jax.eval_shape(probe, tiles, args)


# ------------------------------------------------------------------ Triton (GPU)

# Elements of the tiles of all inputs held in registers by one program, and its
# warps. The kernels are bound by instructions, not bytes, on an H200 (bfloat16
# runs no faster than float32), so fewer warps, with fewer cross-warp
# reductions per tile, win: ``python3 benchmarks/triton_tiles.py`` at 16384 x
# 131072 measured KL (two inputs of 2048 columns) 11.3 ms with 4 warps against
# 14.7 ms with 8, and integer-label cross-entropy (one input of 4096) 3.3 ms
# against 4.8 ms for 2048 columns with 8 warps; 4096 columns per input cost KL
# 25% more, and several rows per program up to twice as much.
# ``_TRITON_ROWS`` splits the tile over that many rows (None: one row, or as
# many short rows as fill it); ``_TRITON_STAGES`` is Triton's pipelining of
# the column loop's loads (3 measured the same as 1).
_TRITON_TILE = 4096
_TRITON_ROWS: Optional[int] = None
_TRITON_WARPS = 4
_TRITON_STAGES = 1


def _triton_tiles(rows: int, classes: int, inputs: int = 1) -> tuple[int, int, int]:
    per_input = max(1, _TRITON_TILE // inputs)
    cols = min(_pow2_at_least(classes), per_input // (_TRITON_ROWS or 1))
    block = min(_pow2_at_least(rows), max(1, per_input // cols))
    return block, cols, _TRITON_WARPS


def _triton(stat: RowPass, arrays, row_args, *, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    rows, classes = arrays[0].shape
    block, cols, warps = _triton_tiles(rows, classes, len(arrays))
    steps = pl.cdiv(classes, cols)
    n_in, n_args = len(arrays), len(row_args)
    tile = jax.ShapeDtypeStruct((block, cols), jnp.float32)
    arg_blocks = [jax.ShapeDtypeStruct((block, 1), r.dtype) for r in row_args]
    outs, out_tree = jax.tree.flatten(_out_structs(stat, block, [tile] * n_in, arg_blocks)[1])

    def kernel(*refs):
        in_refs, arg_refs, out_refs = refs[:n_in], refs[n_in:n_in + n_args], refs[n_in + n_args:]
        first = pl.program_id(0) * block
        row = first + jnp.arange(block)[:, None]
        live = row < rows
        span = pl.dslice(first, block)
        args = [plgpu.load(r.at[span], mask=live[:, 0], other=0)[:, None] for r in arg_refs]

        def sweep(step, init):
            def body(j, state):
                col = j * cols + jnp.arange(cols)[None, :]
                mask = live & (col < classes)
                tiles = [plgpu.load(r.at[span, pl.dslice(j * cols, cols)], mask=mask, other=-jnp.inf)
                         .astype(jnp.float32) for r in in_refs]
                return step(state, tiles, col, args, classes)
            return jax.lax.fori_loop(0, steps, body, init)

        results = stat.finish(sweep(stat.step, stat.init(block)))
        if stat.then is not None:
            first, then = results, stat.then
            state = sweep(lambda *a: then.step(*a, first), then.init(block))
            results = then.finish(state, first, args)
        for ref, value in zip(out_refs, jax.tree.leaves(results)):
            plgpu.store(ref.at[span], value[:, 0], mask=live[:, 0])

    out = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((rows,), jnp.float32) for _ in outs],
        grid=(pl.cdiv(rows, block),),
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=_TRITON_STAGES),
        interpret=interpret,
        name=_kernel_name(stat),
    )(*arrays, *row_args)
    return jax.tree.unflatten(out_tree, out)


# ------------------------------------------------------------------ Mosaic (TPU)

# A (rows, cols) tile of each input per grid step, double-buffered: 4 MiB of
# VMEM for two float32 inputs at most, far under a v5e's 16 MiB scoped limit.
_TPU_ROWS, _TPU_COLS = 32, 4096


def _tpu_tiles(rows: int, classes: int) -> tuple[int, int]:
    """Block shape: a multiple of (8, 128) or the whole dimension, as Mosaic requires."""
    block = rows if rows <= _TPU_ROWS else _TPU_ROWS
    cols = classes if classes <= _TPU_COLS else _TPU_COLS
    return block, cols


def _mosaic(stat: RowPass, arrays, row_args, *, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    rows, classes = arrays[0].shape
    block, cols = _tpu_tiles(rows, classes)
    steps = pl.cdiv(classes, cols)
    sweeps = 1 if stat.then is None else 2
    n_in, n_args = len(arrays), len(row_args)
    tile = jax.ShapeDtypeStruct((block, cols), jnp.float32)
    arg_blocks = [jax.ShapeDtypeStruct((block, 1), r.dtype) for r in row_args]
    first_shapes, out_shapes = _out_structs(stat, block, [tile] * n_in, arg_blocks)
    outs, out_tree = jax.tree.flatten(out_shapes)
    # The scratch: the first sweep's state and results, then the second's state.
    scratch = [stat.init]
    if stat.then is not None:
        scratch += [lambda rows: first_shapes, stat.then.init]
    shapes = [jax.eval_shape(lambda f=f: f(block)) for f in scratch]
    trees = [jax.tree.structure(x) for x in shapes]
    leaves = [leaf for x in shapes for leaf in jax.tree.leaves(x)]

    def kernel(*refs):
        in_refs = refs[:n_in]
        arg_refs = refs[n_in:n_in + n_args]
        out_ref = refs[n_in + n_args]
        scratch_refs = list(refs[n_in + n_args + 1:])
        groups = []
        for tree in trees:
            groups.append(scratch_refs[:tree.num_leaves])
            scratch_refs = scratch_refs[tree.num_leaves:]

        def load(k):
            return jax.tree.unflatten(trees[k], [ref[...] for ref in groups[k]])

        def store(k, value):
            for ref, leaf in zip(groups[k], jax.tree.leaves(value)):
                ref[...] = leaf

        def write(results):
            for k, value in enumerate(jax.tree.leaves(results)):
                out_ref[:, k:k + 1] = value

        j = pl.program_id(1)
        col = (j % steps) * cols + jax.lax.broadcasted_iota(jnp.int32, (1, cols), 1)
        tiles = [jnp.where(col < classes, r[...].astype(jnp.float32), -jnp.inf) for r in in_refs]
        args = [r[...] for r in arg_refs]

        @pl.when(j == 0)
        def _():
            store(0, stat.init(block))

        @pl.when(j < steps)
        def _():
            state = stat.step(load(0), tiles, col, args, classes)
            store(0, state)

            @pl.when(j == steps - 1)
            def _():
                first = stat.finish(state)
                if stat.then is None:
                    write(first)
                else:
                    store(1, first)
                    store(2, stat.then.init(block))

        if stat.then is not None:
            @pl.when(j >= steps)
            def _():
                first = load(1)
                state = stat.then.step(load(2), tiles, col, args, classes, first)
                store(2, state)

                @pl.when(j == sweeps * steps - 1)
                def _():
                    write(stat.then.finish(state, first, args))

    row_spec = pl.BlockSpec((block, 1), lambda i, j: (i, 0))
    # One [rows, results] output: each [rows, 1] array would be laid out
    # padded to 128 lanes in HBM (4 MiB per result at 8192 rows).
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, len(outs)), jnp.float32),
        grid=(pl.cdiv(rows, block), sweeps * steps),
        in_specs=[pl.BlockSpec((block, cols), lambda i, j: (i, j % steps))] * n_in + [row_spec] * n_args,
        out_specs=pl.BlockSpec((block, len(outs)), lambda i, j: (i, 0)),
        scratch_shapes=[pltpu.VMEM(leaf.shape, leaf.dtype) for leaf in leaves],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name=_kernel_name(stat),
    )(*arrays, *(r[:, None] for r in row_args))
    return jax.tree.unflatten(out_tree, [out[:, k] for k in range(len(outs))])

