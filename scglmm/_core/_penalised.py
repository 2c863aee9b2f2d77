"""Genes whose maximum-likelihood fit runs to infinity or to an extreme: a weakly penalised refit.

When one side of a comparison has no counts (a gene switched on by the condition: no count in any
control cell), the maximum-likelihood effect is infinite (*separation*); when it has almost none,
the effect and the random-effect variances run to extremes (log2 fold changes of 15-20, variances
of 100 on the log scale: the random effects soak up the zeros). Both carry real information (the
likelihood-ratio statistic against the model without the effect is large and finite), so such a
gene is refitted on all its cells by maximising the log-likelihood plus weak independent normal
log-priors centred at 0 (MODEL.md section 8):

- each fixed effect other than the intercept: ``N(0, BETA_SD^2)`` on the natural-log scale (the
  weak normal prior of blme's ``fixef.prior`` and of bayesglm);
- each entry of each term's Cholesky factor ``L_t``: ``N(0, COV_SD^2)``; for a scalar term this is a
  half-normal prior on the random-effect standard deviation (Gelman 2006), for larger terms it bounds
  every variance (``Sigma_t = L_t L_t'``) and keeps the covariance off degenerate extremes;
- log theta: none.

The reported numbers are those of this penalised fit (its mode; the standard errors from the
penalised objective's Hessian, as blme reports), the log-likelihood is the unpenalised one at that
mode, and the status carries :data:`~scglmm._core._status.PENALISED`. Genes whose design has no
intercept column (``~ 0 + ...``: every coefficient a level's log rate, which a prior at 0 would pull
to an absurd value) are left as they are. The prior scales were chosen by the study in
``benchmarks/separation_prior.py`` (``docs/separation.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._prior import Prior
from ._re import RETerm
from ._results import REFIT_FIELDS, GenesFit
from ._status import PARTIAL_SEPARATION, PENALISED, SEPARATION, UNUSABLE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._re import REStructure

__all__ = ["BETA_SD", "COV_SD", "NEAR_COEF", "NEAR_VAR", "extreme_genes", "refit_penalised", "separation_prior"]

#: Prior standard deviation of each fixed effect other than the intercept (natural-log scale).
BETA_SD = 2.5
#: Prior standard deviation of each entry of a term's Cholesky factor (natural-log scale).
COV_SD = 3.0
#: A coefficient (other than the intercept) beyond this on the natural-log scale (a log2 fold change
#: beyond 10) marks a fit driven to an extreme by (almost) empty cells.
NEAR_COEF = 10.0 * np.log(2.0)
#: A random-effect variance beyond this (a standard deviation of 4 on the natural-log scale) likewise.
NEAR_VAR = 16.0


def intercept_column(X: NDArray) -> int | None:
    """The index of the design's all-ones column, or None."""
    ones = np.flatnonzero(np.all(X == 1.0, axis=0))
    return int(ones[0]) if ones.size else None


def separation_prior(s: REStructure) -> Prior | None:
    """The weak prior of the penalised refit on the outer parameters ``(beta, Cholesky entries, log theta)``
    of ``s`` (see the module notes); None when the design has no intercept column."""
    k = intercept_column(s.data.X)
    if k is None:
        return None
    prec = np.zeros(s.n_params)
    prec[: s.p] = 1.0 / BETA_SD**2
    prec[k] = 0.0
    prec[s.p : s.p + s.n_lambda] = 1.0 / COV_SD**2
    return Prior(prec)


def extreme_genes(fit: GenesFit, X: NDArray) -> NDArray[np.int64]:
    """The genes to refit with the prior: separated ones (everything NaN), partly separated ones (some
    coefficient NaN), and fitted ones with a coefficient other than the intercept beyond :data:`NEAR_COEF`
    or a variance beyond :data:`NEAR_VAR`."""
    k = intercept_column(X)
    if k is None:
        return np.zeros(0, dtype=np.int64)
    separated = (fit.status & (SEPARATION | PARTIAL_SEPARATION)) != 0
    usable = (fit.status & UNUSABLE) == 0
    others = np.delete(np.abs(fit.coef), k, axis=1)
    variances = fit.varcomp[:, [i for i, n in enumerate(fit.varcomp_names) if n.startswith("var(")]]
    with np.errstate(invalid="ignore"):
        extreme = (others > NEAR_COEF).any(axis=1) | (variances > NEAR_VAR).any(axis=1)
    return np.flatnonzero(separated | (usable & extreme))


def refit_penalised(
    fit: GenesFit,
    counts_of: Callable[[NDArray[np.int64]], sparse.csc_matrix],
    X: NDArray,
    terms: Sequence[RETerm],
    offset: NDArray,
    refit: Callable[..., GenesFit],
) -> GenesFit:
    """``fit`` with its :func:`extreme_genes` refitted with the weak prior, on all their cells.

    ``refit(Y, X, terms, offset)`` fits genes with the prior (the general engine). A refit that fails
    keeps the gene's first result.
    """
    genes = extreme_genes(fit, X)
    if genes.size == 0:
        return fit
    part = refit(sparse.csc_matrix(counts_of(genes)), X, terms, offset)
    good = (part.status & UNUSABLE) == 0
    if not good.any():
        return fit
    arrays = {name: np.array(getattr(fit, name), copy=True) for name in (*REFIT_FIELDS, "modes")}
    rows, sub = genes[good], np.flatnonzero(good)
    for name in REFIT_FIELDS:
        arrays[name][rows] = getattr(part, name)[sub]
    arrays["status"][rows] = part.status[sub] | PENALISED  # the partial separation is replaced
    position = {name: i for i, name in enumerate(part.mode_names)}
    arrays["modes"][rows] = part.modes[np.ix_(sub, [position[name] for name in fit.mode_names])]
    return replace(fit, **arrays)
