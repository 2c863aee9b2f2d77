"""Fitting a block of genes from CSC arrays, on the path of the model."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._bundles import AGQPath, Cells, DesignColumns, FewRows, FewRowsPath, Gene, LaplacePath, Quadrature, by_path
from ._few_rows import few_rows_gene_power_sums
from ._jit import JIT as _JIT
from ._laplace import cell_level_column
from ._linalg import _copy
from ._optimise import _two_valued, maximise_gene


def model_path(cells: Cells, quad: Quadrature, few: FewRows) -> FewRowsPath | LaplacePath | AGQPath:
    """The path a fit takes, as the bundle :func:`fit_block_csc` is compiled for.

    The few-rows fast path when ``few.on`` and the objective is the Laplace approximation (one
    quadrature node), else the general Laplace kernel, or adaptive Gauss-Hermite with more nodes.
    The general kernels get the design's :class:`DesignColumns` (its cell-level column and the
    two-valued columns checked for separation).
    """
    if quad.nodes.shape[0] <= 1 and few.on:
        return FewRowsPath(cells, few)
    tv, v0 = _two_valued(cells.X)
    columns = DesignColumns(int(cell_level_column(cells.X, cells.starts)), tv, v0)
    if quad.nodes.shape[0] <= 1:
        return LaplacePath(cells, columns)
    return AGQPath(cells, quad, few, columns)


# ---- what the block loop does differently per path ---------------------------------------------


def _few_rows_lists(path) -> bool:
    return True


def _cell_lists(path) -> bool:
    return False


@by_path(_few_rows_lists, _cell_lists, _cell_lists)
def _lists_only(path):
    """Whether a gene is read only from its lists of non-zero cells (no dense vector of counts)."""


def _few_rows_bounds(path):
    return path.few.bstarts


def _donor_bounds(path):
    return path.cells.starts


def _agq_bounds(path):
    return path.few.bstarts if path.few.on else path.cells.starts


@by_path(_few_rows_bounds, _donor_bounds, _agq_bounds)
def _list_bounds(path):
    """Bounds of the groups of cells whose non-zero cells are listed together: blocks of the
    few-rows data (also on the AGQ path when ``few.on``: its starting values use them), else donors."""


def _few_rows_sums(path):
    PA = path.few.PA
    return np.empty((PA.shape[0], PA.shape[1] + 2))


def _no_sums(path):
    return np.empty((0, 0))


@by_path(_few_rows_sums, _no_sums, _no_sums)
def _gene_sums_array(path):
    """The array of a gene's y-weighted power sums per block (:class:`Gene` ``PZ``); empty off the
    few-rows path."""


def _few_rows_gene_sums(path, nzp, nzy, nzs, PZ):
    few = path.few
    few_rows_gene_power_sums(few.PA, few.Lw, few.Lc, path.cells.off, few.bstarts, nzp, nzy, nzs, PZ)


def _no_gene_sums(path, nzp, nzy, nzs, PZ):
    pass


@by_path(_few_rows_gene_sums, _no_gene_sums, _no_gene_sums)
def _gene_sums(path, nzp, nzy, nzs, PZ):
    """Fill ``PZ`` from the gene's non-zero cells (few-rows path only)."""


@njit(**_JIT)
def fit_block_csc(data, indices, indptr, path, out):
    """Fit every column of a CSC block (cells x genes) of counts ``data``, ``indices``, ``indptr``.

    ``path`` (:func:`model_path`): :class:`FewRowsPath`, :class:`LaplacePath` or :class:`AGQPath`;
    numba compiles this kernel once per path, with only that path's functions. ``path.cells``
    (:class:`Cells`): ``cells.pos[row]`` is the input row's donor-sorted position. With the
    :class:`FewRows` data of the few-rows path (few distinct design rows), cells of a donor with the
    same design row form blocks ``bstarts[k]:bstarts[k + 1]`` (donor i owns blocks
    ``dblk[i]:dblk[i + 1]``), ``Xb`` is the design row of each block, ``Lw = exp(off - o_ref)``,
    ``PA[k, :]`` the centred power sums of ``Lw`` over block k and ``Lc`` the centre of its range;
    zero counts are then summed by power series (see :mod:`._few_rows`). Outputs are written per
    gene (row g of each array of ``out``, a :class:`BlockOut`).
    """
    cells = path.cells
    pos = cells.pos
    n = cells.X.shape[0]
    lists_only = _lists_only(path)
    y = np.zeros(0 if lists_only else n)  # the few-rows path never looks at the cells one by one
    G = indptr.shape[0] - 1
    nzp = np.empty(n, dtype=np.int64)
    nzy = np.empty(n)
    # non-zero cells are bucketed by block (donor, or donor and design row) straight from the
    # sparse column: a counting sort keyed by input row, in O(non-zeros)
    bnd = _list_bounds(path)
    nb = bnd.shape[0] - 1
    nzs = np.zeros(nb + 1, dtype=np.int64)
    PZ = _gene_sums_array(path)
    bid = np.empty(n, dtype=np.int64)
    tb = np.empty(n, dtype=np.int64)
    tj = np.empty(n, dtype=np.int64)
    cur = np.empty(nb + 1, dtype=np.int64)
    # block of each cell indexed by its row in the input, so that a column's (sorted) row
    # indices read it in order instead of jumping through the donor-sorted positions
    for i in range(nb):
        for j in range(bnd[i], bnd[i + 1]):
            tb[j] = i
    for r in range(n):
        bid[r] = tb[pos[r]]
    for g in range(G):
        # counting sort of the column's non-zero cells by block (one random access per cell)
        nzs[:] = 0
        a = indptr[g]
        for k in range(a, indptr[g + 1]):
            r = indices[k]
            blk = bid[r] if data[k] != 0.0 else -1
            tj[k - a] = pos[r]
            tb[k - a] = blk
            nzs[blk + 1] += 1
        nzs[0] = 0  # explicit zeros were counted there
        for i in range(nb):
            nzs[i + 1] += nzs[i]
        _copy(cur, nzs)
        for k in range(a, indptr[g + 1]):
            blk = tb[k - a]
            if blk >= 0:
                c = cur[blk]
                nzp[c] = tj[k - a]
                nzy[c] = data[k]
                cur[blk] = c + 1
        nnz = nzs[nb]
        if not lists_only:
            y[:] = 0.0
            for k in range(nnz):
                y[nzp[k]] = nzy[k]
        _gene_sums(path, nzp, nzy, nzs, PZ)
        gene = Gene(nzp[:nnz], nzy[:nnz], nzs, PZ)
        ll, it, st, gm = maximise_gene(y, path, gene, out.phi[g], out.modes[g], out.cov[g])
        out.loglik[g] = ll
        out.n_iter[g] = it
        out.status[g] = st
        out.grad_max[g] = gm
