"""GLMMs without dispersion on the general engine: binomial (logit link) and Poisson (log link).

The model per column ``g`` of the response is ``y_jg | b ~ Binomial(n_jg, p_jg)``, ``logit p = X beta +
offset + Z b`` (or ``Poisson(mu)``, ``log mu = X beta + offset + Z b``), with the random-effect terms of
the NB model (MODEL.md sections 7 and 9). The kernels are the NB model's (:mod:`.kernels._re_laplace`),
the family a code in their data bundle; the exact Laplace approximation is maximised jointly over
``beta`` and the covariance parameters, SEs come from the full Hessian and boundaries are flagged as for
NB. There is no dispersion: ``theta`` is reported as NaN.

Rows are observations, not cells: for cell-type composition a row is a sample (its cells of one type
among its ``n`` cells), so the cost grows with samples. A fit whose design separates (a type absent from
one side, or the only type on one side) has status ``separation`` and NaN estimates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._errors import InvalidValueError
from ._re import FAMILIES, REStructure, RETerm, fit_re_one, prepare_re, with_trials
from ._results import GenesFit, collect

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["check_family", "check_trials", "fit_family"]


def check_family(family: str) -> str:
    """Raise unless ``family`` names a response family of the engine."""
    if family not in FAMILIES:
        msg = f"family={family!r}: must be one of {sorted(FAMILIES)}."
        raise InvalidValueError(msg, param="family")
    return family


def check_trials(trials: ArrayLike | None, Y: NDArray[np.float64], family: str) -> NDArray[np.float64] | None:
    """The binomial trials as an (n, G) float array, checked against the successes ``Y`` (n, G); None for
    other families (where passing trials is an error)."""
    if family != "binomial":
        if trials is not None:
            msg = f"trials: only the binomial family has trials (family={family!r})."
            raise InvalidValueError(msg, param="trials")
        return None
    if trials is None:
        msg = "family='binomial' needs trials= (the number of trials of each row: e.g. the cells of each sample)."
        raise InvalidValueError(msg, param="trials")
    t = np.asarray(trials.toarray() if sparse.issparse(trials) else trials, dtype=np.float64)
    if t.ndim == 1:
        t = np.repeat(t[:, None], Y.shape[1], axis=1)
    if t.shape != Y.shape:
        msg = f"trials: shape {t.shape} fits neither one per row ({Y.shape[0]},) nor one per entry {Y.shape}."
        raise InvalidValueError(msg, param="trials")
    if not np.all(np.isfinite(t)) or np.any(t != np.floor(t)) or np.any(t < Y):
        msg = "trials: finite integers at least the successes of each row are needed (trials >= Y)."
        raise InvalidValueError(msg, param="trials")
    return t


def fit_family(
    Y: NDArray[np.float64],
    X: NDArray[np.float64],
    terms: Sequence[RETerm],
    off: NDArray[np.float64],
    coef_names: list[str],
    family: str,
    trials: NDArray[np.float64] | None,
) -> GenesFit:
    """Fit every column of ``Y`` (dense, validated) with a family without dispersion (see the module
    docstring); ``trials`` (n, G) for the binomial family. The columns are fitted one after the other:
    each is a few milliseconds on a few dozen rows."""
    code = FAMILIES[family]
    first = trials[:, 0] if trials is not None else None
    s = prepare_re(X, off, tuple(terms), family=code, trials=first)
    fits = []
    for g in range(Y.shape[1]):
        sg = s if trials is None or np.array_equal(trials[:, g], first) else with_trials(s, trials[:, g])
        fits.append(fit_re_one(sg, np.ascontiguousarray(Y[:, g], dtype=np.float64)))
    out = collect(s, fits, coef_names, np.count_nonzero(Y, axis=0))
    nan = np.full(Y.shape[1], np.nan)
    return replace(out, theta=nan, dispersion=nan)


def structure(
    X: NDArray[np.float64], off: NDArray[np.float64], terms: Sequence[RETerm], family: str, trials: ArrayLike | None
) -> REStructure:
    """The prepared structure of one response with a family without dispersion (tests, diagnostics)."""
    t = None if trials is None else np.asarray(trials, dtype=np.float64)
    return prepare_re(np.asarray(X, dtype=np.float64), np.asarray(off, dtype=np.float64), tuple(terms),
                      family=FAMILIES[check_family(family)], trials=t)  # fmt: skip
