"""Sphinx configuration of the scglmm documentation.

Build with warnings as errors (as the test suite does)::

    sphinx-build -W -b html docs docs/_build/html

The tutorials in ``tutorials/`` are linked into ``docs/tutorials/`` and rendered by myst-nb
without being executed (the test suite executes them).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

project = "scglmm"
author = "scglmm developers"
copyright = "2026, scglmm developers"
try:
    release = version("scglmm")
except PackageNotFoundError:  # pragma: no cover - building from a tree that is not installed
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# ---- API reference from the docstrings ---------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True

# ---- MyST and notebooks --------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the test suite executes the notebooks; the docs only render them

# ---- HTML ------------------------------------------------------------------------------------------
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - the docs extra installs furo
    html_theme = "alabaster"
html_title = f"scglmm {release}"
html_static_path: list[str] = []


# ---- the toctrees of index.md: every page in docs/ that exists, in a sensible order --------------
_GUIDE_ORDER = ["model", "random_effects", "status", "separation", "calibration", "scaling", "errors"]
_REFERENCE = ["api", "cli", "layout"]


def _pages() -> tuple[list[str], list[str]]:
    pages = sorted(p.stem for p in HERE.glob("*.md") if p.stem != "index")
    reference = [p for p in _REFERENCE if p in pages]
    guide = [p for p in _GUIDE_ORDER if p in pages]
    guide += [p for p in pages if p not in guide and p not in reference]
    return guide, reference


def _fill_toctrees(app, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    guide, reference = _pages()
    source[0] = source[0].replace("GUIDE_PAGES", "\n".join(guide)).replace("REFERENCE_PAGES", "\n".join(reference))


def setup(app) -> None:
    app.connect("source-read", _fill_toctrees)
