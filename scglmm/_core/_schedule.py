"""Running the fits of a count matrix block by block: block bounds, threads, joblib / Dask dispatch.

:func:`fit_block` fits one block of genes with the compiled kernels of a single random intercept (a
pure function, safe to ship to any worker); :func:`fit_blocks` runs it over all blocks, in this thread,
on a pool of threads (the kernels release the GIL) or through the joblib backend the user configured
(e.g. Dask). :func:`fit_general_blocks` does the same for the general engine (any structure), whose
per-gene optimiser runs in Python: blocks of genes over joblib's processes.

With worker processes (a backend other than threads) and counts in a CSC or dense file, both send the
workers a :class:`~scglmm._core._counts.BlockRead` per block instead of the block: each worker reads
its genes from the file itself, and the client never holds the counts.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed
from joblib.parallel import LokyBackend, MultiprocessingBackend, ThreadingBackend, get_active_backend
from numba.core import event as numba_event

from ._counts import BlockRead, CSCBlock
from ._re import REFitOne, REStructure, fit_re_one
from ._results import empty_outputs
from ._warmup import compile_in_two
from .kernels import _block
from .kernels._bundles import BlockOut, Cells, FewRows, Quadrature

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from scipy import sparse


__all__ = [
    "MIN_BLOCK", "CompileLog", "Design", "compile_log", "fit_block", "fit_blocks", "fit_columns", "fit_general_blocks",
]  # fmt: skip

logger = logging.getLogger("scglmm")

#: Smallest block of genes handed to a worker (the end of a run with several workers).
MIN_BLOCK = 4


class Design:
    """The prepared model handed to :func:`fit_block`: cells, quadrature and the fast path's data,
    and the path the fit takes (the bundle the block kernel is compiled for, see
    :func:`scglmm._core.kernels._block.model_path`).

    A weak-referenceable object reporting its size, so that joblib's Dask backend scatters it to
    the workers once instead of pickling it with every gene block.
    """

    __slots__ = ("__weakref__", "cells", "few_rows", "path", "quadrature")

    def __init__(self, cells: Cells, quadrature: Quadrature, few_rows: FewRows) -> None:
        self.cells = cells
        self.quadrature = quadrature
        self.few_rows = few_rows
        self.path = _block.model_path(cells, quadrature, few_rows)

    def __sizeof__(self) -> int:
        seen: set[int] = set()

        def nbytes(a) -> int:
            if isinstance(a, tuple):
                return sum(nbytes(x) for x in a)
            if id(a) in seen:  # the path holds the cells (and the few-rows data) again
                return 0
            seen.add(id(a))
            return int(getattr(a, "nbytes", 8))

        return object.__sizeof__(self) + nbytes(self.__getstate__())

    def __getstate__(self) -> tuple:
        return (self.cells, self.quadrature, self.few_rows, self.path)

    def __setstate__(self, state: tuple) -> None:
        self.cells, self.quadrature, self.few_rows, self.path = state


def fit_block(blk: sparse.csc_matrix | CSCBlock | BlockRead, design: Design) -> tuple[BlockOut, NDArray[np.int64]]:
    """Fit every gene (column) of one CSC block, or of the block a :class:`BlockRead` reads here; a pure
    function, safe to ship to any worker.

    Returns the kernels' outputs (a :class:`BlockOut`) and the stored entries per gene.
    """
    if isinstance(blk, BlockRead):
        blk = blk()
    cells = design.cells
    out = empty_outputs(blk.shape[1], cells.X.shape[1], cells.starts.shape[0] - 1)
    _block.fit_block_csc(
        np.asarray(blk.data, dtype=np.float64),
        np.asarray(blk.indices, dtype=np.int64),
        np.asarray(blk.indptr, dtype=np.int64),
        design.path,
        out,
    )
    return out, np.diff(blk.indptr).astype(np.int64)


#: What the log calls the block kernel compiled for each path (the type of its path argument).
_PATH_NAMES = {
    "FewRowsPath": "the few-rows fast path",
    "LaplacePath": "the general Laplace kernel",
    "AGQPath": "the adaptive Gauss-Hermite kernel",
}


def _what(dispatcher, args: tuple) -> str:
    """What a compilation of ``dispatcher`` for argument types ``args`` builds, for the log."""
    name = dispatcher.py_func.__name__
    if name == "fit_block_csc" and len(args) > 3:
        path = getattr(args[3], "instance_class", None)
        return f"the block kernel of {_PATH_NAMES.get(getattr(path, '__name__', ''), 'a fit')}"
    return f"kernel {name}"


class CompileLog(numba_event.Listener):
    """Logs (INFO) numba compiling scglmm's kernels: a line when a kernel chain starts compiling
    (an outermost compilation of a scglmm function: the function and everything it calls that is
    not compiled or cached yet) and, for a block kernel, a line when it is done. Numba reports
    compilations only, not loads from its on-disk cache, so a run with cached kernels logs nothing.
    ``on_compile(name)`` and ``on_chain_end()``, if given, are called as well (e.g. a progress bar)."""

    def __init__(
        self, on_compile: Callable[[str], None] | None = None, on_chain_end: Callable[[], None] | None = None
    ) -> None:
        self._local = threading.local()  # the scglmm compilations in progress in this thread
        self._lock = threading.Lock()
        self.on_compile = on_compile
        self.on_chain_end = on_chain_end
        self.functions = 0
        self.seconds = 0.0

    @staticmethod
    def _ours(event) -> bool:
        return getattr(event.data["dispatcher"].py_func, "__module__", "").startswith("scglmm.")

    def on_start(self, event) -> None:
        if not self._ours(event):
            return
        stack = self._local.__dict__.setdefault("stack", [])
        dispatcher, args = event.data["dispatcher"], event.data["args"]
        if not stack:
            what = _what(dispatcher, args)
            with self._lock:
                first = self.functions == 0
            if first:
                logger.info(
                    "compiling scglmm's numba kernels (the first run after installing; they are cached on disk "
                    "for later runs): %s ...",
                    what,
                )
            else:
                logger.info("compiling %s ...", what)
            stack.append((what, time.perf_counter()))
        else:
            stack.append(None)
        with self._lock:
            self.functions += 1
        if self.on_compile is not None:
            self.on_compile(dispatcher.py_func.__name__)

    def on_end(self, event) -> None:
        if not self._ours(event):
            return
        top = self._local.stack.pop()
        if top is None:
            return
        what, t0 = top
        dt = time.perf_counter() - t0
        with self._lock:
            self.seconds += dt
        if what.startswith("the block kernel"):
            logger.info("compiled %s in %.1f s", what, dt)
        if self.on_chain_end is not None:
            self.on_chain_end()


@contextmanager
def compile_log() -> Iterator[CompileLog]:
    """Log numba's compilations of scglmm's kernels while the body runs (see :class:`CompileLog`);
    at the end, if anything was compiled, how many functions and how long (INFO)."""
    log = CompileLog()
    with numba_event.install_listener("numba:compile", log):
        yield log
    if log.functions:
        logger.info(
            "compiled %d scglmm functions in %.1f s; later runs load them from the disk cache",
            log.functions,
            log.seconds,
        )


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


def fit_blocks(
    get_block: Callable[[int, int], sparse.csc_matrix | CSCBlock],
    design: Design,
    n_genes: int,
    *,
    n_jobs: int,
    n_workers: int,
    block_size: int,
    progress: Callable[[int], None] | None = None,
    read_block: Callable[[int, int], BlockRead] | None = None,
) -> tuple[BlockOut, NDArray[np.int64]]:
    """Fit genes ``0 .. n_genes - 1`` block by block.

    Parameters
    ----------
    get_block
        Genes ``a:b`` as a CSC block (see :func:`scglmm._core._counts.block_getter`).
    design
        The prepared model.
    n_genes
        Number of genes.
    n_jobs
        As in :func:`scglmm.fit_genes`: 1 fits in this thread.
    n_workers
        Workers of the backend (``joblib.effective_n_jobs(n_jobs)``, asked once by the caller).
    block_size
        Largest number of genes per block.
    progress
        Called with the number of genes finished after every block.
    read_block
        Counts in a file the workers can read (:func:`scglmm._core._counts.block_reader`): with a backend
        other than threads, the workers get these readers instead of the blocks and read their genes
        themselves.

    Returns
    -------
    The outputs of all genes and their stored entries per gene.
    """
    cells = design.cells
    out = empty_outputs(n_genes, cells.X.shape[1], cells.starts.shape[0] - 1)
    nnz = np.zeros(n_genes, dtype=np.int64)
    bounds = _block_bounds(n_genes, int(block_size), n_workers)

    def store(a: int, b: int, res: tuple[BlockOut, NDArray[np.int64]]) -> None:
        block_out, block_nnz = res
        for dest, val in zip(out, block_out, strict=True):
            dest[a:b] = val
        nnz[a:b] = block_nnz
        if progress is not None:
            progress(b - a)

    if n_jobs == 1 or len(bounds) == 1:
        for a, b in bounds:
            store(a, b, fit_block(get_block(a, b), design))
    elif isinstance(get_active_backend(prefer="threads")[0], ThreadingBackend):
        _fit_in_threads(bounds, get_block, design, n_workers, store)
    else:  # a backend the user configured (Dask, loky): joblib hands it the blocks, or their readers
        cut = read_block if read_block is not None else get_block
        par = Parallel(n_jobs=int(n_jobs), prefer="threads", return_as="generator")
        results = par(delayed(fit_block)(cut(a, b), design) for a, b in bounds)
        for (a, b), res in zip(bounds, results, strict=True):
            store(a, b, res)
    return out, nnz


def _fit_in_threads(
    bounds: list[tuple[int, int]],
    get_block: Callable[[int, int], sparse.csc_matrix | CSCBlock],
    design: Design,
    n_threads: int,
    store: Callable[[int, int, tuple], None],
) -> None:
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


# ------------------------------------------------------------------------------------------------
# the general engine (any random-effect structure): one gene at a time, blocks over processes
# ------------------------------------------------------------------------------------------------
class SharedStructure:
    """A structure handed to local worker processes as a file that each loads once (:func:`shared_structure`)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __getstate__(self) -> str:
        return self.path

    def __setstate__(self, state: str) -> None:
        self.path = state

    def load(self) -> REStructure:
        """The structure, read from the file on the first call in this process."""
        if self.path not in _LOADED:
            _LOADED.clear()  # one run's structure at a time
            with open(self.path, "rb") as fh:
                _LOADED[self.path] = pickle.load(fh)
        return _LOADED[self.path]


#: The structure a worker process loaded last, by file (see :class:`SharedStructure`).
_LOADED: dict[str, REStructure] = {}


@contextmanager
def shared_structure(s: REStructure) -> Iterator[REStructure | SharedStructure]:
    """What to send the workers of the active joblib backend with each run of genes: for processes on
    this machine (loky, multiprocessing) a :class:`SharedStructure`, written once here, instead of the
    structure, which with a million cells is about 90 MB to pickle, copy and unpickle with every run;
    else the structure itself (threads share it, Dask scatters it once)."""
    if not isinstance(get_active_backend()[0], LokyBackend | MultiprocessingBackend):
        yield s
        return
    folder = tempfile.mkdtemp(prefix="scglmm-")
    try:
        path = os.path.join(folder, "structure.pickle")
        with open(path, "wb") as fh:
            pickle.dump(s, fh, protocol=pickle.HIGHEST_PROTOCOL)
        yield SharedStructure(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit_columns(
    s: REStructure | SharedStructure, Y: NDArray | sparse.csc_matrix | CSCBlock | BlockRead
) -> tuple[list[REFitOne], NDArray[np.int64]]:
    """:func:`fit_re_one` on every column of a dense or CSC block of counts (or of the block a
    :class:`BlockRead` reads here), in this thread; with the non-zero cells per gene."""
    if isinstance(s, SharedStructure):
        s = s.load()
    if isinstance(Y, BlockRead):
        Y = Y()
    fits, nnz = [], np.zeros(Y.shape[1], dtype=np.int64)
    n = Y.shape[0]
    for g in range(Y.shape[1]):
        if isinstance(Y, np.ndarray):
            y = np.asarray(Y[:, g], dtype=np.float64)
            nnz[g] = np.count_nonzero(y)
            fits.append(fit_re_one(s, y))
            continue
        lo, hi = Y.indptr[g], Y.indptr[g + 1]
        vals = np.asarray(Y.data[lo:hi], dtype=np.float64)
        keep = vals != 0.0
        idx = np.asarray(Y.indices[lo:hi], dtype=np.int64)[keep]
        col = np.zeros(n)
        col[idx] = vals[keep]
        nnz[g] = idx.size
        fits.append(fit_re_one(s, col, nz=(idx, vals[keep])))
    return fits, nnz


def fit_general_blocks(
    get_block: Callable[[int, int], NDArray | sparse.csc_matrix | CSCBlock],
    s: REStructure,
    n_genes: int,
    *,
    n_jobs: int,
    n_workers: int,
    block_size: int,
    progress: Callable[[int], None] | None = None,
    read_block: Callable[[int, int], BlockRead] | None = None,
) -> tuple[list[REFitOne], NDArray[np.int64]]:
    """Fit genes ``0 .. n_genes - 1`` with the general engine, ``block_size`` genes at a time; with
    several workers each block is cut into a few runs of consecutive genes per worker, and the runs of
    all blocks stream through one pool of joblib's active backend (processes by default, which load
    the structure once each, :func:`shared_structure`): no worker waits for the end of a block. Every
    gene's fit is the same whichever worker runs it. With ``read_block`` (as in :func:`fit_blocks`)
    and worker processes, the workers read their runs of genes from the file themselves."""
    nnz = np.zeros(n_genes, dtype=np.int64)
    if n_workers == 1 or n_genes < 2:
        fits: list[REFitOne] = []
        for a in range(0, n_genes, block_size):
            b = min(a + block_size, n_genes)
            part, nnz[a:b] = fit_columns(s, get_block(a, b))
            fits += part
            if progress is not None:
                progress(b - a)
        return fits, nnz
    if isinstance(get_active_backend()[0], ThreadingBackend):
        read_block = None  # threads share the client's memory: nothing to gain
    runs = _general_runs(n_genes, block_size, n_workers)
    source = _RunSource(get_block, read_block, block_size, n_genes)
    # the first gene in this process, its kernels compiled in two processes at once and cached on disk,
    # where the worker processes load them instead of each compiling them again
    head = source(0, 1)
    head = head() if isinstance(head, BlockRead) else head
    compile_in_two(s, _dense_column(head, 0), n_jobs)
    parts = [fit_columns(s, head)]
    if progress is not None:
        progress(1)
    with shared_structure(s) as sent:
        stream = getattr(get_active_backend()[0], "supports_return_generator", False)
        out = Parallel(n_jobs=int(n_jobs), return_as="generator" if stream else "list")(
            delayed(fit_columns)(sent, source(c0, c1)) for c0, c1 in runs[1:]
        )
        for (c0, c1), part in zip(runs[1:], out, strict=True):
            parts.append(part)
            if progress is not None:
                progress(c1 - c0)
    for (c0, c1), (_, k) in zip(runs, parts, strict=True):
        nnz[c0:c1] = k
    return [f for part, _ in parts for f in part], nnz


def _general_runs(n_genes: int, block_size: int, n_workers: int) -> list[tuple[int, int]]:
    """The runs of consecutive genes of :func:`fit_general_blocks`: gene 0 alone (fitted in the client),
    then each block of ``block_size`` genes cut into up to ``4 n_workers`` runs."""
    runs = [(0, 1)]
    for a in range(0, n_genes, block_size):
        b = min(a + block_size, n_genes)
        lo = max(a, 1)
        cuts = np.linspace(lo, b, min(b - lo, 4 * n_workers) + 1).astype(int)
        runs += [(int(c0), int(c1)) for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True) if c1 > c0]
    return runs


class _RunSource:
    """Genes ``c0:c1`` as a worker gets them: a :class:`BlockRead` it calls (``read_block``), or columns cut
    from the block of genes read here (``get_block``, one block in memory at a time, asked in order)."""

    def __init__(
        self,
        get_block: Callable[[int, int], NDArray | sparse.csc_matrix | CSCBlock],
        read_block: Callable[[int, int], BlockRead] | None,
        block_size: int,
        n_genes: int,
    ) -> None:
        self.get_block, self.read_block = get_block, read_block
        self.block_size, self.n_genes = block_size, n_genes
        self.block: tuple[int, NDArray | sparse.csc_matrix | CSCBlock] | None = None

    def __call__(self, c0: int, c1: int) -> NDArray | CSCBlock | BlockRead:
        if self.read_block is not None:
            return self.read_block(c0, c1)
        a = c0 - c0 % self.block_size
        if self.block is None or self.block[0] != a:
            self.block = None  # free the last block before reading the next
            self.block = (a, self.get_block(a, min(a + self.block_size, self.n_genes)))
        return _columns(self.block[1], c0 - a, c1 - a)


def _dense_column(blk: NDArray | sparse.csc_matrix | CSCBlock, g: int) -> NDArray[np.float64]:
    """Column ``g`` of a dense or CSC block as a dense float vector."""
    if isinstance(blk, np.ndarray):
        return np.asarray(blk[:, g], dtype=np.float64)
    out = np.zeros(blk.shape[0])
    lo, hi = int(blk.indptr[g]), int(blk.indptr[g + 1])
    out[np.asarray(blk.indices[lo:hi], dtype=np.int64)] = blk.data[lo:hi]
    return out


def _columns(blk: NDArray | sparse.csc_matrix | CSCBlock, a: int, b: int) -> NDArray | CSCBlock:
    """Columns ``a:b`` of a dense or CSC block."""
    if isinstance(blk, np.ndarray):
        return blk[:, a:b]
    lo, hi = int(blk.indptr[a]), int(blk.indptr[b])
    return CSCBlock(blk.data[lo:hi], blk.indices[lo:hi], blk.indptr[a : b + 1] - lo, (blk.shape[0], b - a))
