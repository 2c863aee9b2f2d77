"""Mean expression and detection per level of each factor of a run, computed from the counts at fit time.

Stored as ``varm[f"{sub}_expression"]`` (see :mod:`scglmm._layout`): they cannot be recomputed
later without the counts, and :func:`scglmm.get.results` shows them next to each fold change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._inputs import level_sums
from .._layout import expression_column

if TYPE_CHECKING:
    from .._formula import FixedDesign

__all__ = ["compared_levels", "expression_table"]


def compared_levels(design: FixedDesign) -> dict[str, list[str]]:
    """``{variable: [reference, level, ...]}`` for each factor with a column per level in the design."""
    out: dict[str, list[str]] = {}
    for variable, level in design.factor_levels.values():
        ref = str(design.reference_levels.get(variable, ""))
        levels = out.setdefault(variable, [ref] if ref else [])
        if level not in levels:
            levels.append(level)
    return out


def expression_table(
    obs: pd.DataFrame, Y, log_off: np.ndarray, design: FixedDesign, center: float, var_names: pd.Index
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Per gene: ``base_mean`` over the run's cells, and per level of each factor the mean and the
    fraction of cells with a count (``mean[variable=level]``, ``pct[variable=level]``).

    Expression is normalised as ``count / s`` with the size factor ``s = exp(log_off - center)``
    (``center``: the mean log offset of the run's cells, so ``s`` has geometric mean 1 there, as
    DESeq2's ``baseMean``, and a group's table equals that of its cells fitted alone). Returns the
    table and the levels of each factor.
    """
    scale = np.exp(np.asarray(log_off, dtype=float) - center)
    n = len(obs)
    sums, _ = level_sums(Y, np.zeros(n, dtype=np.int64), 1, scale)
    columns = {"base_mean": sums[0] / n}
    levels = {v: lv for v, lv in compared_levels(design).items() if v in obs.columns}
    for variable, lv in levels.items():
        codes = pd.Categorical(obs[variable].astype(str), categories=lv).codes.astype(np.int64)
        sums, detected = level_sums(Y, codes, len(lv), scale)
        n_cells = np.bincount(codes[codes >= 0], minlength=len(lv)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            for i, level in enumerate(lv):
                columns[expression_column("mean", variable, level)] = sums[i] / n_cells[i]
                columns[expression_column("pct", variable, level)] = detected[i] / n_cells[i]
    return pd.DataFrame(columns, index=var_names.copy()), levels
