"""Collection rules for ``pytest benchmarks``: optional baselines stay optional."""

import importlib.util

# --doctest-modules imports every module; the PyTorch baselines need torch.
collect_ignore = [] if importlib.util.find_spec("torch") else ["torch_baselines.py"]
