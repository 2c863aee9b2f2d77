"""A fixed effect is tested on the levels of the random-intercept term it is constant within (issue 19, item 3).

A condition that varies within donors but is constant within samples, under ``(1 | donor/sample)``, gets
its information from the samples, compared within donors: t on ``donors - 1`` df (``"t"``), or the
empirical-Bayes prior of the sample variance (``"eb"``), instead of the normal reference. Checked on the
arrays (``level_design``: the design, df, ``k`` and the absorbed levels by hand), through ``tl.fit`` and
``tl.test`` (the same p-values), and on null data (the default test rejects about 5 %, the normal far more).
"""

from __future__ import annotations

import logging
import warnings
from functools import cache

import anndata as ad
import numpy as np
import pytest

import scglmm
from scglmm._core._inference import _between, level_design

STIM = "condition[T.stim]"


def _paired_codes(m: int = 6, cells: int = 5):
    """Cells of ``m`` donors x (ctrl, stim); donor codes, sample codes and the design (intercept, stim)."""
    donor = np.repeat(np.arange(m), 2 * cells)
    stim = np.tile(np.repeat([0.0, 1.0], cells), m)
    sample = 2 * donor + stim.astype(int)
    return donor, sample, np.column_stack([np.ones(donor.size), stim])


def test_paired_condition_is_tested_on_samples_within_donors() -> None:
    donor, sample, X = _paired_codes(m=6)
    lev = level_design(X, [donor, sample], np.array([0.0, 1.0]))
    assert lev is not None and lev.term == 1  # the samples: the condition varies within donors
    assert lev.design.shape == (12, 2 + 6) and lev.absorbed == 6  # + one indicator column per donor
    assert np.all(lev.mask) and np.all(lev.cells == 5)
    is_b, df, k = _between(np.array([0.0, 1.0, *np.zeros(6)]), lev.mask, lev.design)
    # a paired t test: 6 donor differences, 5 df; the mean difference has variance 2 sigma2 / 6
    assert is_b and df == 5
    np.testing.assert_allclose(k, 2.0 / 6.0, rtol=1e-12)


def test_donor_level_column_stays_on_donors_and_within_columns_on_none() -> None:
    donor, sample, X = _paired_codes(m=6)
    sex = (donor % 2).astype(float)
    Xs = np.column_stack([X, sex])
    lev = level_design(Xs, [donor, sample], np.array([0.0, 0.0, 1.0]))
    assert lev is not None and lev.term == 0 and lev.absorbed == 0 and lev.design.shape == (6, 3)
    cell_level = np.sin(np.arange(donor.size))
    assert level_design(np.column_stack([X, cell_level]), [donor, sample], np.array([0.0, 0.0, 1.0])) is None


@cache
def _nested_null() -> ad.AnnData:
    """Paired null data with a donor x condition (sample) effect per gene: 6 donors, 240 genes."""
    a = scglmm.datasets.simulate(
        n_donors=6, cells_per_donor=40, n_genes=240, paired=True, slope_sd=(0.0, 0.6), seed=11,
        sigma2_range=(0.0, 0.4), mean_range=(0.2, 5.0),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(a, "~ condition + (1 | donor/sample)", size_factors="libsize", progress=False, n_jobs=1)
    return a


def test_nested_fit_stores_the_level_term_and_test_follows() -> None:
    a = _nested_null()
    params = a.uns["scglmm"]["params"]
    assert params["level_terms"] == {"Intercept": "donor", STIM: "donor:sample"}
    name = scglmm.tl.test(a, "condition", key_added="eb_again")
    np.testing.assert_allclose(
        a.varm[f"scglmm_contrast_{name}"]["p_value"], a.varm["scglmm_pval"][STIM], rtol=1e-12, equal_nan=True
    )
    t = scglmm.tl.test(a, "condition", calibration="t", key_added="cond_t")
    assert np.all(a.varm[f"scglmm_contrast_{t}"]["df"].dropna() == 5)  # 6 donors - 1, as a paired t test


def test_nested_null_is_calibrated_and_the_normal_is_not() -> None:
    a = _nested_null()
    p_eb = a.varm["scglmm_pval"][STIM].dropna().to_numpy()
    z = scglmm.tl.test(a, "condition", calibration="z", key_added="cond_z")
    p_z = a.varm[f"scglmm_contrast_{z}"]["p_value"].dropna().to_numpy()
    assert p_eb.size > 200
    assert 0.01 <= np.mean(p_eb < 0.05) <= 0.10
    assert np.mean(p_z < 0.05) > np.mean(p_eb < 0.05) + 0.03


# ------------------------------------------------------------------------------------------------
# the guard against pseudo-replication (item 4)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("formula", "warned"),
    [
        ("~ condition + (1 | donor)", True),
        ("~ condition + (1 | donor) + (1 | batch)", True),
        ("~ condition + covariate + (1 + condition | donor)", False),
        ("~ condition + (1 | donor/sample)", False),
    ],
)
def test_guard_warns_when_nothing_carries_a_paired_factor(formula: str, warned: bool, caplog) -> None:
    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=30, n_genes=3, paired=True, seed=2)
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2 == 0, "B1", "B2")
    with caplog.at_level(logging.WARNING, logger="scglmm"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        scglmm.tl.fit(a, formula, size_factors="libsize", progress=False, min_cells=None, min_donors=None)
    records = [r for r in caplog.records if "pseudo-replication" in r.getMessage()]
    assert len(records) == (1 if warned else 0) and all(r.levelno == logging.WARNING for r in records)
    assert not any("pseudo-replication" in str(w.message) for w in seen)  # the one-warning rule: a log line
    if warned:
        text = records[0].getMessage()
        assert "condition[T.stim]" in text and "'~ condition + (1 + condition | donor)" in text


def test_guard_leaves_unpaired_and_numeric_covariates_alone(caplog) -> None:
    a = scglmm.datasets.simulate(n_donors=6, cells_per_donor=30, n_genes=3, seed=3)  # condition per donor
    with caplog.at_level(logging.WARNING, logger="scglmm"):
        scglmm.tl.fit(a, "~ condition + covariate + (1 | donor)", size_factors="libsize", progress=False,
                      min_cells=None, min_donors=None)  # fmt: skip
    assert not any("pseudo-replication" in r.getMessage() for r in caplog.records)
