"""A Flax classifier on scikit-learn's bundled 8x8 digits, trained with jaxdiv's cross-entropy.

    .venv/bin/python -m examples.digits_classifier [--steps 1500] [--label-smoothing 0.1]

The training step is one line of loss: ``losses.softmax_cross_entropy(logits,
labels, label_smoothing=..., return_aux=True)``, whose auxiliary output gives
the batch accuracy without a second pass. No download: the digits ship with
scikit-learn. ``examples/digits_distillation.py`` distils this model into a smaller one.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiv import losses


def load_digits(seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: 1297 training and 500 test images, pixels in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = data.data.astype(np.float32) / 16.0
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:-500], order[-500:]
    return jnp.asarray(x[train]), jnp.asarray(y[train]), jnp.asarray(x[test]), jnp.asarray(y[test])


class MLP(nn.Module):
    """A multilayer perceptron with ReLU hidden layers; returns logits."""

    hidden: Sequence[int]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def accuracy(model, params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == y))


def train(loss_fn, model, x, steps, *, seed=0, batch_size=128, learning_rate=3e-3):
    """Adam on ``loss_fn(logits, batch_index)``, minibatches drawn from ``x``.

    Returns the parameters and the history ``[(step, loss, aux accuracy or None)]``.
    """
    key = jax.random.PRNGKey(seed)
    params = model.init(key, x[:1])
    optimiser = optax.adam(learning_rate)
    state = optimiser.init(params)

    @jax.jit
    def step(params, state, index):
        def objective(p):
            return loss_fn(model.apply(p, x[index]), index)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, aux

    rng = np.random.default_rng(seed)
    history = []
    for i in range(steps):
        index = jnp.asarray(rng.choice(len(x), batch_size, replace=False))
        params, state, loss, aux = step(params, state, index)
        if i % 100 == 0 or i == steps - 1:
            history.append((i, float(loss), None if aux is None else float(aux)))
    return params, history


def train_classifier(steps=1500, *, hidden=(256, 256), label_smoothing=0.1, seed=0, data=None):
    """Train the teacher; returns ``(model, params, history, test accuracy)``."""
    x, y, x_test, y_test = load_digits() if data is None else data
    model = MLP(hidden)

    def loss_fn(logits, index):
        loss, aux = losses.softmax_cross_entropy(
            logits, y[index], label_smoothing=label_smoothing, return_aux=True
        )
        return loss, aux.accuracy

    params, history = train(loss_fn, model, x, steps, seed=seed)
    return model, params, history, accuracy(model, params, x_test, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    args = parser.parse_args()
    _, _, history, test_accuracy = train_classifier(args.steps, label_smoothing=args.label_smoothing)
    for step, loss, train_accuracy in history:
        print(f"step {step:5d}  loss {loss:.4f}  batch accuracy {train_accuracy:.3f}")
    print(f"test accuracy: {test_accuracy:.4f} (500 held-out digits)")


if __name__ == "__main__":
    main()
