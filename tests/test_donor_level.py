"""The fast path for designs with few distinct rows (zero counts summed by power series) equals the general path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scglmm
from scglmm._core import _design
from scglmm._core._checks import check_design_matrix, check_donors, check_offset
from scglmm._core._design import few_rows_data, prepare_design
from scglmm._core.kernels._cell import _cell_all
from scglmm._core.kernels._few_rows import (
    FEW_ROWS_KMAX,
    FEW_ROWS_RHO,
    _few_rows_block_d12,
    _few_rows_block_sums,
    few_rows_gene_power_sums,
)


def _prepare_design(X, donors, offset, n):
    """Sorted design, offsets and donor bounds, as the array API prepares them."""
    d = prepare_design(check_design_matrix(X, n), *check_donors(donors, n), check_offset(offset, n))
    return d.X, d.offset, d.donors.starts


@pytest.fixture(scope="module")
def sim():
    return scglmm.datasets.simulate(
        n_donors=6, cells_per_donor=600, n_genes=40, frac_de=0.2, mean_range=(0.005, 8.0), seed=11
    )


@pytest.mark.parametrize(("fmt", "paired"), [("csr", False), ("csc", False), ("dense", False), ("csr", True)])
def test_series_path_equals_cell_by_cell(sim, fmt, paired, monkeypatch):
    Y = sim.X if fmt == "csr" else (sparse.csc_matrix(sim.X) if fmt == "csc" else sim.X.toarray())
    X = np.column_stack([np.ones(sim.n_obs), sim.obs.condition == "stim"])
    if paired:  # a cell-level factor within each donor: blocks of (donor, factor level)
        X = np.column_stack([X, (np.arange(sim.n_obs) // 7) % 2])
    off = np.log(sim.obs.libsize.to_numpy())
    fast = scglmm.fit_genes(Y, X, sim.obs.donor.to_numpy(), off)
    monkeypatch.setattr(_design, "USE_FEW_ROWS", False)  # the general kernel
    slow = scglmm.fit_genes(Y, X, sim.obs.donor.to_numpy(), off)
    np.testing.assert_array_equal(fast.status, slow.status)
    ok = np.isfinite(slow.coef[:, 0])
    assert ok.sum() >= 35
    # the same optimum up to the optimiser's tolerance (the objectives agree to rounding)
    np.testing.assert_allclose(fast.coef[ok], slow.coef[ok], rtol=0, atol=1e-4 * slow.se[ok].max())
    assert np.max(np.abs(fast.coef[ok] - slow.coef[ok]) / slow.se[ok]) < 1e-3
    np.testing.assert_allclose(fast.se[ok], slow.se[ok], rtol=1e-4)
    np.testing.assert_allclose(fast.loglik[ok], slow.loglik[ok], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.sigma2[ok], slow.sigma2[ok], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fast.dispersion[ok], slow.dispersion[ok], rtol=1e-3, atol=1e-6)


def test_donor_level_detection(sim):
    X_dl = np.column_stack([np.ones(sim.n_obs), sim.obs.condition == "stim"])
    X_cell = np.column_stack([X_dl, sim.obs.covariate])
    # a cell-level factor (two design rows per donor) still takes the fast path
    X_fac = np.column_stack([X_dl, np.arange(sim.n_obs) % 2])
    off = np.log(sim.obs.libsize.to_numpy())
    for X, expect in ((X_dl, True), (X_cell, False), (X_fac, True)):
        Xs, offs, starts, *_ = _prepare_design(X, sim.obs.donor.to_numpy(), off, sim.n_obs)
        dl = few_rows_data(Xs, offs, starts)
        assert dl[0] is expect
    # power sums: PA[i, k] = sum over donor i of Lw^k, checked directly
    Xs, offs, starts, *_ = _prepare_design(X_dl, sim.obs.donor.to_numpy(), off, sim.n_obs)
    on, Xb, Lw, o_ref, PA, Lc, bstarts, dblk = few_rows_data(Xs, offs, starts)
    assert on
    assert set(starts.tolist()) <= set(bstarts.tolist())  # blocks never straddle donors
    np.testing.assert_array_equal(bstarts[dblk], starts)
    for i in range(len(bstarts) - 1):
        lw = Lw[bstarts[i] : bstarts[i + 1]]
        eps = lw / Lc[i] - 1
        assert np.all(np.abs(eps) <= FEW_ROWS_RHO + 1e-12)
        for k in (0, 1, 5, 20):
            # sums of signed terms: compare on the scale of the largest term, n rho^k
            assert PA[i, k] == pytest.approx(np.sum(eps**k), rel=1e-10, abs=1e-13 * eps.size * FEW_ROWS_RHO**k)


@pytest.mark.parametrize("x", [1e-7, 0.01, 0.3, 2.0, 50.0, 1e4])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_block_series_matches_direct_sums(x, level):
    """Block sums of q and its derivatives (zero and non-zero cells): Taylor series around the
    block centre vs cell by cell, for means far below and far above theta."""
    rng = np.random.default_rng(3)
    n = 60
    lw = np.sort(rng.uniform(0.9, 1.1, n) * 0.3)  # within +-FEW_ROWS_RHO of the centre
    off = np.log(lw) + 8.0
    y = np.where(rng.random(n) < 0.4, rng.integers(1, 40, n), 0).astype(float)
    o_ref = 8.0 + np.log(0.5)
    Lw = np.exp(off - o_ref)
    starts = np.array([0, n], dtype=np.int64)
    Lc = np.array([0.5 * (Lw.min() + Lw.max())])
    assert np.all(np.abs(Lw / Lc[0] - 1) <= FEW_ROWS_RHO)
    kk = FEW_ROWS_KMAX + 1
    eps = Lw / Lc[0] - 1
    PA = np.array([[np.sum(eps**k) for k in range(kk)]])
    nzp = np.flatnonzero(y).astype(np.int64)
    nzy = y[nzp]
    nzs = np.array([0, nzp.size], dtype=np.int64)
    PZ = np.empty((1, kk + 2))
    few_rows_gene_power_sums(PA, Lw, Lc, off, starts, nzp, nzy, nzs, PZ)
    t = 0.7
    theta = np.exp(t)
    c = np.log(x / Lc[0]) + t - o_ref  # so that the block centre has mu / theta = x
    S = np.empty(12)
    _few_rows_block_sums(0, c, t, theta, y, off, Lw, starts, nzp, nzy, nzs, PA, PZ, Lc, o_ref, level, S)
    direct = np.zeros(12)
    for j in range(n):
        direct += np.array(_cell_all(y[j], c + off[j], t, theta))
    idx = {1: [1, 2], 2: [0, 1, 2], 3: list(range(12))}[level]
    np.testing.assert_allclose(S[idx], direct[idx], rtol=1e-10, atol=1e-12 * np.abs(direct).max())
    # the scratch-free first and second derivative used by the conditional modes
    d12 = _few_rows_block_d12(0, c, t, theta, PA, PZ, Lc, o_ref)
    np.testing.assert_allclose(d12, direct[1:3], rtol=1e-10, atol=1e-12 * np.abs(direct).max())
