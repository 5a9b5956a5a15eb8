"""jaxdiv as the loss of real JAX + optax training loops: the loss falls, nothing is NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiv


def _data(n=512, features=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 2
    labels = rng.integers(0, classes, n)
    x = centres[labels] + rng.standard_normal((n, features))
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels)


def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def _init(key, features=16, hidden=32, classes=5):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (features, hidden)) / np.sqrt(features),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, classes)) / np.sqrt(hidden),
        "b2": jnp.zeros(classes),
    }


def _train(loss_fn, params, steps=150):
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
        assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(params))
    return params, np.array(losses)


def test_classifier_trains_with_integer_label_cross_entropy():
    x, y = _data()
    # Class 4 is masked out of the softmax for every example labelled otherwise:
    # -inf logits must not poison training.
    allowed = jnp.ones((x.shape[0], 5), bool).at[:, 4].set(y == 4)

    def loss(params):
        logits = _mlp(params, x)
        return jaxdiv.cross_entropy_with_integer_labels(logits, y, where=allowed).mean()

    params, losses = _train(loss, _init(jax.random.key(0)))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0]
    accuracy = np.mean(np.argmax(_mlp(params, x), -1) == np.asarray(y))
    assert accuracy > 0.9


def test_distillation_with_kl_divergence():
    x, y = _data()
    teacher, _ = _train(
        lambda p: jaxdiv.cross_entropy_with_integer_labels(_mlp(p, x), y).mean(),
        _init(jax.random.key(1)),
    )
    teacher_logits = jax.lax.stop_gradient(_mlp(teacher, x))
    # A top-3 teacher: the other classes are zero probability (-inf).
    top3 = teacher_logits >= jnp.sort(teacher_logits, -1)[:, -3:-2]
    teacher_logits = jnp.where(top3, teacher_logits, -jnp.inf)

    def loss(params):
        return jaxdiv.kl_divergence(teacher_logits, _mlp(params, x)).mean()

    _, losses = _train(loss, _init(jax.random.key(2)))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0]
