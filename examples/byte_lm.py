"""A small byte-level language model in Flax whose output layer is jaxdiv's fused cross-entropy.

    .venv/bin/python -m examples.byte_lm [--steps 600] [--chunk-size 64]

The model reads 16 bytes of context and predicts the next one; its output
layer is the input embedding table, tied, in PyTorch's ``[V, D]`` layout. The
loss is ``fused.linear_cross_entropy(hidden, table, next_byte,
weight_layout="vd", ...)``: the ``[tokens, 256]`` logits of a training step are
never materialised (at this vocabulary they would be small; the same line
serves a 128k-token vocabulary, where they are gigabytes). The vocabulary is
padded from 256 to 320 entries, as LM vocabularies are padded to a multiple of
64, and the padding is removed with a ``-inf`` bias: those classes take no
probability, no smoothing mass and no gradient. The text is jaxdiv's own
README and sources (no download); the report is in bits per byte on a
held-out tail of the text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiv import fused, losses

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 16
BYTES = 256
VOCAB = 320   # padded


def load_text() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) byte arrays: the README and jaxdiv's sources, the last 10% held out."""
    files = [ROOT / "README.md", *sorted((ROOT / "jaxdiv").glob("*.py"))]
    data = np.frombuffer(b"\n".join(f.read_bytes() for f in files), np.uint8).astype(np.int32)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


class ByteLM(nn.Module):
    """Embeds a window of bytes, mixes it with an MLP, returns hidden states and the tied table."""

    width: int = 128

    @nn.compact
    def __call__(self, window):
        table = self.param("embedding", nn.initializers.normal(0.02), (VOCAB, self.width))
        x = table[window].reshape(window.shape[:-1] + (-1,))
        x = nn.gelu(nn.Dense(4 * self.width)(x))
        x = nn.LayerNorm()(nn.Dense(self.width)(x))
        return x, table


PADDING_BIAS = jnp.where(jnp.arange(VOCAB) < BYTES, 0.0, -jnp.inf)


def loss_fn(params, model, window, target, *, chunk_size=64, label_smoothing=0.05, z_loss=1e-4):
    hidden, table = model.apply(params, window)
    return fused.linear_cross_entropy(
        hidden, table, target, bias=PADDING_BIAS, weight_layout="vd", chunk_size=chunk_size,
        label_smoothing=label_smoothing, z_loss=z_loss, return_aux=True,
    )


def materialised_loss_fn(params, model, window, target, *, label_smoothing=0.05, z_loss=1e-4, **_):
    """The same loss from the full logits: what the fused loss equals."""
    hidden, table = model.apply(params, window)
    return losses.softmax_cross_entropy(
        hidden @ table.T + PADDING_BIAS, target, label_smoothing=label_smoothing, z_loss=z_loss,
        return_aux=True,
    )


def windows(data: np.ndarray, starts: np.ndarray):
    index = starts[:, None] + np.arange(CONTEXT + 1)
    chunk = data[index]
    return jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, -1])


def bits_per_byte(params, model, data, *, samples=4096, seed=1) -> float:
    """Cross-entropy without smoothing or z-loss, in bits, on random windows of ``data``."""
    starts = np.random.default_rng(seed).integers(0, len(data) - CONTEXT - 1, samples)
    window, target = windows(data, starts)
    hidden, table = model.apply(params, window)
    nats = fused.linear_cross_entropy(hidden, table, target, bias=PADDING_BIAS, weight_layout="vd")
    return float(nats) / np.log(2.0)


def train(steps=600, *, batch_size=256, chunk_size=64, learning_rate=2e-3, seed=0):
    """Returns ``(model, params, history [(step, loss, accuracy)], test bits per byte)``."""
    train_data, test_data = load_text()
    model = ByteLM()
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, CONTEXT), jnp.int32))
    optimiser = optax.adamw(learning_rate, weight_decay=1e-4)
    state = optimiser.init(params)

    @jax.jit
    def step(params, state, window, target):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model, window, target, chunk_size=chunk_size)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, aux.accuracy

    rng = np.random.default_rng(seed)
    history = []
    for i in range(steps):
        window, target = windows(train_data, rng.integers(0, len(train_data) - CONTEXT - 1, batch_size))
        params, state, loss, acc = step(params, state, window, target)
        if i % 100 == 0 or i == steps - 1:
            history.append((i, float(loss), float(acc)))
    return model, params, history, bits_per_byte(params, model, test_data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()
    model, params, history, test_bits = train(args.steps, chunk_size=args.chunk_size)
    for step, loss, acc in history:
        print(f"step {step:5d}  loss {loss:.4f}  next-byte accuracy {acc:.3f}")
    print(f"held-out cross-entropy: {test_bits:.3f} bits per byte (uniform over 256 bytes: 8)")


if __name__ == "__main__":
    main()
