"""``groupby``: one run of :func:`scglmm.tl.fit` per group of cells (e.g. per cell type)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError
from .._formula import ParsedFormula, build_design, build_re_terms
from .._layout import group_key
from .._logging import logger
from ._run import FitOptions, Run, fit_run

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["GroupRuns", "fit_groups"]


@dataclass
class GroupRuns:
    """The runs of a fit by group, keyed by run key, and the groups left out."""

    runs: dict[str, Run] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    """``{run key: group label}``."""
    skipped: dict[str, str] = field(default_factory=dict)
    """``{group label: reason}``."""


def fit_groups(
    adata: AnnData,
    Y,
    log_off: np.ndarray,
    parsed: ParsedFormula,
    groupby: str,
    options: FitOptions,
    *,
    key: str,
    min_cells_group: int,
    min_donors_group: int,
) -> GroupRuns:
    """Fit each group of ``obs[groupby]`` that is large enough and has an estimable design.

    Raises
    ------
    InvalidValueError
        No group could be fitted.
    """
    col = adata.obs[groupby]
    groups = _groups(col)
    out = GroupRuns()
    for g in groups:
        mask = (col == g).to_numpy()
        obs_g = adata.obs.loc[mask]
        reason = _too_small(obs_g, parsed.donor, min_cells_group, min_donors_group)
        if reason is None:
            try:
                design = build_design(parsed.fixed, obs_g)
                if parsed.general:
                    build_re_terms(parsed.terms, obs_g)  # every grouping factor has two levels here
            except (ValueError, KeyError) as err:
                reason = f"design not estimable in this group ({err})"
        if reason is not None:
            out.skipped[str(g)] = reason
            continue
        sub = group_key(key, g)
        out.runs[sub] = fit_run(
            obs_g, Y[mask], log_off[mask], design, parsed, adata.var_names, options, desc=f"scglmm fit [{g}]"
        )
        out.labels[sub] = str(g)
    _report_skipped(out.skipped, groupby, len(groups), any_fitted=bool(out.runs))
    return out


def _groups(col: pd.Series) -> list:
    """The groups of a column: its used categories in order, or its sorted values."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [c for c in col.cat.categories if (col == c).any()]
    return sorted(pd.unique(col), key=str)


def _too_small(obs: pd.DataFrame, donor: str, min_cells_group: int, min_donors_group: int) -> str | None:
    """Why a group is too small to fit, or ``None`` (a fit needs two donors whatever the setting)."""
    cols = donor.split(":")  # a general structure's first grouping factor may be an interaction
    n_cells = len(obs)
    n_donors = int(obs[donor].nunique()) if len(cols) == 1 else len(obs[cols].astype(str).drop_duplicates())
    if n_cells < min_cells_group:
        return f"{n_cells} cells < min_cells_group={min_cells_group}"
    if n_donors < max(min_donors_group, 2):
        return f"{n_donors} donors < min_donors_group={max(min_donors_group, 2)}"
    return None


def _report_skipped(skipped: dict[str, str], groupby: str, n_groups: int, *, any_fitted: bool) -> None:
    """One log line naming the skipped groups; an error if no group is left."""
    reasons = "; ".join(f"{g!r}: {why}" for g, why in skipped.items())
    if skipped:
        logger.warning("groupby=%r: skipped %d of %d groups: %s", groupby, len(skipped), n_groups, reasons)
    if not any_fitted:
        msg = (
            f"no group of {groupby!r} could be fitted: "
            + reasons
            + ". Lower min_cells_group / min_donors_group or check the design."
        )
        raise InvalidValueError(msg, param="groupby")
