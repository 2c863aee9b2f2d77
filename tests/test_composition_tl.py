"""scglmm.tl.composition and scglmm.get.composition on cells expanded from the composition reference set."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import scglmm
from scglmm._core._errors import InputError

DATA = Path(__file__).parent / "data" / "composition"
PAIRED = "~ condition + (1 | donor) + (1 | donor:sample)"


def _cells(name: str = "B") -> ad.AnnData:
    d = pd.read_csv(DATA / f"counts_{name}.csv")
    obs = d.loc[d.index.repeat(d["n"])].drop(columns="n").reset_index(drop=True)
    obs.index = obs.index.astype(str)
    for c in obs:
        obs[c] = obs[c].astype("category")
    return ad.AnnData(obs=obs)


@pytest.fixture(scope="module")
def paired() -> ad.AnnData:
    adata = _cells("B")
    scglmm.tl.composition(adata, "cell_type", PAIRED, sample_key="sample")
    return adata


def test_matches_glmmtmb_and_survives_h5ad(paired, tmp_path):
    path = tmp_path / "comp.h5ad"
    paired.write_h5ad(path)
    tab = scglmm.get.composition(ad.read_h5ad(path), "condition")
    ref = pd.read_csv(DATA / "glmmtmb_B.csv").set_index("cell_type")
    np.testing.assert_allclose(tab["log_or"], ref.loc[tab.index, "beta_stim"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(tab["se"], ref.loc[tab.index, "se_stim"], rtol=0.01)
    cols = ["n_cells", "prop_ctrl", "prop_stim", "log_or", "se", "stat", "p_value", "adj_p_value", "status"]
    assert set(cols + ["var(Intercept|donor)", "var(Intercept|donor:sample)"]) <= set(tab.columns)
    assert (tab["df"] == 7.0).all()  # 8 donors, each in both conditions: donors - 1
    assert tab["n_cells"].sum() == paired.n_obs
    assert np.all(tab["adj_p_value"] >= tab["p_value"] - 1e-12)


@pytest.mark.parametrize("test", ["z", "t", "lrt", "lrt_f", "lrt_fn"])
def test_every_test_is_stored(paired, test):
    tab = scglmm.get.composition(paired, "condition[T.stim]", test=test)
    assert tab["p_value"].between(0, 1).all()


def test_default_is_the_lr_turned_into_the_normal_model_f(paired):
    # lrt_fn: F = df (exp(LR / n) - 1) on F(1, df), n = 8 donors, df = 7 (benchmarks/composition_calibration.py)
    assert paired.uns["scglmm_composition"]["params"]["test"] == "lrt_fn"
    tab = scglmm.get.composition(paired, "condition[T.stim]")
    expected = stats.f.sf(7.0 * np.expm1(tab["stat"].to_numpy() / 8.0), 1, 7.0)
    np.testing.assert_allclose(tab["p_value"], expected, rtol=1e-12)
    assert (tab["df"] == 7.0).all()


def test_default_samples_and_the_missing_sample_term_warning():
    adata = _cells("B")
    with pytest.warns(UserWarning, match="sample-level term"):
        scglmm.tl.composition(adata, "cell_type", "~ condition + (1 | donor)")
    assert len(adata.uns["scglmm_composition"]["samples"]) == 16  # donor x condition


def test_reference_types_are_not_tested():
    adata = _cells("A")
    scglmm.tl.composition(adata, "cell_type", "~ condition + (1 | donor)", reference=["T00", "T03"])
    tab = scglmm.get.composition(adata, "condition")
    assert "T00" not in tab.index and "T03" not in tab.index and len(tab) == 8


def test_odd_samples_give_a_status_not_a_crash():
    adata = _cells("A")
    obs = adata.obs.copy()
    rare = obs.index[(obs["cell_type"] == "T05") & (obs["donor"] != "D00")]
    obs.loc[rare, "cell_type"] = "T06"  # T05 in one sample only
    extra = pd.DataFrame(
        {"donor": ["D99"], "condition": ["stim"], "sample": ["D99"], "cell_type": ["T01"]}, index=["x"]
    )
    obs = pd.concat([obs.astype(str), extra]).astype("category")  # a sample with a single cell
    adata = ad.AnnData(obs=obs)
    scglmm.tl.composition(adata, "cell_type", "~ condition + (1 | donor)")
    tab = scglmm.get.composition(adata, "condition")
    assert tab.loc["T05", "status"] in ("separation", "ok", "sigma2_boundary")
    assert tab.loc["T01", "status"] != "failed"


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        ("numeric_groupby", {}, "categorical or strings"),
        ("missing_label", {}, "without a label"),
        ("none", {"groupby": "nope"}, "not a column"),
        ("paired", {"sample_key": "donor"}, "vary within the samples"),
        ("none", {"reference": "T99"}, "name one or more"),
        ("none", {"test": "wilcoxon"}, "must be one of"),
        ("cell_covariate", {"formula": "~ condition + x + (1 | donor)"}, "varies from cell to cell"),
    ],
)
def test_bad_input(change, kwargs, match):
    adata = _cells("B" if change == "paired" else "A")
    if change == "numeric_groupby":
        adata.obs["cell_type"] = adata.obs["cell_type"].cat.codes.astype(float)
    elif change == "missing_label":
        adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories([]).astype(object)
        adata.obs.iloc[0, adata.obs.columns.get_loc("cell_type")] = np.nan
    elif change == "cell_covariate":
        adata.obs["x"] = np.random.default_rng(0).normal(size=adata.n_obs)
    args = {"groupby": "cell_type", "formula": "~ condition + (1 | donor)", **kwargs}
    with pytest.raises(InputError, match=match):
        scglmm.tl.composition(adata, args.pop("groupby"), args.pop("formula"), **args)
