"""Array-level API: fit one gene or a block of genes from numpy / scipy inputs, no AnnData needed."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import ThreadingBackend, get_active_backend
from scipy import sparse
from scipy.stats import norm

from .._logging import logger
from . import _kernels as K
from ._io import as_backed_counts
from ._status import UNUSABLE, status_names

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["GeneFit", "GenesFit", "fit_gene", "fit_genes", "check_counts"]


@dataclass(frozen=True)
class GeneFit:
    """Result of :func:`fit_gene` (one gene). All effects are on the natural-log scale."""

    coef: NDArray[np.float64]
    """Fixed effects ``beta`` (p,)."""
    se: NDArray[np.float64]
    """Standard errors of ``coef`` (p,), from the full Hessian of the marginal log-likelihood."""
    cov: NDArray[np.float64]
    """Covariance of ``coef`` (p, p)."""
    sigma2: float
    """Donor random-intercept variance (log scale); 0 at the boundary."""
    theta: float
    """NB size; ``inf`` in the Poisson limit."""
    dispersion: float
    """``1 / theta``; 0 in the Poisson limit."""
    loglik: float
    """Approximate marginal log-likelihood (Laplace or AGQ), all constants included."""
    modes: NDArray[np.float64]
    """Conditional modes of the donor effects, in the order of ``donors``."""
    donors: NDArray[np.object_]
    """Donor labels."""
    coef_names: list[str]
    n_iter: int
    status: int
    """Status bit flags; see :func:`scglmm.status_name`."""
    status_str: str
    converged: bool

    @property
    def p_value(self) -> NDArray[np.float64]:
        """Two-sided Wald p-values of ``coef``."""
        return 2.0 * norm.sf(np.abs(self.coef / self.se))


@dataclass(frozen=True)
class GenesFit:
    """Result of :func:`fit_genes` for G genes. Row g of every array belongs to gene g."""

    coef: NDArray[np.float64]
    """(G, p) fixed effects, natural-log scale."""
    se: NDArray[np.float64]
    """(G, p) standard errors."""
    cov: NDArray[np.float64]
    """(G, p, p) covariance of the fixed effects."""
    sigma2: NDArray[np.float64]
    theta: NDArray[np.float64]
    dispersion: NDArray[np.float64]
    loglik: NDArray[np.float64]
    modes: NDArray[np.float64]
    """(G, m) conditional modes of the donor effects."""
    n_iter: NDArray[np.int64]
    status: NDArray[np.int64]
    grad_max: NDArray[np.float64]
    """Largest absolute gradient entry at the returned estimate."""
    n_nonzero: NDArray[np.int64]
    coef_names: list[str]
    donors: NDArray[np.object_]
    log_sigma2_se: NDArray[np.float64] = field(repr=False)
    log_theta_se: NDArray[np.float64] = field(repr=False)

    @property
    def status_str(self) -> NDArray[np.object_]:
        """Readable status per gene (``"ok"``, ``"poisson_limit"``, ...)."""
        return status_names(self.status)

    @property
    def converged(self) -> NDArray[np.bool_]:
        """True where the optimiser converged and the estimates are usable."""
        return (self.status & (UNUSABLE | K.NOT_CONVERGED)) == 0

    @property
    def p_value(self) -> NDArray[np.float64]:
        """(G, p) two-sided Wald p-values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2.0 * norm.sf(np.abs(self.coef / self.se))

    def gene(self, g: int) -> GeneFit:
        """The result of gene ``g`` as a :class:`GeneFit`."""
        code = int(self.status[g])
        return GeneFit(
            coef=self.coef[g],
            se=self.se[g],
            cov=self.cov[g],
            sigma2=float(self.sigma2[g]),
            theta=float(self.theta[g]),
            dispersion=float(self.dispersion[g]),
            loglik=float(self.loglik[g]),
            modes=self.modes[g],
            donors=self.donors,
            coef_names=self.coef_names,
            n_iter=int(self.n_iter[g]),
            status=code,
            status_str=str(self.status_str[g]),
            converged=bool(self.converged[g]),
        )


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def check_counts(Y: ArrayLike | sparse.spmatrix | sparse.sparray, *, what: str = "counts") -> None:
    """Raise ValueError unless all entries are finite, non-negative integers (never densifies)."""
    if hasattr(Y, "iter_chunks"):  # counts on disk (BackedCounts): streamed
        Y.check_counts(what)
        return
    vals = Y.data if sparse.issparse(Y) else np.asarray(Y)
    hint = "Pass the layer holding them (e.g. layer='counts')." if what.startswith("adata") else "Pass raw counts."
    if vals.dtype.kind not in "biuf":
        msg = f"{what} must be numeric, got dtype {vals.dtype}; convert it (e.g. .astype(np.float32)). {hint}"
        raise TypeError(msg)
    if vals.size == 0:
        return
    if vals.dtype.kind == "f":
        finite = np.isfinite(vals)
        if not np.all(finite):
            n_nan = int(np.isnan(vals).sum())
            n_inf = int((~finite).sum()) - n_nan
            msg = f"{what}: found {n_nan} NaN and {n_inf} infinite value(s); scglmm needs raw integer counts. {hint}"
            raise ValueError(msg)
        frac = vals != np.floor(vals)
        if np.any(frac):
            msg = (
                f"{what}: found {int(frac.sum())} non-integer value(s) (e.g. {float(vals[frac][0])!r}); "
                f"scglmm needs raw integer counts, not normalised or log-transformed data. {hint}"
            )
            raise ValueError(msg)
    if vals.dtype.kind != "u" and np.any(vals < 0):
        neg = vals < 0
        msg = (
            f"{what}: found {int(neg.sum())} negative value(s) (e.g. {vals[neg][0].item()!r}); scglmm needs "
            f"raw non-negative integer counts. {hint}"
        )
        raise ValueError(msg)


def _prepare_design(
    X: ArrayLike, groups: ArrayLike, offset: ArrayLike | None, n: int, coef_names: Sequence[str] | None = None
) -> tuple[NDArray, NDArray, NDArray, NDArray, NDArray, NDArray]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] != n:
        msg = (
            f"X must be a (n_cells, n_coef) design matrix with one row per cell of the counts "
            f"({n} cells); got shape {X.shape}. Counts are cells x genes: transpose them if they are genes x cells."
        )
        raise ValueError(msg)
    if not np.all(np.isfinite(X)):
        msg = "X (the design matrix) contains NaN or infinite values; fill them or drop those cells from every input."
        raise ValueError(msg)
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        from .._formula import redundant_columns

        names = list(coef_names) if coef_names is not None and len(coef_names) == X.shape[1] else None
        names = names or [f"x{k}" for k in range(X.shape[1])]
        msg = (
            f"X (the design matrix) is rank deficient ({rank} of {X.shape[1]} columns estimable): column(s) "
            f"{redundant_columns(X, names)} are linear combinations of the others {names}; drop them."
        )
        raise ValueError(msg)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        msg = f"groups must have one donor label per cell ({n}); got shape {groups.shape}."
        raise ValueError(msg)
    codes, donors = pd.factorize(groups, sort=True)
    if np.any(codes < 0):
        msg = "groups contains missing values (NaN/None); every cell needs a donor."
        raise ValueError(msg)
    if len(donors) < 2:
        msg = (
            f"at least two donors are needed to estimate a donor variance; got {len(donors)} "
            f"({[str(d) for d in donors]}). Check that groups holds the donor of each cell."
        )
        raise ValueError(msg)
    if offset is None:
        off = np.zeros(n)
    else:
        off = np.asarray(offset, dtype=np.float64).ravel()
        if off.shape != (n,):
            msg = f"offset must have one value per cell ({n}); got shape {off.shape}."
            raise ValueError(msg)
        if not np.all(np.isfinite(off)):
            msg = "offset (log scale) contains NaN or infinite values (a size factor of 0 gives log(0) = -inf)."
            raise ValueError(msg)
    # cells sorted by donor, then design row, then offset, so that cells sharing a design row and a
    # narrow range of offsets form contiguous blocks (the fast path for designs with few distinct rows)
    # distinct design rows, numbered in lexicographic order (a numeric lexsort: much faster than
    # np.unique(axis=0) on a large design)
    codes = codes.astype(np.int64)
    m = len(donors)
    if _many_distinct_rows(X):
        # the fast path cannot apply (blocks would average fewer than 20 cells): donor order only,
        # input order within a donor (stable), which also keeps the CSC row reads in order
        order = K.stable_counting_sort(codes, m, np.arange(n, dtype=np.int64))
    else:
        row_id = K.distinct_row_ids(X, np.lexsort(X.T[::-1]))
        n_rows = int(row_id.max()) + 1
        # by (donor, row) then offset: sort by offset, then a stable sort on one integer key
        by_off = np.argsort(off)
        key = codes * n_rows + row_id
        if m * n_rows <= 4 * n:
            order = K.stable_counting_sort(key, m * n_rows, by_off)
        else:
            order = by_off[np.argsort(key[by_off], kind="stable")]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    starts = np.searchsorted(codes[order], np.arange(m + 1)).astype(np.int64)
    Xs = np.ascontiguousarray(X[order])
    offs = np.ascontiguousarray(off[order])
    return Xs, offs, starts, pos, np.asarray(donors, dtype=object), order


def _many_distinct_rows(X: NDArray) -> bool:
    """True if ``X`` certainly has more than n / 20 distinct rows (the fast path's limit), judged
    from the first n / 20 + 1 rows: if those are all distinct in some column, so are that many
    rows of X. A continuous cell-level covariate is caught without sorting the whole design."""
    n = X.shape[0]
    k = n // 20 + 1
    if n < 40 or k > n:
        return False
    head = X[:k]
    return any(np.unique(head[:, j]).size == k for j in range(X.shape[1]))


def _gh_nodes(n_agq: int) -> tuple[NDArray, NDArray]:
    if not isinstance(n_agq, int | np.integer) or n_agq < 1:
        msg = f"n_agq must be a positive integer (1 = Laplace, e.g. 25 for adaptive Gauss-Hermite); got {n_agq!r}."
        raise ValueError(msg)
    if n_agq == 1:
        return np.zeros(1), np.array([0.5 * np.log(np.pi)])
    z, w = np.polynomial.hermite.hermgauss(int(n_agq))
    return z, np.log(w) + z * z


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
    counts = np.array(_in_threads(K.csr_column_counts, [(Y.indptr, Y.indices, G, r0, r1) for r0, r1 in ranges]))
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
                panel["cursor"] = K.csr_row_cursors(Y.indptr, Y.indices, a)
            out_data = np.empty(int(cum[e] - cum[a]), dtype=Y.data.dtype)
            out_rows = np.empty(out_data.shape[0], dtype=np.int32)  # row numbers fit (as in scipy)
            first = cum[a:e] - cum[a]
            calls = [
                (Y.indptr, Y.indices, Y.data, a, e, r0, r1, panel["cursor"], first + before[t, a:e], out_data, out_rows)
                for t, (r0, r1) in enumerate(ranges)
            ]
            _in_threads(K.csr_columns_to_csc, calls)
            panel.update(lo=a, hi=e, m=(out_data, out_rows, cum[a : e + 1] - cum[a]))
        data, rows, ptr_all = panel["m"]
        lo, hi = int(ptr_all[a - panel["lo"]]), int(ptr_all[b - panel["lo"]])
        ptr = ptr_all[a - panel["lo"] : b - panel["lo"] + 1] - lo
        return CSCBlock(data[lo:hi], rows[lo:hi], ptr, (Y.shape[0], b - a))

    return get


def block_getter(Y, panel_nnz: int = 2**25, n_threads: int = 1) -> Callable[[int, int], sparse.csc_matrix | CSCBlock]:
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


class Design:
    """The prepared design handed to :func:`fit_block`: iterates as its arrays.

    A weak-referenceable object reporting its size, so that joblib's Dask backend scatters it to
    the workers once instead of pickling it with every gene block.
    """

    __slots__ = ("__weakref__", "arrays")

    def __init__(self, *arrays: NDArray) -> None:
        self.arrays = arrays

    def __iter__(self):
        return iter(self.arrays)

    def __sizeof__(self) -> int:
        def nbytes(a) -> int:
            if isinstance(a, tuple):
                return sum(nbytes(x) for x in a)
            return int(getattr(a, "nbytes", 8))

        return object.__sizeof__(self) + nbytes(self.arrays)

    def __getstate__(self) -> tuple:
        return self.arrays

    def __setstate__(self, state: tuple) -> None:
        self.arrays = state


def fit_block(blk: sparse.csc_matrix | CSCBlock, design: tuple) -> tuple:
    """Fit every gene (column) of one CSC block; a pure function, safe to ship to any worker.

    ``design`` is ``(pos, X, offset, starts, nodes, logw, dl)`` as prepared by :func:`fit_genes`.
    Returns ``(phi, modes, cov, loglik, n_iter, status, grad_max, n_nonzero)`` arrays.
    """
    pos, Xs, offs, starts, nodes, logw, dl = design
    G = blk.shape[1]
    p = Xs.shape[1]
    q = p + 2
    m = starts.shape[0] - 1
    out = (
        np.full((G, q), np.nan),
        np.full((G, m), np.nan),
        np.full((G, q, q), np.nan),
        np.full(G, np.nan),
        np.zeros(G, dtype=np.int64),
        np.zeros(G, dtype=np.int64),
        np.full(G, np.nan),
    )
    K.fit_block_csc(
        np.asarray(blk.data, dtype=np.float64),
        np.asarray(blk.indices, dtype=np.int64),
        np.asarray(blk.indptr, dtype=np.int64),
        pos,
        Xs,
        offs,
        starts,
        nodes,
        logw,
        *dl,
        *out,
    )
    return (*out, np.diff(blk.indptr).astype(np.int64))


def donor_level_data(Xs: NDArray, offs: NDArray, starts: NDArray, *, enable: bool = True) -> tuple:
    """Precomputed quantities for designs with few distinct rows.

    Cells come sorted by donor, design row and offset. Within a donor, cells with the same design
    row are cut into blocks whose offsets lie within a relative half-width ``DL_RHO`` of the block
    centre ``Lc`` (``Lw = exp(offset - o_ref)``), so that each gene is summed per block by
    convergent Taylor series (see the kernels). Used when blocks hold on average at least 20 cells.

    Returns ``(on, Xb, Lw, o_ref, PA, Lc, bstarts, dblk)`` for
    :func:`scglmm._core._kernels.fit_block_csc`, with ``PA[k, :]`` the centred power sums
    ``sum_j (Lw_j / Lc_k - 1)^k`` of block k; ``on`` is False (placeholder arrays) otherwise.
    """
    n, p = Xs.shape
    m = starts.shape[0] - 1
    kk = K.DL_KMAX + 1
    placeholder = (
        False, np.zeros((1, p)), np.zeros(1), 0.0, np.zeros((1, kk)), np.ones(1),
        np.zeros(2, dtype=np.int64), np.zeros(m + 1, dtype=np.int64),
    )  # fmt: skip
    if not enable or n == 0:
        return placeholder
    # groups of cells sharing donor and design row
    change = np.zeros(n, dtype=bool)
    change[starts[:-1][starts[:-1] < n]] = True
    if n > 1:
        change[1:] |= np.any(Xs[1:] != Xs[:-1], axis=1)
    if np.count_nonzero(change) * 20 > n:
        return placeholder
    o_ref = float(offs.max())
    Lw = np.exp(offs - o_ref)
    # cut each group into offset bins: Lw_max / Lw_min <= (1 + rho) / (1 - rho)
    bstarts = K.dl_cut_blocks(change, Lw, (1.0 + K.DL_RHO) / (1.0 - K.DL_RHO))
    nb = bstarts.shape[0] - 1
    if nb * 20 > n:
        return placeholder
    dblk = np.searchsorted(bstarts, starts).astype(np.int64)
    Xb = np.ascontiguousarray(Xs[bstarts[:-1]])
    PA, Lc = K.dl_block_power_sums(Lw, bstarts, kk)
    return (True, Xb, Lw, o_ref, PA, Lc, bstarts, dblk)


#: Smallest block of genes handed to a worker (the end of a run with several workers).
MIN_BLOCK = 4

#: Seconds into a fit after which, if the main kernel is still not compiled (nor loaded from numba's
#: on-disk cache, which takes about a second), the log says that it is being compiled.
COMPILE_NOTICE_AFTER = 5.0


@contextmanager
def _compile_notice() -> Iterator[None]:
    """Log (INFO) that the kernels are being compiled if a fit is still waiting for them after
    :data:`COMPILE_NOTICE_AFTER` seconds: the first use after installing takes one to two minutes."""

    def ready() -> bool:  # a compiled overload exists (anything but a numba dispatcher counts as ready)
        return bool(getattr(K.fit_block_csc, "overloads", True))

    def notice() -> None:
        if not ready():
            logger.info(
                "compiling scglmm's numba kernels: the first fit after installing takes one to two minutes; "
                "they are cached on disk for later runs"
            )

    if ready():  # compiled or loaded in this process already
        yield
        return
    timer = threading.Timer(COMPILE_NOTICE_AFTER, notice)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _block_bounds(n_genes: int, block_size: int, n_workers: int = 1) -> list[tuple[int, int]]:
    """Blocks of consecutive genes, at most ``block_size`` each. With several workers the blocks
    shrink towards the end of the run (each at most an eighth of the remaining genes per worker,
    but at least ``MIN_BLOCK``), so that the workers finish at about the same time."""
    if n_workers <= 1:
        return [(a, min(a + block_size, n_genes)) for a in range(0, n_genes, block_size)]
    bounds, a = [], 0
    while a < n_genes:
        size = min(block_size, max(MIN_BLOCK, -(-(n_genes - a) // (8 * n_workers))))
        bounds.append((a, min(a + size, n_genes)))
        a += size
    return bounds


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------
def fit_genes(
    Y: ArrayLike | sparse.spmatrix | sparse.sparray,
    X: ArrayLike,
    groups: ArrayLike,
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    n_jobs: int = 1,
    block_size: int = 64,
    coef_names: Sequence[str] | None = None,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
    _donor_level: bool = True,
) -> GenesFit:
    """Fit the NB GLMM with a donor random intercept to every column of a count matrix.

    The model per gene is ``y | b ~ NB(mu, theta)``, ``log mu = X beta + offset + b[donor]``,
    ``b ~ N(0, sigma2)``, fitted by maximising the Laplace approximation (or adaptive Gauss-Hermite
    with ``n_agq`` nodes) of the marginal likelihood jointly over ``beta``, ``log sigma2`` and
    ``log theta``.

    Parameters
    ----------
    Y
        Counts, cells x genes: a numpy array or a scipy sparse matrix (CSR or CSC). Never densified
        as a whole; genes are fitted in blocks of ``block_size`` columns. Counts on disk are read
        block by block with bounded memory: the path of an ``.h5ad`` file (its ``X``), an ``h5py``
        group/dataset (e.g. ``f["layers/counts"]``), ``adata.X`` of an AnnData opened with
        ``backed="r"``, or a :class:`scglmm._core._io.BackedCounts`.
    X
        Fixed-effect design, cells x coefficients (include an intercept column yourself).
    groups
        Donor label of each cell.
    offset
        Log offset per cell (e.g. ``log(library size)``); zero if omitted.
    n_agq
        Number of adaptive Gauss-Hermite nodes; 1 is the Laplace approximation (glmmTMB's).
    n_jobs
        Threads over gene blocks (the kernels release the GIL). Results do not depend on it.
        Inside ``joblib.parallel_config(backend="dask")`` the blocks go to the Dask cluster
        instead (``n_jobs=-1``: all its workers); see ``docs/scaling.md``.
    block_size
        Genes per compiled call (with ``n_jobs`` != 1 the blocks shrink towards the end of the
        run, to at least 4 genes, so that the workers finish together).
    coef_names
        Names of the columns of ``X``; ``x0, x1, ...`` if omitted.
    check
        Validate that counts are finite non-negative integers.
    progress
        Called with the number of genes finished after every block (e.g. a tqdm ``update``).

    Returns
    -------
    A :class:`GenesFit` with one row per gene.
    """
    Yb = as_backed_counts(Y)  # a path, h5py object or anndata backed dataset: read blocks from disk
    if Yb is not None:
        Y = Yb
    elif not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        Y = np.asarray(Y)
    if Y.ndim != 2:
        msg = (
            f"Y must be a 2-d cells x genes matrix; got {Y.ndim} dimension(s). "
            "For one gene use scglmm.fit_gene(y, ...) or pass y[:, None]."
        )
        raise ValueError(msg)
    n, G = Y.shape
    if check:
        check_counts(Y)
    Xs, offs, starts, pos, donors, _ = _prepare_design(X, groups, offset, n, coef_names)
    p = Xs.shape[1]
    if coef_names is None:
        coef_names = [f"x{k}" for k in range(p)]
    coef_names = [str(c) for c in coef_names]
    if len(coef_names) != p:
        msg = f"coef_names has {len(coef_names)} names for {p} design columns; pass one name per column of X."
        raise ValueError(msg)
    nodes, logw = _gh_nodes(n_agq)
    if not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        msg = f"n_jobs must be a non-zero integer (-1 = all cores); got {n_jobs!r}."
        raise ValueError(msg)
    if not isinstance(block_size, int | np.integer) or block_size < 1:
        msg = f"block_size must be a positive integer; got {block_size!r}."
        raise ValueError(msg)

    m = len(donors)
    q = p + 2
    out_phi = np.full((G, q), np.nan)
    out_b = np.full((G, m), np.nan)
    out_cov = np.full((G, q, q), np.nan)
    out_ll = np.full(G, np.nan)
    out_iter = np.zeros(G, dtype=np.int64)
    out_status = np.zeros(G, dtype=np.int64)
    out_gmax = np.full(G, np.nan)
    nnz = np.zeros(G, dtype=np.int64)

    # workers of the backend (asked once: under Dask it queries the cluster); the CSR conversion
    # runs here, on at most this machine's cores
    n_workers = 1 if n_jobs == 1 else max(1, effective_n_jobs(int(n_jobs)))
    get_block = block_getter(Y, n_threads=min(n_workers, os.cpu_count() or 1))
    design = Design(pos, Xs, offs, starts, nodes, logw, donor_level_data(Xs, offs, starts, enable=_donor_level))
    bounds = _block_bounds(G, int(block_size), n_workers)

    def store(a: int, b: int, res: tuple) -> None:
        for dest, val in zip((out_phi, out_b, out_cov, out_ll, out_iter, out_status, out_gmax, nnz), res, strict=True):
            dest[a:b] = val
        if progress is not None:
            progress(b - a)

    with _compile_notice():
        if n_jobs == 1 or len(bounds) == 1:
            for a, b in bounds:
                store(a, b, fit_block(get_block(a, b), design))
        elif isinstance(get_active_backend(prefer="threads")[0], ThreadingBackend):
            _fit_in_threads(bounds, get_block, design, n_workers, store)
        else:  # a backend the user configured (Dask, loky): joblib hands it the blocks
            par = Parallel(n_jobs=int(n_jobs), prefer="threads", return_as="generator")
            results = par(delayed(fit_block)(get_block(a, b), design) for a, b in bounds)
            for (a, b), res in zip(bounds, results, strict=True):
                store(a, b, res)
    return _assemble(out_phi, out_b, out_cov, out_ll, out_iter, out_status, out_gmax, nnz, p, coef_names, donors)


def _fit_in_threads(bounds, get_block, design, n_threads: int, store) -> None:
    """Fit the blocks on a pool of threads (the kernels release the GIL), at most two blocks per
    thread in flight so that the blocks cut from the matrix stay few (CSR panels are then freed as
    the fit moves on), collecting results as they finish. Used for joblib's default (threading)
    backend: joblib's own dispatch costs about 20 ms per call, as much as fitting 20 genes."""
    pending: dict = {}
    todo = iter(bounds)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:

        def submit_next() -> None:
            ab = next(todo, None)
            if ab is not None:
                pending[pool.submit(fit_block, get_block(*ab), design)] = ab

        for _ in range(2 * n_threads):
            submit_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                a, b = pending.pop(fut)
                store(a, b, fut.result())
                submit_next()


def _assemble(out_phi, out_b, out_cov, out_ll, out_iter, out_status, out_gmax, nnz, p, coef_names, donors) -> GenesFit:
    status = out_status.copy()
    bad = (status & UNUSABLE) != 0
    coef = out_phi[:, :p].copy()
    cov = out_cov[:, :p, :p].copy()
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).copy()
    s_bound = (status & K.SIGMA2_BOUNDARY) != 0
    t_bound = (status & K.POISSON_LIMIT) != 0
    sigma2 = np.where(s_bound, 0.0, np.exp(out_phi[:, p]))
    theta = np.where(t_bound, np.inf, np.exp(out_phi[:, p + 1]))
    dispersion = np.where(t_bound, 0.0, np.exp(-out_phi[:, p + 1]))
    with np.errstate(invalid="ignore"):
        log_sigma2_se = np.sqrt(out_cov[:, p, p])
        log_theta_se = np.sqrt(out_cov[:, p + 1, p + 1])
    for arr in (coef, se, sigma2, theta, dispersion, out_ll, log_sigma2_se, log_theta_se):
        arr[bad] = np.nan
    cov[bad] = np.nan
    modes = out_b.copy()
    modes[bad] = np.nan
    return GenesFit(
        coef=coef,
        se=se,
        cov=cov,
        sigma2=sigma2,
        theta=theta,
        dispersion=dispersion,
        loglik=out_ll,
        modes=modes,
        n_iter=out_iter,
        status=status,
        grad_max=out_gmax,
        n_nonzero=nnz,
        coef_names=list(coef_names),
        donors=donors,
        log_sigma2_se=log_sigma2_se,
        log_theta_se=log_theta_se,
    )


def fit_gene(
    y: ArrayLike,
    X: ArrayLike,
    groups: ArrayLike,
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    coef_names: Sequence[str] | None = None,
) -> GeneFit:
    """Fit the NB GLMM with a donor random intercept to one gene.

    Parameters
    ----------
    y
        Counts of the gene, one per cell (numpy vector or a 1-column sparse matrix).
    X
        Fixed-effect design, cells x coefficients (include an intercept column yourself).
    groups
        Donor label of each cell.
    offset
        Log offset per cell (e.g. ``log(library size)``); zero if omitted.
    n_agq
        Adaptive Gauss-Hermite nodes; 1 is the Laplace approximation.
    coef_names
        Names of the columns of ``X``.

    Returns
    -------
    A :class:`GeneFit`.
    """
    if sparse.issparse(y):
        y = y.toarray()
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()
    if y.ndim != 1:
        msg = f"y must be a vector of counts (one per cell); got shape {y.shape}."
        raise ValueError(msg)
    res = fit_genes(y[:, None], X, groups, offset, n_agq=n_agq, coef_names=coef_names)
    return res.gene(0)
