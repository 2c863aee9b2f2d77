"""One run of :func:`scglmm.tl.fit`: the genes of one set of cells (all, or one group's), fitted.

A run builds the random-effect terms of the formula on its cells, filters the genes (cells and donors
with counts, the donors being the levels of the first term's grouping factor), fits the kept ones with
:func:`scglmm.fit_genes` (which chooses the engine from the terms) and spreads the result back onto
every gene (the filtered ones NaN, status ``filtered``). :func:`._wald.wald_tests` then adds the
calibrated Wald test of each design column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._api import fit_genes
from .._core._errors import InvalidValueError
from .._core._results import RUN_FIELDS, GenesFit
from .._core._status import FILTERED
from .._formula import build_re_terms
from .._logging import logger, progress_bar
from ._expression import expression_table
from ._report import StatusSummary, status_summary

if TYPE_CHECKING:
    from .._core._re import RETerm
    from .._formula import FixedDesign, ParsedFormula

__all__ = ["RE_CALIBRATIONS", "FitOptions", "Run", "check_options", "fit_run", "scatter_genes"]

#: Calibrations available with random effects other than one donor intercept.
RE_CALIBRATIONS = ("eb", "t", "z")


@dataclass(frozen=True)
class FitOptions:
    """The validated settings that every run of a fit shares."""

    min_cells: int
    min_donors: int
    calibration: str
    n_agq: int
    n_jobs: int
    block_size: int
    progress: bool | None
    separation: str = "prior"


@dataclass(frozen=True)
class Run:
    """The fit of every gene on one set of cells, before it is tested and stored."""

    design: FixedDesign
    fit: GenesFit
    """Every gene: the filtered ones NaN, with status ``filtered``."""
    terms: tuple[RETerm, ...]
    """The random-effect terms on the run's cells (the first one's levels are the donors)."""
    general: bool
    """Random effects other than one ``(1 | donor)``: stored as variance components and modes of every
    level rather than as donor effects."""
    n_filtered: int
    seconds: float
    summary: StatusSummary
    """What a user must act on; :func:`scglmm.tl.fit` logs one summary and at most one warning per call."""
    expression: pd.DataFrame
    """Per gene: ``base_mean`` and the mean and detection per factor level (:mod:`._expression`)."""
    expression_levels: dict[str, list[str]]
    """``{variable: [reference, level, ...]}`` of the factors in ``expression``."""
    size_factor_center: float
    """Mean log offset of the run's cells: the size factors of ``expression`` are ``exp(log_off - center)``."""

    @property
    def donor_codes(self) -> np.ndarray:
        """Per cell: the index of its donor in ``fit.donors``."""
        return self.terms[0].codes


def check_options(parsed: ParsedFormula, options: FitOptions) -> None:
    """Refuse the settings that need a single donor intercept (``n_agq > 1``, the intercept-only
    calibrations) with other random effects."""
    if not parsed.general:
        return
    shown = " + ".join(str(t) for t in parsed.terms)
    if options.n_agq != 1:
        msg = (
            f"n_agq={options.n_agq!r}: adaptive Gauss-Hermite quadrature needs a single random intercept "
            f"'(1 | donor)'; the random effects {shown} are fitted with the Laplace approximation only: use n_agq=1."
        )
        raise InvalidValueError(msg, param="n_agq")
    if options.calibration not in RE_CALIBRATIONS:
        msg = (
            f"calibration={options.calibration!r} models a single donor random intercept; with the random "
            f"effects {shown} use one of {list(RE_CALIBRATIONS)}."
        )
        raise InvalidValueError(msg, param="calibration")


def fit_run(
    obs: pd.DataFrame,
    Y,
    log_off: np.ndarray,
    design: FixedDesign,
    parsed: ParsedFormula,
    var_names: pd.Index,
    options: FitOptions,
    *,
    desc: str,
) -> Run:
    """Filter the genes, fit the kept ones and spread the result onto every gene.

    ``obs``, ``Y`` and ``log_off`` hold the run's cells; ``desc`` is the run's name in logs.
    """
    t0 = time.perf_counter()
    terms = tuple(build_re_terms(parsed.specs, obs))
    first = terms[0]
    center = float(np.mean(log_off)) if len(log_off) else 0.0
    # one pass over the counts: the expression table and the filters' cells and donors with a count
    expression, levels, ncell, ndon = expression_table(
        obs, Y, log_off, design, center, var_names, present=(first.codes, first.m)
    )
    idx = np.flatnonzero((ncell >= options.min_cells) & (ndon >= options.min_donors))
    logger.info(
        "%s: fitting %d genes x %d cells, %d levels of %s, random effects %s, design %s, n_agq=%d, n_jobs=%d",
        desc, idx.size, len(obs), first.m, first.group, " + ".join(str(t) for t in parsed.specs), design.columns,
        options.n_agq, options.n_jobs,
    )  # fmt: skip
    part = _fit_kept(Y, idx, design, terms, log_off, options, desc=desc)
    fill = {"status": FILTERED, "n_iter": 0, "n_eval": 0, "n_nonzero": ncell}
    fit = scatter_genes(part, idx, len(var_names), fill=fill)
    return Run(
        design=design,
        fit=fit,
        terms=terms,
        general=parsed.general,
        n_filtered=int(len(var_names) - idx.size),
        seconds=time.perf_counter() - t0,
        summary=status_summary(fit.status, fit.coef, var_names, n_cells=len(obs), n_donors=first.m),
        expression=expression,
        expression_levels=levels,
        size_factor_center=center,
    )


def _fit_kept(
    Y, idx: np.ndarray, design: FixedDesign, terms: tuple[RETerm, ...], log_off: np.ndarray, options: FitOptions,
    *, desc: str,
) -> GenesFit:  # fmt: skip
    """:func:`fit_genes` on the genes ``idx`` of ``Y`` (none: an empty fit of the right shapes)."""
    if idx.size == Y.shape[1]:
        Ykept = Y
    elif idx.size:
        Ykept = Y[:, idx]
    else:
        Ykept = np.zeros((Y.shape[0], 0))
    with progress_bar(total=int(idx.size), enabled=options.progress, desc=desc) as bar:
        return fit_genes(
            Ykept,
            design.matrix,
            terms,
            log_off,
            n_agq=options.n_agq,
            n_jobs=options.n_jobs,
            block_size=options.block_size,
            coef_names=design.columns,
            check=False,
            progress=bar.update if bar is not None else None,
            separation=options.separation,
        )


def scatter_genes(part: GenesFit, idx: np.ndarray, n_genes: int, *, fill: dict[str, object]) -> GenesFit:
    """``part``, the fit of the genes ``idx``, spread onto ``n_genes`` genes.

    Every per-gene field of :class:`GenesFit` gets ``n_genes`` rows: the rows ``idx`` from
    ``part``, the others from ``fill`` (a value or one per gene) or NaN.
    """
    spread = {}
    for f in fields(part):
        if f.name in RUN_FIELDS:
            continue
        value = np.asarray(getattr(part, f.name))
        out = np.empty((n_genes, *value.shape[1:]), dtype=value.dtype)
        out[...] = np.reshape(fill[f.name], (-1,) + (1,) * (value.ndim - 1)) if f.name in fill else np.nan
        out[idx] = value
        spread[f.name] = out
    return replace(part, **spread)
