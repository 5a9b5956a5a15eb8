"""The examples run, and do what they claim, for a few steps."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from examples import vae_digits  # noqa: E402


def test_vae_elbo_improves_and_stays_finite():
    _, history = vae_digits.train(steps=150)
    (_, start, _), (_, end, kl) = history[0], history[-1]
    assert np.isfinite(end) and np.isfinite(kl)
    assert end < 0.75 * start
