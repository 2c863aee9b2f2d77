"""Array API of general random-effect structures: fit every gene of a count matrix, collect the results.

:func:`scglmm.tl.fit` calls it (through :mod:`scglmm.tl._re_run`) for any structure but ``(1 | donor)``;
see :mod:`._re` for the model and the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy import sparse

from ._checks import (
    check_coef_names,
    check_count_matrix,
    check_counts,
    check_design_matrix,
    check_n_jobs,
    check_offset,
)
from ._errors import InvalidValueError
from ._re import T_MAX, REFitOne, REStructure, RETerm, fit_re_one, prepare_re, varcomp
from ._status import NOT_CONVERGED, POISSON_LIMIT, UNUSABLE, status_names

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["REGenesFit", "fit_re_genes", "re_terms_check"]


@dataclass(frozen=True)
class REGenesFit:
    """Fits of G genes with a general random-effect structure. Row g of every array is gene g."""

    coef: NDArray[np.float64]
    """(G, p) fixed effects, natural-log scale."""
    se: NDArray[np.float64]
    """(G, p) standard errors from the full Hessian (modes' dependence included)."""
    cov: NDArray[np.float64]
    """(G, p, p) covariance of the fixed effects."""
    varcomp: NDArray[np.float64]
    """(G, V) variances and correlations, named by ``varcomp_names``."""
    theta: NDArray[np.float64]
    """NB size; ``inf`` in the Poisson limit."""
    dispersion: NDArray[np.float64]
    loglik: NDArray[np.float64]
    """Laplace log-likelihood, all constants included (comparable to glmmTMB's ``logLik``)."""
    modes: NDArray[np.float64]
    """(G, Q) conditional modes ``b``, named by ``mode_names``."""
    n_iter: NDArray[np.int64]
    n_eval: NDArray[np.int64]
    """Objective-and-gradient evaluations (each a converged inner Newton)."""
    status: NDArray[np.int64]
    grad_max: NDArray[np.float64]
    coef_names: list[str]
    varcomp_names: list[str]
    mode_names: list[str]

    @property
    def status_str(self) -> NDArray[np.object_]:
        """Readable status per gene."""
        return status_names(self.status)

    @property
    def converged(self) -> NDArray[np.bool_]:
        """True where the optimiser converged and the estimates are usable."""
        return (self.status & (UNUSABLE | NOT_CONVERGED)) == 0


def re_terms_check(terms: Sequence[RETerm], n: int) -> tuple[RETerm, ...]:
    """Validate the terms of a structure (shapes, codes, finite covariates)."""
    terms = tuple(terms)
    if not terms:
        msg = "terms must hold at least one random-effect term."
        raise InvalidValueError(msg, param="terms")
    for t in terms:
        if t.Z.ndim != 2 or t.Z.shape[0] != n or t.codes.shape != (n,):
            msg = f"term '(... | {t.group})': Z must be (n, q) and codes (n,) with n = {n} cells."
            raise InvalidValueError(msg, param="terms")
        if not np.all(np.isfinite(t.Z)):
            msg = f"term '(... | {t.group})': its covariates have non-finite values."
            raise InvalidValueError(msg, param="terms")
        if t.codes.min() < 0 or t.codes.max() >= t.m or len(np.unique(t.codes)) != t.m:
            msg = f"term '(... | {t.group})': codes must number the used levels 0 .. {t.m - 1}, each used."
            raise InvalidValueError(msg, param="terms")
        if len(t.coef_names) != t.q:
            msg = f"term '(... | {t.group})': {t.q} columns but {len(t.coef_names)} coefficient names."
            raise InvalidValueError(msg, param="terms")
    return terms


def _mode_names(s: REStructure) -> list[str]:
    """``group[level]:coefficient`` in global effect order."""
    names = [""] * s.data.Q
    for it, term in enumerate(s.terms):
        for lev, label in enumerate(term.levels):
            for c, cname in enumerate(term.coef_names):
                names[int(s.gpos[it][lev]) + c] = f"{term.group}[{label}]:{cname}"
    return names


def fit_re_genes(
    Y: ArrayLike | sparse.spmatrix | sparse.sparray,
    X: ArrayLike,
    terms: Sequence[RETerm],
    offset: ArrayLike | None = None,
    *,
    n_agq: int = 1,
    coef_names: Sequence[str] | None = None,
    check: bool = True,
    n_jobs: int = 1,
) -> REGenesFit:
    """Fit the NB GLMM ``log mu = X beta + offset + Z b`` with a general random-effect structure to every gene.

    Parameters
    ----------
    Y
        Counts, cells x genes (numpy array or scipy sparse matrix).
    X
        Fixed-effect design, cells x coefficients (with the intercept column).
    terms
        The random-effect terms (:class:`RETerm`), e.g. from :func:`scglmm._formula.build_re_terms`.
    offset
        Log offset per cell; zero if omitted.
    n_agq
        Only 1 (the Laplace approximation): adaptive Gauss-Hermite quadrature is available for a
        single scalar random effect, through :func:`scglmm.fit_genes`.
    coef_names
        Names of the columns of ``X``.
    check
        Validate that counts are finite non-negative integers.
    n_jobs
        Workers of joblib's active backend (default: processes; ``-1``: all cores) over which the
        genes are spread in blocks of consecutive genes; 1 fits them in this thread. Every gene's
        fit is the same whichever worker runs it.

    Returns
    -------
    A :class:`REGenesFit`.
    """
    if not sparse.issparse(Y):
        Y = np.asarray(Y)
    check_count_matrix(Y)
    n, G = Y.shape
    if check:
        check_counts(Y)
    X = check_design_matrix(X, n, coef_names)
    off = check_offset(offset, n)
    terms = re_terms_check(terms, n)
    if n_agq != 1:
        msg = (
            f"n_agq={n_agq!r}: adaptive Gauss-Hermite quadrature needs a single scalar random effect "
            "('(1 | donor)', scglmm.fit_genes); general random-effect structures use the Laplace "
            "approximation, n_agq=1."
        )
        raise InvalidValueError(msg, param="n_agq")
    coef_names = check_coef_names(coef_names, X.shape[1])
    check_n_jobs(n_jobs)
    s = prepare_re(X, off, terms)
    Yc = sparse.csc_matrix(Y) if sparse.issparse(Y) else np.asarray(Y)
    n_workers = 1 if n_jobs == 1 else max(1, effective_n_jobs(int(n_jobs)))
    if n_workers == 1 or G < 2:
        fits = _fit_columns(s, Yc)
    else:  # a few blocks of consecutive genes per worker (the structure is shipped once per block)
        cuts = np.linspace(0, G, min(G, 4 * n_workers) + 1).astype(int)
        parts = Parallel(n_jobs=int(n_jobs))(
            delayed(_fit_columns)(s, Yc[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a
        )
        fits = [f for part in parts for f in part]
    return _collect(s, fits, coef_names)


def _fit_columns(s: REStructure, Y: NDArray | sparse.csc_matrix) -> list[REFitOne]:
    """:func:`fit_re_one` on every column of a dense or CSC count matrix, in this thread."""
    fits = []
    n = Y.shape[0]
    for g in range(Y.shape[1]):
        if sparse.issparse(Y):
            col = np.zeros(n)
            lo, hi = Y.indptr[g], Y.indptr[g + 1]
            col[Y.indices[lo:hi]] = Y.data[lo:hi]
        else:
            col = np.asarray(Y[:, g], dtype=np.float64)
        fits.append(fit_re_one(s, col))
    return fits


def _collect(s: REStructure, fits: list, coef_names: list[str]) -> REGenesFit:
    """Stack the per-gene fits."""
    p = s.p
    phi = np.array([f.phi for f in fits]).reshape(len(fits), s.n_params)
    cov = np.array([f.cov_phi[:p, :p] for f in fits]).reshape(len(fits), p, p)
    status = np.array([f.status for f in fits], dtype=np.int64)
    t = phi[:, -1]
    theta = np.where((status & POISSON_LIMIT) != 0, np.inf, np.exp(np.minimum(t, T_MAX)))
    vc = np.array([varcomp(s, f.phi) for f in fits]).reshape(len(fits), -1)
    return REGenesFit(
        coef=phi[:, :p],
        se=np.sqrt(np.diagonal(cov, axis1=1, axis2=2)),
        cov=cov,
        varcomp=vc,
        theta=theta,
        dispersion=1.0 / theta,
        loglik=np.array([f.loglik for f in fits]),
        modes=np.array([f.modes for f in fits]).reshape(len(fits), s.data.Q),
        n_iter=np.array([f.n_iter for f in fits], dtype=np.int64),
        n_eval=np.array([f.n_eval for f in fits], dtype=np.int64),
        status=status,
        grad_max=np.array([f.grad_max for f in fits]),
        coef_names=list(coef_names),
        varcomp_names=s.varcomp_names(),
        mode_names=_mode_names(s),
    )
