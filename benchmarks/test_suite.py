"""pytest-benchmark suite: ``.venv/bin/python -m pytest benchmarks --benchmark-enable``.

Every kernel of ``cases.py``, forward and forward+backward, for jaxdiv and each
baseline present (PyTorch when installed); and the fused linear heads of
``linear_heads.py`` (loss + gradients) at ``JAXDIV_BENCH_LINEAR`` (N x D x V,
default 2048x1024x32000) against materialised logits. Sizes come from
``JAXDIV_BENCH_ROWS`` / ``JAXDIV_BENCH_CLASSES`` (default 4096 x 32000; the
Gaussian KL uses 65536 x 256) and ``JAXDIV_BENCH_DTYPE`` (default float32). The
report command (``benchmarks/report.py``) runs the same cases and adds ratios,
bandwidth, memory and accuracy columns, tables and plots.
"""

import os

import pytest

from benchmarks import cases, linear_heads

ROWS = int(os.environ.get("JAXDIV_BENCH_ROWS", 4096))
CLASSES = int(os.environ.get("JAXDIV_BENCH_CLASSES", 32000))
DTYPE = os.environ.get("JAXDIV_BENCH_DTYPE", "float32")


@pytest.fixture(scope="module", params=list(cases.KERNELS))
def inputs(request):
    shape = (65536, 256) if request.param == "gaussian_kl" else (ROWS, CLASSES)
    return cases.make_inputs(request.param, shape, DTYPE)


@pytest.mark.parametrize("impl", cases.IMPLS)
@pytest.mark.parametrize("mode", cases.MODES)
def test_case(benchmark, inputs, mode, impl):
    prepared = cases.prepare(inputs.kernel, impl, mode, inputs)
    if prepared is None:
        pytest.skip(f"no {impl} {mode} for {inputs.kernel} in {DTYPE}")
    for call in prepared.calls:  # compile and warm up outside the timed region
        call()
    state = {"i": 0}

    def rotated():
        state["i"] += 1
        return prepared.calls[state["i"] % len(prepared.calls)]()

    benchmark.group = f"{inputs.kernel} {mode} {inputs.shape[0]}x{inputs.shape[1]} {DTYPE}"
    benchmark(rotated)


LINEAR = tuple(int(v) for v in os.environ.get("JAXDIV_BENCH_LINEAR", "2048x1024x32000").split("x"))


@pytest.fixture(scope="module", params=list(linear_heads.LINEAR_KERNELS))
def linear_inputs(request):
    return request.param, linear_heads.make_linear_inputs(request.param, LINEAR, DTYPE)


@pytest.mark.parametrize("impl", linear_heads.LINEAR_IMPLS)
def test_linear_head(benchmark, linear_inputs, impl):
    kernel, inputs = linear_inputs
    prepared = linear_heads.prepare_linear(kernel, impl, "fwd+bwd", inputs)
    if prepared is None:
        pytest.skip(f"no {impl} for {kernel}")
    prepared.calls[0]()
    benchmark.group = f"{kernel} fwd+bwd {'x'.join(map(str, LINEAR))} {DTYPE}"
    benchmark.pedantic(prepared.calls[0], rounds=3, iterations=1)
