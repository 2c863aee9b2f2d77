"""One run of :func:`scglmm.tl.fit`: the genes of one set of cells (all, or one group's), fitted.

A run filters the genes, fits the kept ones with :func:`scglmm.fit_genes` and spreads the result
back onto every gene (the filtered ones NaN, status ``filtered``). :func:`wald_tests` then adds
the calibrated Wald test of each design column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._api import fit_genes
from .._core._inference import donor_level_design, wald_pvalues
from .._core._results import GenesFit
from .._core._status import FILTERED
from .._inputs import gene_counts
from .._logging import logger, progress_bar
from ._expression import expression_table
from ._report import StatusSummary, status_summary

if TYPE_CHECKING:
    from .._core._re import RETerm
    from .._formula import FixedDesign

__all__ = ["FitOptions", "REParts", "Run", "WaldTests", "finish_run", "fit_run", "scatter_genes", "wald_tests"]

#: Fields of :class:`GenesFit` that describe the run, not one gene each.
_RUN_FIELDS = ("coef_names", "donors")


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


@dataclass(frozen=True)
class REParts:
    """What a run with a general structure stores besides the :class:`GenesFit` fields."""

    terms: tuple[RETerm, ...]
    varcomp: np.ndarray
    """(G, V) variances and correlations, named by ``varcomp_names`` (NaN for filtered genes)."""
    varcomp_names: list[str]
    modes: np.ndarray
    """(G, Q) conditional modes of every term's levels, named by ``mode_names``."""
    mode_names: list[str]


@dataclass(frozen=True)
class Run:
    """The fit of every gene on one set of cells, before it is tested and stored."""

    design: FixedDesign
    fit: GenesFit
    """Every gene: the filtered ones NaN, with status ``filtered``."""
    donor_codes: np.ndarray
    """Per cell: the index of its donor in ``fit.donors``."""
    n_filtered: int
    seconds: float
    summary: StatusSummary
    expression: pd.DataFrame
    """Per gene: ``base_mean`` and the mean and detection per factor level (:mod:`._expression`)."""
    expression_levels: dict[str, list[str]]
    """``{variable: [reference, level, ...]}`` of the factors in ``expression``."""
    size_factor_center: float
    """Mean log offset of the run's cells: the size factors of ``expression`` are ``exp(log_off - center)``."""
    """What a user must act on; :func:`scglmm.tl.fit` logs one summary and at most one warning per call."""
    re: REParts | None = None
    """A general random-effect structure (:mod:`._re_run`): its terms, variance components and modes."""


@dataclass(frozen=True)
class WaldTests:
    """The calibrated Wald test of each design column of a run, for every gene."""

    pval: np.ndarray
    stat: np.ndarray
    df: dict[str, float]
    """Degrees of freedom per column: ``inf`` for the normal reference, NaN when they differ by gene."""
    df_per_gene: dict[str, np.ndarray]
    """The columns whose degrees of freedom differ by gene (the Satterthwaite calibrations)."""
    eb_prior: dict[str, np.ndarray]
    donor_mask: np.ndarray
    donor_design: np.ndarray


def fit_run(
    obs: pd.DataFrame,
    Y,
    log_off: np.ndarray,
    design: FixedDesign,
    donor: str,
    var_names: pd.Index,
    options: FitOptions,
    *,
    key: str,
    desc: str,
) -> Run:
    """Filter the genes, fit the kept ones and spread the result onto every gene.

    ``obs``, ``Y`` and ``log_off`` hold the run's cells; ``donor`` is the donor column of ``obs``,
    ``key`` the run key (named in messages) and ``desc`` the run's name in logs.
    """
    t0 = time.perf_counter()
    labels = obs[donor].astype(str).to_numpy()
    codes, donors = pd.factorize(labels, sort=True)
    ncell, ndon = gene_counts(Y, codes, len(donors))
    idx = np.flatnonzero((ncell >= options.min_cells) & (ndon >= options.min_donors))
    logger.info(
        "%s: fitting %d genes x %d cells, %d donors, design %s, n_agq=%d, n_jobs=%d",
        desc, idx.size, len(obs), len(donors), design.columns, options.n_agq, options.n_jobs,
    )  # fmt: skip
    part = _fit_kept(Y, idx, design, labels, log_off, options, desc=desc)
    return finish_run(obs, Y, log_off, design, part, codes, len(donors), idx, ncell, var_names, t0)


def finish_run(
    obs: pd.DataFrame, Y, log_off: np.ndarray, design: FixedDesign, part: GenesFit, codes: np.ndarray,
    n_donors: int, idx: np.ndarray, ncell: np.ndarray, var_names: pd.Index, t0: float, *, re: REParts | None = None,
) -> Run:  # fmt: skip
    """The :class:`Run` of the kept genes ``idx`` fitted as ``part``: spread onto every gene (the others
    ``filtered``), with the status summary and the expression table every run stores."""
    fit = scatter_genes(part, idx, len(var_names), fill={"status": FILTERED, "n_iter": 0, "n_nonzero": ncell})
    center = float(np.mean(log_off)) if len(log_off) else 0.0
    expression, levels = expression_table(obs, Y, log_off, design, center, var_names)
    return Run(
        design=design,
        fit=fit,
        donor_codes=codes,
        n_filtered=int(len(var_names) - idx.size),
        seconds=time.perf_counter() - t0,
        summary=status_summary(fit.status, fit.coef, var_names, n_cells=len(obs), n_donors=n_donors),
        expression=expression,
        expression_levels=levels,
        size_factor_center=center,
        re=re,
    )


def _fit_kept(
    Y, idx: np.ndarray, design: FixedDesign, labels: np.ndarray, log_off: np.ndarray, options: FitOptions, *, desc: str
) -> GenesFit:
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
            labels,
            log_off,
            n_agq=options.n_agq,
            n_jobs=options.n_jobs,
            block_size=options.block_size,
            coef_names=design.columns,
            check=False,
            progress=bar.update if bar is not None else None,
        )


def scatter_genes(part: GenesFit, idx: np.ndarray, n_genes: int, *, fill: dict[str, object]) -> GenesFit:
    """``part``, the fit of the genes ``idx``, spread onto ``n_genes`` genes.

    Every per-gene field of :class:`GenesFit` gets ``n_genes`` rows: the rows ``idx`` from
    ``part``, the others from ``fill`` (a value or one per gene) or NaN.
    """
    spread = {}
    for f in fields(part):
        if f.name in _RUN_FIELDS:
            continue
        value = np.asarray(getattr(part, f.name))
        out = np.empty((n_genes, *value.shape[1:]), dtype=value.dtype)
        out[...] = np.reshape(fill[f.name], (-1,) + (1,) * (value.ndim - 1)) if f.name in fill else np.nan
        out[idx] = value
        spread[f.name] = out
    return replace(part, **spread)


def wald_tests(run: Run, calibration: str) -> WaldTests:
    """The calibrated Wald test of each design column of ``run`` (see :func:`scglmm.tl.fit`)."""
    fit = run.fit
    G, p = fit.coef.shape
    donor_mask, donor_design = donor_level_design(run.design.matrix, run.donor_codes)
    donor_cells = np.bincount(run.donor_codes, minlength=donor_design.shape[0])
    pval, stat = np.full((G, p), np.nan), np.full((G, p), np.nan)
    df: dict[str, float] = {}
    df_per_gene: dict[str, np.ndarray] = {}
    eb_prior: dict[str, np.ndarray] = {}
    for j, col in enumerate(run.design.columns):
        out = wald_pvalues(
            fit.coef, fit.cov, np.eye(p)[j], sigma2=fit.sigma2, donor_mask=donor_mask, donor_design=donor_design,
            calibration=calibration, donor_cells=donor_cells,
        )  # fmt: skip
        pval[:, j], stat[:, j] = out["p_value"], out["stat"]
        if np.ndim(out["df"]):  # Satterthwaite: one df per gene
            df[col] = float("nan")
            df_per_gene[col] = np.asarray(out["df"], dtype=float)
        else:
            df[col] = float(out["df"])
        if "eb_prior" in out:
            eb_prior[col] = np.asarray(out["eb_prior"], dtype=float)
    return WaldTests(pval, stat, df, df_per_gene, eb_prior, donor_mask, np.asarray(donor_design, dtype=float))
