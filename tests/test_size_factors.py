"""The default size factors (issue 22, item 6): a gene subset does not silently shrink every library.

With no ``size_factors`` a fit uses each cell's library size from ``obs["total_counts"]`` or
``obs["n_counts"]`` when that column counts more genes than the matrix has (the matrix is a subset of
the measured genes), else each cell's total over the matrix, and then says so in the log when the matrix
is small enough to be a subset.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import scglmm


def _data(n_genes: int = 12):
    a = scglmm.datasets.simulate(n_donors=6, cells_per_donor=40, n_genes=n_genes, seed=4)
    return a


def _fit(a, caplog):
    # the library size alone: the normalisation factor that multiplies it is tests/test_normalise.py's
    with caplog.at_level(logging.WARNING, logger="scglmm"):
        scglmm.tl.fit(
            a, "~ condition + (1 | donor)", progress=False, min_cells=None, min_donors=None, norm_method="none"
        )
    return a.uns["scglmm"]["params"], [r.getMessage() for r in caplog.records if "size factors" in r.getMessage()]


@pytest.mark.parametrize("column", ["total_counts", "n_counts"])
def test_a_library_column_from_more_genes_is_the_default(column, caplog) -> None:
    a = _data()
    totals = np.asarray(a.X.sum(axis=1), dtype=float).ravel()
    a.obs[column] = totals * 3.0 + 7.0  # the full library: more genes than these 12
    params, logged = _fit(a, caplog)
    assert params["offset_kind"] == "size_factors" and params["offset_column"] == column
    np.testing.assert_allclose(a.uns["scglmm"]["log_offset"], np.log(a.obs[column].to_numpy(dtype=float)), rtol=1e-15)
    assert logged == []


def test_matrix_totals_when_the_column_is_the_matrix_own_and_a_subset_is_named(caplog) -> None:
    a = _data()
    totals = np.asarray(a.X.sum(axis=1), dtype=float).ravel()
    a.obs["n_counts"] = totals  # the subset's own totals (as in the shipped example): nothing gained
    params, logged = _fit(a, caplog)
    assert params["offset_kind"] == "total_counts"
    np.testing.assert_allclose(a.uns["scglmm"]["log_offset"], np.log(totals), rtol=1e-15)
    assert len(logged) == 1 and "over the 12 genes of this matrix" in logged[0] and "size_factors=" in logged[0]


def test_a_column_smaller_than_the_matrix_totals_is_not_a_library_size(caplog) -> None:
    a = _data()
    a.obs["total_counts"] = np.asarray(a.X.sum(axis=1)).ravel() / 2.0 + 1.0
    params, _ = _fit(a, caplog)
    assert params["offset_kind"] == "total_counts"
