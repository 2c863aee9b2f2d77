"""Sparse input: columns of a CSR matrix as CSC arrays (in memory and chunk by chunk from disk)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


@njit(**_JIT)
def csr_column_counts(indptr, indices, n_cols, r0, r1):
    """Number of stored entries per column in rows ``r0:r1`` of a CSR matrix."""
    out = np.zeros(n_cols, dtype=np.int64)
    for k in range(indptr[r0], indptr[r1]):
        out[indices[k]] += 1
    return out


@njit(**_JIT)
def csr_row_cursors(indptr, indices, a):
    """Per row of a canonical CSR matrix, the position of its first entry in column >= ``a``."""
    n = indptr.shape[0] - 1
    cur = np.empty(n, dtype=np.int64)
    for r in range(n):
        lo = indptr[r]
        hi = indptr[r + 1]
        while lo < hi:  # binary search: the row's column indices are sorted
            mid = (lo + hi) // 2
            if indices[mid] < a:
                lo = mid + 1
            else:
                hi = mid
        cur[r] = lo
    return cur


@njit(**_JIT)
def csr_columns_to_csc(indptr, indices, data, a, e, r0, r1, cursor, dest, out_data, out_rows, row0=0):
    """Scatter the entries of rows ``r0:r1`` in columns ``a:e`` of a canonical CSR matrix into
    CSC arrays ``out_data`` / ``out_rows`` of those columns; ``dest`` (e - a) holds each column's
    next free position and is advanced here, and ``cursor`` each row's first entry in column >= ``a``
    (:func:`csr_row_cursors`), advanced here to column ``e``: consecutive panels then read every
    entry once in all. Rows are visited in order, so each column's rows come sorted; disjoint row
    ranges with their own ``dest`` can be scattered by concurrent threads. Row ``r`` is stored as
    ``row0 + r`` (``row0``: the first row of a chunk of rows read from a file)."""
    for r in range(r0, r1):
        k = cursor[r]
        end = indptr[r + 1]
        while k < end and indices[k] < e:
            c = indices[k] - a
            d = dest[c]
            out_rows[d] = row0 + r
            out_data[d] = data[k]
            dest[c] = d + 1
            k += 1
        cursor[r] = k


@njit(**_JIT)
def csr_rows_sorted(indptr, indices):
    """Whether the column indices of every row of a CSR matrix are in non-decreasing order."""
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r] + 1, indptr[r + 1]):
            if indices[k] < indices[k - 1]:
                return False
    return True


# ------------------------------------------------------------------------------------------------
# per-level sums of a chunk of stored entries (rows of a CSR matrix or columns of a CSC one)
# ------------------------------------------------------------------------------------------------
@njit(inline="always", **_JIT)
def _entry(by_row, base, a, index, colmap):
    """The cell and gene of a stored entry: row ``base + a`` and column ``index`` of a CSR chunk, or
    row ``index`` and column ``base + a`` of a CSC one (the gene via ``colmap``, -1: not wanted)."""
    if by_row:
        return base + a, colmap[index]
    return index, colmap[base + a]


@njit(**_JIT)
def level_sums_chunk(by_row, base, ptr, ind, val, colmap, codes, weight, sums, detected):
    """Add a chunk's entries to per-level sums: for each of the ``k`` rows of ``codes`` (k, cells),
    ``sums[codes[t, cell], gene] += value * weight[cell]`` and ``detected[.., gene] += 1`` where the
    value is positive (a code below 0 leaves the cell out of that set).

    The chunk is ``ptr`` / ``ind`` / ``val``: rows ``base ..`` of a CSR matrix (``by_row``, ``ind``
    the columns) or columns ``base ..`` of a CSC one (``ind`` the rows); ``colmap`` maps a stored
    column to its gene (-1: not wanted)."""
    k = codes.shape[0]
    for a in range(ptr.shape[0] - 1):
        for j in range(ptr[a], ptr[a + 1]):
            cell, g = _entry(by_row, base, a, ind[j], colmap)
            if g < 0:
                continue
            v = float(val[j])
            w = v * weight[cell]
            for t in range(k):
                r = codes[t, cell]
                if r >= 0:
                    sums[r, g] += w
                    if v > 0.0:
                        detected[r, g] += 1.0


@njit(**_JIT)
def levels_present_chunk(by_row, base, ptr, ind, val, colmap, codes, present):
    """Mark ``present[codes[cell], gene] = 1`` for the chunk's positive entries (chunk as in
    :func:`level_sums_chunk`; ``present`` (levels, genes) uint8)."""
    for a in range(ptr.shape[0] - 1):
        for j in range(ptr[a], ptr[a + 1]):
            if not val[j] > 0:
                continue
            cell, g = _entry(by_row, base, a, ind[j], colmap)
            if g >= 0 and codes[cell] >= 0:
                present[codes[cell], g] = 1


# ------------------------------------------------------------------------------------------------
# a CSR file by gene through buckets (counting sorts)
# ------------------------------------------------------------------------------------------------
@njit(**_JIT)
def bucket_scatter(ptr, ind, val, base, colmap, bucket, n_buckets, rows_out, genes_out, vals_out):
    """Scatter a CSR chunk's entries (rows ``base ..``) into the order of their genes' buckets, rows in
    order within a bucket (a counting sort): the row, gene (``colmap``; -1: left out) and value of each
    into ``*_out``. Returns the (n_buckets + 1,) start of each bucket there."""
    starts = np.zeros(n_buckets + 1, dtype=np.int64)
    for j in range(ptr[0], ptr[ptr.shape[0] - 1]):
        g = colmap[ind[j]]
        if g >= 0:
            starts[bucket[g] + 1] += 1
    for k in range(n_buckets):
        starts[k + 1] += starts[k]
    pos = starts[:-1].copy()
    for a in range(ptr.shape[0] - 1):
        for j in range(ptr[a], ptr[a + 1]):
            g = colmap[ind[j]]
            if g < 0:
                continue
            d = pos[bucket[g]]
            rows_out[d] = base + a
            genes_out[d] = g
            vals_out[d] = val[j]
            pos[bucket[g]] = d + 1
    return starts


@njit(**_JIT)
def bucket_by_gene(rows, genes, vals, g0, width, rows_out, vals_out):
    """Sort a bucket's entries by gene (genes ``g0 .. g0 + width - 1``), stably (a counting sort): rows and
    values into ``*_out``. Returns the (width + 1,) CSC column pointers."""
    indptr = np.zeros(width + 1, dtype=np.int64)
    for i in range(genes.shape[0]):
        indptr[genes[i] - g0 + 1] += 1
    for k in range(width):
        indptr[k + 1] += indptr[k]
    pos = indptr[:-1].copy()
    for i in range(genes.shape[0]):
        c = genes[i] - g0
        d = pos[c]
        rows_out[d] = rows[i]
        vals_out[d] = vals[i]
        pos[c] = d + 1
    return indptr
