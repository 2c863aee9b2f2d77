"""Array-level API: fit one gene or a block of genes from numpy / scipy inputs, no AnnData needed.

One entry for every random-effect structure: :func:`fit_genes` takes donor labels (a donor random
intercept) or random-effect terms, and returns a :class:`GenesFit`. A single random intercept
``(1 | g)`` is fitted by the compiled kernels (few-rows fast path, general Laplace kernel, adaptive
Gauss-Hermite; :mod:`._schedule`), any other structure by the general engine (:mod:`._re`); the choice
is made here, from the terms, and both give the same Laplace log-likelihood. Genes that separate are
refitted without their vanishing cells (:mod:`._separation`), whatever the structure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    check_separation,
)
from ._counts import as_backed_counts, block_getter, block_reader, by_gene, gene_columns
from ._design import few_rows_data, gauss_hermite, prepare_design
from ._errors import InvalidValueError
from ._family import check_family, check_trials, fit_family
from ._penalised import refit_penalised, separation_prior
from ._prior import Prior
from ._re import REStructure, RETerm, prepare_re
from ._results import GeneFit, GenesFit, assemble, collect
from ._schedule import Design, compile_log, fit_blocks, fit_general_blocks
from ._separation import refit_separated

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["as_terms", "check_terms", "donor_term", "fit_gene", "fit_general_engine", "fit_genes", "fit_terms"]

#: Name of the grouping factor of donor labels passed as ``groups``.
DONOR = "donor"


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
    separation: str = "prior",
    family: str = "nb",
    trials: ArrayLike | None = None,
) -> GenesFit:
    """Fit the NB GLMM with donor random effects to every column of a count matrix.

    The model per gene is ``y | b ~ NB(mu, theta)``, ``log mu = X beta + offset + Z b``, with one block
    of random effects per term, ``N(0, Sigma_t)`` independently across levels and terms. Given donor
    labels, ``Z b = b[donor]`` (a donor random intercept, ``b ~ N(0, sigma2)``); given terms, any
    structure (random slopes, nested or crossed terms, e.g. from :func:`scglmm.random_terms`; see
    ``docs/random_effects.md``). The Laplace approximation of the marginal likelihood (or adaptive
    Gauss-Hermite with ``n_agq`` nodes, for a single random intercept) is maximised jointly over
    ``beta``, the covariance parameters and ``log theta``.

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
        Donor label of each cell (a donor random intercept), or the terms of a random-effect
        structure: a sequence of :class:`scglmm.RETerm` (``scglmm.random_terms("(1 + condition |
        donor)", obs)``). A single term ``(1 | g)`` is the same model as labels of ``g``.
    offset
        Log offset per cell (e.g. ``log(library size)``); zero if omitted.
    n_agq
        Number of adaptive Gauss-Hermite nodes; 1 is the Laplace approximation (glmmTMB's). More than
        one needs a single random intercept.
    n_jobs
        Workers over gene blocks; results do not depend on it. A single random intercept uses threads
        (the compiled kernels release the GIL), other structures joblib's processes. Inside
        ``joblib.parallel_config(backend="dask")`` the blocks go to the Dask cluster instead
        (``n_jobs=-1``: all its workers); see ``docs/scaling.md``.
    block_size
        Genes per block (with a single random intercept and ``n_jobs`` != 1 the blocks shrink towards
        the end of the run, to at least 4 genes, so that the workers finish together).
    coef_names
        Names of the columns of ``X``; ``x0, x1, ...`` if omitted.
    check
        Validate that counts are finite non-negative integers.
    progress
        Called with the number of genes finished after every block (e.g. a tqdm ``update``).
    separation
        Genes whose maximum-likelihood fit runs to infinity (one side of a factor without counts, e.g. a
        gene switched on by the condition) or to an extreme (a coefficient other than the intercept
        beyond a log2 fold change of 10, or a variance beyond 16): ``"prior"`` (default) refits them with
        weak normal priors on the fixed effects other than the intercept and on the covariance
        parameters, giving finite estimates with the status ``penalised`` (``docs/separation.md``;
        designs without an intercept column are left as with ``"limit"``); ``"limit"`` reports the
        maximum-likelihood limits: the coefficients that diverge are NaN, the others are estimated
        without the cells that vanish (``partial_separation``), or everything is NaN (``separation``).
    family
        ``"nb"`` (default, the model above), ``"binomial"`` or ``"poisson"``: the response family, the
        same random effects and estimator. Binomial: ``Y`` holds successes out of ``trials``, ``logit p =
        X beta + offset + Z b`` (e.g. a sample's cells of one cell type among its cells,
        :func:`scglmm.tl.composition`); Poisson: ``log mu = X beta + offset + Z b``. Rows are then
        observations (samples), fitted column by column on dense counts, without dispersion (``theta``
        NaN) and without the separation refits (``separation`` is ignored: a column whose design
        separates has the status ``separation``); ``n_agq`` must be 1. See ``docs/composition.md``.
    trials
        Binomial only: the trials of each row, one per row (shared by the columns) or one per entry
        (rows x columns), at least ``Y``.

    Returns
    -------
    A :class:`GenesFit` with one row per gene: fixed effects and their covariance, variance
    components (``varcomp``, named by ``varcomp_names``; ``sigma2`` is the first term's intercept
    variance), theta, log-likelihood, the conditional modes of every level (``modes``), status.
    """
    with compile_log():  # the first run after installing compiles the kernels: say so as it happens
        Y = _count_matrix(Y, check)
        n = Y.shape[0]
        X = check_design_matrix(X, n, coef_names)
        terms = as_terms(groups, n)
        off = check_offset(offset, n)
        coef_names = check_coef_names(coef_names, X.shape[1])
        check_n_agq(n_agq)
        check_n_jobs(n_jobs)
        check_block_size(block_size)
        check_separation(separation)
        if check_family(family) != "nb":
            return _fit_other_family(Y, X, terms, off, coef_names, family, trials, n_agq)
        check_trials(trials, Y, family)
        run = _Settings(n_agq, n_jobs, block_size, progress, separation)
        return fit_terms(Y, X, terms, off, coef_names, run)


def _fit_other_family(
    Y, X: NDArray, terms: tuple[RETerm, ...], off: NDArray, coef_names: list[str], family: str, trials, n_agq: int
) -> GenesFit:
    """:func:`fit_genes` with a family without dispersion (:mod:`._family`), on dense counts."""
    if n_agq != 1:
        msg = f"n_agq={n_agq!r}: the {family} family is fitted with the Laplace approximation; use n_agq=1."
        raise InvalidValueError(msg, param="n_agq")
    if hasattr(Y, "iter_chunks"):
        msg = f"family={family!r}: pass the counts in memory (a numpy array or a sparse matrix)."
        raise InvalidValueError(msg, param="Y")
    Yd = np.asarray(Y.toarray() if sparse.issparse(Y) else Y, dtype=np.float64)
    return fit_family(Yd, X, terms, off, coef_names, family, check_trials(trials, Yd, family))


@dataclass(frozen=True)
class _Settings:
    """How the genes are fitted (validated by :func:`fit_genes`)."""

    n_agq: int
    n_jobs: int
    block_size: int
    progress: Callable[[int], None] | None = None
    separation: str = "prior"


def _count_matrix(Y, check: bool):
    """The counts as a numpy array, a scipy sparse matrix or counts on disk, validated."""
    Yb = as_backed_counts(Y)  # a path, h5py object or anndata backed dataset: read blocks from disk
    if Yb is not None:
        Y = Yb
    elif not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        Y = np.asarray(Y)
    check_count_matrix(Y)
    if check:
        check_counts(Y)
    return Y


def donor_term(codes: NDArray[np.integer], levels: NDArray[np.object_], group: str = DONOR) -> RETerm:
    """The random intercept ``(1 | group)`` of cells with the given level codes."""
    return RETerm(
        group=group,
        Z=np.ones((codes.shape[0], 1)),
        codes=np.asarray(codes, dtype=np.int64),
        levels=np.asarray(levels, dtype=object),
        coef_names=("Intercept",),
    )


def as_terms(groups: ArrayLike | Sequence[RETerm], n: int) -> tuple[RETerm, ...]:
    """The random-effect terms of ``groups``: the terms themselves (checked), or the donor intercept of labels."""
    if isinstance(groups, RETerm):
        msg = "groups: pass a sequence of terms, e.g. [term] or scglmm.random_terms(...), not a single RETerm."
        raise InvalidValueError(msg, param="groups")
    if isinstance(groups, (list, tuple)) and len(groups) > 0 and all(isinstance(t, RETerm) for t in groups):
        return check_terms(groups, n)
    codes, donors = check_donors(groups, n)
    return (donor_term(codes, donors),)


def check_terms(terms: Sequence[RETerm], n: int) -> tuple[RETerm, ...]:
    """Validate the terms of a structure (shapes, codes, finite covariates)."""
    terms = tuple(terms)
    for t in terms:
        where = f"term '(... | {t.group})'"
        if t.Z.ndim != 2 or t.Z.shape[0] != n or t.codes.shape != (n,):
            msg = f"{where}: Z must be (n, q) and codes (n,) with n = {n} cells."
            raise InvalidValueError(msg, param="groups")
        if not np.all(np.isfinite(t.Z)):
            msg = f"{where}: its covariates have non-finite values."
            raise InvalidValueError(msg, param="groups")
        if t.codes.min() < 0 or t.codes.max() >= t.m or len(np.unique(t.codes)) != t.m:
            msg = f"{where}: codes must number the used levels 0 .. {t.m - 1}, each used."
            raise InvalidValueError(msg, param="groups")
        if len(t.coef_names) != t.q:
            msg = f"{where}: {t.q} columns but {len(t.coef_names)} coefficient names."
            raise InvalidValueError(msg, param="groups")
        if t.m < 2:
            msg = f"{where}: a single level ({list(t.levels)}); a variance between levels needs at least two."
            raise InvalidValueError(msg, param="groups")
    return terms


def fit_terms(
    Y, X: NDArray, terms: tuple[RETerm, ...], off: NDArray, coef_names: list[str], run: _Settings
) -> GenesFit:
    """:func:`fit_genes` on validated inputs: the compiled kernels for a single random intercept, the
    general engine otherwise; then, with ``separation="prior"``, the genes that separate or run to extremes
    refitted with the weak prior, and the genes still separated (``"limit"``, a design without an intercept
    column, or a failed penalised refit) refitted without their vanishing cells."""
    scalar = len(terms) == 1 and terms[0].scalar_intercept
    if run.n_agq != 1 and not scalar:
        shown = " + ".join(f"(... | {t.group})" for t in terms)
        msg = (
            f"n_agq={run.n_agq!r}: adaptive Gauss-Hermite quadrature needs a single scalar random effect "
            f"('(1 | donor)'); the random effects {shown} are fitted with the Laplace approximation: use n_agq=1."
        )
        raise InvalidValueError(msg, param="n_agq")
    n_workers = 1 if run.n_jobs == 1 else max(1, effective_n_jobs(int(run.n_jobs)))
    with by_gene(Y) as Yg:
        return _fit_and_refit(Yg, X, terms, off, coef_names, run, n_workers, scalar)


def _fit_and_refit(
    Y, X: NDArray, terms: tuple[RETerm, ...], off: NDArray, coef_names: list[str], run: _Settings, n_workers: int,
    scalar: bool,
) -> GenesFit:  # fmt: skip
    """The body of :func:`fit_terms`: the fit, then the refits of extreme and separated genes."""
    fit = (_fit_scalar if scalar else _fit_general)(Y, X, terms, off, coef_names, run, n_workers)

    def refit(Yr, Xr, terms_r, off_r, names) -> GenesFit:  # the model without the cells that separate
        reduced = _Settings(run.n_agq, run.n_jobs, run.block_size, separation="limit")
        return fit_terms(Yr, Xr, tuple(terms_r), off_r, names, reduced)

    def penalised(Yr, Xr, terms_r, off_r) -> GenesFit:  # the weakly penalised fit of extreme genes
        jobs = run.n_jobs if Yr.shape[1] > 2 * run.block_size else 1
        few = _Settings(1, jobs, run.block_size)
        workers = n_workers if jobs != 1 else 1
        return _fit_general(Yr, Xr, tuple(terms_r), off_r, coef_names, few, workers, separation_prior)

    def counts_of(genes):
        return gene_columns(Y, genes)

    if run.separation == "prior":  # first, so that no separated gene is also refitted without its cells
        fit = refit_penalised(fit, counts_of, X, terms, off, penalised)
    return refit_separated(fit, counts_of, X, terms, off, refit)  # what is still separated: the limits


def _fit_scalar(
    Y, X: NDArray, terms: tuple[RETerm, ...], off: NDArray, coef_names: list[str], run: _Settings, n_workers: int
) -> GenesFit:
    """A single random intercept: the compiled kernels, over blocks of genes in threads."""
    (term,) = terms
    prepared = prepare_design(X, term.codes, term.levels, off)
    # the CSR conversion runs here, on at most this machine's cores
    get_block = block_getter(Y, n_threads=min(n_workers, os.cpu_count() or 1))
    design = Design(
        prepared.cells(), gauss_hermite(run.n_agq), few_rows_data(prepared.X, prepared.offset, prepared.donors.starts)
    )
    out, nnz = fit_blocks(
        get_block, design, Y.shape[1], n_jobs=run.n_jobs, n_workers=n_workers, block_size=run.block_size,
        progress=run.progress, read_block=block_reader(Y),
    )  # fmt: skip
    return assemble(out, nnz, prepared.X.shape[1], coef_names, prepared.donors.levels, term.group)


def _fit_general(
    Y,
    X: NDArray,
    terms: tuple[RETerm, ...],
    off: NDArray,
    coef_names: list[str],
    run: _Settings,
    n_workers: int,
    prior_of: Callable[[REStructure], Prior | None] | None = None,
) -> GenesFit:
    """Any other structure: the general engine, gene by gene, over blocks of genes in processes
    (``prior_of``: the log-prior of the prepared structure, e.g. the weak prior of :mod:`._penalised`)."""
    s = prepare_re(X, off, terms)
    if prior_of is not None:
        s = replace(s, prior=prior_of(s))
    if isinstance(Y, np.ndarray):

        def get_block(a: int, b: int) -> NDArray:
            return Y[:, a:b]
    else:
        get_block = block_getter(Y, n_threads=min(n_workers, os.cpu_count() or 1))
    fits, nnz = fit_general_blocks(
        get_block, s, Y.shape[1], n_jobs=run.n_jobs, n_workers=n_workers, block_size=run.block_size,
        progress=run.progress, read_block=block_reader(Y),
    )  # fmt: skip
    return collect(s, fits, coef_names, nnz)


def fit_general_engine(
    Y,
    X: ArrayLike,
    terms: Sequence[RETerm],
    offset: ArrayLike | None = None,
    *,
    coef_names: Sequence[str] | None = None,
) -> GenesFit:
    """The general engine on any structure, a single random intercept included, without the refit of genes
    that separate: what :func:`fit_genes` compares the compiled kernels with (tests and benchmarks)."""
    Y = _count_matrix(Y, check=True)
    n = Y.shape[0]
    X = check_design_matrix(X, n, coef_names)
    terms = check_terms(terms, n)
    coef_names = check_coef_names(coef_names, X.shape[1])
    return _fit_general(Y, X, terms, check_offset(offset, n), coef_names, _Settings(1, 1, 64), 1)


def fit_gene(
    y: ArrayLike,
    X: ArrayLike,
    groups: ArrayLike | Sequence[RETerm],
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    coef_names: Sequence[str] | None = None,
    separation: str = "prior",
) -> GeneFit:
    """Fit the NB GLMM with donor random effects to one gene.

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
    separation
        ``"prior"`` or ``"limit"``: how a gene that separates is reported (see :func:`fit_genes`).

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
        raise InvalidValueError(msg, param="y")
    return fit_genes(y[:, None], X, groups, offset, n_agq=n_agq, coef_names=coef_names, separation=separation).gene(0)
