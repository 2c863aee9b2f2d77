"""Gene filtering before fitting: rows kept, NaN, status 'filtered', filtered genes never fitted."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scglmm
import scglmm.tl._run as fit_module  # the module that calls fit_genes
from scglmm._core._status import FILTERED

FORMULA = "~ condition + (1 | donor)"


def _data():
    a = scglmm.datasets.simulate(n_donors=6, cells_per_donor=30, n_genes=12, seed=5, mean_range=(0.5, 5.0))
    X = a.X.tolil()
    donors = a.obs["donor"].astype(str).to_numpy()
    X[:, 0] = 0  # all zero
    X[:, 1] = 0
    X[[3, 7], 1] = 1  # counts in 2 cells
    X[:, 2] = 0
    first = np.flatnonzero(donors == donors[0])
    X[first[:10], 2] = 2  # 10 cells, all of one donor
    X[:, 3] = 0
    X[[0, 40, 80, 120], 3] = 1  # 4 cells in 4 donors: kept by the defaults
    a.X = sparse.csr_matrix(X)
    a.obs["libsize"] = a.obs["libsize"] + np.asarray(a.X.sum(axis=1)).ravel()
    return a


def test_default_filter_rows_kept_nan_status():
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    fit = a.varm["scglmm_fit"]
    assert a.varm["scglmm_coef"].shape == (12, 2)
    assert list(a.varm["scglmm_coef"].index) == list(a.var_names)
    filtered = fit["status"].str.contains("filtered").to_numpy()
    np.testing.assert_array_equal(np.flatnonzero(filtered), [0, 1, 2])
    assert ((fit["status_code"].to_numpy()[filtered] & FILTERED) != 0).all()
    assert (fit["status"][filtered] == "filtered").all()
    assert (a.var["scglmm_status"][filtered] == "filtered").all()
    for k in ("coef", "se", "pval", "stat"):
        assert np.isnan(a.varm[f"scglmm_{k}"].to_numpy()[filtered]).all()
        assert np.isfinite(a.varm[f"scglmm_{k}"].to_numpy()[~filtered]).all()
    assert np.isnan(a.varm["scglmm_cov"][filtered]).all()
    assert np.isnan(fit["sigma2"][filtered]).all() and np.isnan(fit["loglik"][filtered]).all()
    np.testing.assert_array_equal(fit["n_nonzero"].to_numpy()[:4], [0, 2, 10, 4])
    res = scglmm.get.results(a, "condition")
    assert len(res) == 12 and res["p_value"].isna().sum() == 3
    assert np.isnan(res["adj_p_value"][filtered]).all()
    p = a.uns["scglmm"]["params"]
    assert p["min_cells"] == 3 and p["min_donors"] == 2 and p["n_filtered"] == 3
    assert p["status_counts"]["filtered"] == 3


def test_filtered_genes_are_not_fitted(monkeypatch):
    a = _data()
    seen = []
    real = fit_module.fit_genes

    def spy(Y, *args, **kwargs):
        seen.append(Y.shape)
        return real(Y, *args, **kwargs)

    monkeypatch.setattr(fit_module, "fit_genes", spy)
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, min_cells=5, min_donors=3)
    assert seen == [(a.n_obs, 8)]  # genes 0-3 filtered: gene 3 has 4 cells < 5
    status = a.varm["scglmm_fit"]["status"].to_numpy()
    assert list(status[:4]) == ["filtered"] * 4


@pytest.mark.parametrize("off", [None, 0])
def test_filter_disabled(off):
    a = _data()
    with pytest.warns(UserWarning, match="have no estimate"):
        scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, min_cells=off, min_donors=off)
    status = a.varm["scglmm_fit"]["status"]
    assert not status.str.contains("filtered").any()
    assert status.iloc[0] == "all_zero"  # the kernel's own flag, not the filter's
    assert np.isfinite(a.varm["scglmm_coef"].to_numpy()[4:]).all()


def test_filtered_rows_unchanged_for_kept_genes():
    a = _data()
    b = a.copy()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    with pytest.warns(UserWarning, match="have no estimate"):
        scglmm.tl.fit(b, FORMULA, size_factors="libsize", n_jobs=1, progress=False, min_cells=None, min_donors=None)
    kept = np.arange(3, 12)
    np.testing.assert_allclose(a.varm["scglmm_coef"].to_numpy()[kept], b.varm["scglmm_coef"].to_numpy()[kept])
    np.testing.assert_allclose(a.varm["scglmm_pval"].to_numpy()[kept], b.varm["scglmm_pval"].to_numpy()[kept])


@pytest.mark.parametrize(("kw", "match"), [({"min_cells": -1}, "min_cells"), ({"min_donors": 1.5}, "min_donors")])
def test_filter_bad_values(kw, match):
    a = _data()
    with pytest.raises(ValueError, match=match):
        scglmm.tl.fit(a, FORMULA, size_factors="libsize", progress=False, **kw)
    assert "scglmm" not in a.uns


def test_everything_filtered_still_writes_rows():
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, min_cells=10_000)
    assert (a.varm["scglmm_fit"]["status"] == "filtered").all()
    assert np.isnan(a.varm["scglmm_coef"].to_numpy()).all()
