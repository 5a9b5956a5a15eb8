"""First-run set-up shared by the two quick-start commands.

``ensure_venv()`` creates ``.venv`` next to ``pyproject.toml``, installs jaxdiv
with its test, benchmark, example, drift and docs extras into it (again
whenever ``pyproject.toml`` changes), and re-executes the calling script with that interpreter. Only the
Python standard library is used, so it runs on a machine with nothing else.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
EXTRAS = "test,bench,examples,drift,docs"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has(modules: tuple) -> bool:
    """Whether this interpreter imports ``modules`` and has a jax the project supports."""
    import importlib.metadata
    import importlib.util

    if not modules or any(importlib.util.find_spec(m) is None for m in modules):
        return False
    try:
        version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(v) for v in version.split(".")[:2])
    return (major, minor) >= JAX_FLOOR


JAX_FLOOR = (0, 10)   # pyproject.toml's jax>=0.10.0


def ensure_venv(venv: Path = VENV, constraints: Path | None = None, accept: tuple = ()) -> None:
    """Run the calling script inside ``venv``, creating and filling it if needed.

    ``constraints``: a pip constraints file (``tests/floors.txt``: the oldest
    supported versions) applied to the install. ``accept``: modules with which
    the current interpreter will do as it is (a GPU or TPU machine's own jax
    rather than a new environment's CPU one).
    """
    python = _venv_python(venv)
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if constraints is None and _has(accept):
        print(f"[jaxdiv] using {sys.executable}'s packages", flush=True)
        return
    pins = constraints.read_bytes() if constraints else b""
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode() + pins
    ).hexdigest()
    stamp = venv / ".jaxdiv-installed"
    if not python.exists():
        print(f"[jaxdiv] creating {venv}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    if not stamp.exists() or stamp.read_text() != wanted:
        print("[jaxdiv] installing jaxdiv and its test/benchmark dependencies "
              "(first run only)", flush=True)
        subprocess.check_call(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check",
             "-q", "-e", f"{ROOT}[{EXTRAS}]", *(["-c", str(constraints)] if constraints else [])]
        )
        stamp.write_text(wanted)
    os.execv(str(python), [str(python), *sys.argv])
