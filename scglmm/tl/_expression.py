"""Mean expression and detection per level of each factor of a run, computed from the counts at fit time.

Stored as ``varm[f"{sub}_expression"]`` (see :mod:`scglmm._layout`): they cannot be recomputed
later without the counts, and :func:`scglmm.get.results` shows them next to each fold change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._counts import level_stats
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
    obs: pd.DataFrame,
    Y,
    log_off: np.ndarray,
    design: FixedDesign,
    center: float,
    var_names: pd.Index,
    present: tuple[np.ndarray, int],
) -> tuple[pd.DataFrame, dict[str, list[str]], np.ndarray, np.ndarray]:
    """Per gene: ``base_mean`` over the run's cells, and per level of each factor the mean and the
    fraction of cells with a count (``mean[variable=level]``, ``pct[variable=level]``); with them,
    from the same pass over the counts, the number of cells with a count and of levels of the coding
    ``present = (codes, m)`` (the donors) with one, which the gene filters read.

    Expression is normalised as ``count / s`` with the size factor ``s = exp(log_off - center)``
    (``center``: the mean log offset of the run's cells, so ``s`` has geometric mean 1 there, as
    DESeq2's ``baseMean``, and a group's table equals that of its cells fitted alone). Returns the
    table, the levels of each factor, and per gene the cells and the levels with a count.
    """
    n = len(obs)
    levels = {v: lv for v, lv in compared_levels(design).items() if v in obs.columns}
    codings, first, rows = [np.zeros(n, dtype=np.int64)], {}, 1  # row 0: every cell (base_mean)
    for variable, lv in levels.items():
        codes = pd.Categorical(obs[variable].astype(str), categories=lv).codes.astype(np.int64)
        codings.append(np.where(codes >= 0, codes + rows, -1))
        first[variable] = rows
        rows += len(lv)
    scale = np.exp(np.asarray(log_off, dtype=float) - center)
    sums, detected, pres = level_stats(Y, np.vstack(codings), rows, 1.0 / scale, present=present)
    every = np.concatenate(codings)
    n_cells = np.bincount(every[every >= 0], minlength=rows).astype(float)
    columns = {"base_mean": sums[0] / n}
    with np.errstate(invalid="ignore", divide="ignore"):
        for variable, lv in levels.items():
            for r, level in enumerate(lv, start=first[variable]):
                columns[expression_column("mean", variable, level)] = sums[r] / n_cells[r]
                columns[expression_column("pct", variable, level)] = detected[r] / n_cells[r]
    table = pd.DataFrame(columns, index=var_names.copy())
    return table, levels, detected[0].astype(np.int64), pres.sum(axis=0, dtype=np.int64)
