"""The general random-effect structures on a Dask cluster, and workers reading their own gene blocks.

Random slopes, nested and crossed terms are fitted on a two-process ``LocalCluster`` through joblib's
Dask backend; every result array must equal a local one-thread run bit for bit, and the task stream
must show the gene blocks running on the cluster's workers. Counts in a CSC or dense ``.h5ad`` file
are read by the workers themselves: the client reads no gene block (at most the first gene, which it
fits itself to compile the kernels).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

import joblib
import numpy as np
import pytest
from scipy import sparse

import scglmm
from scglmm._core._counts import BackedCounts

distributed = pytest.importorskip("distributed")

STRUCTURES = {
    "slope": "(1 + condition | donor)",
    "nested": "(1 | donor/sample)",
    "crossed": "(1 | donor) + (1 | batch)",
}
N_GENES = 12


@pytest.fixture(scope="module")
def data():
    """Paired donors (each donor's cells in both conditions), batches crossing the donors."""
    a = scglmm.datasets.simulate(
        n_donors=6, cells_per_donor=40, n_genes=N_GENES, paired=True, slope_sd=0.3, sigma2_range=(0.1, 0.5), seed=5
    )
    donor = a.obs["donor"].astype(str).str[1:].astype(int).to_numpy()
    stim = (a.obs["condition"] == "stim").to_numpy()
    a.obs["batch"] = np.char.add("B", ((donor + stim) % 3).astype(str))
    X = np.column_stack([np.ones(a.n_obs), stim.astype(float)])
    return a, X, np.log(a.obs["libsize"].to_numpy(float))


@pytest.fixture(scope="module")
def client() -> Iterator:
    """One cluster for the module: two worker processes of one thread each."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _counts(a, fmt: str):
    return {"dense": a.X.toarray(), "csr": sparse.csr_matrix(a.X), "csc": sparse.csc_matrix(a.X)}[fmt]


def _same(res: scglmm.GenesFit, ref: scglmm.GenesFit) -> None:
    """Every array of the results equal bit for bit (NaN where NaN)."""
    arrays = 0
    for f in dataclasses.fields(ref):
        want = getattr(ref, f.name)
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(getattr(res, f.name), want, err_msg=f.name, strict=True)
            arrays += 1
    assert arrays >= 15


def _on_cluster(client, fit: Callable[[], scglmm.GenesFit]) -> tuple[scglmm.GenesFit, dict[str, int]]:
    """``fit()`` under joblib's Dask backend; the result and the calls the cluster's workers ran, by function."""
    with joblib.parallel_config(backend="dask"), distributed.get_task_stream(client) as stream:
        res = fit()
    workers = set(client.scheduler_info()["workers"])
    calls: dict[str, int] = {}
    for task in stream.data:
        m = re.fullmatch(r"batch_of_(\w+?)_(\d+)_calls-.*", task["key"])
        if m:
            assert task["worker"] in workers
            calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    return res, calls


def _general_runs(n_genes: int, block_size: int, n_workers: int) -> int:
    """Runs of genes the general engine sends to the workers (the run's first gene stays in the client)."""
    runs = 0
    for a in range(0, n_genes, block_size):
        left = min(a + block_size, n_genes) - a - (a == 0)
        runs += min(left, 4 * n_workers)
    return runs


def test_the_cluster_has_two_worker_processes(client) -> None:
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.parametrize(("kind", "fmt"), [("slope", "dense"), ("nested", "csr"), ("crossed", "csc")])
def test_general_structures_on_a_cluster_are_bitwise_identical(client, data, kind: str, fmt: str) -> None:
    a, X, off = data
    terms = scglmm.random_terms(STRUCTURES[kind], a.obs)
    Y = _counts(a, fmt)
    ref = scglmm.fit_genes(a.X, X, terms, off, n_jobs=1, block_size=6)
    res, calls = _on_cluster(client, lambda: scglmm.fit_genes(Y, X, terms, off, n_jobs=-1, block_size=6))
    _same(res, ref)
    assert res.varcomp.shape[1] == {"slope": 3, "nested": 2, "crossed": 2}[kind]
    assert np.isfinite(res.coef).all()
    assert calls.get("fit_columns") == _general_runs(N_GENES, 6, 2) == N_GENES - 1  # one gene a run


def _record_reads(monkeypatch) -> list[int]:
    """The file columns this process (the client) reads as gene blocks."""
    read: list[int] = []
    real = BackedCounts.read_columns

    def recording(self, cols):
        read.extend(int(c) for c in cols)
        return real(self, cols)

    monkeypatch.setattr(BackedCounts, "read_columns", recording)
    return read


@pytest.mark.parametrize(("kind", "fmt"), [("slope", "csc"), ("crossed", "dense"), ("intercept", "csc")])
def test_workers_read_their_blocks_from_the_file(client, data, tmp_path, monkeypatch, kind: str, fmt: str) -> None:
    """A CSC or dense ``.h5ad`` path on the cluster: the same numbers as the in-memory local run, the
    workers read the blocks, the client at most the first gene (fitted here to compile the kernels)."""
    a, X, off = data
    out = a.copy()
    out.X = _counts(a, fmt)
    path = tmp_path / f"{fmt}.h5ad"
    out.write_h5ad(path)
    terms = a.obs["donor"].to_numpy() if kind == "intercept" else scglmm.random_terms(STRUCTURES[kind], a.obs)
    ref = scglmm.fit_genes(a.X, X, terms, off, n_jobs=1, block_size=6)
    read = _record_reads(monkeypatch)
    res, calls = _on_cluster(client, lambda: scglmm.fit_genes(str(path), X, terms, off, n_jobs=-1, block_size=6))
    _same(res, ref)
    if kind == "intercept":
        assert read == [] and calls.get("fit_block", 0) >= N_GENES // 6
    else:
        assert read == [0] and calls.get("fit_columns") == N_GENES - 1
    read.clear()  # a local run reads every gene in the client
    _same(scglmm.fit_genes(str(path), X, terms, off, n_jobs=1, block_size=6), ref)
    assert sorted(read) == list(range(N_GENES))


def test_an_open_backed_file_is_read_by_the_workers(client, data, tmp_path, monkeypatch) -> None:
    """``adata.X`` of an AnnData opened with ``backed="r"`` (an h5py group): the workers open the file by name."""
    import anndata as ad

    a, X, off = data
    out = a.copy()
    out.X = sparse.csc_matrix(a.X)
    out.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    terms = scglmm.random_terms(STRUCTURES["nested"], a.obs)
    ref = scglmm.fit_genes(a.X, X, terms, off, n_jobs=1, block_size=6)
    read = _record_reads(monkeypatch)
    try:
        res, _ = _on_cluster(client, lambda: scglmm.fit_genes(backed.X, X, terms, off, n_jobs=-1, block_size=6))
    finally:
        backed.file.close()
    _same(res, ref)
    assert read == [0]


def test_csr_files_and_memory_are_read_by_the_client(data, tmp_path) -> None:
    """No reader for a CSR file (every block would scan the whole file) or for counts in memory."""
    from scglmm._core._counts import block_reader

    a, _, _ = data
    a.copy().write_h5ad(tmp_path / "r.h5ad")  # scanpy's default: CSR
    assert block_reader(BackedCounts(tmp_path / "r.h5ad")) is None
    assert block_reader(sparse.csc_matrix(a.X)) is None
    out = a.copy()
    out.X = sparse.csc_matrix(a.X)
    out.write_h5ad(tmp_path / "c.h5ad")
    Y = BackedCounts(tmp_path / "c.h5ad")[:, [3, 7, 8, 10]]  # a view: the reader names the file's columns
    rd = block_reader(Y)(1, 3)
    assert rd.path == str((tmp_path / "c.h5ad").resolve()) and rd.key == "X"
    np.testing.assert_array_equal(rd.cols, [7, 8])
    np.testing.assert_array_equal(rd().toarray(), a.X[:, [7, 8]].toarray())
