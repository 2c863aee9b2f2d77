"""Everything :func:`scglmm.tl.fit` stores, assembled from its runs before the AnnData is touched.

The keys come from :mod:`scglmm._layout`; this module decides the values: one table per output
of each run, the run's settings (``uns[sub]["params"]``) and, with ``groupby``, the fit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._core._inference import EB_GRID
from .._layout import StoredFit, rank_key, status_key, varm_key
from ._wald import slope_effects

if TYPE_CHECKING:
    from .._formula import ParsedFormula
    from ._run import FitOptions, Run
    from ._wald import WaldTests

__all__ = ["FitSettings", "stored_fit"]


@dataclass(frozen=True)
class FitSettings:
    """What a fit was asked, as stored with every run."""

    parsed: ParsedFormula
    options: FitOptions
    inputs: dict[str, Any]
    """Layer, offset source, ``size_factors``/``offset`` columns and package versions."""
    log_offset: np.ndarray
    groupby: str | None = None
    min_cells_group: int = 0
    min_donors_group: int = 0
    store_modes: bool = True
    """Whether each run stores its conditional modes (``donor_effects`` or ``modes``)."""
    norm_factors: pd.DataFrame | None = None
    """The normalisation factor of each sample (``None`` without normalisation)."""


def versions() -> dict[str, str]:
    """Versions of scglmm and the packages its results depend on."""
    out = {}
    for pkg in ("scglmm", "numpy", "scipy", "numba", "anndata", "scanpy", "formulaic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def stored_fit(
    key: str,
    settings: FitSettings,
    runs: dict[str, Run],
    tests: dict[str, WaldTests],
    var_names: pd.Index,
    *,
    labels: dict[str, str],
    skipped: dict[str, str],
    rank_block: dict | None,
    seconds: float,
) -> StoredFit:
    """Every output of a fit under ``key``; ``labels`` maps run keys to group labels (``groupby``)."""
    stored = StoredFit()
    params = {sub: {**run_params(run, tests[sub], settings), **settings.inputs} for sub, run in runs.items()}
    if settings.groupby is None:
        (only,) = params.values()
        stored.uns[key] = {"params": {**only, "seconds": float(seconds)}}
    else:
        stored.uns[key] = {"params": _groupby_params(settings, runs, labels, skipped, var_names, seconds)}
        for sub in runs:
            extra = {"group": labels[sub], "groupby": settings.groupby, "parent_key": key}
            stored.uns[sub] = {"params": {**params[sub], **extra}}
    stored.uns[key]["log_offset"] = np.asarray(settings.log_offset, dtype=float)
    if settings.norm_factors is not None:
        stored.uns[key]["norm_factors"] = settings.norm_factors
    for sub, run in runs.items():
        stored.varm.update(_run_varm(sub, run, tests[sub], var_names, store_modes=settings.store_modes))
        stored.var[status_key(sub)] = pd.Categorical(run.fit.status_str.astype(str))
    if rank_block is not None:
        stored.uns[rank_key(key)] = rank_block
    return stored


def _run_varm(sub: str, run: Run, tests: WaldTests, var_names: pd.Index, *, store_modes: bool) -> dict[str, Any]:
    """The ``varm`` tables of one run (its conditional modes only with ``store_modes``)."""
    fit, cols = run.fit, list(run.design.columns)

    def genes_by(values: np.ndarray, columns: list[str]) -> pd.DataFrame:
        return pd.DataFrame(values, index=var_names.copy(), columns=columns)

    out = {
        varm_key(sub, "coef"): genes_by(fit.coef, cols),
        varm_key(sub, "se"): genes_by(fit.se, cols),
        varm_key(sub, "pval"): genes_by(tests.pval, cols),
        varm_key(sub, "stat"): genes_by(tests.stat, cols),
        varm_key(sub, "cov"): fit.cov.reshape(fit.cov.shape[0], -1),
        varm_key(sub, "fit"): _fit_table(run, var_names),
    }
    if store_modes and not run.general:
        out[varm_key(sub, "donor_effects")] = genes_by(fit.modes, [str(d) for d in fit.donors])
    out[varm_key(sub, "expression")] = run.expression
    if run.general:
        out[varm_key(sub, "varcomp")] = genes_by(fit.varcomp, list(fit.varcomp_names))
    if store_modes and run.general:
        out[varm_key(sub, "modes")] = genes_by(fit.modes, list(fit.mode_names))
    return out


def _fit_table(run: Run, var_names: pd.Index) -> pd.DataFrame:
    fit = run.fit
    columns = {
        "sigma2": fit.sigma2,
        "dispersion": fit.dispersion,
        "theta": fit.theta,
        "loglik": fit.loglik,
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        # categorical: one byte per gene on disk instead of a string (most rows share a few values)
        "status": pd.Categorical(fit.status_str.astype(str)),
        "status_code": fit.status,
        "n_nonzero": fit.n_nonzero,
        "grad_max": fit.grad_max,
    }
    return pd.DataFrame(columns, index=var_names.copy())


def run_params(run: Run, tests: WaldTests, settings: FitSettings) -> dict[str, Any]:
    """The settings and summary of one run (``uns[sub]["params"]``, before the fit's inputs)."""
    parsed, options, design, fit = settings.parsed, settings.options, run.design, run.fit
    status_counts = pd.Series(fit.status_str).value_counts()
    cols = list(design.columns)
    return {
        "formula": parsed.formula,
        "fixed_formula": parsed.fixed,
        "donor_key": parsed.donor,
        "design_columns": cols,
        "reference_levels": dict(design.reference_levels),
        "n_agq": options.n_agq,
        "separation": options.separation,
        "method": "laplace" if options.n_agq == 1 else f"adaptive Gauss-Hermite ({options.n_agq} nodes)",
        **({"random_structure": " + ".join(str(t) for t in parsed.terms)} if parsed.general else {}),
        "n_cells": len(run.donor_codes),
        "n_genes": int(fit.coef.shape[0]),
        "n_donors": len(fit.donors),
        "donors": [str(d) for d in fit.donors],
        "n_jobs": options.n_jobs,
        "seconds": float(run.seconds),
        "status_counts": {str(k): int(v) for k, v in status_counts.items()},
        "scale": "natural log (log2_fc = coef / ln 2)",
        "calibration": options.calibration,
        "df": tests.df,
        # Satterthwaite: df["col"] is NaN and the df of each gene is here
        **({"df_per_gene": tests.df_per_gene} if tests.df_per_gene else {}),
        # "eb": the learnt prior of the donor variance (weights on eb_grid) per donor-level column
        **({"eb_grid": np.asarray(EB_GRID, dtype=float), "eb_prior": tests.eb_prior} if tests.eb_prior else {}),
        "donor_level_columns": [c for c, b in zip(cols, tests.donor_mask, strict=True) if b],
        "donor_design": tests.donor_design,
        # cells per donor: "eb" weighs each donor's information by them (docs/calibration.md)
        "donor_cells": np.bincount(run.donor_codes, minlength=tests.donor_design.shape[0]).tolist(),
        "min_cells": options.min_cells,
        "min_donors": options.min_donors,
        "n_filtered": run.n_filtered,
        "store_modes": settings.store_modes,
        # what varm[f"{sub}_expression"] holds, and which levels each design column compares
        "expression_levels": {v: list(lv) for v, lv in run.expression_levels.items()},
        "factor_levels": {c: list(vl) for c, vl in design.factor_levels.items()},
        "size_factor_center": float(run.size_factor_center),
        **_structure_params(run, tests, parsed),
    }


def _structure_params(run: Run, tests: WaldTests, parsed: ParsedFormula) -> dict[str, Any]:
    """The random-effect structure of a run with a general structure (nothing for ``(1 | donor)``): per term
    (keyed by the term as written after expansion, e.g. ``(1 | donor:sample)``) its grouping factor,
    coefficients, covariance form and levels."""
    if not run.general:
        return {}
    effects = slope_effects(run.terms, run.design.matrix, list(run.design.columns))
    return {
        "random_effects": {
            str(spec): {
                "group": t.group,
                "coefficients": list(t.coef_names),
                "diagonal": bool(t.diagonal),
                "n_levels": int(t.m),
                "levels": [str(v) for v in t.levels],
            }
            for spec, t in zip(parsed.terms, run.terms, strict=True)
        },
        "varcomp_names": list(run.fit.varcomp_names),
        # fixed effects tested on the levels of a random-intercept term (constant within them) -> its grouping
        # factor: the donor for donor-level effects, the sample for a condition that varies within donors
        "level_terms": dict(tests.level_terms),
        # fixed effects tested on a term's per-level slopes -> its grouping factor, and the between-level df
        # of their test ("df" holds the reference: inf under "eb", these df under "t")
        "slope_columns": {c: ts.term.group for c, ts in effects.items()},
        "slope_df": {c: float(ts.effect.df) for c, ts in effects.items()},
    }


def _groupby_params(
    settings: FitSettings,
    runs: dict[str, Run],
    labels: dict[str, str],
    skipped: dict[str, str],
    var_names: pd.Index,
    seconds: float,
) -> dict[str, Any]:
    """``uns[key]["params"]`` of a fit by group: what all groups share, and which were fitted."""
    parsed, options = settings.parsed, settings.options
    first = next(iter(runs.values())).design
    return {
        "formula": parsed.formula,
        "fixed_formula": parsed.fixed,
        "donor_key": parsed.donor,
        "groupby": settings.groupby,
        "design_columns": list(first.columns),
        "reference_levels": dict(first.reference_levels),
        # lists, not dicts keyed by group: group names may hold characters h5ad keys cannot
        "groups": list(labels.values()),
        "group_keys": list(labels.keys()),
        "skipped_groups": list(skipped.keys()),
        "skipped_reasons": list(skipped.values()),
        "min_cells_group": settings.min_cells_group,
        "min_donors_group": settings.min_donors_group,
        "n_cells": int(len(settings.log_offset)),
        "n_genes": len(var_names),
        "seconds": float(seconds),
        **settings.inputs,
        "min_cells": options.min_cells,
        "min_donors": options.min_donors,
        "calibration": options.calibration,
        "n_agq": options.n_agq,
        "separation": options.separation,
        "store_modes": settings.store_modes,
    }
