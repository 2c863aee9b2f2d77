"""Genes whose design separates on some coefficients: fit the rest.

Cells whose linear predictor can be sent to minus infinity without changing that of any cell with
counts are *vanishing* cells: along such a direction ``d`` of the coefficients (``X_i d < 0`` on
them, ``X_i d = 0`` on every cell with counts, ``X_i d <= 0`` on the others) the likelihood rises
towards its supremum, so their coefficients run to infinity (Haberman's condition for log-linear
models; the random effects do not change it: for every value of a random effect, the likelihood of
a vanishing cell rises to 1). Two cases are common:

- a level of a factor whose cells all have zero counts (a donor without counts of the gene in
  ``~ donor + condition + (1 | sample)``; caught before the optimiser starts);
- the *reference* level of a factor without counts (the first donor): no single column separates,
  but the intercept runs to minus infinity and every other level's coefficient to plus infinity
  (caught by the optimiser, when a coefficient passes ``sep_bound``).

The largest set of vanishing cells is found by a linear programme on the distinct design rows.
Those cells then contribute nothing to the likelihood (their mean is 0, their counts are 0), so the
other parameters' maximum likelihood estimates are those of the model fitted on the remaining cells:
the limit of the full model, exactly. A coefficient ``k`` has a limit if it does not move along any
such direction, i.e. if ``e_k`` lies in the row space of the remaining cells' design (it is
*estimable* there). Such a gene is refitted on the remaining cells with a maximal set of linearly
independent columns (every estimable column is in any such set); the estimable coefficients are
reported with their estimates, the others as NaN, and the status gets
:data:`~scglmm._core._status.PARTIAL_SEPARATION`. A gene keeps the status
:data:`~scglmm._core._status.SEPARATION` (everything NaN) when nothing vanishes (the optimiser
flagged a random-effect variance running to infinity: counts in a single group), when no
coefficient is estimable on the remaining cells, or when the reduced model cannot estimate the
random-effect variance: fewer than two groups keep cells, or the fixed effects fit every remaining
group's level exactly (e.g. one donor's two samples with ``(1 | sample)``), which leaves the
variance, and so the standard errors, without information.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from ._re import RETerm
from ._results import REFIT_FIELDS, GenesFit
from ._status import PARTIAL_SEPARATION, SEPARATION, UNUSABLE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["refit_separated"]

#: Relative tolerance of the rank decisions (singular values below it times the largest are 0).
_RANK_TOL = 1e-10


@dataclass(frozen=True)
class Reduction:
    """The model of a separated gene without its vanishing cells."""

    keep: NDArray[np.bool_]
    """Cells kept (those that do not vanish)."""
    cols: NDArray[np.int64]
    """Columns fitted: linearly independent on the kept cells, in the design's order."""
    estimable: NDArray[np.bool_]
    """Over ``cols``: whether the coefficient has a limit (is reported); the others are NaN."""


def _rank(A: NDArray) -> int:
    """Numerical rank of ``A``."""
    if A.size == 0:
        return 0
    s = np.linalg.svd(A, compute_uv=False)
    return int((s > s[0] * _RANK_TOL).sum()) if s[0] > 0 else 0


def _vanishing(U: NDArray, has_counts: NDArray[np.bool_]) -> NDArray[np.bool_] | None:
    """Rows of the distinct design rows ``U`` whose mean can go to 0 (see the module notes).

    Maximises ``sum t_r`` over ``d`` and ``0 <= t_r <= 1`` subject to ``U_r d + t_r <= 0`` on the rows
    without counts and ``U_r d = 0`` on those with counts: directions add up, and each can be scaled,
    so at the optimum ``t_r = 1`` exactly on the largest set of vanishing rows. None if the
    programme fails.
    """
    zero = np.flatnonzero(~has_counts)
    out = np.zeros(U.shape[0], dtype=bool)
    if zero.size == 0:
        return out
    p, z = U.shape[1], zero.size
    on = U[has_counts]
    res = linprog(
        np.concatenate([np.zeros(p), -np.ones(z)]),
        A_ub=np.hstack([U[zero], np.eye(z)]),
        b_ub=np.zeros(z),
        A_eq=np.hstack([on, np.zeros((on.shape[0], z))]) if on.shape[0] else None,
        b_eq=np.zeros(on.shape[0]) if on.shape[0] else None,
        bounds=[(None, None)] * p + [(0.0, 1.0)] * z,
        method="highs",
    )
    if res.status != 0:
        return None
    out[zero] = res.x[p:] > 0.5
    return out


def _independent(U: NDArray) -> NDArray[np.int64]:
    """A maximal set of linearly independent columns of ``U``, taken greedily in order."""
    cols: list[int] = []
    for k in range(U.shape[1]):
        if _rank(U[:, [*cols, k]]) > len(cols):
            cols.append(k)
    return np.array(cols, dtype=np.int64)


def _estimable(U: NDArray) -> NDArray[np.bool_]:
    """Per column of ``U``: whether the unit vector lies in the row space (the coefficient is
    identified), i.e. the null space has no component along it."""
    _, s, vt = np.linalg.svd(U, full_matrices=True)
    rank = _rank(U)
    null = vt[rank:]
    return np.all(np.abs(null) < 1e-8, axis=0)


def _variance_estimable(U: NDArray, group: NDArray[np.int64]) -> bool:
    """Whether the group variance has information: at least two groups, and the groups' levels are
    not all fitted by the fixed effects (the group indicators add to the rank of the design).

    ``U`` and ``group`` list the distinct (design row, group) pairs of the kept cells.
    """
    levels, code = np.unique(group, return_inverse=True)
    if levels.size < 2:
        return False
    Z = np.zeros((U.shape[0], levels.size))
    Z[np.arange(U.shape[0]), code] = 1.0
    return _rank(np.hstack([U, Z])) > _rank(U)


def _reduced(X: NDArray, terms: Sequence[RETerm], gone: NDArray[np.bool_]) -> Reduction | None:
    """The model without the vanishing cells ``gone``, or None if it cannot be fitted: no coefficient
    estimable, or a term whose variance has no information (or whose covariates lose their rank) there."""
    keep = ~gone
    pairs = np.unique(np.column_stack([X[keep], terms[0].codes[keep]]), axis=0)
    U = pairs[:, :-1]
    cols = _independent(U)
    if cols.size == 0 or not all(_term_estimable(X[keep], t, keep) for t in terms):
        return None
    estimable = _estimable(U)[cols]
    return Reduction(keep=keep, cols=cols, estimable=estimable) if estimable.any() else None


def _term_estimable(Xk: NDArray, term: RETerm, keep: NDArray[np.bool_]) -> bool:
    """Whether a term keeps information on its variance on the kept cells (see :func:`_variance_estimable`)
    and covariates of full column rank there."""
    pairs = np.unique(np.column_stack([Xk, term.codes[keep]]), axis=0)
    if not _variance_estimable(pairs[:, :-1], pairs[:, -1].astype(np.int64)):
        return False
    return term.q == 1 or _rank(term.Z[keep]) == term.q


def _by_vanishing_cells(Y: sparse.csc_matrix, X: NDArray) -> list[tuple[NDArray[np.bool_], list[int]]]:
    """The genes (columns of ``Y``) grouped by their vanishing cells, for the genes with some."""
    U, row = np.unique(X, axis=0, return_inverse=True)
    row = row.ravel()
    to_rows = sparse.csr_matrix((np.ones(row.size), (row, np.arange(row.size))), shape=(U.shape[0], row.size))
    has = np.asarray((to_rows @ (Y != 0).astype(np.float64)).todense()).T > 0  # genes x distinct rows
    groups: dict[bytes, tuple[NDArray[np.bool_] | None, list[int]]] = {}
    for g, h in enumerate(has):
        key = np.packbits(h).tobytes()
        if key not in groups:
            rows = _vanishing(U, h)
            groups[key] = (rows[row] if rows is not None and rows.any() else None, [])
        groups[key][1].append(g)
    return [(gone, genes) for gone, genes in groups.values() if gone is not None]


def refit_separated(
    fit: GenesFit,
    counts_of: Callable[[NDArray[np.int64]], sparse.csc_matrix],
    X: NDArray,
    terms: Sequence[RETerm],
    offset: NDArray,
    refit: Callable[..., GenesFit],
) -> GenesFit:
    """``fit`` with every gene flagged ``separation`` refitted without its vanishing cells, where
    some vanish and the reduced model can be fitted (see the module notes).

    Parameters
    ----------
    fit
        The fit of all genes.
    counts_of
        The counts (cells x genes, CSC) of the given genes, in the input's cell order.
    X, terms, offset
        Design, random-effect terms and log offset per cell, in the input's cell order.
    refit
        ``refit(Y, X, terms, offset, coef_names)`` fits a reduced model (the array API).
    """
    genes = np.flatnonzero((fit.status & SEPARATION) != 0)
    if genes.size == 0:
        return fit
    Y = sparse.csc_matrix(counts_of(genes))
    arrays = {name: np.array(getattr(fit, name), copy=True) for name in (*REFIT_FIELDS, "modes")}
    for gone, rows in _by_vanishing_cells(Y, X):
        reduced = _reduced(X, terms, gone)
        if reduced is None:
            continue
        keep, cols = reduced.keep, reduced.cols
        names = [fit.coef_names[j] for j in cols]
        part = refit(Y[keep][:, rows], X[keep][:, cols], [t.subset(keep) for t in terms], offset[keep], names)
        _place(arrays, part, genes[rows], reduced, fit.mode_names)
    return replace(fit, **arrays)


def _place(arrays: dict[str, NDArray], part: GenesFit, genes: NDArray, reduced: Reduction, names: list[str]) -> None:
    """Write the refit ``part`` of ``genes`` (fitted on ``reduced.cols``) into the full arrays: the
    coefficients without a limit (not estimable on the kept cells) stay NaN."""
    p = arrays["coef"].shape[1]
    cols = reduced.cols[reduced.estimable]
    est = np.flatnonzero(reduced.estimable)
    arrays["coef"][genes] = _spread(part.coef[:, est], cols, p)
    arrays["se"][genes] = _spread(part.se[:, est], cols, p)
    cov = np.full((genes.size, p, p), np.nan)
    cov[np.ix_(np.arange(genes.size), cols, cols)] = part.cov[np.ix_(np.arange(genes.size), est, est)]
    arrays["cov"][genes] = cov
    for name in ("varcomp", "theta", "dispersion", "loglik", "n_iter", "n_eval", "grad_max", "log_sigma2_se",
                 "log_theta_se"):  # fmt: skip
        arrays[name][genes] = getattr(part, name)
    # the reduced fit has the levels that keep cells; the others have no data: their conditional mode is 0
    position = {name: i for i, name in enumerate(names)}
    modes = np.zeros((genes.size, len(names)))
    modes[:, [position[name] for name in part.mode_names]] = part.modes
    modes[~np.isfinite(part.loglik)] = np.nan
    arrays["modes"][genes] = modes
    arrays["status"][genes] = part.status | np.where((part.status & UNUSABLE) != 0, 0, PARTIAL_SEPARATION)


def _spread(values: NDArray, cols: NDArray, p: int) -> NDArray:
    out = np.full((values.shape[0], p), np.nan)
    out[:, cols] = values
    return out
