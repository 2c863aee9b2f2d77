"""scglmm.to_csc and ``scglmm to-csc``: an .h5ad rewritten with its counts stored by gene, out of core."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import sparse

import scglmm
from scglmm._core._errors import InvalidValueError, MissingKeyError
from scglmm.cli import cli


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> tuple[ad.AnnData, str]:
    """A CSR file (X and a CSR layer), with obs, var, uns and obsm to carry over."""
    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=40, n_genes=30, seed=3)
    a.X = sparse.csr_matrix(a.X, dtype=np.float32)
    a.layers["counts"] = a.X.copy() * 2
    a.uns["note"] = {"source": "test", "n": 3}
    a.obsm["pca"] = np.random.default_rng(0).normal(size=(a.n_obs, 2))
    path = tmp_path_factory.mktemp("csc") / "cells.h5ad"
    a.write_h5ad(path)
    return a, str(path)


def _encoding(path, key: str) -> str:
    with h5py.File(path, "r") as fh:
        return str(fh[key].attrs["encoding-type"])


@pytest.mark.parametrize("panel_nnz", [1, 97, 10**9])  # a bucket per gene, several genes per bucket, one bucket
def test_x_rewritten_by_gene_everything_else_as_is(cells, tmp_path, panel_nnz: int) -> None:
    a, src = cells
    out = tmp_path / "csc.h5ad"
    scglmm.to_csc(src, out, panel_nnz=panel_nnz)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csc.h5ad"]  # the buckets' files are gone
    assert _encoding(out, "X") == "csc_matrix" and _encoding(out, "layers/counts") == "csr_matrix"
    b = ad.read_h5ad(out)
    assert sparse.isspmatrix_csc(b.X) and b.X.dtype == np.float32 and b.X.has_sorted_indices
    assert (b.X != a.X).nnz == 0 and b.X.nnz == a.X.nnz
    assert (b.layers["counts"] != a.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(b.obs, a.obs)
    pd.testing.assert_frame_equal(b.var, a.var)
    assert b.uns["note"] == {"source": "test", "n": 3}
    np.testing.assert_array_equal(b.obsm["pca"], a.obsm["pca"])


def test_a_layer_and_a_dense_matrix(cells, tmp_path) -> None:
    a, src = cells
    scglmm.to_csc(src, tmp_path / "layer.h5ad", layer="counts", compression="gzip", panel_nnz=50)
    b = ad.read_h5ad(tmp_path / "layer.h5ad")
    assert _encoding(tmp_path / "layer.h5ad", "X") == "csr_matrix"
    assert sparse.isspmatrix_csc(b.layers["counts"]) and (b.layers["counts"] != a.layers["counts"]).nnz == 0
    dense = a.copy()
    dense.X = a.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    scglmm.to_csc(tmp_path / "dense.h5ad", tmp_path / "from_dense.h5ad")
    assert (ad.read_h5ad(tmp_path / "from_dense.h5ad").X != a.X).nnz == 0


def test_fits_of_the_two_files_are_bitwise_equal(cells, tmp_path) -> None:
    """The point of the conversion: the same genes read by blocks of a CSC file give the same fit."""
    a, src = cells
    out = tmp_path / "csc.h5ad"
    scglmm.to_csc(src, out, panel_nnz=200)
    X = np.column_stack([np.ones(a.n_obs), (a.obs["condition"] == a.obs["condition"].cat.categories[1]).to_numpy()])
    off = np.log(a.obs["libsize"].to_numpy(float))
    fits = [scglmm.fit_genes(p, X, a.obs["donor"].to_numpy(), off, n_jobs=1) for p in (src, str(out))]
    for name in ("coef", "se", "loglik", "status"):
        np.testing.assert_array_equal(getattr(fits[0], name), getattr(fits[1], name), err_msg=name)
    assert np.isfinite(fits[0].coef).sum() > 20


def test_errors_before_anything_is_written(cells, tmp_path) -> None:
    a, src = cells
    with pytest.raises(MissingKeyError, match=r"layer 'raw' not found in .*; layers: \['counts'\]"):
        scglmm.to_csc(src, tmp_path / "x.h5ad", layer="raw")
    with pytest.raises(InvalidValueError, match="out must differ from src"):
        scglmm.to_csc(src, src)
    with pytest.raises(InvalidValueError, match=r"compression must be None, 'gzip' or 'lzf'; got 'zstd'"):
        scglmm.to_csc(src, tmp_path / "x.h5ad", compression="zstd")
    scglmm.to_csc(src, tmp_path / "csc.h5ad")
    with pytest.raises(InvalidValueError, match="already stored by gene"):
        scglmm.to_csc(tmp_path / "csc.h5ad", tmp_path / "again.h5ad")
    assert not (tmp_path / "x.h5ad").exists() and not (tmp_path / "again.h5ad").exists()


def test_cli(cells, tmp_path) -> None:
    a, src = cells
    out = tmp_path / "cli.h5ad"
    res = CliRunner().invoke(cli, ["to-csc", src, "--out", str(out), "--layer", "counts"])
    assert res.exit_code == 0, res.output
    assert _encoding(out, "layers/counts") == "csc_matrix"
    bad = CliRunner().invoke(cli, ["to-csc", src, "--out", str(tmp_path / "bad.h5ad"), "--layer", "raw"])
    assert bad.exit_code == 1 and "layer 'raw' not found" in bad.stderr
    assert not (tmp_path / "bad.h5ad").exists()
    same = CliRunner().invoke(cli, ["to-csc", src, "--out", src])
    assert same.exit_code == 1 and "never overwrites its input" in same.stderr
