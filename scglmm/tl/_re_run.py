"""One run of :func:`scglmm.tl.fit` with a general random-effect structure (anything but one ``(1 | donor)``).

The genes are filtered as in :mod:`._run` (the donors are the levels of the first term's grouping
factor), the kept ones fitted with :func:`scglmm._core._re_api.fit_re_genes` (Laplace, genes spread over
``n_jobs`` workers) and the result spread onto every gene. The run is a :class:`._run.Run` whose ``fit`` is a
:class:`GenesFit` (``sigma2``: the first term's intercept variance; no donor modes) and whose ``re``
holds what only this path has: the variance components, the modes of every term and the terms.
:func:`re_wald_tests` adds the random-slope calibration to :func:`._run.wald_tests`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError
from .._core._inference import SlopeEffect, random_slopes, slope_wald_pvalues
from .._core._re_api import REGenesFit, fit_re_genes
from .._core._results import GenesFit
from .._formula import build_re_terms
from .._inputs import gene_counts
from .._logging import logger, progress_bar
from ._run import FitOptions, REParts, Run, WaldTests, finish_run, fit_run, wald_tests

if TYPE_CHECKING:
    from .._core._re import RETerm
    from .._formula import FixedDesign, ParsedFormula

__all__ = [
    "RE_CALIBRATIONS", "TermSlope", "check_re_options", "fit_any_run", "re_wald_tests", "slope_effects",
    "slope_variance",
]  # fmt: skip

#: Calibrations available with a general structure; the others model only a donor intercept.
RE_CALIBRATIONS = ("eb", "t", "z")
#: Calibrations under which a fixed effect with a random slope is tested on its levels (see :func:`slope_effects`).
_SLOPE_T = ("eb", "t")


def fit_any_run(
    obs: pd.DataFrame,
    Y,
    log_off: np.ndarray,
    design: FixedDesign,
    parsed: ParsedFormula,
    var_names: pd.Index,
    options: FitOptions,
    *,
    key: str,
    desc: str,
) -> Run:
    """:func:`._run.fit_run` for ``(1 | donor)``, :func:`fit_re_run` for any other structure."""
    if not parsed.general:
        return fit_run(obs, Y, log_off, design, parsed.donor, var_names, options, key=key, desc=desc)
    return fit_re_run(obs, Y, log_off, design, parsed, var_names, options, desc=desc)


def check_re_options(parsed: ParsedFormula, options: FitOptions) -> None:
    """Refuse the settings a general structure does not support (``n_agq > 1``, the intercept-only calibrations)."""
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


def fit_re_run(
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
    """Filter the genes, fit the kept ones with the general engine and spread the result onto every gene."""
    t0 = time.perf_counter()
    terms = tuple(build_re_terms(parsed.terms, obs))
    codes, donors = terms[0].codes, terms[0].levels
    ncell, ndon = gene_counts(Y, codes, len(donors))
    idx = np.flatnonzero((ncell >= options.min_cells) & (ndon >= options.min_donors))
    logger.info(
        "%s: fitting %d genes x %d cells, random effects %s, design %s (Laplace), n_jobs=%d",
        desc, idx.size, len(obs), " + ".join(str(t) for t in parsed.terms), design.columns, options.n_jobs,
    )  # fmt: skip
    part = _fit_kept(Y, idx, design, terms, log_off, options, desc=desc)
    re_parts = REParts(
        terms=terms,
        varcomp=_spread(part.varcomp, idx, len(var_names)),
        varcomp_names=list(part.varcomp_names),
        modes=_spread(part.modes, idx, len(var_names)),
        mode_names=list(part.mode_names),
    )
    fit = _as_genes_fit(part, terms[0], ncell[idx])
    return finish_run(obs, Y, log_off, design, fit, codes, len(donors), idx, ncell, var_names, t0, re=re_parts)


def _fit_kept(
    Y, idx: np.ndarray, design: FixedDesign, terms: tuple[RETerm, ...], log_off: np.ndarray, options: FitOptions,
    *, desc: str,
) -> REGenesFit:  # fmt: skip
    """:func:`fit_re_genes` on the genes ``idx``, ``block_size`` genes per call (genes are fitted independently)."""
    blocks = [idx[i : i + options.block_size] for i in range(0, idx.size, options.block_size)] or [idx]
    parts = []
    with progress_bar(total=int(idx.size), enabled=options.progress, desc=desc) as bar:
        for block in blocks:
            Yb = Y[:, block] if block.size else np.zeros((Y.shape[0], 0))
            parts.append(
                fit_re_genes(
                    Yb, design.matrix, terms, log_off, coef_names=design.columns, check=False, n_jobs=options.n_jobs
                )
            )
            if bar is not None:
                bar.update(int(block.size))
    return _stack(parts)


def _stack(parts: list[REGenesFit]) -> REGenesFit:
    """The fits of consecutive blocks of genes as one."""
    if len(parts) == 1:
        return parts[0]
    names = ("coef_names", "varcomp_names", "mode_names")
    arrays = {
        f: np.concatenate([getattr(p, f) for p in parts])
        for f in REGenesFit.__dataclass_fields__
        if f not in names
    }
    return replace(parts[0], **arrays)


def _as_genes_fit(part: REGenesFit, first: RETerm, n_nonzero: np.ndarray) -> GenesFit:
    """The fields that every run stores, as a :class:`GenesFit`: ``sigma2`` is the intercept variance of
    the ``first`` term (NaN if it has none), ``donors`` its levels; the modes are in :class:`REParts`."""
    G = part.coef.shape[0]
    name = f"var(Intercept|{first.group})"
    sigma2 = part.varcomp[:, part.varcomp_names.index(name)] if name in part.varcomp_names else np.full(G, np.nan)
    return GenesFit(
        coef=part.coef, se=part.se, cov=part.cov, sigma2=np.asarray(sigma2, dtype=float), theta=part.theta,
        dispersion=part.dispersion, loglik=part.loglik, modes=np.zeros((G, 0)), n_iter=part.n_iter,
        status=part.status, grad_max=part.grad_max, n_nonzero=np.asarray(n_nonzero, dtype=np.int64),
        coef_names=list(part.coef_names), donors=np.asarray(first.levels, dtype=object),
        log_sigma2_se=np.full(G, np.nan), log_theta_se=np.full(G, np.nan),
    )  # fmt: skip


def _spread(values: np.ndarray, idx: np.ndarray, n_genes: int) -> np.ndarray:
    out = np.full((n_genes, values.shape[1]), np.nan)
    out[idx] = values
    return out


# ------------------------------------------------------------------------------------------------
# tests: the random-slope calibration
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermSlope:
    """A fixed effect tested on the per-level slopes of one term (see :func:`slope_effects`)."""

    term: RETerm
    effect: SlopeEffect


def slope_effects(terms: tuple[RETerm, ...], X: np.ndarray, columns: list[str]) -> dict[str, TermSlope]:
    """For each design column that one of ``terms`` gives a random slope (however the term codes it, see
    :func:`scglmm._core._inference.random_slopes`), or that interacts with such a slope and a level-wide
    factor, the term whose grouping factor has the fewest levels."""
    out: dict[str, TermSlope] = {}
    for t in terms:
        for j, eff in random_slopes(X, t.Z, t.codes).items():
            c = columns[j]
            if c not in out or t.m < out[c].term.m:
                out[c] = TermSlope(t, eff)
    return out


def slope_variance(varcomp: np.ndarray, names: list[str], term: RETerm, w: np.ndarray) -> np.ndarray:
    """``w' Sigma w`` per gene: the variance of ``w' b_l``, ``Sigma`` the covariance of ``term``'s random
    coefficients from the variances and correlations ``varcomp`` (G, columns ``names``)."""
    var = [np.maximum(varcomp[:, names.index(f"var({c}|{term.group})")], 0.0) for c in term.coef_names]
    sd = [np.sqrt(v) for v in var]
    out = np.zeros(varcomp.shape[0])
    for i, a in enumerate(term.coef_names):
        if w[i] != 0:
            out += w[i] ** 2 * var[i]
        for k in range(i + 1, term.q):
            col = f"cor({a},{term.coef_names[k]}|{term.group})"
            if w[i] != 0 and w[k] != 0 and col in names:  # none in a diagonal (||) term
                out += 2.0 * w[i] * w[k] * varcomp[:, names.index(col)] * sd[i] * sd[k]
    return out


def re_wald_tests(run: Run, calibration: str) -> WaldTests:
    """:func:`._run.wald_tests`, then for ``"eb"`` and ``"t"`` each fixed effect with a random slope
    (:func:`slope_effects`) is tested by :func:`scglmm._core._inference.slope_wald_pvalues` on the levels
    in which the slope varies: with ``"t"`` on t with the effect's ``df``, with ``"eb"`` (the default) on
    the empirical-Bayes prior of the slope variance ``w' Sigma w`` across genes (``eb_prior`` stored per
    column)."""
    tests = wald_tests(run, calibration)
    if run.re is None or calibration not in _SLOPE_T:
        return tests
    cols = list(run.design.columns)
    pval, stat, df = tests.pval.copy(), tests.stat.copy(), dict(tests.df)
    eb_prior = dict(tests.eb_prior)
    for col, ts in slope_effects(run.re.terms, run.design.matrix, cols).items():
        j, eff = cols.index(col), ts.effect
        tau2 = slope_variance(run.re.varcomp, run.re.varcomp_names, ts.term, eff.weights)
        out = slope_wald_pvalues(
            run.fit.coef[:, j], run.fit.se[:, j] ** 2, tau2, n_levels=eff.n_levels, df=eff.df,
            calibration=calibration, k=eff.k(),
        )  # fmt: skip
        stat[:, j], pval[:, j], df[col] = out["stat"], out["p_value"], float(out["df"])
        eb_prior.pop(col, None)
        if "eb_prior" in out:
            eb_prior[col] = np.asarray(out["eb_prior"], dtype=float)
    return replace(tests, pval=pval, stat=stat, df=df, eb_prior=eb_prior)
