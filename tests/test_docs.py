"""The documentation: the site builds without a warning, every page's code runs, every
public function is documented the same way.

The docstrings' examples themselves run as doctests (``--doctest-modules`` over
``jaxdiv/`` in ``pyproject.toml``).
"""

import inspect
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import jaxdiv
from jaxdiv import drift, fused, gaussian, losses, probs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Every public function of every documented module, under the name users call it by.
PUBLIC = {
    "jaxdiv": jaxdiv,
    "jaxdiv.probs": probs,
    "jaxdiv.gaussian": gaussian,
    "jaxdiv.losses": losses,
    "jaxdiv.fused": fused,
    "jaxdiv.drift": drift,
}
# Modules whose functions compute a quantity: each docstring states its formula.
WITH_FORMULA = {"jaxdiv", "jaxdiv.probs", "jaxdiv.gaussian", "jaxdiv.losses", "jaxdiv.fused"}
# A check and a sizing rule, not quantities.
NO_FORMULA = {"validate_labels", "auto_chunk_size"}


def _public_functions():
    for module_name, module in PUBLIC.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not inspect.isclass(obj) and not inspect.ismodule(obj):
                yield pytest.param(module_name, name, obj, id=f"{module_name}.{name}")


@pytest.mark.parametrize("module_name, name, fn", list(_public_functions()))
def test_every_public_function_has_args_returns_an_example_and_its_formula(module_name, name, fn):
    doc = inspect.getdoc(fn) or ""
    missing = []
    parameters = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if parameters and "Args:" not in doc:
        missing.append("an Args: section")
    for p in parameters:
        # an Args entry may name several arguments: "mean_p, log_var_p: ..."
        entry = rf"^\s*(?:\w+,\s*)*{re.escape(p.name)}(?:,\s*\w+)*\s*:"
        if not re.search(entry, doc, re.MULTILINE) and \
                f"``{p.name}``" not in doc:
            missing.append(f"the argument {p.name!r}")
    if "Returns:" not in doc:
        missing.append("a Returns: section")
    if ">>>" not in doc:
        missing.append("an example")
    if module_name in WITH_FORMULA and name not in NO_FORMULA and ":math:" not in doc and ".. math::" not in doc:
        missing.append("its formula")
    assert not missing, f"{module_name}.{name} lacks {', '.join(missing)}"


@pytest.mark.parametrize("module_name, module", list(PUBLIC.items()), ids=list(PUBLIC))
def test_every_public_class_has_an_example(module_name, module):
    lacking = [name for name in module.__all__
               if inspect.isclass(getattr(module, name))
               and ">>>" not in (inspect.getdoc(getattr(module, name)) or "")]
    assert not lacking, f"{module_name}: {lacking} have no example"


def _public_methods():
    for module_name, module in PUBLIC.items():
        for name in module.__all__:
            cls = getattr(module, name)
            if not inspect.isclass(cls) or issubclass(cls, tuple):
                continue
            for method_name, method in vars(cls).items():
                if not method_name.startswith("_") and inspect.isfunction(inspect.unwrap(method)):
                    yield pytest.param(method, id=f"{module_name}.{name}.{method_name}")


@pytest.mark.parametrize("method", list(_public_methods()))
def test_every_public_method_has_args_and_returns(method):
    doc = inspect.getdoc(method) or ""
    takes = [p for p in inspect.signature(method).parameters if p != "self"]
    assert "Returns:" in doc and (not takes or "Args:" in doc), doc


def test_every_public_module_has_an_api_page_that_documents_all_of_it():
    pages = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for module_name, module in PUBLIC.items():
        for name in module.__all__:
            if name == "__version__" or inspect.ismodule(getattr(module, name)):
                continue
            # an automodule page documents everything in its __all__; jaxdiv's page names each
            documented = (f".. automodule:: {module_name}\n" in pages and module_name != "jaxdiv") \
                or re.search(rf"\.\. (autofunction|py:data|autodata):: {name}\b", pages)
            assert documented, f"{module_name}.{name} is on no API page"


def _python_blocks(page):
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)


PAGES_WITH_CODE = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if _python_blocks(p))


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in PAGES_WITH_CODE])
def test_the_code_on_every_page_runs(page, tmp_path, monkeypatch):
    """Each page's ``python`` blocks run in order in one namespace, as a reader would."""
    pytest.importorskip("optax")
    pytest.importorskip("flax")
    monkeypatch.chdir(tmp_path)
    # Pages read committed results as a reader in the repository root would.
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    script = tmp_path / "page.py"
    script.write_text("\n".join(_python_blocks(page)))
    # A page that needs a setting before jax starts (host devices) says so in a comment.
    setting = re.search(r"<!-- the code on this page runs with (\w+)=(\S+) -->", page.read_text())
    if setting is None:
        runpy.run_path(str(script), run_name="__main__")
        return
    env = {**os.environ, setting[1]: setting[2], "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_site_builds_without_warnings(tmp_path):
    """The README's docs command, with warnings as errors and every reference checked."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    from sphinx.cmd.build import build_main

    status = build_main(["-b", "html", "-W", "--keep-going", "-n", "-q",
                         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")])
    assert status == 0, "sphinx reported warnings (shown above)"
    assert (tmp_path / "html" / "api" / "jaxdiv.html").exists()


@pytest.mark.slow
def test_the_wheel_and_sdist_build_and_install_with_only_the_runtime_dependencies(tmp_path):
    """``python -m build``, then the wheel into a clean virtual environment: jax, jaxlib, numpy."""
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("jaxdiv-*.whl")
    (sdist,) = dist.glob("jaxdiv-*.tar.gz")
    assert wheel.name.startswith(f"jaxdiv-{jaxdiv.__version__}-")
    assert sdist.name == f"jaxdiv-{jaxdiv.__version__}.tar.gz"

    import tarfile
    import zipfile

    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert {"jaxdiv/py.typed", "jaxdiv/drift/__main__.py"} <= in_wheel
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in in_wheel)
    in_sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "LICENSE", "jaxdiv/__init__.py"} <= in_sdist

    # Nothing of this checkout may leak in: a PYTHONPATH holding it makes pip skip the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "-q", "install", str(wheel)], check=True, capture_output=True,
                   timeout=900, env=env)
    # (not -q: pip's quiet mode prints no list at all)
    listed = subprocess.run([*pip, "list", "--format=freeze"], check=True, capture_output=True,
                            text=True, env=env).stdout
    assert "jaxdiv==" + jaxdiv.__version__ in listed.split()
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.split()}
    assert {"jax", "jaxlib", "numpy"} <= installed, installed
    # jax's own dependencies come along; no optional extra (optax, pandas, flax, sphinx, ...).
    assert installed <= {"jaxdiv", "jax", "jaxlib", "numpy", "ml-dtypes", "opt-einsum", "scipy",
                         "pip", "setuptools"}, installed
    smoke = ("import jax.numpy as jnp, jaxdiv, jaxdiv.drift, jaxdiv.losses, jaxdiv.fused;"
             "p = jnp.log(jnp.array([0.5, 0.5, 0.0])); q = jnp.log(jnp.array([0.25, 0.25, 0.5]));"
             "print(jaxdiv.__version__, round(float(jaxdiv.kl_divergence(p, q)), 6))")
    run = subprocess.run([str(python), "-c", smoke], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [jaxdiv.__version__, "0.693147"]
