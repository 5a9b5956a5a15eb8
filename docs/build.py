"""Build the documentation site: ``python3 docs/build.py [sphinx args]``.

On first use it creates ``.venv`` with jaxdiv and its docs dependencies (see
``benchmarks/_env.py``), then writes the HTML into ``docs/_build/html``.
Warnings are errors, as in the test suite.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._env import ensure_venv  # noqa: E402

if __name__ == "__main__":
    ensure_venv()
    from sphinx.cmd.build import build_main

    out = ROOT / "docs" / "_build" / "html"
    status = build_main(["-b", "html", "-W", "--keep-going", "-n",
                         "-d", str(ROOT / "docs" / "_build" / "doctrees"), str(ROOT / "docs"), str(out),
                         *sys.argv[1:]])
    if status == 0:
        print(f"open {out / 'index.html'}")
    sys.exit(status)
