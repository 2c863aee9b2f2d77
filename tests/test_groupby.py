"""Per-group fits (``groupby``): equal to fitting each subset alone; skipped groups; scanpy block."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scglmm

matplotlib.use("Agg")
FORMULA = "~ condition + (1 | donor)"


def _data() -> ad.AnnData:
    a = scglmm.datasets.simulate(n_donors=8, cells_per_donor=36, n_genes=14, seed=21, frac_de=0.3)
    rng = np.random.default_rng(0)
    ct = np.where(rng.random(a.n_obs) < 0.55, "T cell", "Mono").astype(object)
    # a rare type with cells from only two donors: skipped for too few donors
    donors = a.obs["donor"].astype(str).to_numpy()
    rare = np.isin(donors, ["D01", "D05"]) & (rng.random(a.n_obs) < 0.5)
    ct[rare] = "pDC"
    # a tiny type: skipped for too few cells
    ct[:5] = "Eryth/other"
    a.obs["cell_type"] = pd.Categorical(ct, categories=["Mono", "T cell", "pDC", "Eryth/other"])
    return a


@pytest.fixture(scope="module")
def grouped():
    a = _data()
    # with the modes, so that each group's donor effects are compared with its subset's too
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", groupby="cell_type", n_jobs=1, progress=False, store_modes=True)
    return a


def test_group_equals_subset_alone(grouped):
    a = _data()
    for g in ("Mono", "T cell"):
        sub = a[a.obs["cell_type"] == g].copy()
        scglmm.tl.fit(sub, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
        res_g = scglmm.get.results(grouped, "condition", group=g)
        res_s = scglmm.get.results(sub, "condition")
        pd.testing.assert_frame_equal(res_g, res_s, check_exact=False, rtol=1e-12, atol=0)
        key = f"scglmm:{g}"
        np.testing.assert_array_equal(grouped.varm[f"{key}_cov"], sub.varm["scglmm_cov"])
        pd.testing.assert_frame_equal(grouped.varm[f"{key}_fit"], sub.varm["scglmm_fit"])
        pd.testing.assert_frame_equal(grouped.varm[f"{key}_donor_effects"], sub.varm["scglmm_donor_effects"])
        assert grouped.uns[key]["params"]["n_cells"] == sub.n_obs
        assert np.isfinite(res_g["p_value"]).sum() >= 10


def test_skipped_groups_and_message(caplog):
    a = _data()
    with caplog.at_level(logging.INFO, logger="scglmm"):
        scglmm.tl.fit(a, FORMULA, size_factors="libsize", groupby="cell_type", n_jobs=1, progress=False)
    p = a.uns["scglmm"]["params"]
    assert p["groupby"] == "cell_type"
    assert list(p["groups"]) == ["Mono", "T cell"]
    assert list(p["group_keys"]) == ["scglmm:Mono", "scglmm:T cell"]
    skipped = dict(zip(p["skipped_groups"], p["skipped_reasons"], strict=True))
    assert set(skipped) == {"pDC", "Eryth/other"}
    assert "2 donors" in skipped["pDC"] and "5 cells" in skipped["Eryth/other"]
    msgs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(msgs) == 1 and "pDC" in msgs[0] and "Eryth/other" in msgs[0]
    with pytest.raises(KeyError, match="skipped in the fit"):
        scglmm.get.results(a, "condition", group="pDC")


def test_stacked_results_and_contrasts(grouped):
    a = grouped.copy()
    allg = scglmm.get.results(a, "condition")
    assert list(allg["group"].cat.categories) == ["Mono", "T cell"]
    assert len(allg) == 2 * a.n_vars
    name = scglmm.tl.test(a, "condition[T.stim]", calibration="z")
    for g in ("Mono", "T cell"):
        con = scglmm.get.results(a, contrast=name, group=g)
        coef = scglmm.get.results(a, "condition", group=g)
        z = coef.log_fc / coef.se
        np.testing.assert_allclose(con.stat, z, rtol=1e-12, equal_nan=True)
    name = scglmm.tl.test(a, "condition", method="lrt", group="Mono")
    assert f"scglmm:Mono_contrast_{name}" in a.varm and f"scglmm:T cell_contrast_{name}" not in a.varm


def test_rank_genes_groups_block(grouped, tmp_path):
    key = "scglmm_rank_genes_groups"
    blk = grouped.uns[key]
    assert blk["params"]["groupby"] == "cell_type" and blk["params"]["method"] == "scglmm"
    assert list(blk["names"].dtype.names) == ["Mono", "T cell"]
    for g in ("Mono", "T cell"):
        df = sc.get.rank_genes_groups_df(grouped, g, key=key)
        res = scglmm.get.results(grouped, "condition", group=g)
        assert len(df) == grouped.n_vars
        top = df.iloc[0]
        best = res["stat"].idxmax()
        assert top["names"] == best
        np.testing.assert_allclose(top["scores"], res.loc[best, "stat"], rtol=1e-6)
        np.testing.assert_allclose(top["logfoldchanges"], res.loc[best, "log2_fc"], rtol=1e-6)
        np.testing.assert_allclose(top["pvals"], res.loc[best, "p_value"], rtol=1e-12)
        merged = df.set_index("names").loc[res.index]
        np.testing.assert_allclose(merged["pvals_adj"], res["adj_p_value"], rtol=1e-12, equal_nan=True)
        scores = df["scores"].to_numpy()
        fin = scores[np.isfinite(scores)]
        assert (np.diff(fin) <= 0).all()
    # scanpy's plots read the block unchanged, also after a round trip through h5ad
    path = tmp_path / "g.h5ad"
    grouped.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        sc.get.rank_genes_groups_df(back, "Mono", key=key), sc.get.rank_genes_groups_df(grouped, "Mono", key=key)
    )
    pd.testing.assert_frame_equal(
        scglmm.get.results(back, "condition", group="T cell"), scglmm.get.results(grouped, "condition", group="T cell")
    )
    sc.pl.rank_genes_groups(back, key=key, n_genes=4, show=False)
    fig = matplotlib.pyplot.gcf()
    assert len(fig.axes) == 2
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert set(sc.get.rank_genes_groups_df(back, "Mono", key=key)["names"][:4]) <= texts
    matplotlib.pyplot.close("all")
    sub = back[back.obs["cell_type"].isin(["Mono", "T cell"])].copy()
    sub.obs["cell_type"] = sub.obs["cell_type"].cat.remove_unused_categories()
    dp = sc.pl.rank_genes_groups_dotplot(sub, key=key, n_genes=3, show=False, return_fig=True)
    top3 = {g: list(sc.get.rank_genes_groups_df(back, g, key=key)["names"][:3]) for g in ("Mono", "T cell")}
    assert list(dp.var_names) == top3["Mono"] + top3["T cell"]
    matplotlib.pyplot.close("all")


def _rendered_panels(adata: ad.AnnData, key: str, n_genes: int) -> list[tuple[str, list[str], list[float]]]:
    """Title, gene names and scores of each panel of ``sc.pl.rank_genes_groups``, read off the axes."""
    sc.pl.rank_genes_groups(adata, key=key, n_genes=n_genes, show=False)
    fig = matplotlib.pyplot.gcf()
    panels = [
        (ax.get_title(), [t.get_text() for t in ax.texts], [t.get_position()[1] for t in ax.texts]) for ax in fig.axes
    ]
    matplotlib.pyplot.close(fig)
    return panels


def test_rank_block_labels_as_scanpy_renders_them(grouped):
    """Per-group panels say what is compared (stim vs. ctrl within the cell type), not '<cell type> vs. rest'."""
    key = "scglmm_rank_genes_groups"
    params = grouped.uns[key]["params"]
    assert params["reference"] == "ctrl (stim vs. ctrl within each cell_type)"
    assert params["comparison"] == "stim vs. ctrl" and params["coef"] == "condition[T.stim]"
    assert (params["variable"], params["tested_level"], params["reference_level"]) == ("condition", "stim", "ctrl")
    panels = _rendered_panels(grouped, key, 5)
    assert [title for title, _, _ in panels] == [
        "Mono vs. ctrl (stim vs. ctrl within each cell_type)",
        "T cell vs. ctrl (stim vs. ctrl within each cell_type)",
    ]
    for (_, genes, scores), g in zip(panels, ("Mono", "T cell"), strict=True):
        df = sc.get.rank_genes_groups_df(grouped, g, key=key)
        res = scglmm.get.results(grouped, "condition", group=g).sort_values("stat", ascending=False)
        assert genes == list(df["names"][:5]) == list(res.index[:5])
        np.testing.assert_allclose(scores, df["scores"][:5], rtol=1e-6)
        np.testing.assert_allclose(scores, res["stat"][:5], rtol=1e-6)
        assert "rest" not in str(params["reference"])


def test_rank_block_without_groupby_renders_level_vs_reference():
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    key = "scglmm_rank_genes_groups"
    ((title, genes, scores),) = _rendered_panels(a, key, 4)
    assert title == "stim vs. ctrl"
    res = scglmm.get.results(a, "condition").sort_values("stat", ascending=False)
    assert genes == list(res.index[:4]) == list(sc.get.rank_genes_groups_df(a, "stim", key=key)["names"][:4])
    np.testing.assert_allclose(scores, res["stat"][:4], rtol=1e-6)
    assert a.uns[key]["params"]["comparison"] == "stim vs. ctrl"


def test_rank_block_without_groupby():
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    blk = a.uns["scglmm_rank_genes_groups"]
    assert blk["params"]["groupby"] == "condition" and blk["params"]["reference"] == "ctrl"
    df = sc.get.rank_genes_groups_df(a, "stim", key="scglmm_rank_genes_groups")
    res = scglmm.get.results(a, "condition")
    assert df["names"].iloc[0] == res["stat"].idxmax()


def test_groupby_errors():
    a = _data()
    with pytest.raises(KeyError, match="groupby column 'celltype'"):
        scglmm.tl.fit(a, FORMULA, size_factors="libsize", groupby="celltype", progress=False)
    with pytest.raises(ValueError, match="no group of 'cell_type' could be fitted"):
        scglmm.tl.fit(a, FORMULA, size_factors="libsize", groupby="cell_type", progress=False, min_cells_group=10**6)
    assert "scglmm" not in a.uns
