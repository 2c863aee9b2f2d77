"""Hard genes never stop a run: each is fitted, or flagged with a status and NaN where no number can be trusted.

Contract tested here (``fit_genes`` and ``tl.fit``):

* no exception for any gene;
* a gene whose status is ``ok`` has finite coefficients, standard errors, log-likelihood,
  ``sigma2 >= 0`` and ``theta > 0``;
* NaN appears only in genes whose status is not ``ok``;
* a gene absent in one condition (complete separation) is flagged ``separation`` with NaN
  coefficients and p-values, never a huge log fold change with a tiny p-value;
* ``tl.fit`` emits at most one warning per run, counting genes by status.
"""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scglmm
from scglmm._core._status import ALL_ZERO, FILTERED, NOT_CONVERGED, POISSON_LIMIT, SEPARATION, SIGMA2_BOUNDARY
from scglmm.tl._report import MAX_GROUPS_NAMED, StatusSummary, log_text, status_summary, warning_text

M, C = 6, 30  # donors, cells per donor
N = M * C
DONOR = np.repeat([f"D{i}" for i in range(M)], C)
STIM_DONOR = (np.arange(N) // C >= M // 2).astype(float)  # donors D3-D5 are stimulated
STIM_CELL = (np.arange(N) % 2).astype(float)  # every donor has both conditions (paired)


def _offset(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log(rng.lognormal(np.log(5000.0), 0.3, N))


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: float) -> np.ndarray:
    return rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float64)


def _design(paired: bool) -> np.ndarray:
    return np.column_stack([np.ones(N), STIM_CELL if paired else STIM_DONOR])


def _fit(Y: np.ndarray, *, paired: bool = False, offset: np.ndarray | None = None, **kw) -> scglmm.GenesFit:
    off = _offset() if offset is None else offset
    return scglmm.fit_genes(Y, _design(paired), DONOR, off, coef_names=["Intercept", "stim"], **kw)


def assert_contract(res: scglmm.GenesFit) -> None:
    """Finite where ok; NaN only with a status other than ok."""
    ok = res.status == 0
    for name in ("coef", "se"):
        arr = getattr(res, name)
        assert np.all(np.isfinite(arr[ok])), f"{name} not finite for an 'ok' gene"
    assert np.all(np.isfinite(res.loglik[ok]))
    assert np.all(res.sigma2[ok] >= 0) and np.all(np.isfinite(res.sigma2[ok]))
    assert np.all(res.theta[ok] > 0)
    nan_any = (
        np.isnan(res.coef).any(1)
        | np.isnan(res.se).any(1)
        | np.isnan(res.sigma2)
        | np.isnan(res.theta)
        | np.isnan(res.loglik)
    )
    assert not np.any(nan_any & ok), "NaN in a gene whose status is 'ok'"
    pv = res.p_value
    assert np.all((pv[ok] >= 0) & (pv[ok] <= 1))


# ------------------------------------------------------------------------------------------------
# gene by gene through fit_genes
# ------------------------------------------------------------------------------------------------
def test_all_zero_gene() -> None:
    rng = np.random.default_rng(1)
    Y = np.column_stack([np.zeros(N), _nb(rng, 2e-4 * np.exp(_offset()), 2.0)])
    res = _fit(Y)
    assert_contract(res)
    assert res.status_str[0] == "all_zero"
    assert np.all(np.isnan(res.coef[0])) and np.all(np.isnan(res.p_value[0]))
    assert res.n_nonzero[0] == 0
    assert res.status_str[1] in ("ok", "sigma2_boundary", "poisson_limit", "sigma2_boundary+poisson_limit")


def test_one_nonzero_cell_intercept_only_is_exact() -> None:
    """One count of 1 among 180 cells, intercept only: the ML intercept is -log(sum exp(offset))."""
    off = _offset()
    y = np.zeros(N)
    y[7] = 1.0
    res = scglmm.fit_genes(y[:, None], np.ones((N, 1)), DONOR, off)
    assert_contract(res)
    st = res.status_str[0]
    assert "sigma2_boundary" in st and "poisson_limit" in st, st
    np.testing.assert_allclose(res.coef[0, 0], -np.log(np.exp(off).sum()), atol=1e-4)
    np.testing.assert_allclose(res.se[0, 0], 1.0, atol=1e-3)  # Poisson: se of log(rate) = 1/sqrt(count)


@pytest.mark.parametrize("paired", [False, True], ids=["donor_level", "paired"])
def test_one_nonzero_cell_with_condition_is_flagged(paired: bool) -> None:
    y = np.zeros(N)
    y[7] = 3.0  # a ctrl cell in both designs (cell 7: donor D0, odd index -> stim in the paired design)
    y[6] = 0.0
    res = _fit(y[:, None], paired=paired, separation="limit")
    assert_contract(res)
    assert "separation" in res.status_str[0]
    # the condition effect diverges (no counts in the stim cells): NaN; since issue 14 the rest of
    # the model is estimated without those cells (status partial_separation)
    assert np.isnan(res.coef[0, 1]) and np.isnan(res.p_value[0, 1])
    # by default (issue 19) the gene is refitted with the weak prior: finite, flagged, not significant
    res = _fit(y[:, None], paired=paired)
    assert_contract(res)
    assert res.status_str[0].startswith("penalised")
    sign = 1.0 if _design(paired)[7, 1] == 1 else -1.0  # towards the side of the one count
    assert sign * res.coef[0, 1] > 0 and np.isfinite(res.p_value[0, 1]) and res.p_value[0, 1] > 0.05


def _switched_off(paired: bool, absent: str) -> np.ndarray:
    rng = np.random.default_rng(2)
    stim = _design(paired)[:, 1]
    Y = np.column_stack([_nb(rng, 4e-4 * np.exp(_offset()), th) for th in (0.5, 2.0, 20.0)])
    Y[(stim == 1) if absent == "stim" else (stim == 0)] = 0
    return Y


@pytest.mark.parametrize("paired", [False, True], ids=["donor_level", "paired"])
@pytest.mark.parametrize("absent", ["stim", "ctrl"])
def test_absent_in_one_condition_is_separation(paired: bool, absent: str) -> None:
    Y = _switched_off(paired, absent)
    res = _fit(Y, paired=paired, separation="limit")
    assert_contract(res)
    for g in range(Y.shape[1]):
        assert "separation" in res.status_str[g], (g, res.status_str[g], res.coef[g])
        assert np.isnan(res.coef[g, 1]) and np.isnan(res.p_value[g, 1])


@pytest.mark.parametrize("paired", [False, True], ids=["donor_level", "paired"])
@pytest.mark.parametrize("absent", ["stim", "ctrl"])
def test_absent_in_one_condition_gets_a_penalised_effect(paired: bool, absent: str) -> None:
    Y = _switched_off(paired, absent)
    res = _fit(Y, paired=paired)
    assert_contract(res)
    sign = -1.0 if absent == "stim" else 1.0
    for g in range(Y.shape[1]):
        assert res.status_str[g].startswith("penalised"), (g, res.status_str[g])
        assert np.all(np.isfinite(res.coef[g])) and 2.0 < sign * res.coef[g, 1] < 12.0
        assert np.isfinite(res.p_value[g, 1])


def test_nearly_absent_in_one_condition_is_a_large_but_honest_effect() -> None:
    """One count in the stim cells: not separation; a large negative effect with a matching SE."""
    rng = np.random.default_rng(3)
    y = _nb(rng, 4e-4 * np.exp(_offset()), 2.0)
    y[STIM_CELL == 1] = 0
    y[1] = 1.0
    res = _fit(y[:, None], paired=True)
    assert_contract(res)
    assert "separation" not in res.status_str[0]
    assert -9.0 < res.coef[0, 1] < -3.0
    assert 0.5 < res.se[0, 1] < 2.0  # one count: the SE of the log ratio is about 1


def test_absent_in_one_condition_and_present_in_one_donor_is_separation() -> None:
    rng = np.random.default_rng(2)
    mu = 2e-4 * np.exp(_offset())
    y = np.zeros(N)
    y[:C] = _nb(rng, mu[:C], 2.0)  # only donor D0 (ctrl) expresses it: stim is all zero
    res = _fit(y[:, None], paired=False, separation="limit")
    assert_contract(res)
    assert "separation" in res.status_str[0], (res.status_str[0], res.coef[0], res.sigma2[0])
    res = _fit(y[:, None], paired=False)  # the default: a bounded donor variance and a finite effect
    assert res.status_str[0].startswith("penalised") and res.sigma2[0] < 16.0
    assert np.all(np.isfinite(res.coef[0]))


def test_counts_in_one_donor_only_is_flagged() -> None:
    rng = np.random.default_rng(2)
    mu = 2e-4 * np.exp(_offset())
    y = np.zeros(N)
    y[:C] = _nb(rng, mu[:C], 2.0)
    res = _fit(y[:, None], paired=True)
    assert_contract(res)
    assert res.status_str[0] != "ok", (res.coef[0], res.sigma2[0])


def test_counts_in_one_donor_only_never_claims_significance() -> None:
    """Whatever the status, a gene seen in one donor only must not get a tiny p-value for the condition."""
    rng = np.random.default_rng(0)
    mu = 2e-4 * np.exp(_offset())
    Y = np.zeros((N, 3))
    for g in range(3):
        Y[g * C : (g + 1) * C, g] = _nb(rng, mu[g * C : (g + 1) * C], 2.0)
    res = _fit(Y, paired=True)
    assert_contract(res)
    pv = res.p_value[:, 1]
    assert np.all(np.isnan(pv) | (pv > 0.05)), pv


def test_huge_counts() -> None:
    """About 1e5 counts per cell: fitted, with the mean and dispersion recovered."""
    rng = np.random.default_rng(4)
    off = np.zeros(N)
    b = rng.normal(0.0, 0.3, M)
    mu = 1e5 * np.exp(np.repeat(b, C) + 0.4 * STIM_CELL)
    Y = np.column_stack([_nb(rng, mu, 5.0), rng.poisson(mu).astype(float), np.full(N, 1e5)])
    res = _fit(Y, paired=True, offset=off)
    assert_contract(res)
    assert res.status_str[0] == "ok"
    np.testing.assert_allclose(res.coef[0], [np.log(1e5) + b.mean(), 0.4], atol=0.35)
    assert 3.5 < res.theta[0] < 7.0
    assert "not_converged" not in res.status_str[1]
    np.testing.assert_allclose(res.coef[1, 1], 0.4, atol=0.01)
    assert res.status_str[2] == "sigma2_boundary+poisson_limit"  # a constant gene: no variance at all
    np.testing.assert_allclose(res.coef[2], [np.log(1e5), 0.0], atol=1e-6)


def test_sigma2_boundary_reports_zero_and_finite_se() -> None:
    rng = np.random.default_rng(5)
    mu = 1e-3 * np.exp(_offset())  # about 5 per cell, no donor effect at all
    Y = np.column_stack([_nb(rng, mu, 3.0) for _ in range(12)])
    res = _fit(Y, paired=True)
    assert_contract(res)
    bound = np.array(["sigma2_boundary" in s for s in res.status_str])
    assert bound.sum() >= 6  # most genes sit on the boundary
    assert np.all(res.sigma2[bound] == 0.0)
    assert np.all(np.isfinite(res.se[bound])) and np.all(res.se[bound] > 0)
    assert np.all(res.modes[bound] == pytest.approx(0.0, abs=1e-6))


def test_poisson_limit_reports_zero_dispersion() -> None:
    rng = np.random.default_rng(6)
    b = rng.normal(0.0, 0.5, M)
    mu = 1e-3 * np.exp(_offset() + np.repeat(b, C))
    Y = rng.poisson(np.tile(mu[:, None], (1, 20))).astype(float)
    res = _fit(Y, paired=True)
    assert_contract(res)
    lim = np.array(["poisson_limit" in s for s in res.status_str])
    assert lim.sum() >= 5
    assert np.all(res.dispersion[lim] == 0.0) and np.all(np.isinf(res.theta[lim]))
    assert np.all(np.isfinite(res.se[lim]))
    # the rest are not far from Poisson either
    assert np.all(res.dispersion[~lim & (res.status == 0)] < 0.2)
    assert not any("not_converged" in s for s in res.status_str)


def _poisson_recipe() -> tuple[np.ndarray, np.ndarray]:
    """The exact draws that produced the failing gene (seed 0, paired design, 6 x 30 cells)."""
    rng = np.random.default_rng(0)
    off = np.log(rng.lognormal(np.log(5000), 0.3, N))
    mu = np.exp(np.log(2 / 5000) + off)

    def nb(m: np.ndarray, th: float) -> np.ndarray:
        return rng.poisson(rng.gamma(th, m / th))

    nb(mu[:C], 2)  # seven genes drawn before it, kept so the stream of random numbers is the same
    nb(mu[:C], 2)
    nb(mu[: 2 * C], 2)
    nb(mu, 2)
    nb(mu, 2)
    nb(mu * 5e4, 5)
    rng.poisson(mu * 5e4)
    return rng.poisson(mu * 3).astype(float), off


def test_poisson_recipe_is_reproduced() -> None:
    y, off = _poisson_recipe()
    assert y.sum() == 1147  # the draws the test below was written for


def test_poisson_gene_without_donor_effect_converges() -> None:
    y, off = _poisson_recipe()
    res = scglmm.fit_genes(y[:, None], _design(True), DONOR, off)
    assert_contract(res)
    assert "not_converged" not in res.status_str[0], (res.status_str[0], res.theta[0], res.n_iter[0])


def test_huge_poisson_gene_converges() -> None:
    """Found by test_properties.py (pattern 'huge'); stored in tests/data/hard_gene_huge_poisson.npz.

    67 cells with counts up to 345,604: it ran to maxit = 200 and ended 'not_converged' before the
    convergence test was made relative to the scale of the log-likelihood.
    """
    from pathlib import Path

    z = np.load(Path(__file__).parent / "data" / "hard_gene_huge_poisson.npz")
    res = scglmm.fit_genes(z["y"][:, None], z["X"], z["donor"], z["offset"])
    status, n_iter = res.status_str[0], int(res.n_iter[0])
    assert "not_converged" not in status, (status, n_iter)
    assert n_iter < 150, n_iter


@pytest.mark.parametrize("mean", [1e4, 1e5])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_large_mean_poisson_genes_converge(seed: int, mean: float) -> None:
    rng = np.random.default_rng(seed)
    y = rng.poisson(mean * np.exp(_offset() - np.log(5000.0))).astype(float)
    res = _fit(y[:, None], paired=True)
    assert_contract(res)
    assert "not_converged" not in res.status_str[0], (res.status_str[0], res.n_iter[0], res.theta[0])
    np.testing.assert_allclose(res.coef[0, 0], np.log(mean / 5000.0), atol=0.01)


def test_single_cell_burst_is_flagged_or_finite() -> None:
    """One cell with 1e6 counts, or bursts of 1000 in one cell per donor."""
    y1 = np.zeros(N)
    y1[0] = 1e6
    y2 = np.zeros(N)
    y2[::C] = 1000.0
    y3 = np.zeros(N)
    y3[::7] = 1.0
    y3[3] = 5e4
    res = _fit(np.column_stack([y1, y2, y3]), paired=True)
    assert_contract(res)
    assert res.status_str[0] != "ok"


def test_batch_of_hard_genes_n_jobs_identical() -> None:
    """All the cases in one matrix: no exception, contract holds, n_jobs and block_size change nothing."""
    Y = _hard_matrix()
    r1 = _fit(Y, paired=True, n_jobs=1, block_size=3)
    r2 = _fit(Y, paired=True, n_jobs=2, block_size=5)
    assert_contract(r1)
    np.testing.assert_array_equal(r1.status, r2.status)
    np.testing.assert_array_equal(r1.coef, r2.coef)
    np.testing.assert_array_equal(r1.se, r2.se)


def _hard_matrix() -> np.ndarray:
    rng = np.random.default_rng(7)
    mu = 5e-4 * np.exp(_offset())
    cols = [np.zeros(N)]
    y = np.zeros(N)
    y[5] = 2
    cols.append(y)
    y = np.zeros(N)
    y[:C] = _nb(rng, mu[:C], 2.0)
    cols.append(y)
    y = _nb(rng, mu, 2.0)
    y[STIM_CELL == 1] = 0
    cols.append(y)
    cols.append(_nb(rng, mu * 4e3, 5.0))  # ~10^4 per cell (1e5 is test_huge_counts; slower per iteration)
    cols.append(rng.poisson(mu).astype(float))
    cols += [_nb(rng, mu * np.exp(np.repeat(rng.normal(0, 0.5, M), C)), 2.0) for _ in range(6)]
    return np.column_stack(cols)


# ------------------------------------------------------------------------------------------------
# through tl.fit: no exception, one warning per run
# ------------------------------------------------------------------------------------------------
def _hard_adata() -> ad.AnnData:
    Y = _hard_matrix()
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(DONOR),
            "condition": pd.Categorical(np.where(STIM_CELL == 1, "stim", "ctrl")),
        },
        index=[f"c{i}" for i in range(N)],
    )
    a = ad.AnnData(Y, obs=obs)
    a.var_names = [
        "all_zero",
        "one_cell",
        "one_donor",
        "absent_stim",
        "huge",
        "poisson",
        *[f"nb{i}" for i in range(6)],
    ]
    a.obs["sf"] = np.exp(_offset())
    return a


def test_tl_fit_hard_genes_one_warning() -> None:
    a = _hard_adata()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        scglmm.tl.fit(
            a, "~ condition + (1 | donor)", size_factors="sf", min_cells=0, min_donors=0, n_jobs=1, separation="limit"
        )
    ours = [w for w in rec if "genes have no estimate" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    assert len(rec) == 1, [str(w.message) for w in rec]
    msg = str(ours[0].message)
    assert "all_zero: 1" in msg and "separation" in msg and "all_zero" in msg
    fit = a.varm["scglmm_fit"]
    assert fit.loc["all_zero", "status"] == "all_zero"
    assert "separation" in fit.loc["absent_stim", "status"]
    coef = a.varm["scglmm_coef"]
    pval = a.varm["scglmm_pval"]
    ok = fit["status"] == "ok"
    assert np.all(np.isfinite(coef[ok].to_numpy())) and np.all(np.isfinite(pval[ok].to_numpy()))
    assert np.isnan(pval.loc["absent_stim", "condition[T.stim]"])  # the intercept is estimated (issue 14)
    assert list(a.var["scglmm_status"]) == list(fit["status"])


def test_tl_fit_default_filter_flags_instead_of_fitting() -> None:
    """With the default gene filter the hopeless genes are 'filtered' (kept, NaN), not counted in the warning."""
    a = _hard_adata()
    with pytest.warns(UserWarning, match=r"1 of 12 genes have no estimate \(NaN; e.g. \['absent_stim'\]\)") as rec:
        scglmm.tl.fit(a, "~ condition + (1 | donor)", size_factors="sf", n_jobs=1, separation="limit")
    assert len(rec) == 1
    fit = a.varm["scglmm_fit"]
    assert fit.loc[["all_zero", "one_cell", "one_donor"], "status"].tolist() == ["filtered"] * 3
    assert a.varm["scglmm_coef"].loc[["all_zero", "one_cell", "one_donor"]].isna().all().all()
    assert a.n_vars == 12 and len(fit) == 12  # no row vanished


def test_tl_fit_no_warning_when_all_genes_estimable() -> None:
    a = _hard_adata()[:, [f"nb{i}" for i in range(6)]].copy()
    scglmm.tl.fit(a, "~ condition + (1 | donor)", size_factors="sf", n_jobs=1)  # would raise on any warning
    assert a.varm["scglmm_coef"].notna().all().all()


def test_tl_fit_groupby_warns_once_per_run() -> None:
    """With groupby, one summary warning for the whole run, naming each group with NaN genes."""
    a = _hard_adata()
    a.obs["cell_type"] = pd.Categorical(np.where(np.arange(N) % 3 == 0, "B", "A"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        scglmm.tl.fit(
            a,
            "~ condition + (1 | donor)",
            size_factors="sf",
            groupby="cell_type",
            min_cells_group=5,
            min_cells=0,
            min_donors=0,
            n_jobs=1,
        )
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1, msgs  # groups A and B each have NaN genes (all_zero, separation)
    assert "[A]" in msgs[0] and "[B]" in msgs[0]
    assert msgs[0].startswith("2 groups have genes without an estimate")
    for g in ("A", "B"):
        assert a.varm[f"scglmm:{g}_fit"].loc["all_zero", "status"] == "all_zero"


# ------------------------------------------------------------------------------------------------
# what tl.fit reports (issue 14): one short INFO summary (a table per group), at most one short
# warning; boundary estimates (sigma2_boundary, poisson_limit) are valid and not counted
# ------------------------------------------------------------------------------------------------


def _fit_logged(a, caplog, **kwargs) -> tuple[list[str], list[str]]:
    """The INFO messages of the scglmm logger and the warnings of one tl.fit call."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scglmm"), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        scglmm.tl.fit(a, "~ condition + (1 | donor)", size_factors="sf", n_jobs=1, progress=False, **kwargs)
    return [r.getMessage() for r in caplog.records], [str(w.message) for w in rec]


def test_the_summary_follows_scanpy_verbosity(small_info_adata, capsys):
    """In Python the summary is shown where scanpy shows its messages, with sc.settings.verbosity = 'info'."""
    import sys

    import scanpy as sc

    saved, saved_file = sc.settings.verbosity, sc.settings.logfile
    sc.settings.logfile = sys.stderr  # scanpy writes to the stream it was given: this test's captured one
    try:
        for verbosity, shown in (("warning", False), ("info", True)):
            sc.settings.verbosity = verbosity
            scglmm.tl.fit(small_info_adata.copy(), "~ condition + (1 | donor)", size_factors="sf", progress=False)
            err = capsys.readouterr().err
            assert ("scglmm fit: 6 genes: 6 fitted, 0 filtered; of the fitted, 0 without" in err) == shown, err
    finally:
        sc.settings.verbosity, sc.settings.logfile = saved, saved_file


@pytest.fixture
def small_info_adata():
    return _hard_adata()[:, [f"nb{i}" for i in range(6)]].copy()


def test_boundary_estimates_are_not_counted_as_problems():
    codes = np.array([0, SIGMA2_BOUNDARY, POISSON_LIMIT, SIGMA2_BOUNDARY | POISSON_LIMIT, NOT_CONVERGED,
                      SEPARATION | SIGMA2_BOUNDARY, ALL_ZERO, FILTERED])  # fmt: skip
    coef = np.ones((codes.size, 2))
    coef[5:] = np.nan
    s = status_summary(codes, coef, pd.Index([f"g{i}" for i in range(codes.size)]), n_cells=10, n_donors=4)
    assert (s.n_genes, s.n_filtered, s.n_fitted) == (8, 1, 7)
    assert s.n_no_estimate == 2 and s.no_estimate == {"separation": 1, "all_zero": 1}
    assert s.n_not_converged == 1
    assert s.examples == ["g5", "g6"]
    text = log_text({"": s}, key="k", groupby=None, min_cells=3, min_donors=2)
    assert "1 filtered (fewer than min_cells=3 cells or min_donors=2 donors with counts)" in text
    assert "of the fitted, 2 without an estimate (separation: 1, all_zero: 1) and 1 not converged (need" in text
    assert "; 3 at a boundary (a variance at 0, a correlation at +-1 or the Poisson limit: valid estimates" in text
    assert "sigma2_boundary" not in text and "poisson_limit" not in text and "not 'ok'" not in text


def test_one_summary_line_and_no_warning_when_every_gene_is_estimated(caplog):
    a = _hard_adata()[:, [f"nb{i}" for i in range(6)]].copy()
    infos, warns = _fit_logged(a, caplog)
    assert warns == []
    summary = [m for m in infos if m.startswith("scglmm fit: 6 genes")]
    assert len(summary) == 1 and "0 without an estimate" in summary[0]
    assert not any("not 'ok'" in m or "sigma2_boundary" in m for m in infos)


def test_groupby_one_short_warning_and_one_table(caplog):
    a = _hard_adata()
    a.obs["cell_type"] = pd.Categorical(np.where(np.arange(N) % 3 == 0, "B", "A"))
    infos, warns = _fit_logged(
        a, caplog, groupby="cell_type", min_cells_group=5, min_cells=0, min_donors=0, separation="limit"
    )
    assert len(warns) == 1 and len(warns[0]) < 400, warns
    assert warns[0].startswith("2 groups have genes without an estimate (NaN): [A] ")
    tables = [m for m in infos if m.startswith("scglmm fit by cell_type: 2 groups")]
    assert len(tables) == 1
    lines = tables[0].splitlines()
    assert lines[1].split() == [
        "cell_type",
        "cells",
        "donors",
        "fitted",
        "filtered",
        "no",
        "estimate",
        "not",
        "converged",
        "penalised",
        "at",
        "a",
        "boundary",
    ]
    for line, g in zip(lines[2:], ("A", "B"), strict=True):
        fit = a.varm[f"scglmm:{g}_fit"]
        no_est = int(
            fit["coef" if "coef" in fit else "status"].pipe(lambda s: s.str.contains("separation|all_zero")).sum()
        )
        assert line.split()[0] == g and int(line.split()[5]) == no_est
    assert not any("sigma2_boundary" in m for m in infos + warns)


def test_warning_names_a_few_groups_only():
    examples = ["GENE1", "GENE2", "GENE3", "GENE4", "GENE5"]
    s = StatusSummary(7583, 500, 8, 100, {"separation": 40}, n_no_estimate=40, n_not_converged=2, examples=examples)
    summaries = {f"cell type {i}": s for i in range(14)}
    text = warning_text(summaries, key="scglmm", groupby="cell_type")
    assert text is not None and len(text) < 500
    assert text.startswith("14 groups have genes without an estimate")
    assert f"and {14 - MAX_GROUPS_NAMED} more" in text and "GENE1" not in text
    assert "separation: 560" in text
    table = log_text(summaries, key="scglmm", groupby="cell_type", min_cells=3, min_donors=2)
    assert len(table.splitlines()) == 2 + 14


@pytest.mark.parametrize("groupby", [None, "cell_type"])
def test_no_warning_text_without_genes_lacking_an_estimate(groupby):
    s = StatusSummary(10, 50, 4, 0, {}, 0, 3, [])
    assert warning_text({"": s} if groupby is None else {"A": s, "B": s}, key="k", groupby=groupby) is None


def test_the_fit_warning_points_at_the_user_line():
    """The one summary warning is located at the caller's line (this file), not inside scglmm."""
    a = _hard_adata()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        scglmm.tl.fit(
            a, "~ condition + (1 | donor)", size_factors="sf", min_cells=0, min_donors=0, n_jobs=1, separation="limit"
        )
    ours = [w for w in rec if "genes have no estimate" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__


def test_status_kinds_separate_information_from_attention():
    from scglmm._core._status import CORRELATION_BOUNDARY, PARTIAL_SEPARATION, status_kinds

    codes = np.array([0, SIGMA2_BOUNDARY, POISSON_LIMIT | CORRELATION_BOUNDARY, NOT_CONVERGED,
                      SEPARATION | SIGMA2_BOUNDARY, PARTIAL_SEPARATION | POISSON_LIMIT, ALL_ZERO,
                      FILTERED])  # fmt: skip
    kinds = list(status_kinds(codes))
    assert kinds == ["ok", "boundary", "boundary", "attention", "attention", "attention", "attention", "filtered"]
