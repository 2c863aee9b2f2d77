"""Array-level API: fit one gene or a block of genes from numpy / scipy inputs, no AnnData needed."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from joblib import effective_n_jobs
from scipy import sparse

from ._checks import (
    check_block_size,
    check_coef_names,
    check_count_matrix,
    check_counts,
    check_design_matrix,
    check_donors,
    check_n_agq,
    check_n_jobs,
    check_offset,
)
from ._counts import as_backed_counts, block_getter, gene_columns
from ._design import few_rows_data, gauss_hermite, prepare_design
from ._errors import InvalidValueError
from ._re import RETerm
from ._re_api import REGenesFit, fit_re_genes
from ._results import GeneFit, GenesFit, assemble
from ._schedule import Design, compile_log, fit_blocks
from ._separation import refit_separated

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["fit_gene", "fit_genes"]


def fit_genes(
    Y: ArrayLike | sparse.spmatrix | sparse.sparray,
    X: ArrayLike,
    groups: ArrayLike | Sequence[RETerm],
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    n_jobs: int = 1,
    block_size: int = 64,
    coef_names: Sequence[str] | None = None,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
) -> GenesFit | REGenesFit:
    """Fit the NB GLMM with a donor random intercept (or other random effects) to every column of a count matrix.

    The model per gene is ``y | b ~ NB(mu, theta)``, ``log mu = X beta + offset + b[donor]``,
    ``b ~ N(0, sigma2)``, fitted by maximising the Laplace approximation (or adaptive Gauss-Hermite
    with ``n_agq`` nodes) of the marginal likelihood jointly over ``beta``, ``log sigma2`` and
    ``log theta``. Given random-effect terms instead of donor labels (random slopes, nested or
    crossed terms, e.g. from :func:`scglmm.random_terms`), ``log mu = X beta + offset + Z b`` with
    each term's covariance estimated, by the Laplace approximation (:class:`REGenesFit`; see
    ``docs/random_effects.md``).

    Parameters
    ----------
    Y
        Counts, cells x genes: a numpy array or a scipy sparse matrix (CSR or CSC). Never densified
        as a whole; genes are fitted in blocks of ``block_size`` columns. Counts on disk are read
        block by block with bounded memory: the path of an ``.h5ad`` file (its ``X``), an ``h5py``
        group/dataset (e.g. ``f["layers/counts"]``), ``adata.X`` of an AnnData opened with
        ``backed="r"``, or a :class:`scglmm._core._counts.BackedCounts`.
    X
        Fixed-effect design, cells x coefficients (include an intercept column yourself).
    groups
        Donor label of each cell (a donor random intercept), or the terms of a general random-effect
        structure: a sequence of :class:`scglmm.RETerm` (``scglmm.random_terms("(1 + condition |
        donor)", obs)``). With terms, counts must be in memory and ``n_agq`` must be 1.
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
    A :class:`GenesFit` with one row per gene; with terms a :class:`REGenesFit` (variance
    components, modes of every level).
    """
    if _is_terms(groups):
        with compile_log():
            return fit_re_genes(Y, X, groups, offset, n_agq=n_agq, coef_names=coef_names, check=check, n_jobs=n_jobs)
    with compile_log():  # the first run after installing compiles the kernels: say so as it happens
        return _fit_genes(Y, X, groups, offset, n_agq, n_jobs, block_size, coef_names, check, progress)


def _is_terms(groups: object) -> bool:
    """Whether ``groups`` holds random-effect terms rather than donor labels."""
    if isinstance(groups, RETerm):
        msg = "groups: pass a sequence of terms, e.g. [term] or scglmm.random_terms(...), not a single RETerm."
        raise InvalidValueError(msg, param="groups")
    return isinstance(groups, (list, tuple)) and len(groups) > 0 and all(isinstance(t, RETerm) for t in groups)


def _fit_genes(
    Y: ArrayLike | sparse.spmatrix | sparse.sparray,
    X: ArrayLike,
    groups: ArrayLike,
    offset: ArrayLike | None,
    n_agq: int,
    n_jobs: int,
    block_size: int,
    coef_names: Sequence[str] | None,
    check: bool,
    progress: Callable[[int], None] | None,
) -> GenesFit:
    """:func:`fit_genes` (same parameters)."""
    Yb = as_backed_counts(Y)  # a path, h5py object or anndata backed dataset: read blocks from disk
    if Yb is not None:
        Y = Yb
    elif not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        Y = np.asarray(Y)
    check_count_matrix(Y)
    n, G = Y.shape
    if check:
        check_counts(Y)
    X = check_design_matrix(X, n, coef_names)
    codes, donors = check_donors(groups, n)
    off = check_offset(offset, n)
    prepared = prepare_design(X, codes, donors, off)
    p = prepared.X.shape[1]
    coef_names = check_coef_names(coef_names, p)
    check_n_agq(n_agq)
    check_n_jobs(n_jobs)
    check_block_size(block_size)

    # workers of the backend (asked once: under Dask it queries the cluster); the CSR conversion
    # runs here, on at most this machine's cores
    n_workers = 1 if n_jobs == 1 else max(1, effective_n_jobs(int(n_jobs)))
    get_block = block_getter(Y, n_threads=min(n_workers, os.cpu_count() or 1))
    starts = prepared.donors.starts
    design = Design(prepared.cells(), gauss_hermite(n_agq), few_rows_data(prepared.X, prepared.offset, starts))
    out, nnz = fit_blocks(
        get_block, design, G, n_jobs=n_jobs, n_workers=n_workers, block_size=block_size, progress=progress
    )
    fit = assemble(out, nnz, p, coef_names, prepared.donors.levels)

    def refit(Yr, Xr, codes_r, off_r, names) -> GenesFit:  # the model without the cells that separate
        return fit_genes(Yr, Xr, codes_r, off_r, n_agq=n_agq, n_jobs=n_jobs, block_size=block_size, coef_names=names)

    return refit_separated(fit, lambda genes: gene_columns(Y, genes), X, codes, off, refit)


def fit_gene(
    y: ArrayLike,
    X: ArrayLike,
    groups: ArrayLike | Sequence[RETerm],
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    coef_names: Sequence[str] | None = None,
) -> GeneFit | REGenesFit:
    """Fit the NB GLMM with a donor random intercept (or other random effects) to one gene.

    Parameters
    ----------
    y
        Counts of the gene, one per cell (numpy vector or a 1-column sparse matrix).
    X
        Fixed-effect design, cells x coefficients (include an intercept column yourself).
    groups
        Donor label of each cell, or random-effect terms (see :func:`fit_genes`).
    offset
        Log offset per cell (e.g. ``log(library size)``); zero if omitted.
    n_agq
        Adaptive Gauss-Hermite nodes; 1 is the Laplace approximation.
    coef_names
        Names of the columns of ``X``.

    Returns
    -------
    A :class:`GeneFit`; given random-effect terms as ``groups`` (see :func:`fit_genes`), an
    :class:`REGenesFit` with one row.
    """
    if sparse.issparse(y):
        y = y.toarray()
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()
    if y.ndim != 1:
        msg = f"y must be a vector of counts (one per cell); got shape {y.shape}."
        raise InvalidValueError(msg, param="y")
    res = fit_genes(y[:, None], X, groups, offset, n_agq=n_agq, coef_names=coef_names)
    return res if isinstance(res, REGenesFit) else res.gene(0)
