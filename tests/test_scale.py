"""Scale features: counts read from disk (backed / .h5ad), progress bar, Dask cluster.

Every fit here is compared bitwise with the in-memory fit of the same data.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pytest
from scipy import sparse

import scglmm
import scglmm._logging as slog
from scglmm._core._counts import BackedCounts, level_stats
from scglmm.datasets import simulate

FORMULA = "~ condition + covariate + (1 | donor)"


@pytest.fixture(scope="module")
def small():
    return simulate(n_donors=6, cells_per_donor=40, n_genes=24, seed=21)


def _design(adata):
    X = np.column_stack(
        [np.ones(adata.n_obs), (adata.obs["condition"] == "stim").to_numpy(float), adata.obs["covariate"].to_numpy()]
    )
    return X, adata.obs["donor"].to_numpy(), np.log(adata.obs["libsize"].to_numpy(float))


def _write(adata, path, fmt: str):
    out = adata.copy()
    if fmt == "csc":
        out.X = sparse.csc_matrix(out.X)
    elif fmt == "dense":
        out.X = out.X.toarray()
    out.write_h5ad(path)
    return path


def _same(a: scglmm.GenesFit, b: scglmm.GenesFit) -> None:
    for name in (
        "coef",
        "se",
        "cov",
        "sigma2",
        "theta",
        "loglik",
        "modes",
        "n_iter",
        "status",
        "grad_max",
        "n_nonzero",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture(scope="module")
def ref_fit(small):
    X, g, off = _design(small)
    return scglmm.fit_genes(small.X, X, g, off, block_size=5)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_fit_genes_from_disk_is_bitwise_identical(small, ref_fit, tmp_path, fmt):
    path = _write(small, tmp_path / f"{fmt}.h5ad", fmt)
    X, g, off = _design(small)
    # tiny chunks and panels: many passes and many panels, every code path of the readers
    Y = BackedCounts(path, chunk_nnz=300, panel_nnz=700)
    assert Y.format == fmt and Y.shape == small.shape
    _same(scglmm.fit_genes(Y, X, g, off, block_size=5), ref_fit)
    _same(scglmm.fit_genes(str(path), X, g, off, block_size=5, n_jobs=2), ref_fit)
    with h5py.File(path, "r") as fh:
        _same(scglmm.fit_genes(fh["X"], X, g, off, block_size=5), ref_fit)
    backed = ad.read_h5ad(path, backed="r")
    try:
        _same(scglmm.fit_genes(backed.X, X, g, off, block_size=5), ref_fit)
    finally:
        backed.file.close()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_csr_file_of_many_panels_is_fitted_from_a_temporary_csc_copy(small, ref_fit, tmp_path, monkeypatch, n_jobs):
    """Counts in a CSR file that would take more than MAX_PANEL_PASSES passes are copied by gene once (a
    temporary CSC file, gone afterwards); the fits are the same, for (1 | donor) and the general engine."""
    import tempfile

    from scglmm._core import _counts
    from scglmm._core._api import fit_genes as fit_terms_genes
    from scglmm._formula import build_re_terms, parse_re_formula

    path = _write(small, tmp_path / "csr.h5ad", "csr")
    X, g, off = _design(small)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    copies = []
    buckets = _counts.BackedCounts.gene_buckets

    def counted(self, folder, bucket_nnz):
        copies.append(sorted(p.name for p in folder.parent.iterdir()))
        yield from buckets(self, folder, 50)  # several buckets

    monkeypatch.setattr(_counts.BackedCounts, "gene_buckets", counted)
    Y = BackedCounts(path, chunk_nnz=300, panel_nnz=100)
    assert int(Y.gene_nnz().sum()) > _counts.MAX_PANEL_PASSES * 100
    _same(scglmm.fit_genes(Y, X, g, off, block_size=5, n_jobs=n_jobs), ref_fit)
    terms = build_re_terms(parse_re_formula("~ x + (1 + x | donor)").terms, small.obs.assign(x=X[:, 1]))
    want = fit_terms_genes(small.X[:, :8], X, terms, off, block_size=3)
    got = fit_terms_genes(Y[:, np.arange(8)], X, terms, off, block_size=3, n_jobs=n_jobs)
    for name in ("coef", "se", "loglik", "status", "varcomp"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert len(copies) == 2 and all(c[0].startswith("scglmm-by-gene-") for c in copies)
    assert list((tmp_path / "tmp").iterdir()) == []
    small_view = Y[:, [0, 1]]  # few panels: read in panels, no copy
    scglmm.fit_genes(small_view, X, g, off)
    assert len(copies) == 2


def test_no_space_for_the_copy_falls_back_to_panels(small, ref_fit, tmp_path, monkeypatch):
    """A temporary directory without space: the CSR file is read in panels instead, the same fit."""
    from scglmm._core import _counts

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_counts, "write_csc", full)
    warned = []
    monkeypatch.setattr(_counts.logger, "warning", lambda msg, *args: warned.append(msg % args))
    Y = BackedCounts(_write(small, tmp_path / "csr.h5ad", "csr"), chunk_nnz=300, panel_nnz=100)
    X, g, off = _design(small)
    _same(scglmm.fit_genes(Y, X, g, off, block_size=5), ref_fit)
    assert len(warned) == 1 and "No space left on device" in warned[0] and "in panels" in warned[0]


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_backed_counts_views_sums_and_rows(small, tmp_path, fmt):
    path = _write(small, tmp_path / f"{fmt}.h5ad", fmt)
    Y = BackedCounts(path, chunk_nnz=250, panel_nnz=400)
    M = sparse.csr_matrix(small.X)
    np.testing.assert_allclose(Y.sum(axis=1), np.asarray(M.sum(axis=1)).ravel(), rtol=0, atol=0)
    np.testing.assert_allclose(Y.sum(axis=0), np.asarray(M.sum(axis=0)).ravel(), rtol=0, atol=0)
    idx = np.array([0, 3, 4, 5, 11, 17, 23])
    view = Y[:, idx]
    assert view.shape == (small.n_obs, idx.size)
    got = sparse.hstack([view.get_block(0, 4), view.get_block(4, 7)]).toarray()
    np.testing.assert_array_equal(got, M[:, idx].toarray())
    odd = np.array([7, 2, 2, 23, 0])  # unsorted and repeated genes
    np.testing.assert_array_equal(Y[:, odd].get_block(0, 5).toarray(), M[:, odd].toarray())
    np.testing.assert_array_equal(Y[:, odd].sum(axis=0), np.asarray(M[:, odd].sum(axis=0)).ravel())
    mask = np.arange(small.n_obs) % 3 == 1
    np.testing.assert_array_equal(Y[mask].toarray(), M[mask].toarray())
    np.testing.assert_array_equal(view[mask].toarray(), M[mask][:, idx].toarray())
    unsorted = np.array([17, 2, 2, 150])
    np.testing.assert_array_equal(Y[unsorted, :].toarray(), M[unsorted].toarray())
    codes = small.obs["donor"].cat.codes.to_numpy()
    _, detected, present = level_stats(Y, np.zeros(small.n_obs, dtype=np.int64), 1, np.ones(small.n_obs), (codes, 6))
    B = (M > 0).toarray()
    np.testing.assert_array_equal(detected[0], B.sum(axis=0))
    np.testing.assert_array_equal(present, np.array([B[codes == d].any(axis=0) for d in range(6)]))


@pytest.mark.parametrize("source", ["dense", "csr", "csc", "coo", "disk-csr", "disk-csc", "disk-dense"])
def test_level_stats_match_numpy(small, tmp_path, source):
    """One pass gives per-level weighted sums, cells with a count and the levels present, for every input
    layout and for views of a file (a subset, unsorted and repeated genes)."""
    M = sparse.csr_matrix(small.X)
    D = M.toarray()
    n = small.n_obs
    rng = np.random.default_rng(3)
    codes = np.vstack([np.zeros(n, dtype=np.int64), rng.integers(-1, 3, n) + 1])  # rows 0 and 1..3 (-1 -> 0: none)
    codes[1][codes[1] == 0] = -1
    weight = rng.uniform(0.5, 2.0, n)
    donors = small.obs["donor"].cat.codes.to_numpy()
    genes = np.array([5, 0, 7, 7, 23, 2])
    inputs = {"dense": D, "csr": M, "csc": sparse.csc_matrix(M), "coo": M.tocoo()}
    if source.startswith("disk"):
        Y = BackedCounts(_write(small, tmp_path / "x.h5ad", source.split("-")[1]), chunk_nnz=97)
        cases = [(Y, D), (Y[:, genes], D[:, genes])]
    else:
        cases = [(inputs[source], D)]
    for Y, ref in cases:
        sums, detected, present = level_stats(Y, codes, 4, weight, (donors, 6))
        want_sums, want_det = np.zeros((4, ref.shape[1])), np.zeros((4, ref.shape[1]))
        for t in range(2):
            for r in range(4):
                cells = codes[t] == r
                want_sums[r] += (ref[cells] * weight[cells, None]).sum(axis=0)
                want_det[r] += (ref[cells] > 0).sum(axis=0)
        np.testing.assert_allclose(sums, want_sums, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(detected, want_det)
        np.testing.assert_array_equal(present, np.array([(ref[donors == d] > 0).any(axis=0) for d in range(6)]))
        if isinstance(Y, BackedCounts):
            np.testing.assert_array_equal(Y.sum(axis=0), ref.sum(axis=0))
            np.testing.assert_array_equal(Y.sum(axis=1), ref.sum(axis=1))


def test_backed_counts_rejects_bad_input(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BackedCounts(tmp_path / "missing.h5ad")
    path = _write(small, tmp_path / "x.h5ad", "csr")
    with pytest.raises(KeyError, match="'layers/counts' not found"):
        BackedCounts(path, key="layers/counts")
    with pytest.raises(TypeError, match="cannot read counts from list"):
        BackedCounts([1, 2])
    bad = small.copy()
    bad.X = bad.X.copy()
    bad.X.data[3] = 0.5
    bad.write_h5ad(tmp_path / "bad.h5ad")
    X, g, off = _design(small)
    with pytest.raises(ValueError, match="non-integer value"):
        scglmm.fit_genes(str(tmp_path / "bad.h5ad"), X, g, off)
    # streamed in chunks; a view checks its own genes only
    Yb = BackedCounts(tmp_path / "bad.h5ad", chunk_nnz=50)
    with pytest.raises(ValueError, match="found 1 non-integer value"):
        Yb.check_counts()
    col = int(bad.X.indices[3])
    Yb[:, np.delete(np.arange(small.n_vars), col)].check_counts()
    with pytest.raises(ValueError, match="found 1 non-integer value"):
        Yb[:, [col, 0]].check_counts()


def test_csr_panels_bound_memory(tmp_path):
    """CSR on disk is read from panels of at most panel_nnz non-zeros; memory stays far below the matrix.

    Only the reading is measured (every gene block, as fit_genes asks for them); the fit's own
    memory does not depend on where the counts come from.
    """
    big = simulate(n_donors=8, cells_per_donor=2500, n_genes=300, mean_range=(0.05, 3.0), seed=4)
    path = _write(big, tmp_path / "big.h5ad", "csr")
    M = big.X
    nbytes = M.data.nbytes + M.indices.nbytes + M.indptr.nbytes
    budget = M.nnz // 8
    Y = BackedCounts(path, chunk_nnz=M.nnz // 64, panel_nnz=budget)
    Mc = sparse.csc_matrix(M)
    panels, sums = [], []
    tracemalloc.start()
    try:
        for a in range(0, M.shape[1], 16):
            blk = Y.get_block(a, a + 16)
            panels.append(Y._panel[2].nnz)
            sums.append((blk.indptr.copy(), int(blk.indices.sum()), float(blk.data.sum())))
            del blk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for k, a in enumerate(range(0, M.shape[1], 16)):
        ref = Mc[:, a : a + 16]
        np.testing.assert_array_equal(sums[k][0], ref.indptr)
        assert sums[k][1:] == (int(ref.indices.sum()), float(ref.data.sum()))
    assert max(panels) <= budget
    assert len(set(panels)) >= 8  # many panels: many passes over the file, none holding the matrix
    # one panel (nbytes / 8) + one gene block and its copies + one row chunk; in memory: all of nbytes
    assert peak < 0.35 * nbytes, (peak, nbytes)


@pytest.mark.filterwarnings("ignore:.*have no estimate:UserWarning")
def test_tl_fit_on_backed_anndata(small, tmp_path):
    path = _write(small, tmp_path / "b.h5ad", "csr")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mem = small.copy()
    scglmm.tl.fit(mem, FORMULA, block_size=5)
    backed = ad.read_h5ad(path, backed="r")
    try:
        scglmm.tl.fit(backed, FORMULA, block_size=5)
        assert backed.isbacked
        for k, v in mem.varm.items():
            w = backed.varm[k]
            if hasattr(v, "columns"):
                assert list(v.columns) == list(w.columns)
                for c in v.columns:
                    np.testing.assert_array_equal(w[c].to_numpy(), v[c].to_numpy(), err_msg=f"{k}[{c}]")
            else:
                np.testing.assert_array_equal(w, v, err_msg=k)
        assert (backed.var["scglmm_status"] == mem.var["scglmm_status"]).all()
        np.testing.assert_array_equal(backed.uns["scglmm"]["log_offset"], mem.uns["scglmm"]["log_offset"])
        res = scglmm.get.results(backed, "condition[T.stim]")
        assert res.shape[0] == small.n_vars and np.isfinite(res["log_fc"]).sum() >= 20
        # groupby reads each group's rows into memory; same numbers as in memory
        scglmm.tl.fit(mem, "~ covariate + (1 | donor)", groupby="condition", key_added="g", block_size=5)
        scglmm.tl.fit(backed, "~ covariate + (1 | donor)", groupby="condition", key_added="g", block_size=5)
        for grp in ("ctrl", "stim"):
            np.testing.assert_array_equal(backed.varm[f"g:{grp}_coef"], mem.varm[f"g:{grp}_coef"])
        with pytest.raises(ValueError, match="backed mode"):
            scglmm.tl.fit(backed, FORMULA, copy=True)
    finally:
        backed.file.close()
    # the file on disk is untouched: results live in the in-memory varm / var / uns
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with h5py.File(path, "r") as fh:
        assert "scglmm_coef" not in fh["varm"]


# ------------------------------------------------------------------------------------------------
# progress bar
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("progress", "interactive", "shown"),
    # progress=None: shown in scripts and notebooks alike (issue 14), once the run lasts PROGRESS_DELAY
    [(True, False, True), (False, True, False), (None, False, True), (None, True, True)],
)
def test_progress_bar(small, capsys, monkeypatch, progress, interactive, shown):
    monkeypatch.setattr(slog, "_interactive", lambda: interactive)
    monkeypatch.setattr(slog, "PROGRESS_DELAY", 0.0)  # the run is short; no timing in tests
    monkeypatch.setattr(slog, "PIPE_INTERVAL", 0.0)
    a = small[:, :6].copy()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", block_size=2, progress=progress)
    err = capsys.readouterr().err
    if shown and interactive:  # a terminal or notebook: tqdm's bar
        assert "scglmm fit:" in err and "/6 [" in err and "gene/s" in err
    elif shown:  # a log file or a pipe: plain lines, no carriage returns piling up on one line
        lines = [line for line in err.splitlines() if line.startswith("scglmm fit: ")]
        assert lines and all(" genes (" in line for line in lines) and "s left" in lines[-1]
        assert "\r" not in err and "gene/s" not in err
    else:
        assert "scglmm fit" not in err and "gene/s" not in err


def test_line_progress_writes_at_most_one_line_per_interval(monkeypatch):
    import io

    out = io.StringIO()
    monkeypatch.setattr(slog, "PIPE_INTERVAL", 3600.0)
    bar = slog.LineProgress(total=100, desc="scglmm fit", delay=0.0, stream=out)
    for _ in range(50):
        bar.update(1)
    assert out.getvalue() == ""  # nothing before the first interval has passed
    monkeypatch.setattr(slog, "PIPE_INTERVAL", 0.0)
    bar = slog.LineProgress(total=100, desc="scglmm fit", delay=0.0, stream=out)
    bar.update(40)  # the first block (maybe slowed by compiling): no estimate of the time left yet
    assert out.getvalue() == "scglmm fit: 40/100 genes (40 %), 0 s\n"
    bar.update(20)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("scglmm fit: 60/100 genes (60 %), ") and last.endswith("s left")


class _FakeBar:
    """Records the arguments of the tqdm bar scglmm would draw."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.made.append(kwargs)

    def update(self, n):
        pass

    def close(self):
        pass


@pytest.mark.parametrize(
    ("progress", "verbosity", "shown", "delay"),
    [
        (None, "warning", True, slog.PROGRESS_DELAY),  # scanpy's default: a bar once the run lasts a while
        (None, "info", True, slog.PROGRESS_DELAY),
        (None, "error", False, None),  # scanpy's verbosity lowered: no bar
        (True, "error", True, 0.0),  # asked for: at once, whatever the verbosity
        (False, "hint", False, None),
    ],
)
def test_progress_bar_follows_scanpy_verbosity(small, monkeypatch, progress, verbosity, shown, delay):
    import scanpy as sc

    monkeypatch.setattr(slog, "_tqdm", lambda: _FakeBar)
    monkeypatch.setattr(slog, "_interactive", lambda: True)  # a terminal: the tqdm bar
    _FakeBar.made = []
    saved = sc.settings.verbosity
    sc.settings.verbosity = verbosity
    try:
        scglmm.tl.fit(small[:, :4].copy(), FORMULA, size_factors="libsize", progress=progress)
        settings = slog.progress_settings(progress)
    finally:
        sc.settings.verbosity = saved
    assert len(_FakeBar.made) == int(shown)
    if shown:
        (kw,) = _FakeBar.made
        assert kw["delay"] == delay and kw["total"] == 4 and kw["desc"] == "scglmm fit"
    assert settings == (shown, slog.PROGRESS_DELAY if progress is None else 0.0)


def test_progress_bar_uses_tqdm_auto_without_its_notebook_warning(monkeypatch):
    """In a notebook without ipywidgets tqdm.auto warns and draws text; scglmm keeps the text bar, not the warning."""
    import warnings

    import tqdm.auto

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert slog._tqdm() is tqdm.auto.tqdm


def test_interactive_follows_stderr_tty(monkeypatch):
    class Fake:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr("sys.stderr", Fake(True))
    assert slog._interactive() is True
    monkeypatch.setattr("sys.stderr", Fake(False))
    assert slog._interactive() is False


def test_interactive_in_a_jupyter_kernel(monkeypatch):
    """A notebook's stderr is no tty; the bar is on in a kernel when ipywidgets can draw it."""
    import importlib.util
    import types

    class Shell:
        kernel = object()

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: Shell()
    monkeypatch.setitem(__import__("sys").modules, "IPython", fake)
    monkeypatch.setattr("sys.stderr", type("NoTTY", (), {"isatty": lambda self: False})())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "ipywidgets" else real(name))
    assert slog._interactive() is True
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name))
    assert slog._interactive() is False
    fake.get_ipython = lambda: None  # IPython imported, but no running shell (a plain script)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert slog._interactive() is False


# ------------------------------------------------------------------------------------------------
# Dask
# ------------------------------------------------------------------------------------------------
def test_dask_local_cluster_is_bitwise_identical(small, ref_fit):
    """Two worker processes: every gene block runs on the cluster (the task stream lists each
    ``fit_block`` call and the worker that ran it) and the results equal a local run bit for bit.
    Which worker takes which block is the scheduler's choice, so it is not asserted."""
    distributed = pytest.importorskip("distributed")
    import re

    import joblib

    X, g, off = _design(small)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        joblib.parallel_config(backend="dask"),
        distributed.get_task_stream(client) as stream,
    ):
        res = scglmm.fit_genes(small.X, X, g, off, block_size=4, n_jobs=-1)
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        workers = set(client.scheduler_info()["workers"])
    _same(res, ref_fit)
    assert len(pids) == 2 and os.getpid() not in pids
    calls = [(re.fullmatch(r"batch_of_fit_block_(\d+)_calls-.*", t["key"]), t["worker"]) for t in stream.data]
    calls = [(int(m.group(1)), w) for m, w in calls if m]
    assert sum(n for n, _ in calls) == 6  # 24 genes in blocks of 4: all six blocks ran on the cluster
    assert {w for _, w in calls} <= workers


def test_csr_input_is_read_in_csc_panels() -> None:
    """In-memory CSR counts: blocks come from CSC panels of at most ``panel_nnz`` non-zeros; every
    block equals the same columns of the matrix, whatever the panel size (one block per panel,
    several blocks per panel, a block larger than a panel) and the order of the requests."""
    from scglmm._core._counts import block_getter

    rng = np.random.default_rng(3)
    M = sparse.random(300, 57, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    M.data = np.ceil(M.data * 10)
    for panel_nnz, n_threads in itertools.product((10, 200, 1000, 2**25), (1, 2, 3)):
        get = block_getter(M, panel_nnz=panel_nnz, n_threads=n_threads)
        for a in range(0, 57, 8):
            b = min(a + 8, 57)
            blk = get(a, b)
            got = sparse.csc_matrix((blk.data, blk.indices, blk.indptr), shape=blk.shape).toarray()
            np.testing.assert_array_equal(got, M[:, a:b].toarray())
            for j in range(b - a):  # rows sorted in every column (also across the threads' row ranges)
                assert np.all(np.diff(blk.indices[blk.indptr[j] : blk.indptr[j + 1]]) > 0)
        # out of order (panels then restart from a fresh position in every row)
        for a, b in [(40, 48), (3, 11), (50, 57), (0, 57)]:
            blk = get(a, b)
            got = sparse.csc_matrix((blk.data, blk.indices, blk.indptr), shape=blk.shape).toarray()
            np.testing.assert_array_equal(got, M[:, a:b].toarray())


def test_block_bounds_shrink_towards_the_end_with_several_workers() -> None:
    """Gene blocks cover every gene once, in order; one worker gets blocks of ``block_size``;
    several workers get blocks of at most an eighth of the remaining genes per worker (at least
    ``MIN_BLOCK``), so the last blocks are small."""
    from scglmm._core._schedule import MIN_BLOCK, _block_bounds

    assert _block_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for G, bs, nw in [(500, 64, 2), (2000, 64, 2), (24, 4, 2), (3, 64, 2), (20_000, 64, 8), (1000, 16, 3)]:
        bounds = _block_bounds(G, bs, nw)
        assert bounds[0][0] == 0 and bounds[-1][1] == G
        assert all(b0[1] == b1[0] for b0, b1 in itertools.pairwise(bounds))
        sizes = np.array([b - a for a, b in bounds])
        remaining = G - np.array([a for a, _ in bounds])
        expected = np.minimum(bs, np.maximum(MIN_BLOCK, -(-remaining // (8 * nw))))
        np.testing.assert_array_equal(sizes, np.minimum(expected, remaining))
    sizes = [b - a for a, b in _block_bounds(500, 64, 2)]
    assert sizes[:3] == [32, 30, 28] and sizes[-1] == MIN_BLOCK and len(sizes) == 46


def test_cell_order_kernels_match_numpy() -> None:
    """The compiled sorts behind the cell order equal numpy's: distinct design rows numbered in
    lexicographic order (``np.unique(axis=0)``) and a stable sort by an integer key."""
    from scglmm._core.kernels import _order as K

    rng = np.random.default_rng(5)
    X = np.column_stack([np.ones(500), rng.integers(0, 3, 500), rng.integers(0, 2, 500) * 0.5])
    ids = K.distinct_row_ids(X, np.lexsort(X.T[::-1]))
    _, inverse = np.unique(X, axis=0, return_inverse=True)
    np.testing.assert_array_equal(ids, inverse.ravel())
    key = rng.integers(0, 7, 500)
    seq = rng.permutation(500)
    np.testing.assert_array_equal(K.stable_counting_sort(key, 7, seq), seq[np.argsort(key[seq], kind="stable")])
