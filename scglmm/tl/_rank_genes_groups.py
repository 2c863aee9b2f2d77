"""The ``rank_genes_groups``-style block of a fit, laid out as :func:`scanpy.tl.rank_genes_groups`
writes it, so that scanpy's ``get`` and ``pl`` functions read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._core._inference import bh_adjust, resolve_column
from .._layout import h5ad_name
from ._run import Run, WaldTests

__all__ = ["RankedRun", "rank_genes_groups", "ranked_column"]


@dataclass(frozen=True)
class RankedRun:
    """What the block shows of one run: its field name (group or level), its fit and tests."""

    label: str
    run: Run
    tests: WaldTests


def ranked_column(columns: list[str], rank_coef: str | None) -> str | None:
    """The design column to rank: ``rank_coef`` resolved, or the first non-intercept column."""
    if rank_coef is not None:
        return resolve_column(rank_coef, columns, asked_as="coef", param="rank_coef")
    return next((c for c in columns if c != "Intercept"), None)


def rank_genes_groups(
    runs: dict[str, RankedRun],
    rank_coef: str | None,
    var_names: pd.Index,
    *,
    groupby: str | None,
    layer: str | None,
) -> dict | None:
    """The block of a fit, or ``None`` when there is nothing to rank.

    With ``groupby`` one field per group ranks the same column; without, the one field is the
    level that the ranked column codes (and there is no block if it codes no level of a factor).
    """
    first = next(iter(runs.values())).run.design
    coef = ranked_column(first.columns, rank_coef)
    if coef is None or any(coef not in r.run.design.columns for r in runs.values()):
        return None
    if groupby is not None:
        return _block(list(runs.values()), coef, var_names, groupby=groupby, reference="rest", layer=layer)
    if coef not in first.factor_levels:
        return None
    variable, level = first.factor_levels[coef]
    (only,) = runs.values()
    reference = str(first.reference_levels.get(variable, "rest"))
    return _block(
        [RankedRun(level, only.run, only.tests)], coef, var_names, groupby=variable, reference=reference, layer=layer
    )


def _block(
    runs: list[RankedRun], coef: str, var_names: pd.Index, *, groupby: str, reference: str, layer: str | None
) -> dict:
    fields = [h5ad_name(r.label) for r in runs]  # "/" cannot be written to h5ad
    ranked = [_ranked(r, coef, var_names) for r in runs]
    width = max([len(n) for r in ranked for n in r["names"]] + [1])

    def rec(name: str, dtype: str) -> np.recarray:
        return np.rec.fromarrays([r[name] for r in ranked], dtype=[(f, dtype) for f in fields])

    return {
        "params": {
            "groupby": groupby,
            "reference": reference,
            "method": "scglmm",
            "use_raw": False,
            "layer": "X" if layer is None else str(layer),
            "corr_method": "benjamini-hochberg",
            "coef": coef,
        },
        "names": rec("names", f"U{width}"),
        "scores": rec("scores", "float32"),
        "logfoldchanges": rec("logfoldchanges", "float32"),
        "pvals": rec("pvals", "float64"),
        "pvals_adj": rec("pvals_adj", "float64"),
    }


def _ranked(r: RankedRun, coef: str, var_names: pd.Index) -> dict[str, np.ndarray]:
    """One field of the block: the genes by decreasing statistic (genes without one last)."""
    j = r.run.design.columns.index(coef)
    stat = r.tests.stat[:, j].astype(float)
    pval = r.tests.pval[:, j].astype(float)
    lfc = r.run.fit.coef[:, j] / np.log(2.0)
    order = np.argsort(np.where(np.isfinite(stat), -stat, np.inf), kind="stable")
    return {
        "names": np.asarray(var_names)[order].astype(str),
        "scores": stat[order].astype(np.float32),
        "logfoldchanges": lfc[order].astype(np.float32),
        "pvals": pval[order],
        "pvals_adj": bh_adjust(pval)[order],
    }
