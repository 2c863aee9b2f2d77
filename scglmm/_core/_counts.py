"""Count access: blocks of genes as CSC arrays, from memory or from an ``.h5ad`` file.

:func:`block_getter` returns a function giving genes ``a:b`` of a count matrix as a CSC block:
views of a CSC matrix, converted blocks of a dense one, and CSC *panels* of a CSR matrix (one
compiled transpose per panel, :mod:`scglmm._core.kernels._sparse`).

Out-of-core counts: :class:`BackedCounts` wraps the count matrix of an ``.h5ad`` file (a path, an open ``h5py``
group / dataset, or the ``X`` of an AnnData opened with ``backed="r"``) and gives the fitting code
what it needs without loading the matrix: streamed checks and sums over chunks of rows, and
:meth:`BackedCounts.get_block`, the CSC block of genes ``a:b``, identical to the block the
in-memory path builds, so the fitted numbers are bitwise the same.

How gene blocks are read depends on the layout on disk:

* **CSC** (``csc_matrix`` encoding): a gene block is one contiguous slice of ``data`` /
  ``indices``; read directly.
* **dense** (an HDF5 dataset): a gene block is the hyperslab ``[:, a:b]``; read directly.
* **CSR** (``csr_matrix`` encoding, what scanpy writes): the entries of one gene are spread over
  the whole file, so a gene block cannot be read alone. Genes are grouped into *panels* holding
  at most ``panel_nnz`` non-zeros (from a first pass counting non-zeros per gene); a panel is
  built by one streaming pass over row chunks of the file, each scattered into the panel by the
  same compiled transpose as in-memory CSR counts, and then serves all of its gene blocks from
  memory. Memory is bounded by ``panel_nnz`` (the panel's CSC arrays, 8 bytes per non-zero for
  float32 counts, plus one row chunk of ``chunk_nnz`` entries, 8-16 bytes each), not by the
  matrix; the price is ``ceil(nnz / panel_nnz)`` reads of the file, which grows with the genes
  squared. Beyond :data:`MAX_PANEL_PASSES` panels a fit reads a temporary CSC copy of its genes
  instead (:func:`by_gene`), made in one pass over the rows (:meth:`BackedCounts.gene_buckets`), as
  :func:`scglmm.to_csc` does for a file kept.

Reads on the workers: with worker processes (joblib's loky or Dask backends), a CSC or dense file is
not read by the client at all: :func:`block_reader` gives, per gene block, a :class:`BlockRead` (the
file's path, the element's name and the block's columns, a few hundred bytes) that the worker calls
to read its block itself, so the client's memory stays flat whatever the size of the file. CSR
files are still read by the client (one panel at a time): each worker reading its own blocks would
scan the whole file for each of them.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ._checks import check_counts
from ._errors import InvalidTypeError, InvalidValueError, MissingKeyError
from .kernels._sparse import (
    bucket_by_gene,
    bucket_scatter,
    csr_column_counts,
    csr_columns_to_csc,
    csr_row_cursors,
    csr_rows_sorted,
    level_sums_chunk,
    levels_present_chunk,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "PANEL_NNZ",
    "BackedCounts",
    "BlockRead",
    "CSCBlock",
    "as_backed_counts",
    "block_getter",
    "block_reader",
    "level_stats",
    "write_csc",
]

#: Non-zeros (or dense entries) read per chunk of rows in streaming passes (~40 bytes each at peak).
CHUNK_NNZ = 1 << 22
#: Non-zeros held in memory per panel of genes of a CSR file (index + value: 8-12 bytes each).
PANEL_NNZ = 1 << 25

#: Counts in a CSR file are fitted from a temporary CSC copy of their genes (:func:`by_gene`) when their
#: panels would take more than this many passes over the file.
MAX_PANEL_PASSES = 8
#: Entries per bucket of genes of that copy (:meth:`BackedCounts.gene_buckets`; about 16 bytes each in memory).
BUCKET_NNZ = 1 << 23

logger = logging.getLogger("scglmm")

#: A chunk of stored entries ``(by_row, base, ptr, ind, val, colmap)``: rows ``base ..`` of a CSR
#: matrix (``ind``: their columns) or columns ``base ..`` of a CSC one (``ind``: their rows), and per
#: stored column its gene (-1: not wanted).
RawChunk = tuple[bool, int, "NDArray[np.int64]", "NDArray", "NDArray", "NDArray[np.int64]"]


class CSCBlock:
    """Columns of a canonical CSC matrix as plain arrays (what :func:`fit_block` reads)."""

    __slots__ = ("data", "indices", "indptr", "shape")

    def __init__(self, data: NDArray, indices: NDArray, indptr: NDArray, shape: tuple[int, int]) -> None:
        self.data = data
        self.indices = indices
        self.indptr = indptr
        self.shape = shape

    def __getstate__(self) -> tuple:
        return (self.data, self.indices, self.indptr, self.shape)

    def __setstate__(self, state: tuple) -> None:
        self.data, self.indices, self.indptr, self.shape = state


def _in_threads(fn: Callable, calls: list[tuple]) -> list:
    """``fn(*args)`` for each tuple of ``calls``: the first in this thread, the others each in a
    thread of their own (for compiled ``nogil`` functions)."""
    if len(calls) == 1:
        return [fn(*calls[0])]
    with ThreadPoolExecutor(max_workers=len(calls) - 1) as pool:
        futures = [pool.submit(fn, *args) for args in calls[1:]]
        first = fn(*calls[0])
        return [first, *(f.result() for f in futures)]


def _csr_panels(Y: sparse.csr_matrix, panel_nnz: int, n_threads: int) -> Callable[[int, int], CSCBlock]:
    """Blocks of genes of a CSR matrix through CSC panels (see :func:`block_getter`)."""
    n, G = Y.shape
    if not Y.has_canonical_format:  # canonicalise a copy once, never the caller's matrix
        Y = Y.copy()
        Y.sum_duplicates()
    # one range of rows with about equal non-zeros per thread; each thread counts and scatters its
    # own rows, into positions after those of the ranges before it (so rows stay sorted)
    nt = int(max(1, min(n_threads, n)))
    cuts = [0, *(int(np.searchsorted(Y.indptr, Y.nnz * t // nt)) for t in range(1, nt)), n]
    ranges = list(itertools.pairwise(cuts))
    counts = np.array(_in_threads(csr_column_counts, [(Y.indptr, Y.indices, G, r0, r1) for r0, r1 in ranges]))
    before = np.cumsum(counts, axis=0) - counts  # per range and column: entries in the ranges before
    cum = np.concatenate([[0], np.cumsum(counts.sum(axis=0))])
    panel: dict[str, object] = {"lo": 0, "hi": 0, "m": None, "cursor": None}

    def get(a: int, b: int) -> CSCBlock:
        if not (panel["lo"] <= a and b <= panel["hi"]):
            # the panel: genes a .. e with at most panel_nnz non-zeros, and at least a .. b. Each
            # row keeps a cursor at its first entry of the next panel, so consecutive panels read
            # every entry once in all (compiled; a scipy column slice rescans every row)
            e = int(np.searchsorted(cum, cum[a] + panel_nnz, side="right")) - 1
            e = min(max(e, b), G)
            panel["m"] = None  # free the old panel before allocating the next
            if a == 0:
                panel["cursor"] = Y.indptr[:-1].astype(np.int64)
            elif panel["cursor"] is None or a != panel["hi"]:
                panel["cursor"] = csr_row_cursors(Y.indptr, Y.indices, a)
            out_data = np.empty(int(cum[e] - cum[a]), dtype=Y.data.dtype)
            out_rows = np.empty(out_data.shape[0], dtype=np.int32)  # row numbers fit (as in scipy)
            first = cum[a:e] - cum[a]
            calls = [
                (Y.indptr, Y.indices, Y.data, a, e, r0, r1, panel["cursor"], first + before[t, a:e], out_data, out_rows)
                for t, (r0, r1) in enumerate(ranges)
            ]
            _in_threads(csr_columns_to_csc, calls)
            panel.update(lo=a, hi=e, m=(out_data, out_rows, cum[a : e + 1] - cum[a]))
        data, rows, ptr_all = panel["m"]
        lo, hi = int(ptr_all[a - panel["lo"]]), int(ptr_all[b - panel["lo"]])
        ptr = ptr_all[a - panel["lo"] : b - panel["lo"] + 1] - lo
        return CSCBlock(data[lo:hi], rows[lo:hi], ptr, (Y.shape[0], b - a))

    return get


class BlockRead:
    """Genes of a count file, read where the object is called: a worker reads its own block instead of
    receiving it from the client. Small and picklable: the file's path, the counts' element in it and the
    columns; calling it returns the same CSC matrix as :meth:`BackedCounts.get_block` in the client.

    Parameters
    ----------
    path
        Absolute path of the file (the workers must see it at the same path, e.g. a shared file system).
    key
        The counts' element in the file (``"X"``, ``"/layers/counts"``, ...).
    cols
        The columns of the file to read.
    """

    __slots__ = ("cols", "key", "path")

    def __init__(self, path: str, key: str, cols: NDArray[np.int64]) -> None:
        self.path = path
        self.key = key
        self.cols = cols

    def __call__(self) -> sparse.csc_matrix:
        return BackedCounts(self.path, key=self.key).read_columns(self.cols)

    def __getstate__(self) -> tuple:
        return (self.path, self.key, self.cols)

    def __setstate__(self, state: tuple) -> None:
        self.path, self.key, self.cols = state


def block_reader(Y) -> Callable[[int, int], BlockRead] | None:
    """For counts in a CSC or dense file that other processes can open: a function giving, for genes ``a:b``,
    the :class:`BlockRead` a worker calls to read them itself. None otherwise (counts in memory, a CSR file,
    an HDF5 file in memory or open for writing, a temporary copy of :func:`by_gene`): the client reads the blocks
    (:func:`block_getter`)."""
    if not isinstance(Y, BackedCounts) or Y.format == "csr" or Y.temporary or Y.file_element() is None:
        return None
    return Y.block_read


def block_getter(
    Y, panel_nnz: int = PANEL_NNZ, n_threads: int = 1
) -> Callable[[int, int], sparse.csc_matrix | CSCBlock]:
    """A function returning genes ``a:b`` of ``Y`` as a CSC matrix (sorted, no duplicates).

    Dense blocks are converted one block at a time, so the whole matrix is never densified. CSC
    input gives views of its arrays (:class:`CSCBlock`), without a copy. CSR input (scanpy's
    default) is converted to CSC one *panel* of consecutive genes at a time, each panel holding at
    most ``panel_nnz`` non-zeros (or one block): slicing a CSR matrix by column reads every row,
    so one slice per panel instead of one per block of genes, with memory bounded by the panel.
    The conversion runs in ``n_threads`` threads, each scattering a range of rows.
    Blocks are expected in increasing order (as :func:`fit_genes` asks for them).
    """
    if hasattr(Y, "get_block"):  # counts on disk (BackedCounts)
        return Y.get_block
    is_sparse = sparse.issparse(Y)
    if is_sparse and Y.format not in ("csr", "csc"):
        Y = sparse.csc_matrix(Y)

    if is_sparse and Y.format == "csc":
        if not Y.has_canonical_format:  # canonicalise a copy once, never the caller's matrix
            Y = Y.copy()
            Y.sum_duplicates()

        def get_csc(a: int, b: int) -> CSCBlock:
            # a block of columns of a canonical CSC matrix is a contiguous slice: views, no copy
            lo, hi = int(Y.indptr[a]), int(Y.indptr[b])
            return CSCBlock(Y.data[lo:hi], Y.indices[lo:hi], Y.indptr[a : b + 1] - lo, (Y.shape[0], b - a))

        return get_csc

    if is_sparse and Y.format == "csr":
        return _csr_panels(Y, int(panel_nnz), int(n_threads))

    def get(a: int, b: int) -> sparse.csc_matrix:
        blk = Y[:, a:b]
        blk = sparse.csc_matrix(blk) if is_sparse else sparse.csc_matrix(np.asarray(blk))
        blk.sum_duplicates()
        blk.sort_indices()
        return blk

    return get


def _encoding(elem) -> str:
    import h5py

    if isinstance(elem, h5py.Dataset):
        return "dense"
    enc = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc in ("csr_matrix", "csr"):
        return "csr"
    if enc in ("csc_matrix", "csc"):
        return "csc"
    msg = f"{elem.name!r} is not a sparse matrix (csr_matrix / csc_matrix encoding) or a dense dataset; got {enc!r}."
    raise InvalidValueError(msg, param="Y")


class BackedCounts:
    """A cells x genes count matrix on disk, read in chunks of rows or blocks of genes.

    Parameters
    ----------
    source
        Path of an ``.h5ad`` (or any HDF5) file, an open ``h5py.Group`` (sparse, anndata
        encoding) or ``h5py.Dataset`` (dense), or an anndata backed sparse dataset
        (``adata.X`` of ``anndata.read_h5ad(path, backed="r")``).
    key
        With a path: the element holding the counts (``"X"``, ``"layers/counts"``, ...).
    chunk_nnz
        Entries read per chunk of rows in streaming passes.
    panel_nnz
        CSR files only: non-zeros held in memory per panel of genes (see the module notes).
    """

    def __init__(
        self,
        source: str | Path | Any,
        *,
        key: str = "X",
        chunk_nnz: int = CHUNK_NNZ,
        panel_nnz: int = PANEL_NNZ,
    ) -> None:
        import h5py

        self._path: Path | None = None
        self._elem = None
        if isinstance(source, str | Path):
            self._path = Path(source)
            self._key = key
            if not self._path.exists():
                msg = f"{self._path} does not exist."
                raise FileNotFoundError(msg)
            with self._open() as elem:
                self._read_meta(elem)
        else:
            elem = getattr(source, "group", source)  # anndata backed sparse dataset -> its h5py group
            if not isinstance(elem, h5py.Group | h5py.Dataset):
                msg = f"cannot read counts from {type(source).__name__}; pass a path, an h5py group/dataset or adata.X."
                raise InvalidTypeError(msg, param="Y")
            self._elem = elem
            self._read_meta(elem)
        self.chunk_nnz = int(chunk_nnz)
        self.panel_nnz = int(panel_nnz)
        self._cols: NDArray[np.int64] | None = None  # column subset (a view), None = all genes
        self._lock = threading.Lock()
        self._panel: tuple[int, int, sparse.csc_matrix] | None = None
        self._indptr: NDArray[np.int64] | None = None
        self._col_nnz: NDArray[np.int64] | None = None
        self.temporary = False
        """A file of this process (:func:`by_gene`): other processes may not see it, so they are sent blocks."""

    # ---- file access ---------------------------------------------------------------------------
    def _read_meta(self, elem) -> None:
        self.format = _encoding(elem)
        if self.format == "dense":
            self._shape = tuple(int(s) for s in elem.shape)
            self.dtype = elem.dtype
        else:
            self._shape = tuple(int(s) for s in elem.attrs["shape"])
            self.dtype = elem["data"].dtype
        if len(self._shape) != 2:
            msg = f"counts must be 2-d (cells x genes); got shape {self._shape}."
            raise InvalidValueError(msg, param="Y")

    @contextmanager
    def _open(self) -> Iterator[Any]:
        if self._elem is not None:
            yield self._elem
            return
        import h5py

        with h5py.File(self._path, "r") as fh:
            if self._key not in fh:
                msg = f"{self._key!r} not found in {self._path}; available: {list(fh.keys())}."
                raise MissingKeyError(msg, param="Y")
            yield fh[self._key]

    def _get_indptr(self, elem) -> NDArray[np.int64]:
        if self._indptr is None:
            self._indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
        return self._indptr

    # ---- shape and views -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        n, G = self._shape
        return (n, G if self._cols is None else int(self._cols.size))

    @property
    def ndim(self) -> int:
        return 2

    def _columns(self) -> NDArray[np.int64]:
        return np.arange(self._shape[1], dtype=np.int64) if self._cols is None else self._cols

    def __getitem__(self, key) -> BackedCounts | sparse.csr_matrix:
        """``[:, genes]``: a view reading only those genes; ``[rows]`` / ``[rows, :]``: rows in memory (CSR)."""
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice) and rows == slice(None):
            view = object.__new__(BackedCounts)
            view.__dict__.update(self.__dict__)
            view._lock = threading.Lock()
            view._panel = None
            idx = self._columns()[cols]
            view._cols = np.atleast_1d(np.asarray(idx, dtype=np.int64))
            return view
        if isinstance(cols, slice) and cols == slice(None):
            return self._read_rows(rows)
        msg = "BackedCounts supports [:, genes] (a view) or [cells] / [cells, :] (read into memory), not both at once."
        raise IndexError(msg)

    # ---- streaming passes over chunks of rows --------------------------------------------------
    def iter_chunks(self) -> Iterator[tuple[int, sparse.csr_matrix]]:
        """``(first_row, chunk)`` over chunks of rows, each a CSR matrix of the view's genes."""
        n, G = self._shape
        sel = self._cols
        with self._open() as elem:
            if self.format == "csr":
                indptr = self._get_indptr(elem)
                bounds = _row_bounds(indptr, self.chunk_nnz)
                for r0, r1 in bounds:
                    s, e = indptr[r0], indptr[r1]
                    chunk = sparse.csr_matrix(
                        (elem["data"][s:e], elem["indices"][s:e], indptr[r0 : r1 + 1] - s), shape=(r1 - r0, G)
                    )
                    yield r0, (chunk if sel is None else chunk[:, sel])
            elif self.format == "dense":
                step = max(1, self.chunk_nnz // max(G, 1))
                for r0 in range(0, n, step):
                    r1 = min(r0 + step, n)
                    chunk = sparse.csr_matrix(np.asarray(elem[r0:r1, :]))
                    yield r0, (chunk if sel is None else chunk[:, sel])
            else:  # csc: stream column chunks, hand them out as one "chunk of all rows" per gene range
                indptr = self._get_indptr(elem)
                cols = self._columns()
                for c0, c1 in _row_bounds(indptr, self.chunk_nnz):
                    pos = np.flatnonzero((cols >= c0) & (cols < c1))  # view columns stored in this chunk
                    if pos.size == 0:
                        continue
                    s, e = indptr[c0], indptr[c1]
                    blk = sparse.csc_matrix(
                        (elem["data"][s:e], elem["indices"][s:e], indptr[c0 : c1 + 1] - s), shape=(n, c1 - c0)
                    )
                    yield 0, _place_columns(blk[:, cols[pos] - c0], pos, self.shape[1]).tocsr()

    def iter_raw(self) -> Iterator[RawChunk]:
        """The stored entries chunk by chunk as :data:`RawChunk` (rows of a CSR or dense file, columns
        of a CSC one), without building sparse matrices: what the compiled per-level sums read."""
        n, G = self._shape
        colmap = self._colmap()
        with self._open() as elem:
            if self.format == "dense":
                step = max(1, self.chunk_nnz // max(G, 1))
                for r0 in range(0, n, step):
                    c = sparse.csr_matrix(np.asarray(elem[r0 : min(r0 + step, n), :]))
                    yield True, r0, c.indptr, c.indices, c.data, colmap
                return
            indptr = self._get_indptr(elem)
            by_row = self.format == "csr"
            for a0, a1 in _row_bounds(indptr, self.chunk_nnz):
                if not by_row and not np.any(colmap[a0:a1] >= 0):
                    continue  # none of the view's genes in these columns
                s, e = indptr[a0], indptr[a1]
                yield by_row, a0, indptr[a0 : a1 + 1] - s, elem["indices"][s:e], elem["data"][s:e], colmap

    def distinct_columns(self) -> tuple[BackedCounts, NDArray[np.int64]] | None:
        """A view of this view's distinct genes and the position of each of its genes there, if some
        gene is repeated (else None): per-gene passes read each stored column once."""
        if self._cols is None:
            return None
        uniq, inv = np.unique(self._cols, return_inverse=True)
        if uniq.size == self._cols.size:
            return None
        view = object.__new__(BackedCounts)
        view.__dict__.update(self.__dict__)
        view._lock, view._panel, view._cols = threading.Lock(), None, uniq
        return view, inv.ravel()

    def _colmap(self) -> NDArray[np.int64]:
        """Per stored column, its position in this view (-1: not in it; distinct genes only)."""
        G = self._shape[1]
        if self._cols is None:
            return np.arange(G, dtype=np.int64)
        out = np.full(G, -1, dtype=np.int64)
        out[self._cols] = np.arange(self._cols.size, dtype=np.int64)
        return out

    def check_counts(self, what: str = "counts", *, param: str = "Y") -> None:
        """Raise unless all entries are finite non-negative integers (streamed over the stored values)."""
        if self._cols is None and self.format != "dense":  # every stored value: no indices needed
            with self._open() as elem:
                data = elem["data"]
                for s in range(0, data.shape[0], self.chunk_nnz):
                    check_counts(data[s : s + self.chunk_nnz], what=what, param=param)
            return
        for by_row, _, _, ind, val, colmap in self.iter_raw():
            if self._cols is not None and by_row:  # only the view's genes
                val = val[colmap[ind] >= 0]
            check_counts(val, what=what, param=param)

    def sum(self, axis: int | None = None) -> NDArray[np.float64] | float:
        """Sums over ``axis`` (1: per cell, 0: per gene, None: all), streamed."""
        n, G = self.shape
        if axis not in (0, 1, None):
            msg = f"axis must be 0, 1 or None; got {axis!r}."
            raise InvalidValueError(msg, param="Y")
        distinct = self.distinct_columns()
        if distinct is None:
            rows, cols = self._axis_sums(np.ones(G))
        else:  # a repeated gene counts as often in the cells' sums as it appears
            view, inv = distinct
            rows, cols = view._axis_sums(np.bincount(inv).astype(np.float64))
            cols = cols[inv]
        return rows if axis == 1 else cols if axis == 0 else float(rows.sum())

    def _axis_sums(self, mult: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per cell the sum of its counts times ``mult`` of their gene, and per gene its sum (distinct genes)."""
        n, G = self.shape
        rows = np.zeros(n)
        cols = np.zeros(G)
        for by_row, base, ptr, ind, val, colmap in self.iter_raw():
            major = np.repeat(np.arange(base, base + ptr.size - 1, dtype=np.int64), np.diff(ptr))
            cell, gene = (major, colmap[ind]) if by_row else (ind, colmap[major])
            keep = gene >= 0
            v = np.asarray(val[keep], dtype=np.float64)
            rows += np.bincount(cell[keep], weights=v * mult[gene[keep]], minlength=n)
            cols += np.bincount(gene[keep], weights=v, minlength=G)
        return rows, cols

    def _read_rows(self, rows) -> sparse.csr_matrix:
        n = self._shape[0]
        idx = np.arange(n)[rows]
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        if self.format == "csc":  # every chunk holds all rows of some genes
            out = sparse.csr_matrix((idx.size, self.shape[1]), dtype=self.dtype)
            for _, chunk in self.iter_chunks():
                out = out + chunk[idx]
            return sparse.csr_matrix(out)
        parts = [chunk[mask[r0 : r0 + chunk.shape[0]]] for r0, chunk in self.iter_chunks()]
        out = sparse.vstack(parts, format="csr") if parts else sparse.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        if np.all(np.diff(idx) > 0):
            return out
        # rows were asked for in another order (or repeated): out holds the sorted unique rows
        return out[np.searchsorted(np.flatnonzero(mask), idx)]

    # ---- gene blocks ---------------------------------------------------------------------------
    def get_block(self, a: int, b: int) -> sparse.csc_matrix:
        """Genes ``a:b`` (of this view) as a CSC matrix with sorted indices and no duplicates."""
        return self.read_columns(self._columns()[a:b])

    def read_columns(self, cols: NDArray[np.int64]) -> sparse.csc_matrix:
        """Columns ``cols`` of the file (not of the view) as a CSC matrix with sorted indices and no duplicates."""
        with self._lock:
            blk = self._load_columns(np.asarray(cols, dtype=np.int64))
        blk.sum_duplicates()
        blk.sort_indices()
        return blk

    def gene_panels(self) -> Iterator[tuple[int, sparse.csc_matrix]]:
        """``(first_gene, panel)`` over all genes of the file in order, each panel a CSC matrix: the
        in-memory panels of a CSR file (one streaming pass each), slices of about ``chunk_nnz`` entries
        of a dense or CSC one. Used to rewrite a file as CSC (:func:`scglmm.to_csc`)."""
        n, G = self._shape
        a = 0
        while a < G:
            if self.format == "csr":
                p0, b, panel = self._panel_for(a, a + 1)
                yield a, panel if p0 == a else _csc_columns(panel, a - p0, b - p0)
                self._panel = None  # the next panel starts at b: free this one before reading it
            else:
                b = min(G, a + max(1, self.chunk_nnz // max(n, 1))) if self.format == "dense" else self._csc_end(a)
                yield a, self._load_columns(np.arange(a, b, dtype=np.int64))
            a = b

    def gene_buckets(self, folder: Path, bucket_nnz: int) -> Iterator[tuple[int, sparse.csc_matrix]]:
        """``(first_gene, panel)`` over the genes of this view of a CSR file in order, from one pass over its
        rows: each chunk's entries go to the temporary files of their bucket (a range of genes with at most
        ``bucket_nnz`` entries) in ``folder``, in row order; each bucket is then read back, sorted by gene
        (stably: rows stay in order), removed and yielded. Both sorts are counting sorts. The view's genes
        must be distinct."""
        n, G = self.shape
        cum = np.concatenate([[0], np.cumsum(self.gene_nnz())])
        starts = [0]
        while starts[-1] < G:
            a = starts[-1]
            b = int(np.searchsorted(cum, cum[a] + bucket_nnz, side="right")) - 1
            starts.append(min(max(b, a + 1), G))
        width = np.diff(starts)
        bucket = np.repeat(np.arange(width.size, dtype=np.int64), width)
        rtype = np.int32 if n < 2**31 else np.int64
        parts = (("row", rtype), ("gene", np.int32), ("value", self.dtype))
        for _, base, ptr, ind, val, colmap in self.iter_raw():
            out = [np.empty(ind.size, dtype=t) for _, t in parts]
            at = bucket_scatter(
                np.asarray(ptr, dtype=np.int64), np.asarray(ind, dtype=np.int64), val, base, colmap, bucket,
                width.size, *out,
            )  # fmt: skip
            for k in np.flatnonzero(np.diff(at)):
                for (name, _), arr in zip(parts, out, strict=True):
                    with open(folder / f"{k}.{name}", "ab") as fh:
                        arr[at[k] : at[k + 1]].tofile(fh)
        for k in range(width.size):
            arrs = []
            for name, t in parts:
                path = folder / f"{k}.{name}"
                arrs.append(np.fromfile(path, dtype=t) if path.exists() else np.empty(0, dtype=t))
                path.unlink(missing_ok=True)
            rows, vals = np.empty_like(arrs[0]), np.empty_like(arrs[2])
            ptr = bucket_by_gene(arrs[0], arrs[1], arrs[2], starts[k], int(width[k]), rows, vals)
            panel = sparse.csc_matrix((vals, rows, ptr), shape=(n, int(width[k])))
            panel.sum_duplicates()
            yield starts[k], panel

    def _csc_end(self, a: int) -> int:
        """The end of the CSC slice of about ``chunk_nnz`` entries that starts at gene ``a``."""
        with self._open() as elem:
            indptr = self._get_indptr(elem)
        b = int(np.searchsorted(indptr, indptr[a] + self.chunk_nnz, side="right")) - 1
        return min(max(b, a + 1), self._shape[1])

    def file_element(self) -> tuple[Path, str] | None:
        """The absolute path of the file and the name of the counts' element in it, if another process
        can open them (a file on disk opened read-only); None otherwise (e.g. an in-memory HDF5 file)."""
        if self._path is not None:
            return self._path.resolve(), self._key
        fh = self._elem.file
        if fh.mode != "r" or fh.driver == "core" or not Path(fh.filename).is_file():
            return None
        return Path(fh.filename).resolve(), self._elem.name

    def block_read(self, a: int, b: int) -> BlockRead:
        """A :class:`BlockRead` of genes ``a:b`` of this view (see :func:`block_reader`)."""
        path, key = self.file_element()
        return BlockRead(str(path), key, self._columns()[a:b].copy())

    def _load_columns(self, cols: NDArray[np.int64]) -> sparse.csc_matrix:
        n, G = self._shape
        if cols.size == 0:
            return sparse.csc_matrix((n, 0), dtype=self.dtype)
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        if self.format == "csr":
            p0, p1, panel = self._panel_for(c0, c1)
            if cols.size == c1 - c0 and np.all(np.diff(cols) == 1):  # contiguous: cheap slice of indptr
                return _csc_columns(panel, c0 - p0, c1 - p0)
            return panel[:, cols - p0]
        with self._open() as elem:
            if self.format == "dense":
                blk = sparse.csc_matrix(np.asarray(elem[:, c0:c1]))
            else:
                indptr = self._get_indptr(elem)
                s, e = indptr[c0], indptr[c1]
                blk = sparse.csc_matrix(
                    (elem["data"][s:e], elem["indices"][s:e], indptr[c0 : c1 + 1] - s), shape=(n, c1 - c0)
                )
        return blk[:, cols - c0] if not (cols.size == c1 - c0 and np.all(np.diff(cols) == 1)) else blk

    def gene_nnz(self) -> NDArray[np.int64]:
        """Stored entries per gene of this view (sparse files; a pass over the indices of a CSR one)."""
        with self._open() as elem:
            nnz = np.diff(self._get_indptr(elem)) if self.format == "csc" else self._gene_nnz(elem)
        return nnz if self._cols is None else nnz[self._cols]

    def _gene_nnz(self, elem) -> NDArray[np.int64]:
        if self._col_nnz is None:
            indptr = self._get_indptr(elem)
            G = self._shape[1]
            nnz = np.zeros(G, dtype=np.int64)
            for r0, r1 in _row_bounds(indptr, self.chunk_nnz):
                nnz += np.bincount(elem["indices"][indptr[r0] : indptr[r1]], minlength=G)
            self._col_nnz = nnz
        return self._col_nnz

    def _panel_for(self, c0: int, c1: int) -> tuple[int, int, sparse.csc_matrix]:
        """The in-memory panel holding genes ``c0:c1`` (CSR files); built by one pass over the rows."""
        if self._panel is not None and self._panel[0] <= c0 and c1 <= self._panel[1]:
            return self._panel
        self._panel = None  # free the old panel before reading the next
        n, G = self._shape
        with self._open() as elem:
            cum = np.concatenate([[0], np.cumsum(self._gene_nnz(elem))])
            # extend the panel to the right as far as the budget allows (at least to c1)
            p1 = int(np.searchsorted(cum, cum[c0] + self.panel_nnz, side="right")) - 1
            p1 = min(max(p1, c1), G)
            indptr = self._get_indptr(elem)
            itype = np.int32 if n < 2**31 else np.int64
            # the panel's CSC arrays, allocated once at their final size (counting sort by gene)
            pptr = cum[c0 : p1 + 1] - cum[c0]
            p_ind = np.empty(int(pptr[-1]), dtype=itype)
            p_val = np.empty(int(pptr[-1]), dtype=self.dtype)
            nxt = pptr[:-1].copy()  # next free slot of each gene
            for r0, r1 in _row_bounds(indptr, self.chunk_nnz):
                # the chunk's rows, scattered by the compiled transpose of in-memory CSR counts
                # (rows in order: each gene's rows stay increasing across the chunks)
                s, e = indptr[r0], indptr[r1]
                ptr = indptr[r0 : r1 + 1] - s
                ind = elem["indices"][s:e]
                val = elem["data"][s:e]
                if not csr_rows_sorted(ptr, ind):  # the cursors need sorted columns in each row
                    chunk = sparse.csr_matrix((val, ind, ptr), shape=(r1 - r0, G))
                    chunk.sort_indices()
                    ind, val = chunk.indices, chunk.data
                cursor = csr_row_cursors(ptr, ind, c0)
                csr_columns_to_csc(ptr, ind, val, c0, p1, 0, r1 - r0, cursor, nxt, p_val, p_ind, r0)
        panel = sparse.csc_matrix((p_val, p_ind, pptr), shape=(n, p1 - c0))
        panel.sum_duplicates()  # no-op for canonical files
        self._panel = (c0, p1, panel)
        return self._panel


def _row_bounds(indptr: NDArray[np.int64], chunk_nnz: int) -> list[tuple[int, int]]:
    """Split rows (or columns, for CSC) into consecutive chunks of about ``chunk_nnz`` entries."""
    n = indptr.size - 1
    out = []
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(indptr, indptr[r0] + chunk_nnz, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        out.append((r0, r1))
        r0 = r1
    return out


def _csc_columns(M: sparse.csc_matrix, a: int, b: int) -> sparse.csc_matrix:
    """Columns ``a:b`` of a CSC matrix, copying only their entries."""
    s, e = M.indptr[a], M.indptr[b]
    return sparse.csc_matrix(
        (M.data[s:e].copy(), M.indices[s:e].copy(), M.indptr[a : b + 1] - s), shape=(M.shape[0], b - a)
    )


def _place_columns(blk: sparse.csc_matrix, pos: NDArray[np.int64], width: int) -> sparse.csc_matrix:
    """Put the columns of ``blk`` at positions ``pos`` of an otherwise empty ``width``-column matrix."""
    coo = blk.tocoo()
    return sparse.csc_matrix((coo.data, (coo.row, pos[coo.col])), shape=(blk.shape[0], width))


def as_backed_counts(Y, **kwargs) -> BackedCounts | None:
    """``Y`` as :class:`BackedCounts` if it is a path, an h5py object or an anndata backed dataset, else None."""
    if isinstance(Y, BackedCounts):
        return Y
    if isinstance(Y, str | Path):
        return BackedCounts(Y, **kwargs)
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with anndata
        return None
    if isinstance(Y, h5py.Group | h5py.Dataset) or isinstance(getattr(Y, "group", None), h5py.Group):
        return BackedCounts(Y, **kwargs)
    return None


def gene_columns(Y: Any, genes: NDArray[np.int64]) -> sparse.csc_matrix:
    """The columns ``genes`` of a count matrix (dense, sparse or :class:`BackedCounts`) as CSC."""
    if isinstance(Y, BackedCounts):
        return Y[:, genes].get_block(0, len(genes))
    return sparse.csc_matrix(Y[:, genes])


# ------------------------------------------------------------------------------------------------
# per-level sums in one pass over the stored entries
# ------------------------------------------------------------------------------------------------
def raw_chunks(Y) -> Iterator[RawChunk]:
    """The stored entries of a count matrix (dense, sparse or :class:`BackedCounts`) as chunks of
    about :data:`CHUNK_NNZ` entries (:data:`RawChunk`); never densifies or copies a sparse matrix whole."""
    if isinstance(Y, BackedCounts):
        yield from Y.iter_raw()
        return
    G = Y.shape[1]
    colmap = np.arange(G, dtype=np.int64)
    if sparse.issparse(Y):
        if Y.format not in ("csr", "csc"):
            Y = sparse.csr_matrix(Y)
        indptr = np.asarray(Y.indptr, dtype=np.int64)
        for a0, a1 in _row_bounds(indptr, CHUNK_NNZ):
            s, e = indptr[a0], indptr[a1]
            yield Y.format == "csr", a0, indptr[a0 : a1 + 1] - s, Y.indices[s:e], Y.data[s:e], colmap
        return
    Y = np.asarray(Y)
    step = max(1, CHUNK_NNZ // max(G, 1))
    for r0 in range(0, Y.shape[0], step):
        c = sparse.csr_matrix(Y[r0 : r0 + step])
        yield True, r0, c.indptr, c.indices, c.data, colmap


def level_stats(
    Y, codes: NDArray[np.int64], n_levels: int, weight: NDArray[np.float64], present: tuple[NDArray, int] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.uint8] | None]:
    """Per level and gene, in one pass over the counts: the sum of ``count * weight`` and the number
    of cells with a count; and which levels of a second coding have a count.

    Parameters
    ----------
    Y
        Cells x genes counts: dense, sparse or :class:`BackedCounts` (streamed).
    codes
        (k, cells) or (cells,): the row of ``sums`` each cell adds to in each of ``k`` codings
        (-1: none), rows ``0 .. n_levels - 1`` shared by all codings.
    n_levels
        Rows of the sums.
    weight
        (cells,) factor of each cell's counts in the sums (e.g. ``1 / size factor``).
    present
        ``(codes, m)``: each cell's level (-1: none) of a coding whose levels with a count are wanted.

    Returns
    -------
    ``(sums, detected, present)``: two (n_levels, genes) float64 arrays and an (m, genes) uint8
    array (None without ``present``). Duplicate entries of a non-canonical sparse matrix count once
    each in ``detected``.
    """
    if isinstance(Y, BackedCounts) and (distinct := Y.distinct_columns()) is not None:
        view, inv = distinct
        sums, detected, pres = level_stats(view, codes, n_levels, weight, present)
        return sums[:, inv], detected[:, inv], None if pres is None else pres[:, inv]
    codes = np.ascontiguousarray(np.atleast_2d(codes), dtype=np.int64)
    w = np.ascontiguousarray(weight, dtype=np.float64)
    G = Y.shape[1]
    pres = None if present is None else np.zeros((int(present[1]), G), dtype=np.uint8)
    pcodes = None if present is None else np.ascontiguousarray(present[0], dtype=np.int64)
    parts = [(np.zeros((n_levels, G)), np.zeros((n_levels, G))) for _ in range(STATS_THREADS)]

    def add(t: int, chunk: RawChunk) -> None:  # part t of the chunk's entries into accumulator t
        by_row, base, ptr, ind, val, colmap = chunk
        a0, a1 = (int(np.searchsorted(ptr, ptr[-1] * k // STATS_THREADS)) for k in (t, t + 1))
        if t == STATS_THREADS - 1:
            a1 = ptr.size - 1
        sub = ptr[a0 : a1 + 1]
        level_sums_chunk(by_row, base + a0, sub, ind, val, colmap, codes, w, *parts[t])
        if pres is not None:  # every write is a 1: threads cannot lose one
            levels_present_chunk(by_row, base + a0, sub, ind, val, colmap, pcodes, pres)

    with ThreadPoolExecutor(STATS_THREADS) as pool:
        for chunk in _read_ahead(_typed_chunks(raw_chunks(Y))):
            list(pool.map(add, range(STATS_THREADS), [chunk] * STATS_THREADS))
    sums, detected = parts[0]
    for s, d in parts[1:]:
        sums += s
        detected += d
    return sums, detected, pres


#: Threads of :func:`level_stats` (its kernels release the GIL), each on a part of every chunk.
STATS_THREADS = min(2, os.cpu_count() or 1)


def _typed_chunks(chunks: Iterator[RawChunk]) -> Iterator[RawChunk]:
    """``chunks`` with 64-bit pointers and indices and float64 values (one type signature for the kernels)."""
    for by_row, base, ptr, ind, val, colmap in chunks:
        yield (
            by_row, base, np.asarray(ptr, dtype=np.int64), np.asarray(ind, dtype=np.int64),
            np.asarray(val, dtype=np.float64), colmap,
        )  # fmt: skip


def _read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each read in a background thread while the previous one is used (file reads beside
    compiled work)."""
    done = object()
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(next, items, done)
        while (item := nxt.result()) is not done:
            nxt = pool.submit(next, items, done)
            yield item


#: Entries per HDF5 chunk of the ``data`` and ``indices`` arrays :func:`write_csc` writes.
WRITE_CHUNK = 1 << 20


def write_csc(
    panels: Iterable[tuple[int, sparse.csc_matrix]], counts: BackedCounts, group: Any, compression: str | None
) -> None:
    """Write ``panels`` (``(first_gene, CSC panel)`` in gene order) of ``counts`` into the HDF5 ``group`` as
    anndata's ``csc_matrix`` encoding, chunked by :data:`WRITE_CHUNK` entries."""
    n, G = counts.shape
    itype = np.int32 if n < 2**31 else np.int64
    opts: dict[str, Any] = {"maxshape": (None,), "chunks": (WRITE_CHUNK,), "compression": compression}
    data = group.create_dataset("data", shape=(0,), dtype=counts.dtype, **opts)
    indices = group.create_dataset("indices", shape=(0,), dtype=itype, **opts)
    indptr = np.zeros(G + 1, dtype=np.int64)
    for a, panel in panels:
        start, size = int(indptr[a]), int(panel.nnz)
        for dset, values in ((data, panel.data), (indices, panel.indices)):
            dset.resize((start + size,))
            dset[start:] = values.astype(dset.dtype, copy=False)
        indptr[a + 1 : a + panel.shape[1] + 1] = start + panel.indptr[1:]
    group.create_dataset("indptr", data=indptr)
    group.attrs["encoding-type"] = "csc_matrix"
    group.attrs["encoding-version"] = "0.1.0"
    group.attrs["shape"] = np.array([n, G], dtype=np.int64)


@contextmanager
def by_gene(Y) -> Iterator[Any]:
    """The counts to fit, read by gene: ``Y`` itself, or, for counts in a CSR file whose genes would take
    more than :data:`MAX_PANEL_PASSES` panels (each panel a pass over the whole file, so the passes grow
    with the genes squared), the same genes in a temporary CSC file made in one pass over the rows
    (:meth:`BackedCounts.gene_buckets`; in the temporary directory, 8 bytes per non-zero and 12 more in
    bucket files while it is made), removed on exit; the panels if that copy cannot be written (no space).
    The blocks read from either are the same."""
    if not (isinstance(Y, BackedCounts) and Y.format == "csr") or Y.distinct_columns() is not None:
        yield Y
        return
    nnz = int(Y.gene_nnz().sum())
    if nnz <= MAX_PANEL_PASSES * Y.panel_nnz:
        yield Y
        return
    import h5py

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scglmm-by-gene-") as folder:
        path = Path(folder) / "counts.h5"
        try:
            with h5py.File(path, "w") as fh:
                write_csc(Y.gene_buckets(Path(folder), BUCKET_NNZ), Y, fh.create_group("X"), None)
        except OSError as err:  # e.g. no space left in the temporary directory: the panels need none
            logger.warning("counts by gene: no temporary copy in %s (%s); reading the CSR file in panels", folder, err)
            yield Y
            return
        Yc = BackedCounts(path, key="X", chunk_nnz=Y.chunk_nnz, panel_nnz=Y.panel_nnz)
        Yc.temporary = True
        logger.info(
            "counts by gene: %d genes of a CSR file (%d panels) copied as CSC to %s in %.0f s",
            Y.shape[1], -(-nnz // Y.panel_nnz), folder, time.perf_counter() - t0,
        )  # fmt: skip
        yield Yc
