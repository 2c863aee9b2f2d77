"""Accuracy against glmmTMB on the small reference set (see tests/data/reference_small/README.md)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import scglmm

DATA = Path(__file__).parent / "data" / "reference_small"
FORMULA = "~ condition + covariate + (1 | donor)"
NAMES = {"intercept": "Intercept", "condition": "condition[T.stim]", "covariate": "covariate"}


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(DATA / "glmmtmb.csv", index_col="gene")


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    adata = ad.read_h5ad(DATA / "data.h5ad")
    # calibration="z": the ML Wald test compared with glmmTMB's summary; no gene filter, every gene compared;
    # the offset is glmmTMB's offset(log(libsize)): no normalisation factor
    scglmm.tl.fit(
        adata,
        FORMULA,
        size_factors="libsize",
        norm_method="none",
        n_jobs=2,
        progress=False,
        calibration="z",
        min_cells=None,
        min_donors=None,
    )
    return adata


def _clean(ref: pd.DataFrame) -> pd.Index:
    mask = (ref.status == "ok") & ref.converged & ref.pdHess & ~ref.phi_boundary
    return ref.index[mask]


def test_reference_gene_classes(ref):
    assert len(_clean(ref)) == 144
    assert int(ref.phi_boundary.sum()) == 56


def test_clean_genes_match_glmmtmb(fitted, ref):
    genes = _clean(ref)
    coef = fitted.varm["scglmm_coef"].loc[genes]
    se = fitted.varm["scglmm_se"].loc[genes]
    fit = fitted.varm["scglmm_fit"].loc[genes]
    r = ref.loc[genes]
    for short, col in NAMES.items():
        dbeta = np.abs(coef[col] - r[f"beta_{short}"]) / r[f"se_{short}"]
        assert dbeta.max() <= 0.03, (short, dbeta.idxmax(), dbeta.max())
        dse = np.abs(se[col] / r[f"se_{short}"] - 1)
        assert dse.max() <= 0.005, (short, dse.idxmax(), dse.max())
    ds2 = np.abs(fit.sigma2 - r.sigma2)
    assert np.all((ds2 <= 1e-4) | (ds2 <= 0.005 * r.sigma2)), ds2.sort_values().tail()
    dphi = np.abs(fit.dispersion - r.phi)
    assert np.all((dphi <= 1e-4) | (dphi <= 0.01 * r.phi)), dphi.sort_values().tail()
    dll = np.abs(fit.loglik - r.loglik)
    assert dll.max() <= 0.02, dll.idxmax()
    # every clean gene is an interior, converged optimum
    assert fit.converged.all()


def test_clean_genes_tighter_than_required(fitted, ref):
    """What this implementation actually achieves (documents the margin; still a real check)."""
    genes = _clean(ref)
    coef = fitted.varm["scglmm_coef"].loc[genes]
    r = ref.loc[genes]
    d = np.abs(coef["condition[T.stim]"] - r.beta_condition) / r.se_condition
    assert np.median(d) < 1e-3
    dll = fitted.varm["scglmm_fit"].loc[genes, "loglik"] - r.loglik
    # glmmTMB's own optimum is reproducible to ~2e-6 in loglik (shared AGREEMENT.md)
    assert np.abs(dll).max() < 1e-4


def test_boundary_genes_match_poisson_glmm(fitted, ref):
    genes = ref.index[ref.phi_boundary]
    coef = fitted.varm["scglmm_coef"].loc[genes]
    fit = fitted.varm["scglmm_fit"].loc[genes]
    r = ref.loc[genes]
    at_limit = fit.dispersion <= 1e-3
    # Where scglmm reports an interior NB optimum on a glmmTMB "boundary" gene, it must be a
    # genuinely better maximum than the Poisson limit (glmmTMB failed there, "non-PD Hessian").
    interior = genes[~at_limit.to_numpy()]
    assert len(interior) <= 2
    for g in interior:
        assert fit.loc[g, "loglik"] > ref.loc[g, "pois_loglik"] + 1e-3, g
    lim = genes[at_limit.to_numpy()]
    for short, col in NAMES.items():
        d = np.abs(coef.loc[lim, col] - r.loc[lim, f"pois_beta_{short}"]) / r.loc[lim, f"pois_se_{short}"]
        assert d.max() <= 0.05, (short, d.idxmax(), d.max())
    # at the Poisson limit the NB supremum is the Poisson GLMM log-likelihood
    dll = np.abs(fit.loc[lim, "loglik"] - r.loc[lim, "pois_loglik"])
    assert dll.max() <= 0.02
    assert (fit.loc[lim, "status"].str.contains("poisson_limit")).mean() > 0.9


def test_interior_optimum_on_glmmtmb_boundary_gene_is_real(ref):
    """G0088: glmmTMB flags a non-PD Hessian and heads for theta = 6.5e4; the NB likelihood is
    maximal at phi ~ 0.06. Check the claim by the profile over the dispersion with scglmm's own
    objective at fixed theta: it must peak in the interior, above the Poisson value."""
    from scglmm._core import _status as K

    adata = ad.read_h5ad(DATA / "data.h5ad")
    g = list(adata.var_names).index("G0088")
    res = scglmm.fit_genes(
        adata.X[:, [g]],
        np.column_stack([np.ones(adata.n_obs), (adata.obs.condition == "stim"), adata.obs.covariate]),
        adata.obs.donor.to_numpy(),
        np.log(adata.obs.libsize.to_numpy()),
    )
    assert res.status[0] == 0
    assert res.dispersion[0] == pytest.approx(0.0603, rel=0.02)
    assert res.loglik[0] > ref.loc["G0088", "pois_loglik"] + 0.02
    assert K.POISSON_LIMIT == 2


def test_dense_csr_csc_and_n_jobs_identical(ref):
    adata = ad.read_h5ad(DATA / "data.h5ad")
    adata = adata[:, :40].copy()
    out = {}
    for fmt in ("dense", "csr", "csc"):
        for n_jobs in (1, 2):
            a = adata.copy()
            X = a.X
            a.X = X.toarray() if fmt == "dense" else (sparse.csr_matrix(X) if fmt == "csr" else sparse.csc_matrix(X))
            scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=n_jobs, block_size=7, progress=False)
            out[(fmt, n_jobs)] = a
    base = out[("csr", 1)]
    for k, a in out.items():
        for suffix in ("coef", "se", "pval"):
            np.testing.assert_array_equal(
                a.varm[f"scglmm_{suffix}"].to_numpy(), base.varm[f"scglmm_{suffix}"].to_numpy(), err_msg=str(k)
            )
        np.testing.assert_array_equal(a.varm["scglmm_cov"], base.varm["scglmm_cov"])
        pd.testing.assert_frame_equal(a.varm["scglmm_fit"], base.varm["scglmm_fit"])


def test_outputs_survive_h5ad_round_trip(fitted, tmp_path):
    path = tmp_path / "fit.h5ad"
    fitted.write_h5ad(path)
    back = ad.read_h5ad(path)
    for k in ("coef", "se", "pval", "fit", "donor_effects"):
        pd.testing.assert_frame_equal(back.varm[f"scglmm_{k}"], fitted.varm[f"scglmm_{k}"], check_dtype=False)
    np.testing.assert_array_equal(back.varm["scglmm_cov"], fitted.varm["scglmm_cov"])
    p = back.uns["scglmm"]["params"]
    assert list(p["design_columns"]) == ["Intercept", "condition[T.stim]", "covariate"]
    assert p["reference_levels"]["condition"] == "ctrl"
    assert p["n_cells"] == 1300 and p["n_donors"] == 8 and p["n_agq"] == 1
    assert "libsize" in p["offset_source"]


def test_results_table(fitted, ref):
    res = scglmm.get.results(fitted, "condition")
    assert list(res.columns) == [
        "log_fc", "log2_fc", "se", "stat", "p_value", "log10_p_value", "adj_p_value",
        "base_mean", "mean_stim", "mean_ctrl", "pct_stim", "pct_ctrl", "sigma2", "dispersion", "status", "status_kind",
    ]  # fmt: skip
    np.testing.assert_allclose(res.log2_fc, res.log_fc / np.log(2))
    genes = _clean(ref)
    # Wald p-values agree with glmmTMB's summary on clean genes
    lp = np.log10(res.loc[genes, "p_value"])
    z_ref = ref.loc[genes, "beta_condition"] / ref.loc[genes, "se_condition"]
    lref = np.log10(2 * stats.norm.sf(np.abs(z_ref)))
    assert np.abs(lp - lref).max() < 0.01
    # BH by hand
    p = res.p_value.to_numpy()
    order = np.argsort(p)
    m = np.isfinite(p).sum()
    bh = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(res.adj_p_value.to_numpy()[order], np.minimum(bh, 1))
