"""The examples run, and do what they claim, for a few steps."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("flax")

from examples import digits_classifier, digits_distillation, vae_digits  # noqa: E402


def test_vae_elbo_improves_and_stays_finite():
    _, history = vae_digits.train(steps=150, free_bits=0.05)
    (_, start, _), (_, end, kl) = history[0], history[-1]
    assert np.isfinite(end) and np.isfinite(kl)
    assert end < 0.75 * start


def test_flax_classifier_with_label_smoothing_learns():
    _, _, history, test_accuracy = digits_classifier.train_classifier(steps=200)
    losses = [loss for _, loss, _ in history]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert test_accuracy > 0.85


def test_distillation_example_runs_both_students():
    data = digits_classifier.load_digits()
    teacher, params, _, _ = digits_classifier.train_classifier(steps=200, data=data)
    plain, taught, history = digits_distillation.train_students(teacher, params, data, steps=200)
    assert np.all(np.isfinite([loss for _, loss, _ in history]))
    assert history[-1][1] < history[0][1]
    assert plain > 0.7 and taught > 0.7
