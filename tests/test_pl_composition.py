"""scglmm.pl.composition: content, no overlapping text, bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import pandas as pd
import pytest

import scglmm
from scglmm._core._errors import InputError


def _load_overlap_check():
    """``assert_no_overlap`` of tests/test_pl.py (loaded by path, as tests/test_pl_re.py does)."""
    spec = importlib.util.spec_from_file_location("_scglmm_test_pl", Path(__file__).with_name("test_pl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.assert_no_overlap


assert_no_overlap = _load_overlap_check()

DATA = Path(__file__).parent / "data" / "composition"


@pytest.fixture(scope="module")
def analysed() -> ad.AnnData:
    d = pd.read_csv(DATA / "counts_B.csv")
    obs = d.loc[d.index.repeat(d["n"])].drop(columns="n").reset_index(drop=True).astype("category")
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(obs=obs)
    scglmm.tl.composition(adata, "cell_type", "~ condition + (1 | donor) + (1 | donor:sample)", sample_key="sample")
    return adata


def test_composition_plot(analysed, tmp_path):
    out = tmp_path / "comp.png"
    axes = scglmm.pl.composition(analysed, "condition", show=False, save=out)
    assert out.stat().st_size > 0
    fig = axes["proportions"].figure
    assert_no_overlap(fig)
    left, right = axes["proportions"], axes["effects"]
    assert [t.get_text() for t in left.get_xticklabels()] == [f"T{k:02d}" for k in range(10)]
    assert len(left.get_lines()) == 10 * 8  # a line per donor and type (paired)
    assert len(right.get_yticklabels()) == 10
    plt.close(fig)


def test_composition_plot_bad_input(analysed):
    with pytest.raises(InputError, match="level"):
        scglmm.pl.composition(analysed, "condition", level=2.0, show=False)
    with pytest.raises(InputError, match="no composition analysis"):
        scglmm.pl.composition(analysed, "condition", key="nope", show=False)


def test_composition_plot_into_an_axes(analysed):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    axes = scglmm.pl.composition(analysed, "condition", ax=ax, show=False)
    assert axes["proportions"].figure is fig and ax not in fig.axes
    plt.close(fig)
