"""Trace-time checks and input preparation shared by every public function.

Only static facts are checked here (shapes, dtypes, axes): they cost nothing at
run time and fail before anything is compiled. Values are never checked, because
under ``jit`` they cannot be; the numerical conventions cover them instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def float_array(x, name: str, *, counts: bool = False, widen: bool = True) -> jax.Array:
    """``x`` as a floating-point array computed in at least float32.

    bfloat16 and float16 are promoted to float32, so a loss is never rounded to
    a 16-bit grid; the cast's transpose hands gradients back in the input dtype.
    A Python scalar stays weakly typed, so that the arrays it meets decide the
    dtype (a ``0.0`` never turns float32 inputs into a float64 result under
    x64). With ``counts``, integer and boolean arrays (``np.bincount``'s
    output) are accepted and converted to the default floating dtype. With
    ``widen=False`` 16-bit arrays keep their storage dtype: the row kernels
    widen them block by block (:func:`jaxdiv._numerics.promote`), so a
    bfloat16 batch is never copied to float32 as a whole.
    """
    x = jnp.asarray(x)
    if counts and (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        return x.astype(jnp.result_type(float))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        allowed = "integer counts or a real floating-point array" if counts else (
            "a real floating-point array (float16, bfloat16, float32 or float64)")
        raise TypeError(f"{name} must be {allowed}, got dtype {x.dtype}.")
    if jax.typeof(x).weak_type or not widen:
        return x
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def weights(x, name: str) -> jax.Array:
    """:func:`float_array` for weights, NaN at each negative entry: a sign cannot
    be checked under ``jit``, and a negative weight would turn its term into a
    plausible wrong number (a loss that decreases as its error grows)."""
    w = float_array(x, name)
    return jnp.where(w >= 0, w, jnp.nan)   # NaN stays NaN


def normalize_axis(axis: int, ndim: int, shapes: str) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of range for inputs of rank {ndim} ({shapes}); "
            f"expected an axis in [{-ndim}, {ndim - 1}]."
        )
    return int(axis) % ndim


def mask(where) -> Optional[jax.Array]:
    """``where`` as a boolean array (or None); other dtypes are refused, not cast."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean array, got dtype {where.dtype}.")
    return where


def _describe(names: Sequence[str], arrays: Sequence[jax.Array]) -> str:
    return ", ".join(f"{n} shape {tuple(a.shape)}" for n, a in zip(names, arrays))


def class_arrays(
    arrays: Sequence,
    names: Sequence[str],
    *,
    axis: int,
    where: Optional[jax.Array],
    fill: float,
    counts: bool = False,
    broadcast: bool = True,
    widen: bool = True,
) -> tuple[list[jax.Array], Optional[jax.Array]]:
    """Validate, promote and broadcast arrays with a class axis; move ``axis`` last.

    The class axis is located in the broadcast shape (arrays are right-aligned as
    in NumPy). All arrays must have the same number of classes there; masked
    entries (``where`` False) are replaced by ``fill``, so they are never read and
    receive a zero gradient.

    With ``broadcast=False`` the batch dimensions of an array are left as they
    are (size 1 where it broadcasts): one reference row against a batch is then
    never copied to the batch's size (the row kernels broadcast inside their
    blocks). Only the class axis is broadcast.

    Returns:
      the prepared arrays, of one shape ``[..., C]`` (``broadcast=False``:
      shapes that broadcast to it), and the broadcast mask (class axis last) or None.
    """
    arrays = [float_array(a, n, counts=counts, widen=widen) for a, n in zip(arrays, names)]
    dtype = jnp.result_type(*arrays) if not widen else jnp.result_type(*arrays, jnp.float32)
    arrays = [a.astype(dtype) for a in arrays]
    shapes = _describe(names, arrays)
    ndim = max(a.ndim for a in arrays)
    if ndim == 0:
        raise ValueError(f"expected arrays with a class axis, got scalars ({shapes}).")
    axis = normalize_axis(axis, ndim, shapes)
    class_counts = {
        a.shape[axis - ndim + a.ndim] for a in arrays if axis - ndim + a.ndim >= 0
    }
    if len(class_counts) > 1:
        raise ValueError(
            f"expected the same number of classes along axis {axis - ndim}, "
            f"got {shapes}."
        )
    where = mask(where)
    try:
        shape = np.broadcast_shapes(
            *(a.shape for a in arrays), *(() if where is None else (where.shape,))
        )
    except ValueError:
        extra = "" if where is None else f", where shape {tuple(where.shape)}"
        raise ValueError(
            f"expected shapes that broadcast against each other, got {shapes}{extra}."
        ) from None
    if len(shape) > ndim:
        raise ValueError(
            f"where shape {tuple(where.shape)} has more dimensions than the inputs "
            f"({shapes})."
        )
    if broadcast:
        arrays = [jnp.broadcast_to(a, shape) for a in arrays]
    else:
        padded = [a.reshape((1,) * (len(shape) - a.ndim) + a.shape) for a in arrays]
        arrays = [
            jnp.broadcast_to(a, tuple(n if (i == axis or d != 1) else 1 for i, (d, n) in enumerate(zip(a.shape, shape))))
            for a in padded
        ]
    if where is not None:
        where = jnp.broadcast_to(where, shape)
        arrays = [jnp.where(where, a, fill) for a in arrays]
        where = jnp.moveaxis(where, axis, -1)
    return [jnp.moveaxis(a, axis, -1) for a in arrays], where


def logits(
    arrays: Sequence,
    names: Sequence[str],
    *,
    axis: int,
    where: Optional[jax.Array],
    broadcast: bool = True,
    widen: bool = False,
) -> tuple[list[jax.Array], int]:
    """:func:`class_arrays` for logits: masked entries become ``-inf``.

    16-bit logits keep their storage dtype (``widen=False``): every kernel
    that takes them computes in float32 block by block.

    Returns:
      the prepared arrays, of one shape ``[..., C]`` (or shapes broadcasting to
      it, see ``broadcast``), and the class count.
    """
    arrays, _ = class_arrays(
        arrays, names, axis=axis, where=where, fill=-jnp.inf, broadcast=broadcast, widen=widen)
    return arrays, arrays[0].shape[-1]


def probabilities(
    arrays: Sequence,
    names: Sequence[str],
    *,
    axis: int,
    where: Optional[jax.Array],
    eps,
) -> list[jax.Array]:
    """:func:`class_arrays` for probabilities or counts: masked entries become 0.

    The pseudo-count ``eps`` is added to every unmasked entry.
    """
    if _is_concrete(eps) and not float(eps) >= 0:
        raise ValueError(f"eps must be a non-negative pseudo-count, got {eps!r}.")
    eps = scalar_parameter(eps, "eps", 0.0, np.inf, open_low=False, open_high=True)
    arrays, where = class_arrays(
        arrays, names, axis=axis, where=where, fill=0.0, counts=True, broadcast=False)
    if where is None and _is_concrete(eps) and float(eps) == 0:
        # The inputs as given (a negative entry makes its row NaN downstream):
        # each pass over the classes then re-reads them instead of a derived copy.
        return arrays
    # A negative entry is invalid input (NaN for its row), also when eps would lift it.
    arrays = [jnp.where(a < 0, jnp.nan, a) for a in arrays]
    if where is None:
        return [a + eps for a in arrays]
    return [jnp.where(where, a + eps, 0.0) for a in arrays]


def _is_concrete(x) -> bool:
    """A scalar whose value is known at trace time."""
    if np.ndim(x) != 0:
        return False
    try:
        float(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return False
    return True


def log_base(base) -> Optional[float]:
    """``log(base)`` for converting nats, or None for nats (``base=None``)."""
    if base is None:
        return None
    if _is_concrete(base):
        if not (float(base) > 0 and float(base) != 1 and np.isfinite(float(base))):
            raise ValueError(
                f"base must be a positive number other than 1 (e.g. 2 for bits), got {base!r}."
            )
        return float(np.log(float(base)))
    return jnp.log(base)


def in_base(value: jax.Array, base) -> jax.Array:
    """Convert a value in nats to ``base`` (None keeps nats)."""
    scale = log_base(base)
    return value if scale is None else value / scale


def scalar_parameter(value, name: str, low: float, high: float, *, open_low: bool, open_high: bool):
    """A scalar parameter in a range: checked at trace time when it is concrete.

    A traced value cannot raise, so an out-of-range one is replaced by NaN:
    whatever it feeds then comes out NaN, never a plausible number.
    """
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
    if _is_concrete(value):
        v = float(value)
        ok = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        if not ok:
            lo = "(" if open_low else "["
            hi = ")" if open_high else "]"
            raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value!r}.")
        return value
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    return jnp.where(above & below, value, jnp.nan)


def mixture_weights(beta) -> tuple:
    """``(beta, 1 - beta)``, with ``1 - beta`` formed in Python for a concrete ``beta``.

    Rounding ``beta`` first would make the weights of ``beta = 0.1`` differ from
    the mirrored weights of ``beta = 0.9`` in the last bit, and break the exact
    mirror symmetry ``JS_b(P, Q) == JS_(1-b)(Q, P)``.
    """
    beta = scalar_parameter(beta, "beta", 0.0, 1.0, open_low=False, open_high=False)
    if _is_concrete(beta):
        return float(beta), 1.0 - float(beta)
    return beta, 1.0 - beta


def _fits_batch(shape: tuple[int, ...], batch_shape: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``batch_shape``."""
    try:
        return np.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        return False


def integer_labels(labels, batch_shape: tuple[int, ...], logits_shape, described: Optional[str] = None) -> jax.Array:
    """Validate integer ``labels`` against the logits' batch shape (class axis removed).

    ``described`` says where the batch shape comes from, for the error message
    (default: the logits without their class axis).
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        hint = ""
        if jnp.issubdtype(labels.dtype, jnp.floating):
            hint = (" Floating labels are read as target probabilities (soft labels); "
                    "pass class indices as integers (labels.astype(int)).")
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}.{hint}")
    if not _fits_batch(labels.shape, batch_shape):
        described = described or f"the logits shape {tuple(logits_shape)} without its class axis"
        raise ValueError(
            f"expected labels of shape {tuple(batch_shape)} ({described}) or broadcastable to it, "
            f"got labels shape {tuple(labels.shape)}."
        )
    return jnp.broadcast_to(labels, batch_shape)


def positions(where, batch_shape: tuple[int, ...], described: str) -> Optional[jax.Array]:
    """A boolean mask over positions (one entry per loss term), broadcast to ``batch_shape``."""
    where = mask(where)
    if where is None:
        return None
    if not _fits_batch(where.shape, batch_shape):
        raise ValueError(
            f"expected where of shape {tuple(batch_shape)} (one entry per position: "
            f"{described}) or broadcastable to it, got where shape {tuple(where.shape)}."
        )
    return jnp.broadcast_to(where, batch_shape)


def choice(value: str, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}.")
    return value
