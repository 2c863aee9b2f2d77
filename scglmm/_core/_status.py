"""Per-gene status codes: bit flags combined into one integer, and their names.

All bits live here (numpy only); the kernels import the ones they set.
"""

from __future__ import annotations

import numpy as np

#: sigma^2 was held at its lower bound (the donor variance is 0 to the optimiser's precision).
SIGMA2_BOUNDARY = 1
#: theta was held at its upper bound (the counts are Poisson to the optimiser's precision).
POISSON_LIMIT = 2
#: The optimiser stopped without meeting its convergence test (or the Hessian was not invertible).
NOT_CONVERGED = 4
#: A fixed effect or the donor variance runs to infinity (all counts on one side of a factor or in one donor).
SEPARATION = 8
#: The gene has no counts.
ALL_ZERO = 16
#: The objective could not be evaluated at the start or at the end.
FAILED = 32
#: Set by the AnnData layer for genes removed by the gene filter before fitting.
FILTERED = 64
#: Some coefficients run to infinity (a factor level, e.g. a donor, whose cells all have zero counts):
#: they are NaN, and the others are estimated without those cells (their limit; see ``_separation``).
PARTIAL_SEPARATION = 128
#: General random-effect structures (:mod:`scglmm._core._re`): a term's covariance matrix is singular
#: with every variance positive, i.e. a correlation at +-1 (lme4's singular fit). A variance at 0
#: sets :data:`SIGMA2_BOUNDARY` instead (for these structures it means "some variance component is 0").
CORRELATION_BOUNDARY = 256
#: One side of a comparison has (almost) no counts: the maximum-likelihood fit ran to infinity or to an
#: extreme, and the numbers are those of a weakly penalised likelihood (:mod:`scglmm._core._penalised`).
PENALISED = 512

#: Bit -> name, in the order names are joined in a status string.
STATUS_BITS: dict[int, str] = {
    FILTERED: "filtered",
    ALL_ZERO: "all_zero",
    FAILED: "failed",
    SEPARATION: "separation",
    PARTIAL_SEPARATION: "partial_separation",
    PENALISED: "penalised",
    NOT_CONVERGED: "not_converged",
    SIGMA2_BOUNDARY: "sigma2_boundary",
    POISSON_LIMIT: "poisson_limit",
    CORRELATION_BOUNDARY: "correlation_boundary",
}

#: Bits after which a gene's estimates are NaN (nothing can be trusted).
UNUSABLE = FILTERED | ALL_ZERO | FAILED | SEPARATION
#: Information: a valid maximum-likelihood estimate at the edge of the parameter space (a variance at 0,
#: a correlation at +-1, theta at the Poisson limit); with few donors a singular covariance is the norm.
INFORMATION = SIGMA2_BOUNDARY | POISSON_LIMIT | CORRELATION_BOUNDARY
#: What needs a look: no estimate of some or all coefficients, or an optimiser that did not converge.
ATTENTION = ALL_ZERO | FAILED | SEPARATION | PARTIAL_SEPARATION | NOT_CONVERGED

#: The kind of a status (:func:`status_kinds`), in the order they are checked.
KINDS = ("filtered", "attention", "penalised", "boundary", "ok")


def status_name(code: int) -> str:
    """Readable status of one gene, e.g. ``"ok"`` or ``"sigma2_boundary+poisson_limit"``."""
    code = int(code)
    if code == 0:
        return "ok"
    return "+".join(name for bit, name in STATUS_BITS.items() if code & bit)


def status_kinds(codes: np.ndarray) -> np.ndarray:
    """Per gene, what its status asks of the user: ``"filtered"`` (left out by the gene filter),
    ``"attention"`` (no estimate of some coefficient, or not converged: see ``docs/status.md``),
    ``"penalised"`` (one side (almost) without counts: a finite estimate of a weakly penalised likelihood,
    valid test; its fold change says "very large", not how large), ``"boundary"`` (a valid estimate at the
    edge: information, nothing to do) or ``"ok"``."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.select(
        [(codes & FILTERED) != 0, (codes & ATTENTION) != 0, (codes & PENALISED) != 0, (codes & INFORMATION) != 0],
        ["filtered", "attention", "penalised", "boundary"],
        default="ok",
    ).astype(object)


def status_codes(names: np.ndarray) -> np.ndarray:
    """The codes of status strings (the inverse of :func:`status_names`)."""
    bits = {name: bit for bit, name in STATUS_BITS.items()}
    return np.array([sum(bits.get(part, 0) for part in str(n).split("+")) for n in names], dtype=np.int64)


def status_names(codes: np.ndarray) -> np.ndarray:
    """Vectorised :func:`status_name` (object array of strings)."""
    codes = np.asarray(codes)
    uniq, inv = np.unique(codes, return_inverse=True)
    names = np.array([status_name(c) for c in uniq], dtype=object)
    return names[inv.reshape(codes.shape)]
