"""General random-effect structures on blocks of cells, and genes spread over workers.

Cells sharing the fixed design row, the random-effect covariates and levels are collapsed into
blocks with a narrow range of offsets, whose sums come from the few-rows Taylor series
(scglmm._core._re.prepare_re). The blocks must give the cell-by-cell objective to rounding and the
same fits; ``n_jobs`` must not change any number.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest

import scglmm
from scglmm._core._api import fit_genes
from scglmm._core._re import _bfgs, _block_dispersion, _Problem, _start, prepare_re
from scglmm._formula import build_design, build_re_terms, parse_re_formula

FORMULAS = {
    "slope": "~ condition + (1 + condition | donor)",
    "nested": "~ condition + (1 | donor/sample)",
    "crossed": "~ condition + (1 | donor) + (1 | batch)",
}


@cache
def data():
    """A paired design: 10 donors x 2 conditions x 150 cells, batches crossing the donors."""
    a = scglmm.datasets.simulate(
        n_donors=10, cells_per_donor=150, n_genes=6, paired=True, slope_sd=0.3, sigma2_range=(0.1, 0.6), seed=11
    )
    donor = a.obs["donor"].astype(str).str[1:].astype(int).to_numpy()
    stim = (a.obs["condition"] == "stim").to_numpy()
    a.obs["batch"] = np.char.add("B", ((donor + stim) % 3).astype(str))
    return a


def structure(kind: str, *, blocks: bool):
    a = data()
    parsed = parse_re_formula(FORMULAS[kind])
    design = build_design(parsed.fixed, a.obs)
    terms = build_re_terms(parsed.terms, a.obs)
    off = np.log(a.obs["libsize"].to_numpy(float))
    return design.matrix, off, terms, prepare_re(design.matrix, off, terms, blocks=blocks)


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_blocks_give_the_cell_objective(kind: str) -> None:
    """Value and exact gradient on blocks equal the cell-by-cell ones to rounding, at a point away
    from the optimum (modes converged from 0 in both)."""
    _, _, _, sb = structure(kind, blocks=True)
    _, _, _, sc = structure(kind, blocks=False)
    assert sb.blocks is not None and sc.blocks is None
    n = data().n_obs
    assert sb.data.X.shape[0] * 20 <= n  # at least 20 cells per block on average
    for g in (0, 3):
        y = data().X[:, g].toarray().ravel().astype(np.float64)
        phi = _start(sc, y)
        phi[sc.p : -1] += 0.1
        vb, gb = _Problem(sb, y).value_grad(phi)
        vc, gc = _Problem(sc, y).value_grad(phi)
        assert vb == pytest.approx(vc, rel=1e-12)
        np.testing.assert_allclose(gb, gc, rtol=1e-9, atol=1e-8 * np.abs(gc).max())


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_blocks_give_the_cell_fit(kind: str) -> None:
    """The same optimum with and without blocks (the paths differ only by the dispersion's start)."""
    X, off, terms, _ = structure(kind, blocks=True)
    Y = data().X
    from scglmm._core import _re

    fb = fit_genes(Y, X, terms, off)
    _re.USE_BLOCKS = False
    try:
        fc = fit_genes(Y, X, terms, off)
    finally:
        _re.USE_BLOCKS = True
    assert np.array_equal(fb.status, fc.status)
    ok = fb.converged
    assert ok.sum() >= 4
    np.testing.assert_allclose(fb.loglik[ok], fc.loglik[ok], rtol=0, atol=1e-6)
    assert np.all(np.abs(fb.coef[ok] - fc.coef[ok]) <= 2e-3 * fc.se[ok])
    np.testing.assert_allclose(fb.se[ok], fc.se[ok], rtol=2e-3)


def test_a_cell_level_covariate_keeps_cells() -> None:
    """A numeric per-cell covariate makes every design row distinct: no blocks."""
    a = data()
    parsed = parse_re_formula("~ condition + covariate + (1 + condition | donor)")
    design = build_design(parsed.fixed, a.obs)
    terms = build_re_terms(parsed.terms, a.obs)
    s = prepare_re(design.matrix, np.log(a.obs["libsize"].to_numpy(float)), terms)
    assert s.blocks is None and s.data.X.shape[0] == a.n_obs


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
def test_n_jobs_gives_identical_results(backend: str) -> None:
    """Whatever joblib backend runs the genes (streamed runs or, for multiprocessing, a list), the same numbers."""
    from joblib import parallel_config

    X, off, terms, _ = structure("slope", blocks=True)
    Y = data().X
    one = fit_genes(Y, X, terms, off, n_jobs=1)
    with parallel_config(backend=backend):
        two = fit_genes(Y, X, terms, off, n_jobs=2, block_size=7)
    for name in ("coef", "se", "cov", "varcomp", "theta", "loglik", "modes", "n_iter", "n_eval", "status"):
        assert np.array_equal(getattr(one, name), getattr(two, name), equal_nan=True), name


def test_worker_processes_load_the_structure_from_one_file() -> None:
    """Local worker processes get a small handle to a file written once (not the structure with every run
    of genes); threads get the structure itself; the file is gone after the fit."""
    import pickle
    from pathlib import Path

    from joblib import parallel_config

    from scglmm._core._schedule import SharedStructure, shared_structure

    X, off, terms, _ = structure("slope", blocks=True)
    s = prepare_re(X, off, terms)
    with shared_structure(s) as sent:
        assert isinstance(sent, SharedStructure) and len(pickle.dumps(sent)) < 500
        loaded = pickle.loads(pickle.dumps(sent)).load()
        assert loaded is not s and np.array_equal(loaded.data.X, s.data.X)
        assert pickle.loads(pickle.dumps(sent)).load() is loaded  # read once per process
        folder = Path(sent.path).parent
    assert not folder.exists()
    with parallel_config(backend="threading"), shared_structure(s) as sent:
        assert sent is s


def test_n_jobs_zero_is_refused() -> None:
    X, off, terms, _ = structure("slope", blocks=True)
    with pytest.raises(ValueError, match="n_jobs must be a non-zero integer"):
        fit_genes(data().X[:, :1], X, terms, off, n_jobs=0)


@pytest.mark.parametrize("n_nonzero", [0, 1, 3, 4, 37, 400])
def test_block_gene_sums_match_numpy(n_nonzero: int) -> None:
    """A gene's per-block sums from its non-zero cells (four at a time, any remainder) against numpy: the
    y-weighted powers of each cell's offset about its block centre, the totals, ``sum y offset``, ``sum y^2``
    and ``sum y exp(offset)``."""
    from scglmm._core.kernels._re_laplace import re_block_gene

    s = structure("slope", blocks=True)[3]
    bl = s.blocks
    rng = np.random.default_rng(n_nonzero)
    n, nb, KK = bl.cbid.size, bl.bstarts.size - 1, s.rows.PA.shape[1]
    nzc = np.sort(rng.choice(n, n_nonzero, replace=False)).astype(np.int64)
    nzv = rng.integers(1, 9, n_nonzero).astype(np.float64)
    PZ, y2, ye = np.empty((nb, KK + 2)), np.empty(nb), np.empty(nb)
    re_block_gene(nzc, nzv, bl.cbid, bl.cLw, s.rows.Lc, bl.coff, bl.ce, PZ, y2, ye)
    b = bl.cbid[nzc]
    eps = bl.cLw[nzc] / s.rows.Lc[b] - 1.0
    want = np.zeros((nb, KK + 2))
    np.add.at(want[:, :KK], b, nzv[:, None] * eps[:, None] ** np.arange(KK))
    np.add.at(want[:, KK], b, nzv)
    np.add.at(want[:, KK + 1], b, nzv * bl.coff[nzc])
    np.testing.assert_allclose(PZ, want, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(y2, np.bincount(b, nzv**2, minlength=nb), rtol=1e-13)
    np.testing.assert_allclose(ye, np.bincount(b, nzv * bl.ce[nzc], minlength=nb), rtol=1e-13)


def test_row_codes_match_numpy_unique() -> None:
    """The column-by-column codes of the blocks' keys are numpy's row-wise unique inverse (same order)."""
    from scglmm._core._re import _row_codes

    rng = np.random.default_rng(3)
    for cols in (1, 3, 6):
        key = rng.integers(0, 4, size=(2000, cols)) * np.array([1.0, -0.5, 2.25, 1.0, 3.0, -1.0])[:cols]
        _, inv = np.unique(key, axis=0, return_inverse=True)
        assert np.array_equal(_row_codes(key), inv.ravel())


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_mode_derivatives_match_finite_differences(kind: str) -> None:
    """The kernel's du/dphi equals central differences of the converged modes."""
    _, _, _, s = structure(kind, blocks=True)
    y = data().X[:, 2].toarray().ravel().astype(np.float64)
    prob = _Problem(s, y)
    phi = _start(s, y, prob)
    prob.value_grad(phi)
    jac = prob.jac.copy()
    u0 = prob.u.copy()
    for i in range(phi.size):
        h = 1e-5
        us = []
        for sgn in (1.0, -1.0):
            ph = phi.copy()
            ph[i] += sgn * h
            u = u0.copy()
            prob.value_grad(ph, u)
            us.append(u)
        fd = (us[0] - us[1]) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("kind", list(FORMULAS))
def test_seeded_bfgs_reaches_the_same_optimum(kind: str, monkeypatch) -> None:
    """BFGS seeded from the start's information (no forward-difference Hessian at the start) reaches
    the optimum of the forward-difference seed, with fewer evaluations. (BFGS is the path of structures
    with a border; here it is forced on structures that otherwise take exact Newton steps.)"""
    X, off, terms, _ = structure(kind, blocks=True)
    Y = data().X
    from scglmm._core import _re

    monkeypatch.setattr(_re, "USE_EXACT_HESSIAN", False)
    seeded = fit_genes(Y, X, terms, off)
    _re.USE_SEED = False
    try:
        fd = fit_genes(Y, X, terms, off)
    finally:
        _re.USE_SEED = True
    assert np.array_equal(seeded.status, fd.status)
    ok = fd.converged
    assert ok.sum() >= 4
    np.testing.assert_allclose(seeded.loglik[ok], fd.loglik[ok], rtol=0, atol=1e-6)
    np.testing.assert_allclose(seeded.se[ok], fd.se[ok], rtol=1e-4)
    assert np.median(seeded.n_eval[ok]) < np.median(fd.n_eval[ok])


def test_block_dispersion_is_unbiased_on_small_blocks() -> None:
    """The start's moment estimate of the NB dispersion around each block's own mean: on blocks of 2-8
    cells with low means (where dropping the mean's share of the Poisson variance pinned the old
    estimate at its floor of 0.05), its average over replicates is the true dispersion within 15%."""
    rng = np.random.default_rng(3)
    disp = 0.6
    n_blocks = 3000
    sizes = rng.integers(2, 9, n_blocks)
    block = np.repeat(np.arange(n_blocks), sizes)
    e = np.exp(rng.normal(0.0, 0.15, block.size))
    E, E2, E3 = (np.bincount(block, e**k) for k in (1, 2, 3))
    m = np.exp(rng.normal(np.log(0.4), 0.5, n_blocks))
    estimates = []
    for _ in range(20):
        mu = m[block] * e
        y = rng.negative_binomial(1.0 / disp, 1.0 / (1.0 + disp * mu)).astype(float)
        moments = (np.bincount(block, y * y), np.bincount(block, y * e))
        prob = SimpleNamespace(moments=moments, row_counts=np.bincount(block, y))
        estimates.append(_block_dispersion(prob, E, E2, E3))
    assert np.mean(estimates) == pytest.approx(disp, rel=0.15)
    assert min(estimates) > 0.05


def test_bfgs_update_keeps_an_indefinite_matrix_usable() -> None:
    """An indefinite finite-difference matrix is made positive definite (eigenvalues to their absolute
    values) before the update instead of being discarded; the update satisfies the secant equation."""
    B = np.diag([2.0, -1.0, 0.5])
    s = np.array([0.1, 0.2, -0.1])
    yv = np.array([0.3, 0.1, -0.05])
    new = _bfgs(B, s, yv)
    assert new is not None
    np.testing.assert_allclose(new @ s, yv, rtol=1e-12)
    assert np.linalg.eigvalsh(new).min() > 0.0
    assert _bfgs(B, s, -yv) is None  # negative curvature along the step: recomputed


# ------------------------------------------------------------------------------------------------
# crawls to a boundary (issue 20: a few genes per thousand took hundreds of evaluations)
# ------------------------------------------------------------------------------------------------
@cache
def crawling() -> tuple:
    """Two genes of a simulated paired cohort (250 donors x 40 cells, ``benchmarks/cohort_exact.py`` set C)
    whose random slope's correlation runs to -1 along a nearly flat ridge, and the prepared structure."""
    a = scglmm.datasets.simulate(
        n_donors=250, cells_per_donor=20, n_genes=250, paired=True, slope_sd=0.3, mean_range=(0.01, 5.0),
        phi_range=(0.02, 2.0), sigma2_range=(0.0, 0.8), seed=7,
    )  # fmt: skip
    parsed = parse_re_formula("~ condition + (1 + condition | donor)")
    s = prepare_re(
        build_design(parsed.fixed, a.obs).matrix,
        np.log(a.obs["libsize"].to_numpy(float)),
        build_re_terms(parsed.terms, a.obs),
    )
    Y = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return s, [np.ascontiguousarray(Y[:, g], dtype=np.float64) for g in (77, 109)]


@pytest.mark.parametrize("gene", [0, 1])
def test_a_crawl_to_a_correlation_boundary_ends_on_it(gene: int, monkeypatch) -> None:
    """Stopped and fitted on the boundary it heads for: a higher log-likelihood than crawling on for 100
    iterations (which ended not converged), a converged boundary fit, fewer evaluations (how many the crawl
    takes depends on the last bits of its gradients: 151 to 383 BFGS evaluations have been seen). With
    forward-difference Hessians (the path of structures with a border, forced here) and with the random
    slope's exact Hessian, which ends on the same boundary, as high, in fewer evaluations."""
    from scglmm._core import _re
    from scglmm._core._status import CORRELATION_BOUNDARY, NOT_CONVERGED

    s, ys = crawling()
    exact = _re.fit_re_one(s, ys[gene])
    monkeypatch.setattr(_re, "USE_EXACT_HESSIAN", False)
    new = _re.fit_re_one(s, ys[gene])
    assert exact.status == CORRELATION_BOUNDARY and exact.n_eval < new.n_eval
    assert exact.loglik == pytest.approx(new.loglik, abs=1e-9)
    with monkeypatch.context() as m:
        m.setattr(_re, "CRAWL_STOP", 10**6)  # crawl on, as before
        old = _re.fit_re_one(s, ys[gene])
    assert old.status & NOT_CONVERGED and old.n_iter >= 100
    assert new.status == CORRELATION_BOUNDARY
    assert new.loglik >= old.loglik - 1e-9
    assert new.n_eval < old.n_eval
    L = s.cholesky(new.phi)[0]
    held = s.p + 2  # (1, 1) of the Cholesky factor: the slope's conditional sd
    assert L[1, 1] == 0.0 and np.isnan(new.cov_phi[held]).all()
    se = np.sqrt(np.diag(new.cov_phi))[: s.p]
    assert np.all(np.isfinite(se)) and np.all(se > 0)


def test_boundary_points_of_a_crawl() -> None:
    """The boundaries tried after a crawl: a correlation at -1 (the last diagonal entry at 0), and a variance
    component with a small sd at 0 (its row zeroed, the other sd kept, its row and column held)."""
    from scglmm._core._re import _boundary_points

    s, _ = crawling()
    p = s.p
    phi = np.zeros(s.n_params)
    phi[p : p + 3] = [0.02, 0.3, 0.4]  # L = [[0.02, 0], [0.3, 0.4]]: sds 0.02 and 0.5
    phi[-1] = 1.0
    points = _boundary_points(s, phi)
    assert len(points) == 2
    (cor, cor_hold), (var, var_hold) = points
    assert np.array_equal(np.flatnonzero(cor_hold), [p + 2]) and cor[p + 2] == 0.0
    np.testing.assert_array_equal(np.delete(cor, p + 2), np.delete(phi, p + 2))
    assert np.array_equal(np.flatnonzero(var_hold), [p, p + 1])
    np.testing.assert_allclose(var[p : p + 3], [0.0, 0.0, 0.5], rtol=1e-12)
    phi[p : p + 3] = [0.5, 0.3, 0.4]  # no small sd: the correlation only
    assert len(_boundary_points(s, phi)) == 1
