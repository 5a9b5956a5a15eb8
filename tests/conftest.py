import hypothesis
import jax
import numpy as np
import pytest

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

