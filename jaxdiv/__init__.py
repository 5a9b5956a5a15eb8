"""jaxdiv: exact, log-space divergences for JAX, with defined values and gradients at zero probability."""

from jaxdiv import fused, gaussian, losses, probs
from jaxdiv.categorical import (
    bernoulli_kl_divergence,
    cross_entropy,
    cross_entropy_with_integer_labels,
    entropy,
    kl_divergence,
    validate_labels,
)
from jaxdiv.f_divergences import (
    f_divergence,
    hellinger_distance,
    jeffreys_divergence,
    js_distance,
    js_divergence,
    renyi_divergence,
    total_variation,
)

__version__ = "0.3.0"

__all__ = [
    "__version__",
    "bernoulli_kl_divergence",
    "cross_entropy",
    "cross_entropy_with_integer_labels",
    "entropy",
    "f_divergence",
    "fused",
    "gaussian",
    "hellinger_distance",
    "jeffreys_divergence",
    "js_distance",
    "js_divergence",
    "kl_divergence",
    "losses",
    "probs",
    "renyi_divergence",
    "total_variation",
    "validate_labels",
]
