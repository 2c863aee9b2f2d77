"""Fitting a block of genes from CSC arrays."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._bundles import DesignColumns, Gene
from ._few_rows import few_rows_gene_power_sums
from ._jit import JIT as _JIT
from ._laplace import cell_level_column
from ._optimise import _two_valued, maximise_gene


@njit(**_JIT)
def fit_block_csc(data, indices, indptr, cells, quad, few, out):
    """Fit every column of a CSC block (cells x genes) of counts ``data``, ``indices``, ``indptr``.

    ``cells`` (:class:`Cells`): ``cells.pos[row]`` is the input row's donor-sorted position.
    ``quad`` (:class:`Quadrature`): the Gauss-Hermite rule. ``few`` (:class:`FewRows`): with
    ``few.on`` (few distinct design rows), cells of a donor with the same design row form blocks
    ``bstarts[k]:bstarts[k + 1]`` (donor i owns blocks ``dblk[i]:dblk[i + 1]``), ``Xb`` is the
    design row of each block, ``Lw = exp(off - o_ref)``, ``PA[k, :]`` the centred power sums of
    ``Lw`` over block k and ``Lc`` the centre of its range; zero counts are then summed by power
    series (see :mod:`._few_rows`). Outputs are written per gene (row g of each array of ``out``,
    a :class:`BlockOut`).
    """
    pos, X, off, starts = cells.pos, cells.X, cells.off, cells.starts
    nodes = quad.nodes
    few_on = few.on
    PA, Lc, bstarts = few.PA, few.Lc, few.bstarts
    n = X.shape[0]
    y = np.zeros(n)
    G = indptr.shape[0] - 1
    nzp = np.empty(n, dtype=np.int64)
    nzy = np.empty(n)
    # non-zero cells are listed per block (per donor when the fast path is off)
    bnd = bstarts if few_on else starts
    nb = bnd.shape[0] - 1
    nzs = np.zeros(nb + 1, dtype=np.int64)
    PZ = np.empty((PA.shape[0], PA.shape[1] + 2))
    # non-zero cells are bucketed by block (donor, or donor and design row on the fast path)
    # straight from the sparse column: a counting sort keyed by input row, in O(non-zeros). The
    # fast path with the Laplace objective never looks at the cells one by one and needs no dense y.
    jc = cell_level_column(X, starts)  # the general kernel's shortcut for one cell-level column
    tv, v0 = _two_valued(X)  # separation checks need only these and the non-zero cells
    columns = DesignColumns(jc, tv, v0)
    lists_only = few_on and nodes.shape[0] <= 1
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
        cur[:] = nzs
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
        if few_on:
            few_rows_gene_power_sums(PA, few.Lw, Lc, off, bstarts, nzp, nzy, nzs, PZ)
        gene = Gene(nzp[:nnz], nzy[:nnz], nzs, PZ)
        ll, it, st, gm = maximise_gene(y, cells, quad, few, gene, columns, out.phi[g], out.modes[g], out.cov[g])
        out.loglik[g] = ll
        out.n_iter[g] = it
        out.status[g] = st
        out.grad_max[g] = gm
