"""Benchmark cases shared by the pytest-benchmark suite and the report command.

A case is a kernel (one public jaxdiv quantity), an implementation, a mode
(``fwd``, or ``fwd+bwd``: the value and the gradients a training step takes),
a shape and a dtype. Implementations:

* ``jaxdiv``;
* ``pallas``: jaxdiv with ``implementation="pallas"`` (on a GPU or TPU only: on
  the CPU that path is the XLA one), for the kernels that take it;
* ``optax``: optax's composition where optax has the quantity, or ``jax``: the
  same formula hand-written in JAX where it has not (see ``baselines.py``);
* ``torch``: PyTorch, when it is installed (CPU build on a CPU, CUDA on a GPU);
* ``liger``: Liger-Kernel's Triton kernels, when installed and on a GPU (see
  ``torch_baselines.LIGER``: the kernels and modes it has);
* ``numpy``: the textbook formula in float32 NumPy; ``scipy`` where SciPy has
  the quantity (forward only, float32 inputs only);
* ``roofline``: a jitted pass that reads the inputs once with the minimum
  number of ``exp`` per element (and, for ``fwd+bwd``, writes the gradient
  arrays) -- the practical floor on a CPU.

Timing: the call is compiled and run once outside the timed region; timed
calls rotate through the copies (enough of them that they do not
fit in cache together), each ends with ``block_until_ready``; the median is
reported.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
import operator
import statistics
import time
import tracemalloc
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv
from benchmarks import baselines as b


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One benchmarked quantity and what it is compared with."""

    name: str
    jaxdiv: Callable
    baselines: dict            # impl -> function (jax: "optax"/"jax"; host: "numpy"/"scipy")
    inputs: str                # input kind, see INPUT_KINDS
    reference: Callable        # float64 value from float32 NumPy inputs
    grad_argnums: tuple        # the gradients a training step takes
    exps: int                  # the minimum number of exp per element (roofline)
    elementwise: bool = False  # one value per element rather than per row
    note: str = ""
    pallas: Optional[Callable] = None   # jaxdiv with implementation="pallas", where it takes it


def _ce_options(logits, labels, implementation="xla"):
    return jaxdiv.losses.softmax_cross_entropy(
        logits, labels, ignore_index=b.IGNORE, label_smoothing=b.SMOOTHING, z_loss=b.Z_LOSS,
        reduction="none", implementation=implementation,
    )


def _distill(student, teacher, implementation="xla"):
    return jaxdiv.losses.distillation_loss(student, teacher, temperature=b.TEMPERATURE,
                                           reduction="none", implementation=implementation)


def _renyi(p, q):
    return jaxdiv.renyi_divergence(p, q, b.ALPHA)


def _bce(logits, labels):
    return jaxdiv.losses.binary_cross_entropy(logits, labels, reduction="none")


def _kl_penalty(log_probs, ref_log_probs):
    return jaxdiv.losses.kl_penalty(log_probs, ref_log_probs, estimator="k3", reduction="none")


@functools.cache
def _references():
    from tests import reference as r

    t = b.TEMPERATURE

    def ce_options(x, y):
        ce = r.torch_cross_entropy(x, y, ignore_index=b.IGNORE, label_smoothing=b.SMOOTHING, reduction="none")
        return ce + b.Z_LOSS * r.logsumexp(x) ** 2 * (y != b.IGNORE)

    return {
        "kl": r.kl,
        "ce_labels": r.integer_cross_entropy,
        "ce_soft": r.cross_entropy,
        "entropy": r.entropy,
        "js": r.js,
        "tv": r.total_variation,
        "hellinger": lambda p, q: np.sqrt(r.hellinger_squared(p, q)),
        "renyi": lambda p, q: r.renyi(p, q, b.ALPHA),
        "gaussian_kl": lambda m, v: r.gaussian_kl(m, v, 0 * m, 0 * v),
        "ce_options": ce_options,
        "distill": lambda s, te: r.kl(np.float32(te) / t, np.float32(s) / t) * t**2,
        "bce": r.binary_cross_entropy,
        "kl_penalty": lambda lp, ref: r.expm1mx(np.asarray(ref, np.float64) - np.asarray(lp, np.float64)),
    }


def _reference(name):
    return lambda *args: _references()[name](*args)


def _kernel(name, jaxdiv_fn, baselines, inputs, grad_argnums, exps, **kw):
    takes = "implementation" in inspect.signature(jaxdiv_fn).parameters
    pallas = functools.partial(jaxdiv_fn, implementation="pallas") if takes else None
    return Kernel(name, jaxdiv_fn, baselines, inputs, _reference(name), grad_argnums, exps,
                  pallas=pallas, **kw)


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    _kernel("kl", jaxdiv.kl_divergence,
            {"optax": b.optax_kl, "numpy": b.numpy_kl, "scipy": b.scipy_kl}, "pair", (0, 1), 2),
    _kernel("ce_labels", jaxdiv.cross_entropy_with_integer_labels,
            {"optax": b.optax_ce_labels, "numpy": b.numpy_ce_labels}, "labels", (0,), 1),
    _kernel("ce_soft", jaxdiv.cross_entropy,
            {"optax": b.optax_ce_soft, "numpy": b.numpy_ce_soft}, "pair", (1,), 2,
            note="soft targets softmax(p), gradient for the model's logits q"),
    _kernel("entropy", jaxdiv.entropy,
            {"jax": b.jax_entropy, "numpy": b.numpy_entropy, "scipy": b.scipy_entropy},
            "single", (0,), 1),
    _kernel("js", jaxdiv.js_divergence,
            {"jax": b.jax_js, "numpy": b.numpy_js, "scipy": b.scipy_js}, "pair", (0, 1), 2,
            note="SciPy: jensenshannon squared; hand-written JAX: the mixture through logaddexp"),
    _kernel("tv", jaxdiv.total_variation,
            {"jax": b.jax_tv, "numpy": b.numpy_tv}, "pair", (0, 1), 2),
    _kernel("hellinger", jaxdiv.hellinger_distance,
            {"jax": b.jax_hellinger, "numpy": b.numpy_hellinger}, "pair", (0, 1), 2),
    _kernel("renyi", _renyi, {"jax": b.jax_renyi, "numpy": b.numpy_renyi}, "pair", (0, 1), 2,
            note=f"order alpha = {b.ALPHA}"),
    _kernel("gaussian_kl", jaxdiv.gaussian.kl_standard_normal,
            {"jax": b.jax_gaussian_kl, "numpy": b.numpy_gaussian_kl}, "gaussian", (0, 1), 1,
            note="KL(N(mean, e^log_var) || N(0, I)) per row; baseline -0.5 sum(1 + v - m^2 - e^v)"),
    _kernel("ce_options", _ce_options,
            {"optax": b.optax_ce_options, "numpy": b.numpy_ce_options}, "ignored_labels", (0,), 1,
            note=f"label smoothing {b.SMOOTHING}, z-loss {b.Z_LOSS}, every tenth label ignored; "
                 "optax: smoothed one-hot targets, a mask and a logsumexp"),
    _kernel("distill", _distill,
            {"optax": b.optax_distill, "numpy": b.numpy_distill}, "pair", (0,), 2,
            note=f"forward-KL distillation at temperature {b.TEMPERATURE}, the student's gradient"),
    _kernel("bce", _bce, {"optax": b.optax_bce, "numpy": b.numpy_bce}, "binary", (0,), 1,
            elementwise=True, note="sigmoid cross-entropy, multi-label targets in {0, 1}"),
    _kernel("kl_penalty", _kl_penalty, {"jax": b.jax_kl_penalty, "numpy": b.numpy_kl_penalty},
            "log_probs", (0,), 1, elementwise=True,
            note="RLHF k3 estimator per token; baseline exp(r) - 1 - r"),
)}

# The kernels swept over sizes and dtypes by default.
SWEEP_KERNELS = ("kl", "ce_labels", "gaussian_kl")
HOST_IMPLS = ("numpy", "scipy")
IMPLS = ("jaxdiv", "pallas", "optax", "jax", "torch", "liger", "numpy", "scipy", "roofline")
BASELINES = ("optax", "jax", "torch", "liger", "numpy", "scipy")
LABEL = {"jaxdiv": "jaxdiv", "pallas": "jaxdiv (Pallas)", "optax": "optax",
         "jax": "hand-written JAX", "torch": "PyTorch", "liger": "Liger-Kernel",
         "numpy": "naive NumPy", "scipy": "SciPy", "roofline": "roofline proxy"}
MODES = ("fwd", "fwd+bwd")

# The kernels and modes Liger-Kernel has (its KL and JSD give the gradient of
# their first argument only, so no value+grad of both distributions).
LIGER_MODES = {"kl": ("fwd",), "js": ("fwd",), "ce_labels": MODES, "ce_options": MODES,
               "distill": MODES}

# NumPy and SciPy take ~10 s per call beyond this many elements: skipped there.
HOST_MAX_ELEMENTS = 1 << 28


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _accelerator() -> bool:
    return jax.default_backend() in ("gpu", "tpu")


def available(kernel: str, impl: str, mode: str, dtype: str = "float32", elements: int = 0) -> bool:
    """Whether a case exists: host baselines are float32, forward only and not too large."""
    spec = KERNELS[kernel]
    if impl in ("jaxdiv", "roofline"):
        return True
    if impl == "pallas":
        return spec.pallas is not None and _accelerator()
    if impl == "torch":
        return torch_available()
    if impl == "liger":
        return (mode in LIGER_MODES.get(kernel, ()) and jax.default_backend() == "gpu"
                and importlib.util.find_spec("liger_kernel") is not None and torch_available())
    if impl not in spec.baselines:
        return False
    if impl in HOST_IMPLS:
        return mode == "fwd" and dtype == "float32" and elements <= HOST_MAX_ELEMENTS
    return True


# ------------------------------------------------------------------- inputs


def _generate(kind: str, key, shape, dtype):
    k1, k2 = jax.random.split(key)
    normal = functools.partial(jax.random.normal, shape=shape, dtype=dtype)
    if kind == "single":
        return (normal(k1),)
    if kind in ("labels", "ignored_labels"):
        labels = jax.random.randint(k2, shape[:-1], 0, shape[-1])
        return normal(k1), b.with_ignored(labels) if kind == "ignored_labels" else labels
    if kind == "binary":
        return normal(k1), jax.random.bernoulli(k2, 0.5, shape).astype(dtype)
    if kind == "log_probs":
        log_probs = -jnp.abs(normal(k1))
        return log_probs, (log_probs + 0.5 * normal(k2)).astype(dtype)
    return normal(k1), normal(k2)   # "pair", "gaussian"


# One input set per copy; small inputs get more copies so the rotation leaves the
# cache, and inputs of over 1 GiB get one (no cache holds them; an accelerator's
# memory is better spent on the baselines' temporaries).
_ROTATION_BYTES = 64 << 20
_SINGLE_COPY_BYTES = 1 << 30


@dataclasses.dataclass
class Inputs:
    """The arguments of one kernel at one shape and dtype, in several copies."""

    kernel: str
    shape: tuple
    dtype: str
    args: list                   # per copy: a tuple of jax arrays
    _host: dict = dataclasses.field(default_factory=dict)

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def array_bytes(self) -> int:
        """Bytes of one ``[rows, classes]`` input array."""
        return self.args[0][0].nbytes

    def numpy(self, i: int) -> tuple:
        if ("numpy", i) not in self._host:
            self._host[("numpy", i)] = tuple(np.asarray(a) for a in self.args[i])
        return self._host[("numpy", i)]

    def torch(self, i: int, device: str) -> tuple:
        import torch

        if ("torch", i) not in self._host:
            def convert(a):
                if device == "cuda":
                    # On the GPU already: a copy there, not a round trip through the host
                    # (gigabytes at the accelerator sizes). A copy, as Liger's
                    # cross-entropy writes its gradient into its input.
                    tensor = torch.from_dlpack(a).clone()
                    return tensor.long() if jnp.issubdtype(a.dtype, jnp.integer) else tensor
                if jnp.issubdtype(a.dtype, jnp.integer):
                    return torch.from_numpy(np.array(a, np.int64)).to(device)
                tensor = torch.from_numpy(np.array(a, np.float32))
                return tensor.to(device=device, dtype=getattr(torch, self.dtype))
            self._host[("torch", i)] = tuple(convert(a) for a in self.args[i])
        return self._host[("torch", i)]


def rotation_copies(bytes_per_copy: int) -> int:
    """How many input copies the timed calls rotate through."""
    if bytes_per_copy > _SINGLE_COPY_BYTES:
        return 1
    return min(16, max(2, -(-_ROTATION_BYTES // bytes_per_copy)))


def make_inputs(kernel: str, shape, dtype: str = "float32", copies: Optional[int] = None,
                seed: int = 0) -> Inputs:
    shape = tuple(shape)
    kind = KERNELS[kernel].inputs
    if copies is None:
        copies = rotation_copies(math.prod(shape) * jnp.dtype(dtype).itemsize * (1 if kind == "single" else 2))
    keys = jax.random.split(jax.random.key(seed), copies)
    args = [_generate(kind, keys[i], shape, jnp.dtype(dtype)) for i in range(copies)]
    return Inputs(kernel, shape, dtype, args)


# ---------------------------------------------------------------- functions


def _product(terms):
    return functools.reduce(operator.mul, terms)


def roofline(kernel: str, mode: str) -> Callable:
    """One pass over the inputs with the kernel's minimum number of ``exp`` per element.

    Forward: reads every input once and reduces it to one number (or writes
    one value per element); a full reduction, because XLA:CPU's per-row
    reduction of very wide rows runs up to 10x slower (1024 x 128256: 282 ms
    by rows, 28 ms in total). Forward+backward: also writes one array per
    gradient the kernel's training step takes.
    """
    spec = KERNELS[kernel]

    def terms(args):
        floats = [a for a in args if jnp.issubdtype(a.dtype, jnp.floating)]
        return [jnp.exp(a) if i < spec.exps else a for i, a in enumerate(floats)]

    def forward(*args):
        out = _product(terms(args))
        return out if spec.elementwise else jnp.sum(out)

    def forward_backward(*args):
        first = _product(terms(args))
        rest = [2 * args[i] for i in spec.grad_argnums[1:]]
        return jnp.sum(first), (first, *rest)

    return forward if mode == "fwd" else forward_backward


def jax_function(kernel: str, impl: str, mode: str) -> Callable:
    """The (unjitted) JAX function of one case."""
    if impl == "roofline":
        return roofline(kernel, mode)
    spec = KERNELS[kernel]
    f = {"jaxdiv": spec.jaxdiv, "pallas": spec.pallas}.get(impl) or spec.baselines[impl]
    if mode == "fwd":
        return f
    return jax.value_and_grad(lambda *a: jnp.sum(f(*a)), argnums=spec.grad_argnums)


def minimal_bytes(inputs: Inputs, mode: str) -> int:
    """Bytes a perfect kernel moves: every input read once, and the outputs
    (one float32 per row, or per element) or the gradients written once."""
    spec = KERNELS[inputs.kernel]
    args = inputs.args[0]
    read = sum(a.nbytes for a in args)
    if mode == "fwd":
        rows = inputs.elements if spec.elementwise else inputs.elements // inputs.shape[-1]
        return read + 4 * rows
    return read + sum(args[i].nbytes for i in spec.grad_argnums)


# ------------------------------------------------------------ prepared cases


@dataclasses.dataclass
class Prepared:
    """Zero-argument calls of one case (one per input copy) and its compiled memory."""

    calls: list
    temp_bytes: Optional[int] = None   # XLA's compiled temporaries
    peak_bytes: Optional[int] = None   # compiled peak (arguments, outputs, temporaries live at once)
    host: bool = False                 # peak measured with tracemalloc during the warm-up
    cuda: bool = False                 # peak measured with torch.cuda during the warm-up


def _torch_device() -> str:
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_calls(kernel: str, mode: str, inputs: Inputs, liger: bool = False) -> Prepared:
    import torch

    from benchmarks import torch_baselines

    # PyTorch's (and Liger's) version has the kernel's name
    f = getattr(torch_baselines.liger() if liger else torch_baselines, kernel)
    device = _torch_device()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    calls = []
    for i in range(len(inputs.args)):
        args = inputs.torch(i, device)
        if mode == "fwd":
            def call(args=args):
                with torch.inference_mode():
                    out = f(*args)
                sync()
                return out
        else:
            args = tuple(
                a.detach().clone().requires_grad_(j in KERNELS[kernel].grad_argnums)
                for j, a in enumerate(args)
            )
            leaves = [args[j] for j in KERNELS[kernel].grad_argnums]

            def call(args=args, leaves=leaves):
                for leaf in leaves:
                    leaf.grad = None
                f(*args).sum().backward()
                sync()
                return [leaf.grad for leaf in leaves]
        calls.append(call)
    return Prepared(calls, cuda=device == "cuda")


def prepare(kernel: str, impl: str, mode: str, inputs: Inputs) -> Optional[Prepared]:
    """The calls of one case, compiled; None where the case does not exist."""
    if not available(kernel, impl, mode, inputs.dtype, inputs.elements):
        return None
    if impl in HOST_IMPLS:
        f = KERNELS[kernel].baselines[impl]
        return Prepared(
            [lambda i=i: f(*inputs.numpy(i)) for i in range(len(inputs.args))], host=True
        )
    if impl in ("torch", "liger"):
        return _torch_calls(kernel, mode, inputs, liger=impl == "liger")
    compiled = jax.jit(jax_function(kernel, impl, mode)).lower(*inputs.args[0]).compile()
    stats = compiled.memory_analysis()
    prepared = Prepared([
        (lambda a=a: jax.block_until_ready(compiled(*a))) for a in inputs.args
    ])
    if stats is not None:
        prepared.temp_bytes = int(stats.temp_size_in_bytes)
        peak = getattr(stats, "peak_memory_in_bytes", 0)
        prepared.peak_bytes = int(peak) or int(
            stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        )
    return prepared


@dataclasses.dataclass
class Timing:
    seconds: float   # median
    calls: int       # timed calls
    peak_bytes: Optional[int] = None


def release_torch_memory() -> None:
    """Hand PyTorch's cached GPU blocks back, for JAX's next inputs and temporaries."""
    if torch_available() and _torch_device() == "cuda":
        import torch

        torch.cuda.empty_cache()


def out_of_memory(error: Exception) -> bool:
    """Whether ``error`` is an allocation failure (XLA's RESOURCE_EXHAUSTED, CUDA's OOM)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure(prepared: Prepared, min_calls: int = 3, budget: float = 1.5,
            max_calls: int = 200) -> Timing:
    """Median time of rotated calls after one untimed warm-up call.

    At least ``min_calls`` timed calls, more while they fit in ``budget``
    seconds (up to ``max_calls``), so fast cases get enough samples to be
    stable and slow ones do not dominate the run; a case slower than the whole
    budget (the host baselines at large sizes) gets two.
    """
    peak = None
    if prepared.host:
        tracemalloc.start()
    if prepared.cuda:
        import torch
        torch.cuda.reset_peak_memory_stats()
    prepared.calls[-1]()   # compiled already; first touches of memory, caches, thread pools
    if prepared.host:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if prepared.cuda:
        peak = torch.cuda.max_memory_allocated()
    calls = prepared.calls
    times = []

    def timed(i):
        start = time.perf_counter()
        calls[i % len(calls)]()
        times.append(time.perf_counter() - start)

    timed(0)   # the first timed call also sizes the run
    floor = min(min_calls, 2) if times[0] > budget else min_calls
    n = max(floor, min(max_calls, int(budget / max(times[0], 1e-9))))
    for i in range(1, n):
        timed(i)
    return Timing(statistics.median(times), n, peak if peak is not None else prepared.peak_bytes)


def copy_bandwidth(elements: Optional[int] = None, calls: int = 7) -> float:
    """Bytes per second of a jitted device-to-device copy (read once, write once), float32.

    The output reuses the input's buffer (donated), so the figure is streaming
    bandwidth, not the cost of faulting in fresh pages on a CPU. On a GPU or
    TPU the array is 4 GiB and ten copies are queued per timing: a 512 MiB copy
    lasts a quarter of a millisecond on an H200, the same order as one call's
    dispatch and synchronisation, and measured 1.6 TB/s of its 4.3.
    """
    queued = 10 if _accelerator() else 1
    elements = elements or ((1 << 30) if _accelerator() else (1 << 27))
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = jax.block_until_ready(step(jnp.zeros((elements,), jnp.float32)))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        for _ in range(queued):
            x = step(x)
        x = jax.block_until_ready(x)
        times.append((time.perf_counter() - start) / queued)
    return 2 * elements * 4 / statistics.median(times)


# --------------------------------------------------------------------- accuracy

# "Nearly equal" inputs: how far apart (float32; bfloat16 cannot hold 1e-4 steps).
NEAR = {"float32": 1e-4, "bfloat16": 3e-2}


def accuracy_inputs(kernel: str, regime: str, dtype: str = "float32", rows: int = 64,
                    classes: int = 4096, seed: int = 1) -> tuple:
    """float32 NumPy inputs (rounded to ``dtype``) for the accuracy columns.

    ``ordinary``: independent standard-normal logits. ``near``: for two
    distributions, ``q = p + eps * noise`` (KL ~ eps^2, the regime of RLHF
    penalties and late distillation); for labels and entropy, confident
    predictions (logit scale 20); for the Gaussian KL, a posterior within eps
    of the prior; for BCE, confident correct predictions (|logit| >= 15); for the k3 penalty,
    log-probabilities within eps of the reference.
    """
    rng = np.random.default_rng(seed)
    eps = NEAR[dtype] if regime == "near" else None
    shape = (rows, classes)
    x = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    kind = KERNELS[kernel].inputs
    if kind == "pair":
        args = (x, x + eps * noise if eps else noise)
    elif kind == "single":
        args = (20 * x if eps else x,)
    elif kind in ("labels", "ignored_labels"):
        x = 20 * x if eps else x
        labels = np.argmax(x, -1) if eps else rng.integers(0, classes, rows)
        labels = labels.astype(np.int32)
        args = (x, b.with_ignored(labels) if kind == "ignored_labels" else labels)
    elif kind == "gaussian":
        scale = eps or 1.0
        args = (scale * x, scale * noise)
    elif kind == "binary":
        # Confident and right: BCE between e^-19 and e^-15, above float32's subnormals.
        args = (np.sign(x) * (15 + np.abs(x)) if eps else x, (x > 0) if eps else (noise > 0))
    else:   # log_probs
        log_probs = -np.abs(x)
        args = (log_probs, log_probs + (eps or 0.5) * noise)
    return tuple(
        a if np.issubdtype(np.asarray(a).dtype, np.integer)
        else np.asarray(jnp.asarray(a, dtype), np.float32)
        for a in args
    )


def evaluate(kernel: str, impl: str, args: tuple, dtype: str = "float32") -> np.ndarray:
    """The forward value of one implementation on float32 NumPy inputs, cast to ``dtype``."""
    spec = KERNELS[kernel]
    if impl in HOST_IMPLS:
        with np.errstate(all="ignore"):   # the textbook formulas' overflows are what is measured
            return np.asarray(spec.baselines[impl](*args), np.float64)
    if impl in ("torch", "liger"):
        import torch

        from benchmarks import torch_baselines

        f = getattr(torch_baselines.liger() if impl == "liger" else torch_baselines, kernel)
        device = _torch_device()
        tensors = [
            torch.from_numpy(np.asarray(a, np.int64)).to(device) if np.issubdtype(a.dtype, np.integer)
            else torch.from_numpy(np.array(a)).to(device=device, dtype=getattr(torch, dtype))
            for a in args
        ]
        with torch.inference_mode():
            return f(*tensors).float().cpu().numpy().astype(np.float64)
    f = {"jaxdiv": spec.jaxdiv, "pallas": spec.pallas}.get(impl) or spec.baselines[impl]
    cast = [a if np.issubdtype(a.dtype, np.integer) else jnp.asarray(a, dtype) for a in args]
    return np.asarray(jnp.asarray(jax.jit(f)(*cast), jnp.float32), np.float64)


def relative_error(kernel: str, impl: str, regime: str, dtype: str = "float32",
                   **shape) -> Optional[float]:
    """Max relative error against float64 on the same (rounded) inputs (``rows``, ``classes``)."""
    if impl == "roofline" or not available(kernel, impl, "fwd", dtype):
        return None
    args = accuracy_inputs(kernel, regime, dtype, **shape)
    want = np.asarray(KERNELS[kernel].reference(*args), np.float64)
    got = evaluate(kernel, impl, args, dtype)
    if got.ndim == 0:   # Liger's KL and JSD return the batch's sum: the error is the sum's
        want = want.sum()
    counted = want != 0   # ignored positions are 0 in every implementation
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)[counted] / np.abs(want[counted])
    return float(np.max(np.where(np.isnan(err), np.inf, err)))


CLOSENESS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def kl_accuracy_sweep(rows: int = 64, classes: int = 4096, seed: int = 2) -> list[dict]:
    """KL relative error vs float64 as Q approaches P (``q = p + eps * noise``)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, classes)).astype(np.float32)
    noise = rng.standard_normal((rows, classes))
    impls = [i for i in ("jaxdiv", "optax", "torch", "numpy", "scipy") if available("kl", i, "fwd")]
    out = []
    for eps in CLOSENESS:
        q = (p + eps * noise).astype(np.float32)
        want = KERNELS["kl"].reference(p, q)
        row = {"eps": eps, "kl": float(np.median(want))}
        for impl in impls:
            got = evaluate("kl", impl, (p, q))
            row[impl] = float(np.max(np.abs(got - want) / want))
            row[impl + "_negative"] = int(np.sum(got < 0))
        out.append(row)
    return out
