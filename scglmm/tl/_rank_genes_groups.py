"""The ``rank_genes_groups``-style block of a fit, laid out as :func:`scanpy.tl.rank_genes_groups`
writes it, so that scanpy's ``get`` and ``pl`` functions read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._inference import bh_adjust, resolve_column
from .._layout import h5ad_name
from ._run import Run
from ._wald import WaldTests

if TYPE_CHECKING:
    from .._formula import FixedDesign

__all__ = ["RankedRun", "comparison_labels", "rank_genes_groups", "ranked_column", "within_groups_reference"]


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
    labels = comparison_labels(first, coef)
    if groupby is not None:
        reference = within_groups_reference(labels, groupby)
        return _block(list(runs.values()), coef, var_names, groupby=groupby, reference=reference, layer=layer, **labels)
    if coef not in first.factor_levels:
        return None
    (only,) = runs.values()
    return _block(
        [RankedRun(labels["tested_level"], only.run, only.tests)], coef, var_names, groupby=labels["variable"],
        reference=labels["reference_level"], layer=layer, **labels,
    )  # fmt: skip


def comparison_labels(design: FixedDesign, coef: str) -> dict[str, str]:
    """What the ranked column compares: ``variable``, ``tested_level``, ``reference_level`` and
    ``comparison`` (e.g. ``"stim vs. ctrl"``); for a column that codes no level of a factor the
    levels are empty and ``comparison`` names the column."""
    if coef not in design.factor_levels:
        return {"variable": coef, "tested_level": "", "reference_level": "", "comparison": f"effect of {coef}"}
    variable, level = design.factor_levels[coef]
    ref = str(design.reference_levels.get(variable, ""))
    return {"variable": variable, "tested_level": level, "reference_level": ref, "comparison": f"{level} vs. {ref}"}


def within_groups_reference(labels: dict[str, str], groupby: str) -> str:
    """``params["reference"]`` of a block by group: scanpy titles each panel ``f"{group} vs. {reference}"``.

    With ``groupby`` the fields are the groups (so that scanpy's functions keyed by group, e.g.
    :func:`scanpy.get.rank_genes_groups_df` or dot plots coloured by fold change, keep working) and
    each ranks the same comparison within its group, which the reference spells out, e.g.
    ``"ctrl (stim vs. ctrl within each cell_type)"``: the title reads
    ``"Mono vs. ctrl (stim vs. ctrl within each cell_type)"``, never ``"Mono vs. rest"``.
    """
    if labels["reference_level"]:
        return f"{labels['reference_level']} ({labels['comparison']} within each {groupby})"
    return f"no {labels['comparison']} (within each {groupby})"


def _block(
    runs: list[RankedRun],
    coef: str,
    var_names: pd.Index,
    *,
    groupby: str,
    reference: str,
    layer: str | None,
    **labels: str,
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
            **labels,
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
