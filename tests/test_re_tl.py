"""scglmm.tl.fit with general random-effect structures: the same numbers as the array engine, stored and read back.

The reference sets of tests/data/reference_re (8 donors; in ``slope`` and ``nested`` every donor has
both conditions), on their first ``N_GENES`` genes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import scglmm
from scglmm import GenesFit, fit_genes
from scglmm._core._errors import InputError
from scglmm._formula import build_design, build_re_terms, parse_re_formula
from scglmm.cli import cli

REF = Path(__file__).parent / "data" / "reference_re"
N_GENES = 5
FORMULAS = {
    "slope": "~ condition + covariate + (1 + condition | donor)",
    "nested": "~ condition + covariate + (1 | donor/sample)",
    "crossed": "~ condition + covariate + (1 | donor) + (1 | batch)",
}
VARCOMP = {
    "slope": ["var(Intercept|donor)", "var(condition[T.stim]|donor)", "cor(Intercept,condition[T.stim]|donor)"],
    "nested": ["var(Intercept|donor)", "var(Intercept|donor:sample)"],
    "crossed": ["var(Intercept|donor)", "var(Intercept|batch)"],
}
STIM = "condition[T.stim]"


def data(kind: str) -> ad.AnnData:
    return ad.read_h5ad(REF / f"{kind}.h5ad")[:, :N_GENES].copy()


@cache
def fitted(kind: str) -> ad.AnnData:
    a = data(kind)
    scglmm.tl.fit(
        a, FORMULAS[kind], size_factors="libsize", norm_method="none", min_cells=None, min_donors=None, progress=False
    )
    return a


@cache
def engine(kind: str) -> GenesFit:
    """:func:`scglmm.fit_genes` on the arrays tl.fit fits: counts, design, terms and log offset."""
    a = fitted(kind)
    parsed = parse_re_formula(FORMULAS[kind])
    design = build_design(parsed.fixed, a.obs)
    terms = build_re_terms(parsed.terms, a.obs)
    off = np.asarray(a.uns["scglmm"]["log_offset"])
    return fit_genes(data(kind).X, design.matrix, terms, off, coef_names=design.columns)


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_same_numbers_as_the_engine(kind: str) -> None:
    a, ref = fitted(kind), engine(kind)
    np.testing.assert_array_equal(np.log(a.obs["libsize"].to_numpy(float)), a.uns["scglmm"]["log_offset"])
    np.testing.assert_allclose(a.varm["scglmm_coef"][ref.coef_names].to_numpy(), ref.coef, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.varm["scglmm_se"][ref.coef_names].to_numpy(), ref.se, rtol=0, atol=1e-10)
    vc = a.varm["scglmm_varcomp"]
    assert list(vc.columns) == VARCOMP[kind] == ref.varcomp_names
    np.testing.assert_allclose(vc.to_numpy(), ref.varcomp, rtol=0, atol=1e-10)
    assert list(a.varm["scglmm_modes"].columns) == ref.mode_names
    np.testing.assert_allclose(a.varm["scglmm_modes"].to_numpy(), ref.modes, rtol=0, atol=1e-10)
    assert list(a.var["scglmm_status"].astype(str)) == list(ref.status_str)
    assert "scglmm_donor_effects" not in a.varm
    np.testing.assert_allclose(a.varm["scglmm_fit"]["sigma2"].to_numpy(), ref.varcomp[:, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_written_and_read_back(kind: str, tmp_path: Path) -> None:
    a = fitted(kind)
    a.write_h5ad(tmp_path / "fit.h5ad")
    b = ad.read_h5ad(tmp_path / "fit.h5ad")
    for suffix in ("coef", "se", "pval", "stat", "varcomp", "modes"):
        pd.testing.assert_frame_equal(b.varm[f"scglmm_{suffix}"], a.varm[f"scglmm_{suffix}"])
    params = b.uns["scglmm"]["params"]
    assert list(params["varcomp_names"]) == VARCOMP[kind]
    assert params["formula"] == FORMULAS[kind]
    pd.testing.assert_frame_equal(scglmm.get.varcomp(b), a.varm["scglmm_varcomp"])
    res = scglmm.get.results(b, "condition")
    expected = ["log_fc", "log2_fc", "se", "stat", "p_value", "log10_p_value", "adj_p_value", "base_mean"]
    assert list(res.columns[: len(expected)]) == expected
    assert {"mean_stim", "mean_ctrl", "sigma2", "dispersion", "status"} <= set(res.columns)
    np.testing.assert_array_equal(res["log_fc"].to_numpy(), a.varm["scglmm_coef"][STIM].to_numpy())


def test_structure_in_params() -> None:
    params = fitted("nested").uns["scglmm"]["params"]
    assert params["random_structure"] == "(1 | donor) + (1 | donor:sample)"
    terms = params["random_effects"]
    assert list(terms) == ["(1 | donor)", "(1 | donor:sample)"]
    assert terms["(1 | donor:sample)"]["n_levels"] == 24
    assert params["slope_columns"] == {}


def test_slope_df_is_paired_t() -> None:
    """condition varies within every donor: only the intercept is constant within donors, df = 8 - 1;
    with ``calibration="t"`` the slope's coefficient is referred to t(7)."""
    a = data("slope")[:, :40].copy()
    scglmm.tl.fit(a, FORMULAS["slope"], size_factors="libsize", calibration="t", progress=False)
    params = a.uns["scglmm"]["params"]
    assert params["slope_columns"] == {STIM: "donor"}
    assert params["df"][STIM] == 7.0 == params["slope_df"][STIM]
    assert params["df"]["covariate"] == np.inf  # no slope, varies within donors: normal reference
    z = a.varm["scglmm_coef"][STIM] / a.varm["scglmm_se"][STIM]
    np.testing.assert_allclose(a.varm["scglmm_stat"][STIM], z, rtol=0, atol=0)
    from scipy import stats

    np.testing.assert_allclose(a.varm["scglmm_pval"][STIM], 2 * stats.t.sf(np.abs(z), 7), rtol=1e-14)


def test_slope_default_is_eb_on_the_slope_variance() -> None:
    """The default ("eb") tests the slope's coefficient with the empirical-Bayes prior of its variance across
    genes (k = 1/8, 7 df), the same numbers as calling the numerics directly; the prior is stored."""
    from scglmm._core._inference import EB_MIN_GENES, eb_donor_variance

    a = ad.read_h5ad(REF / "slope.h5ad")[:, : EB_MIN_GENES + 10].copy()
    scglmm.tl.fit(a, FORMULAS["slope"], size_factors="libsize", min_cells=None, min_donors=None, progress=False)
    params = a.uns["scglmm"]["params"]
    assert params["df"][STIM] == np.inf and params["slope_df"][STIM] == 7.0
    coef, se = a.varm["scglmm_coef"][STIM].to_numpy(), a.varm["scglmm_se"][STIM].to_numpy()
    tau2 = a.varm["scglmm_varcomp"][f"var({STIM}|donor)"].to_numpy()
    ok = np.isfinite(coef)
    ref = eb_donor_variance(coef[ok], se[ok] ** 2, tau2[ok], n_donors=8, df=7, k=1 / 8)
    np.testing.assert_allclose(a.varm["scglmm_pval"][STIM].to_numpy()[ok], ref["p_value"], rtol=1e-12)
    np.testing.assert_allclose(params["eb_prior"][STIM], ref["prior"], rtol=1e-12)
    assert ok.sum() >= EB_MIN_GENES


def test_slope_eb_with_few_genes_is_t() -> None:
    """Fewer genes than the prior needs: the default falls back to t with the slope's df."""
    a = fitted("slope")
    assert a.uns["scglmm"]["params"]["df"][STIM] == 7.0
    z = a.varm["scglmm_coef"][STIM] / a.varm["scglmm_se"][STIM]
    from scipy import stats

    np.testing.assert_allclose(a.varm["scglmm_pval"][STIM], 2 * stats.t.sf(np.abs(z), 7), rtol=1e-14)


def test_slope_df_level_wide_columns_and_interactions() -> None:
    """A donor-level covariate does not enter the donors' differences: 8 - 1, as the paired t test. Its
    interaction with the condition is a slope of the same term, tested with the condition on t(8 - 2)."""
    a = data("slope")
    a.obs["sex"] = np.where(a.obs["donor"].astype(str).isin(["D01", "D02", "D03", "D04"]), "f", "m")
    b = a[:, :2].copy()
    scglmm.tl.fit(b, "~ condition + sex + (1 + condition | donor)", size_factors="libsize", calibration="t")
    params = b.uns["scglmm"]["params"]
    assert params["df"][STIM] == 7.0 == params["slope_df"][STIM]
    assert params["slope_columns"] == {STIM: "donor"}
    c = a[:, :2].copy()
    scglmm.tl.fit(c, "~ condition * sex + (1 + condition | donor)", size_factors="libsize", calibration="t")
    params = c.uns["scglmm"]["params"]
    inter = f"{STIM}:sex[T.m]"
    assert params["slope_columns"] == {STIM: "donor", inter: "donor"}
    assert params["slope_df"] == {STIM: 6.0, inter: 6.0} and params["df"][inter] == 6.0
    from scipy import stats

    z = c.varm["scglmm_coef"][inter] / c.varm["scglmm_se"][inter]
    np.testing.assert_allclose(c.varm["scglmm_pval"][inter], 2 * stats.t.sf(np.abs(z), 6), rtol=1e-12)


def test_single_intercept_keeps_its_path() -> None:
    """``(1 || donor)`` is ``(1 | donor)``: the compiled path, donor effects, no varcomp table."""
    a = data("crossed")[:, :2].copy()
    scglmm.tl.fit(a, "~ condition + covariate + (1 || donor)", size_factors="libsize", progress=False)
    assert "scglmm_donor_effects" in a.varm and "scglmm_varcomp" not in a.varm
    assert "random_structure" not in a.uns["scglmm"]["params"]
    vc = scglmm.get.varcomp(a)
    assert list(vc.columns) == ["var(Intercept|donor)"]
    np.testing.assert_array_equal(vc.iloc[:, 0].to_numpy(), a.varm["scglmm_fit"]["sigma2"].to_numpy())


def test_n_agq_refused_with_a_slope() -> None:
    a = data("slope")
    with pytest.raises(InputError, match=r"n_agq=3") as info:
        scglmm.tl.fit(a, FORMULAS["slope"], size_factors="libsize", n_agq=3)
    assert info.value.param == "n_agq"
    assert "scglmm" not in a.uns


def test_groupby() -> None:
    a = data("slope")[:, :2].copy()
    scglmm.tl.fit(a, FORMULAS["slope"], size_factors="libsize", groupby="batch", min_cells=None, progress=False)
    groups = list(a.uns["scglmm"]["params"]["groups"])
    assert groups == ["B1", "B2", "B3"]
    vc = scglmm.get.varcomp(a)
    assert list(vc.columns) == ["group", *VARCOMP["slope"]]
    assert len(vc) == 2 * len(groups)
    assert not [k for k in a.varm if k.endswith("_modes")]  # stored by group only with store_modes=True


def test_cli_fit(tmp_path: Path) -> None:
    data("slope")[:, :2].copy().write_h5ad(tmp_path / "in.h5ad")
    result = CliRunner().invoke(
        cli,
        [
            "fit", str(tmp_path / "in.h5ad"), "-f", "~ condition + covariate + (1 + condition | donor)",
            "--size-factors", "libsize", "-o", str(tmp_path / "out.h5ad"), "--table", str(tmp_path / "out.tsv"),
            "--coef", "condition", "-j", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(table["coef"].unique()) == [STIM]
    assert len(table) == 2
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(out.varm["scglmm_varcomp"].columns) == VARCOMP["slope"]


def test_donor_effects_plot_reads_the_stored_modes_of_a_general_structure() -> None:
    """The plot of a general structure shows the stored modes (tests/test_pl_re.py checks it in detail)."""
    import matplotlib.pyplot as plt

    a = fitted("slope")
    gene = a.var_names[0]
    ax = scglmm.pl.donor_effects(a, gene, coef=STIM, show=False)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    (cont,) = ax.containers
    expected = [
        a.varm["scglmm_coef"].loc[gene, STIM] + a.varm["scglmm_modes"].loc[gene, f"donor[{d}]:{STIM}"] for d in ticks
    ]
    np.testing.assert_allclose(cont.lines[0].get_ydata(), expected, rtol=0, atol=1e-12)
    assert len(ticks) == 8
    plt.close("all")


def test_get_results_sorted_most_significant_first() -> None:
    a = fitted("slope")
    plain = scglmm.get.results(a, "condition")
    top = scglmm.get.results(a, "condition", sort=True)
    assert sorted(top.index) == sorted(plain.index)
    order = plain["log10_p_value"].sort_values(na_position="last", kind="stable").index
    assert list(top.index) == list(order)
    pd.testing.assert_frame_equal(top.loc[plain.index], plain)


def test_get_results_says_which_statuses_need_attention() -> None:
    res = scglmm.get.results(fitted("slope"), "condition")
    kinds = dict(zip(res["status"], res["status_kind"], strict=True))
    assert set(kinds.values()) <= {"ok", "boundary", "attention", "filtered"}
    for status, kind in kinds.items():
        expected = "ok" if status == "ok" else "attention" if any(
            f in status for f in ("separation", "all_zero", "failed", "not_converged")
        ) else "boundary"  # fmt: skip
        assert kind == expected, status
