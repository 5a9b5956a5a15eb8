"""Run the whole test suite: ``python3 tests/run.py [--floors] [pytest args]``.

On first use it creates ``.venv`` and installs jaxdiv with its test
dependencies (see ``benchmarks/_env.py``). ``--floors`` runs the suite in
``.venv-floors`` instead, with jax, jaxlib and numpy pinned to the oldest
versions ``pyproject.toml`` declares (``tests/floors.txt``).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._env import ensure_venv  # noqa: E402

if __name__ == "__main__":
    if "--floors" in sys.argv:
        ensure_venv(ROOT / ".venv-floors", constraints=ROOT / "tests" / "floors.txt")
        sys.argv.remove("--floors")
    else:
        ensure_venv()
    import os

    import pytest

    os.chdir(ROOT)

    # One worker per core: most of the suite's time is XLA compilation.
    sys.exit(pytest.main(["-q", "-n", "auto", "--rootdir", str(ROOT), *sys.argv[1:]]))
