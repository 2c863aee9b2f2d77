"""A coefficient that runs to infinity does not take the gene's other estimates with it (issue 14).

These tests take ``separation="limit"``: the maximum-likelihood limits. The default (``"prior"``)
refits such genes with weak priors (``tests/test_penalised.py``).

A level of a factor whose cells all have zero counts (a donor without counts of the gene, in
``~ donor + condition + (1 | sample)``) sends its coefficient to minus infinity; its cells then
drop out of the likelihood. The other estimates are those of the model without those cells and
that column: here they are checked against exactly that fit, made by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scglmm
from scglmm._core._status import PARTIAL_SEPARATION, SEPARATION

NAMES = ["Intercept", "donor[T.D1]", "donor[T.D2]", "donor[T.D3]", "condition[T.stim]"]


def _paired(seed: int = 3, n_genes: int = 4):
    """4 donors x 2 conditions x 60 cells; samples (donor x condition) are the random effect."""
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"D{i}" for i in range(4)], 120)
    cond = np.tile(np.repeat([0.0, 1.0], 60), 4)
    sample = np.array([f"{d}_{int(c)}" for d, c in zip(donors, cond, strict=True)])
    X = np.column_stack([np.ones(480), *((donors == f"D{i}").astype(float) for i in range(1, 4)), cond])
    off = np.log(rng.uniform(2000, 6000, 480))
    mu = np.exp(-6.0 + off + 0.8 * cond + rng.normal(0, 0.3, 8)[pd.factorize(sample, sort=True)[0]])
    Y = rng.negative_binomial(5, 5 / (5 + mu[:, None] * np.ones((1, n_genes)))).astype(float)
    return Y, X, donors, cond, sample, off


@pytest.fixture(scope="module")
def data():
    Y, X, donors, cond, sample, off = _paired()
    Y[donors == "D2", 0] = 0  # gene 0: donor D2 has no counts
    Y[cond == 1, 1] = 0  # gene 1: the stimulated cells have no counts
    Y[donors != "D0", 2] = 0  # gene 2: counts in donor D0 only
    return Y, X, donors, cond, sample, off


@pytest.fixture(scope="module")
def fit(data):
    Y, X, donors, cond, sample, off = data
    return scglmm.fit_genes(Y, X, sample, off, coef_names=NAMES, separation="limit")


def test_donor_without_counts_keeps_the_condition_effect(data, fit):
    Y, X, donors, cond, sample, off = data
    assert fit.status[0] & PARTIAL_SEPARATION and not fit.status[0] & SEPARATION
    assert np.isnan(fit.coef[0, 2]) and np.isnan(fit.se[0, 2])
    assert np.all(np.isnan(fit.cov[0, 2, :])) and np.all(np.isnan(fit.cov[0, :, 2]))
    # the same numbers as the model fitted without D2's cells and without its column
    keep = donors != "D2"
    cols = [0, 1, 3, 4]
    ref = scglmm.fit_genes(Y[keep][:, :1], X[keep][:, cols], sample[keep], off[keep], separation="limit")
    np.testing.assert_allclose(fit.coef[0, cols], ref.coef[0], rtol=1e-12)
    np.testing.assert_allclose(fit.se[0, cols], ref.se[0], rtol=1e-12)
    np.testing.assert_allclose(fit.cov[0][np.ix_(cols, cols)], ref.cov[0], rtol=1e-12)
    np.testing.assert_allclose(fit.loglik[0], ref.loglik[0], rtol=1e-13)
    assert fit.sigma2[0] == ref.sigma2[0] and fit.theta[0] == ref.theta[0]
    # D2's samples have no cells left: their modes are 0; the others are the reduced fit's
    levels = list(fit.donors)
    for s, m in zip(ref.donors, ref.modes[0], strict=True):
        assert fit.modes[0, levels.index(s)] == m
    assert fit.modes[0, levels.index("D2_0")] == 0.0 and fit.modes[0, levels.index("D2_1")] == 0.0
    assert np.isfinite(fit.p_value[0, 4]) and fit.status_str[0].startswith("partial_separation")


def test_condition_without_counts_leaves_no_sample_variance(fit):
    # without the stimulated cells each donor keeps one sample, whose level its donor effect fits
    # exactly: the sample variance has no information left, so nothing is reported
    assert fit.status[1] & SEPARATION and not fit.status[1] & PARTIAL_SEPARATION
    assert np.all(np.isnan(fit.coef[1]))


def test_condition_without_counts_is_nan_and_the_rest_estimated(data):
    Y, X, donors, cond, sample, off = data
    res = scglmm.fit_genes(
        Y[:, 1:2], X[:, [0, 4]], donors, off, coef_names=["Intercept", "stim"], separation="limit"
    )  # (1 | donor)
    assert res.status[0] & PARTIAL_SEPARATION
    assert np.isnan(res.coef[0, 1]) and np.isfinite(res.coef[0, 0]) and res.sigma2[0] >= 0


def test_counts_in_one_donor_only_stay_separated(fit):
    # dropping D1..D3 leaves one donor's two samples, whose levels the intercept and the condition
    # fit exactly: a condition effect from one donor, with no sample variance, is not reported
    assert fit.status[2] & SEPARATION and not fit.status[2] & PARTIAL_SEPARATION
    assert np.all(np.isnan(fit.coef[2]))


def test_reduced_model_with_one_donor_keeps_separation():
    Y, X, donors, cond, sample, off = _paired(n_genes=1)
    Y[donors != "D0", 0] = 0
    res = scglmm.fit_genes(Y, X, donors, off, coef_names=NAMES, separation="limit")  # donors as the random effect
    assert res.status[0] & SEPARATION and not res.status[0] & PARTIAL_SEPARATION
    assert np.all(np.isnan(res.coef[0]))


def test_untouched_genes_and_input_formats(data, fit):
    Y, X, donors, cond, sample, off = data
    assert fit.status[3] & (PARTIAL_SEPARATION | SEPARATION) == 0
    for mat in (sparse.csr_matrix(Y), sparse.csc_matrix(Y)):
        other = scglmm.fit_genes(mat, X, sample, off, coef_names=NAMES, n_jobs=2, block_size=1, separation="limit")
        np.testing.assert_array_equal(other.status, fit.status)
        np.testing.assert_array_equal(other.coef, fit.coef)
        np.testing.assert_array_equal(other.modes, fit.modes)


def test_through_tl_fit(data):
    Y, X, donors, cond, sample, off = data
    import anndata as ad

    obs = pd.DataFrame(
        {"donor": donors, "condition": np.where(cond == 1, "stim", "ctrl"), "sample": sample, "lib": np.exp(off)},
        index=[f"c{i}" for i in range(len(donors))],
    )
    adata = ad.AnnData(X=sparse.csr_matrix(Y), obs=obs)
    with pytest.warns(UserWarning, match="partial_separation"):  # genes with some coefficients NaN
        scglmm.tl.fit(
            adata,
            "~ donor + condition + (1 | sample)",
            size_factors="lib",
            min_cells=0,
            min_donors=0,
            separation="limit",
        )
    res = scglmm.get.results(adata, "condition")
    assert np.isfinite(res["p_value"].iloc[0])
    assert res["status"].iloc[0].startswith("partial_separation")
    assert np.isnan(res["p_value"].iloc[1])


# ---- separation the optimiser finds (no single column separates before it starts) ----------------


def test_reference_donor_without_counts_keeps_the_condition_effect():
    """The first donor (the intercept's level) without counts: the intercept runs to minus infinity
    and every donor effect to plus infinity, while the condition effect is that of the other donors."""
    Y, X, donors, cond, sample, off = _paired(seed=5, n_genes=1)
    Y[donors == "D0", 0] = 0
    fit = scglmm.fit_genes(Y, X, sample, off, coef_names=NAMES, separation="limit")
    assert fit.status[0] & PARTIAL_SEPARATION and not fit.status[0] & SEPARATION
    assert np.all(np.isnan(fit.coef[0, :4])) and np.all(np.isnan(fit.se[0, :4]))
    # on D1..D3 the intercept is D1 + D2 + D3: the model is the one with columns Intercept, D1, D2, condition
    keep = donors != "D0"
    ref = scglmm.fit_genes(Y[keep], X[keep][:, [0, 1, 2, 4]], sample[keep], off[keep], separation="limit")
    assert fit.coef[0, 4] == ref.coef[0, 3] and fit.se[0, 4] == ref.se[0, 3]
    assert fit.cov[0, 4, 4] == ref.cov[0, 3, 3] and np.isnan(fit.cov[0, 0, 4])
    assert fit.sigma2[0] == ref.sigma2[0] and fit.theta[0] == ref.theta[0] and fit.loglik[0] == ref.loglik[0]
    assert abs(fit.coef[0, 4] - 0.8) < 0.3


def test_reference_level_of_the_condition_without_counts_has_no_intercept():
    """Every control cell without counts: the intercept (the control level) runs to minus infinity too,
    so it is NaN, not the stimulated level; a cell-level covariate is still estimated."""
    Y, X, donors, cond, sample, off = _paired(seed=6, n_genes=1)
    x = np.random.default_rng(1).normal(size=cond.size)
    Y[cond == 0, 0] = 0
    Xc = np.column_stack([np.ones(cond.size), cond, x])
    fit = scglmm.fit_genes(Y, Xc, donors, off, coef_names=["Intercept", "stim", "x"], separation="limit")
    assert fit.status[0] & PARTIAL_SEPARATION
    assert np.isnan(fit.coef[0, 0]) and np.isnan(fit.coef[0, 1])
    keep = cond == 1
    ref = scglmm.fit_genes(Y[keep], Xc[keep][:, [0, 2]], donors[keep], off[keep], separation="limit")
    assert fit.coef[0, 2] == ref.coef[0, 1] and fit.se[0, 2] == ref.se[0, 1]


def test_vanishing_rows_of_a_design():
    from scglmm._core._separation import _vanishing

    # distinct rows of ~ donor + condition, 3 donors x 2 conditions (D0 is the reference)
    U = np.array([[1, d1, d2, c] for d1, d2 in ((0, 0), (1, 0), (0, 1)) for c in (0, 1)], dtype=float)
    cases = {
        (0, 0, 1, 1, 1, 1): (1, 1, 0, 0, 0, 0),  # the reference donor
        (1, 1, 0, 0, 1, 1): (0, 0, 1, 1, 0, 0),  # another donor
        (1, 0, 0, 0, 1, 0): (0, 1, 1, 1, 0, 1),  # counts in the control cells of D0 and D2 only
        (0, 1, 1, 1, 1, 1): (0, 0, 0, 0, 0, 0),  # one sample without counts: its random effect takes it
    }
    for has, gone in cases.items():
        np.testing.assert_array_equal(_vanishing(U, np.array(has, dtype=bool)), np.array(gone, dtype=bool))


def _terms(sample: np.ndarray, batch: np.ndarray) -> list:
    """``(1 | sample) + (1 | batch)`` as terms (the general engine)."""
    out = []
    for name, labels in (("sample", sample), ("batch", batch)):
        codes, levels = pd.factorize(labels, sort=True)
        levels = np.asarray(levels, dtype=object)
        out.append(scglmm.RETerm(name, np.ones((labels.size, 1)), codes.astype(np.int64), levels, ("Intercept",)))
    return out


def test_every_structure_gets_the_separation_refit(data):
    """Two crossed terms (the general engine): a donor without counts keeps the other coefficients, whose
    numbers are those of the model fitted without its cells and column, as for a single random intercept."""
    Y, X, donors, cond, sample, off = data
    batch = np.array([f"B{i % 3}" for i in range(Y.shape[0])])
    fit = scglmm.fit_genes(Y[:, :1], X, _terms(sample, batch), off, coef_names=NAMES, separation="limit")
    assert fit.status[0] & PARTIAL_SEPARATION and not fit.status[0] & SEPARATION
    assert np.isnan(fit.coef[0, 2]) and np.all(np.isfinite(fit.coef[0, [0, 1, 3, 4]]))
    keep, cols = donors != "D2", [0, 1, 3, 4]
    ref = scglmm.fit_genes(
        Y[keep][:, :1], X[keep][:, cols], _terms(sample[keep], batch[keep]), off[keep], separation="limit"
    )
    np.testing.assert_array_equal(fit.coef[0, cols], ref.coef[0])
    np.testing.assert_array_equal(fit.se[0, cols], ref.se[0])
    np.testing.assert_array_equal(fit.varcomp[0], ref.varcomp[0])
    assert fit.varcomp_names == ["var(Intercept|sample)", "var(Intercept|batch)"]
    # D2's samples have no cells left: mode 0; every other level's mode is the reduced fit's
    names = list(fit.mode_names)
    for name, m in zip(ref.mode_names, ref.modes[0], strict=True):
        assert fit.modes[0, names.index(name)] == m
    assert fit.modes[0, names.index("sample[D2_0]:Intercept")] == 0.0
