"""Sphinx configuration: the API reference is built from the docstrings.

Build with ``python3 docs/build.py`` (see CONTRIBUTING.md).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxdiv  # noqa: E402

project = "jaxdiv"
author = "the jaxdiv authors"
copyright = "2026, the jaxdiv authors"
release = jaxdiv.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Google-style docstrings ("Args:", "Returns:", "Example:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass fields are documented once, by autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the Args sections give shapes and dtypes
autodoc_default_options = {"members": True, "undoc-members": False}
add_module_names = False
# Every cross-reference must resolve: a broken one fails the build (-W).
nitpicky = True
# Types that only appear in annotations; no inventory is fetched offline.
nitpick_ignore = [
    ("py:class", "numpy.ndarray"),
    ("py:class", "jax.Array"),
    ("py:class", "jax.jaxlib._jax.Array"),
]
default_role = "py:obj"

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

intersphinx_mapping = {}  # offline builds: no inventories are fetched

# MathJax from a local copy when one is given (offline screenshots); the CDN otherwise.
if os.environ.get("JAXDIV_DOCS_MATHJAX"):
    mathjax_path = os.environ["JAXDIV_DOCS_MATHJAX"]

html_theme = "alabaster"
html_title = f"jaxdiv {release}"
html_theme_options = {
    "description": "Exact, log-space divergences for JAX",
    "fixed_sidebar": True,
    "page_width": "1260px",
    "body_max_width": "none",
    "sidebar_width": "250px",
    "show_relbars": True,
}
html_static_path = ["_static"]
html_css_files = ["jaxdiv.css"]


def _skip_fields(app, what, name, obj, skip, options):
    """Dataclass and NamedTuple fields are described once, in their class's Attributes section."""
    # Fields reach autodoc as its "instance attribute" sentinel or as tuple getters.
    if what == "class" and (repr(obj) in ("INSTANCE_ATTR", "UNINITIALIZED_ATTR")
                            or type(obj).__name__ == "_tuplegetter"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_fields)
