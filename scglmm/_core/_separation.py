"""Genes whose design separates on some coefficients: fit the rest.

A two-valued design column (a level of a factor) whose cells all have zero counts sends its
coefficient to minus infinity (for a donor fixed effect: a donor with no counts of the gene). Its
cells then contribute nothing to the likelihood (their mean is 0, their counts are 0), so the
other parameters' maximum likelihood estimates are those of the model without those cells and
without that column: the limit of the full model, exactly. Such a gene is refitted that way; the
diverged coefficients are reported as NaN, the others with their estimates, and the status gets
:data:`~scglmm._core._status.PARTIAL_SEPARATION`. A gene keeps the status
:data:`~scglmm._core._status.SEPARATION` (everything NaN) when the reduced model cannot be fitted
(its design loses rank, or fewer than two donors keep cells).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._results import GenesFit
from ._status import PARTIAL_SEPARATION, SEPARATION, UNUSABLE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["refit_separated"]

#: (column, value) pairs whose cells have no counts, for one gene.
Pattern = tuple[tuple[int, float], ...]


def _two_valued(X: NDArray) -> list[tuple[int, NDArray, NDArray]]:
    """``(column, values, cells with each value)`` for the columns of ``X`` with exactly two values."""
    out = []
    for k in range(X.shape[1]):
        vals = np.unique(X[:, k])
        if vals.size == 2:
            out.append((k, vals, X[:, k] == vals[1]))
    return out


def _patterns(Y: sparse.csc_matrix, X: NDArray) -> list[Pattern]:
    """Per gene (column of ``Y``), the two-valued columns with zero total count on one value."""
    totals = np.asarray(Y.sum(axis=0)).ravel()
    found: list[list[tuple[int, float]]] = [[] for _ in range(Y.shape[1])]
    for k, vals, on_second in _two_valued(X):
        second = np.asarray(Y.T @ on_second.astype(np.float64)).ravel()
        for g in np.flatnonzero(second == 0.0):
            found[g].append((k, float(vals[1])))
        for g in np.flatnonzero(second == totals):
            found[g].append((k, float(vals[0])))
    return [tuple(p) for p in found]


def _reduced(X: NDArray, codes: NDArray, pattern: Pattern) -> tuple[NDArray, NDArray] | None:
    """Cells kept and columns kept by ``pattern``, or None if the reduced model is not estimable."""
    keep = np.ones(X.shape[0], dtype=bool)
    for k, v in pattern:
        keep &= X[:, k] != v
    cols = np.array([j for j in range(X.shape[1]) if j not in {k for k, _ in pattern}], dtype=np.int64)
    Xr = X[keep][:, cols]
    if cols.size == 0 or np.unique(codes[keep]).size < 2 or np.linalg.matrix_rank(Xr) < cols.size:
        return None
    return keep, cols


def refit_separated(
    fit: GenesFit,
    counts_of: Callable[[NDArray[np.int64]], sparse.csc_matrix],
    X: NDArray,
    codes: NDArray,
    offset: NDArray,
    refit: Callable[..., GenesFit],
) -> GenesFit:
    """``fit`` with every gene that separated before the optimiser started refitted without the
    cells and columns that separate it (see the module notes).

    Parameters
    ----------
    fit
        The fit of all genes.
    counts_of
        The counts (cells x genes, CSC) of the given genes, in the input's cell order.
    X, codes, offset
        Design, donor codes and log offset per cell, in the input's cell order.
    refit
        ``refit(Y, X, codes, offset, coef_names)`` fits a reduced model (the array API).
    """
    genes = np.flatnonzero(((fit.status & SEPARATION) != 0) & (fit.n_iter == 0))
    if genes.size == 0:
        return fit
    Y = counts_of(genes)
    groups: dict[Pattern, list[int]] = {}
    for i, pattern in enumerate(_patterns(Y, X)):
        if pattern:
            groups.setdefault(pattern, []).append(i)
    arrays = {name: np.array(getattr(fit, name), copy=True) for name in _PER_GENE}
    for pattern, rows in groups.items():
        reduced = _reduced(X, codes, pattern)
        if reduced is None:
            continue
        keep, cols = reduced
        names = [fit.coef_names[j] for j in cols]
        part = refit(Y[keep][:, rows], X[keep][:, cols], codes[keep], offset[keep], names)
        _place(arrays, part, genes[rows], cols, fit.donors)
    return replace(fit, **arrays)


#: Per-gene fields of :class:`GenesFit` that a refit replaces.
_PER_GENE = (
    "coef", "se", "cov", "sigma2", "theta", "dispersion", "loglik", "modes", "n_iter", "status", "grad_max",
    "log_sigma2_se", "log_theta_se",
)  # fmt: skip


def _place(arrays: dict[str, NDArray], part: GenesFit, genes: NDArray, cols: NDArray, donors: NDArray) -> None:
    """Write the refit ``part`` of ``genes`` (fitted on columns ``cols``) into the full arrays."""
    p = arrays["coef"].shape[1]
    arrays["coef"][genes] = _spread(part.coef, cols, p)
    arrays["se"][genes] = _spread(part.se, cols, p)
    cov = np.full((genes.size, p, p), np.nan)
    cov[np.ix_(np.arange(genes.size), cols, cols)] = part.cov
    arrays["cov"][genes] = cov
    for name in ("sigma2", "theta", "dispersion", "loglik", "n_iter", "grad_max", "log_sigma2_se", "log_theta_se"):
        arrays[name][genes] = getattr(part, name)
    # the reduced fit's donors are the codes of the donors that keep cells; the others have no
    # data, so their conditional mode is 0
    modes = np.zeros((genes.size, donors.size))
    modes[:, np.asarray(part.donors, dtype=np.int64)] = part.modes
    modes[~np.isfinite(part.loglik)] = np.nan
    arrays["modes"][genes] = modes
    arrays["status"][genes] = part.status | np.where((part.status & UNUSABLE) != 0, 0, PARTIAL_SEPARATION)


def _spread(values: NDArray, cols: NDArray, p: int) -> NDArray:
    out = np.full((values.shape[0], p), np.nan)
    out[:, cols] = values
    return out
