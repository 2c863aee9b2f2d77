"""The Sphinx documentation builds with warnings as errors, and public docstrings say what they write."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import scglmm

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

needs_sphinx = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_nb") is None,
    reason="the docs extra is not installed (pip install 'scglmm[docs]')",
)


@needs_sphinx
def test_docs_build_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    cmd += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    # every page of the reference and the guide is there, with its content
    for page in (
        "index",
        "api",
        "model",
        "status",
        *(f"tutorials/{p.stem}" for p in (ROOT / "tutorials").glob("*.ipynb")),
    ):
        assert (out / f"{page}.html").is_file(), page
    for func in ("tl.fit", "get.results", "pl.volcano", "pl.donor_effects", "pl.pvalue_qq", "pl.pvalue_hist"):
        assert (out / "generated" / f"scglmm.{func}.html").is_file(), func
    for func in ("fit_gene", "fit_genes", "datasets.simulate"):
        assert (out / "generated" / f"scglmm.{func}.html").is_file(), func
    fit_page = (out / "generated" / "scglmm.tl.fit.html").read_text()
    assert "scglmm_coef" in fit_page or "{key}_coef" in fit_page
    model = (out / "model.html").read_text()
    assert "Laplace" in model
    assert "dispersion" in model
    nb = (out / "tutorials" / "01_scanpy_workflow.html").read_text()
    assert "rank_genes_groups" in nb
    # the tutorials show their results and figures (stored executed; the build does not run them)
    assert nb.count("<img") >= 2 and "hits where there is nothing to find" in nb
    # every page in docs/ is reachable (Sphinx would warn otherwise, this names the file)
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages <= {p.stem for p in out.glob("*.html")}


def _public(module) -> list:
    return [getattr(module, name) for name in module.__all__ if inspect.isfunction(getattr(module, name))]


@pytest.mark.parametrize("func", _public(scglmm.tl), ids=lambda f: f.__name__)
def test_tools_document_what_they_write(func):
    doc = inspect.getdoc(func)
    assert "adata." in doc
    assert "Returns" in doc


@pytest.mark.parametrize("func", _public(scglmm.pl), ids=lambda f: f.__name__)
def test_plots_document_that_they_write_nothing(func):
    doc = inspect.getdoc(func)
    assert "Nothing is written to it" in doc
    assert "Returns" in doc
    sig = inspect.signature(func)
    for name in ("ax", "show", "save"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[name].default is None


def test_every_tutorial_is_linked_into_the_docs():
    for nb in (ROOT / "tutorials").glob("*.ipynb"):
        link = DOCS / "tutorials" / nb.name
        assert link.exists(), f"add the symlink docs/tutorials/{nb.name} -> ../../tutorials/{nb.name}"
        assert link.resolve() == nb.resolve()
        assert f"tutorials/{nb.stem}" in (DOCS / "index.md").read_text()
