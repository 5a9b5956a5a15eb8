import os
from pathlib import Path

# XLA compilation is three quarters of the suite's time, and LLVM's optimisation
# of the generated code over a quarter of that. Level 0 changes no HLO (fusions,
# buffers, collectives, memory analyses); the machine code runs slower on the
# suite's small arrays, and a rounding can move by an ulp where level 2 would
# contract a multiply-add. Subprocesses inherit it (they append their host
# device count to XLA_FLAGS).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import hypothesis
import jax
import numpy as np
import pytest

from jaxdiv import _dispatch

hypothesis.settings.register_profile(
    "jaxdiv", derandomize=True, deadline=None, max_examples=40, print_blob=True
)
hypothesis.settings.load_profile("jaxdiv")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x64():
    """Run one test with float64 enabled, without leaking it into the others."""
    with jax.enable_x64(True):
        yield


_MAPS = Path("/proc/self/maps")


def _map_count():
    with _MAPS.open() as maps:
        return sum(1 for _ in maps)


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Free the compiled programs once a worker holds many of them.

    XLA:CPU maps each kernel of a compiled program into memory separately, and
    JAX keeps every program it compiled: a test worker reached ~50,000 memory
    maps in two modules, and a compile past Linux's default limit (65530)
    segfaults. Clearing only then keeps the programs shared between tests.
    """
    yield
    if _MAPS.exists() and _map_count() > 20_000:
        jax.clear_caches()
        _dispatch.clear_compiled()


def pytest_collection_modifyitems(items):
    """Hand the ``slow`` tests (subprocesses on several host devices, builds) to
    the workers first: collected in file order, the longest could start last
    and leave one core working alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
