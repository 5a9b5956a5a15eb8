"""jaxdiv: exact, log-space divergences for JAX, with defined values and gradients at zero probability."""

from jaxdiv import gaussian
from jaxdiv.categorical import (
    cross_entropy,
    cross_entropy_with_integer_labels,
    entropy,
    kl_divergence,
    validate_labels,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cross_entropy",
    "cross_entropy_with_integer_labels",
    "entropy",
    "gaussian",
    "kl_divergence",
    "validate_labels",
]
