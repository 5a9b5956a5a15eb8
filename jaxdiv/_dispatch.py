"""Eager calls of the public functions run one cached, compiled program.

Called op by op, a divergence dispatches dozens of small XLA computations and
runs 7-25x slower than under ``jax.jit``. :func:`eager_jit` compiles the whole
function once per shape and per value of its static options (as ``jax.nn``
does with ``static_argnames``). Eager differentiation (``jax.grad``,
``jax.jvp``, ``jax.vjp`` of a function that is not jitted: every tracer wraps
a concrete value) calls the same compiled program, whose derivative JAX then
compiles once and caches: run op by op, each control-flow primitive would be
compiled afresh on every call and kept alive in JAX's caches (about 6 MB and
95 memory maps per call, until the process runs out of them). Inside any
other transformation (``jit``, ``vmap``, ``shard_map``, ``checkpoint``) the
function runs as written, so the jitted path is unchanged. The first call
compiles too: had it run op by op, it would round differently from the
compiled calls after it, and the same call would not give the same bits twice.

Arrays are traced; Python scalars, strings, ``None``, callables and 0-d
arrays are static: their values stay concrete, so a bad hyperparameter still
raises ``ValueError`` at once instead of turning into NaN.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np

_DYNAMIC = object()


def _wraps_a_concrete_value(tracer) -> bool:
    """Whether ``tracer`` belongs to eager ``grad`` / ``jvp`` / ``vjp`` only.

    Their tracers carry their primal value (itself such a tracer under higher
    orders); ``jit``, ``vmap`` and ``shard_map`` tracers carry none.
    """
    while isinstance(tracer, jax.core.Tracer):
        tracer = getattr(tracer, "primal", None)
        if tracer is None:
            return False
    return True


def _classify(value):
    """``(static, value)``: a hashable static value, or an array to trace."""
    if isinstance(value, jax.core.Tracer):
        if _wraps_a_concrete_value(value):
            return False, value
        raise _Traced
    if isinstance(value, (jax.Array, np.ndarray)):
        if value.ndim == 0:
            return True, np.asarray(value)[()]
        return False, value
    if isinstance(value, (list, tuple)):
        return False, np.asarray(value)
    hash(value)   # unhashable options fall back to the direct call
    return True, value


class _Traced(Exception):
    pass


@functools.lru_cache(maxsize=512)
def _compiled(fn, names: tuple, statics: tuple):
    def run(*dynamic):
        it = iter(dynamic)
        values = [next(it) if s is _DYNAMIC else s[1] for s in statics]
        n_args = len(values) - len(names)
        return fn(*values[:n_args], **dict(zip(names, values[n_args:])))

    return jax.jit(run)


def eager_jit(fn):
    """Run ``fn`` as one compiled program when it is called eagerly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            names = tuple(kwargs)
            classified = [_classify(v) for v in (*args, *kwargs.values())]
            # Typed, so that 2.0, np.float32(2.0) and True, 1 compile separately.
            statics = tuple((type(v), v) if static else _DYNAMIC for static, v in classified)
            compiled = _compiled(fn, names, statics)
        except (_Traced, TypeError):
            return fn(*args, **kwargs)
        return compiled(*(v for static, v in classified if not static))

    return wrapper


def clear_compiled() -> None:
    """Forget the eager programs (after a test switch changed what a function traces)."""
    _compiled.cache_clear()


@contextlib.contextmanager
def switch_for_tests(module, attribute: str, value: str, allowed: tuple, what: str):
    """Set ``module.attribute`` to ``value`` (a ``what``, one of ``allowed``) for the body.

    For the switches tests use to trace another branch on the CPU. The eager
    programs compiled on either side are forgotten: they do not know which
    branch was traced.
    """
    if value not in allowed:
        raise ValueError(f"{what} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    previous = getattr(module, attribute)
    setattr(module, attribute, value)
    clear_compiled()
    try:
        yield
    finally:
        setattr(module, attribute, previous)
        clear_compiled()
