"""pytest-benchmark suite: ``.venv/bin/python -m pytest benchmarks --benchmark-enable``.

Sizes come from ``JAXDIV_BENCH_ROWS`` / ``JAXDIV_BENCH_CLASSES`` (default
4096 x 32000, float32). The report command (``benchmarks/report.py``) runs the
same cases and adds ratios, memory and accuracy columns.
"""

import os

import pytest

from benchmarks import cases

ROWS = int(os.environ.get("JAXDIV_BENCH_ROWS", 4096))
CLASSES = int(os.environ.get("JAXDIV_BENCH_CLASSES", 32000))


@pytest.fixture(scope="module")
def inputs():
    return cases.make_inputs(ROWS, CLASSES)


@pytest.mark.parametrize("impl", ["jaxdiv", "optax", "numpy", "roofline"])
@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("kernel", cases.KERNELS)
def test_case(benchmark, inputs, kernel, mode, impl):
    calls = cases.callables(kernel, impl, mode, inputs)
    if calls is None:
        pytest.skip(f"{impl} has no {mode} for {kernel}")
    for call in calls:  # compile outside the timed region
        call()
    state = {"i": 0}

    def rotated():
        state["i"] += 1
        return calls[state["i"] % len(calls)]()

    benchmark.group = f"{kernel} {mode}"
    benchmark(rotated)
