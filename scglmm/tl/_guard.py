"""A guard against pseudo-replication: a factor whose effect no random effect lets vary between donors.

With ``~ condition + (1 | donor)`` on paired data (every donor's cells in both conditions) the model has
one condition effect for all donors: nothing lets a donor respond differently, so the test of
``condition`` counts cells, not donors, as replicates of the effect and its p-values are far too small.
The effect is estimable, and the fit is exact; what is wrong is the model for the question. A factor's
column is flagged when it varies within the levels of every random-effect term (it is tested on no
term's levels, :func:`scglmm._core._inference.level_design`) and no term gives it a random slope
(:func:`._wald.slope_effects`). Numeric cell-level covariates (e.g. ``pct_mito``) are meant to vary
within donors and are not flagged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._core._inference import level_design
from .._logging import logger
from ._wald import slope_effects

if TYPE_CHECKING:
    from .._core._re import RETerm
    from .._formula import FixedDesign, ParsedFormula

__all__ = ["pseudo_replicated", "warn_pseudo_replication"]


def pseudo_replicated(terms: tuple[RETerm, ...], design: FixedDesign) -> list[str]:
    """The factor columns of ``design`` that vary within the levels of every term and have no random slope."""
    X, cols = design.matrix, list(design.columns)
    slopes = slope_effects(terms, X, cols)
    codes = [t.codes for t in terms]
    out = []
    for j, col in enumerate(cols):
        if col not in design.factor_levels or col in slopes:
            continue
        if level_design(X, codes, np.eye(len(cols))[j]) is None:
            out.append(col)
    return out


def warn_pseudo_replication(parsed: ParsedFormula, terms: tuple[RETerm, ...], design: FixedDesign) -> None:
    """One warning on the ``scglmm`` logger (as scanpy warns of likely mistakes; the command line prints it,
    and the fit's own summary warning stays the only Python warning) naming the columns of
    :func:`pseudo_replicated`, with the formula that gives each level of the first term its own response."""
    cols = pseudo_replicated(terms, design)
    if not cols:
        return
    variables = list(dict.fromkeys(design.factor_levels[c][0] for c in cols))
    specs = [str(t) for t in parsed.specs]
    group = parsed.specs[0].group_name
    slope = f"(1 + {' + '.join(variables)} | {group})"
    rest = specs[1:] if parsed.specs[0].lhs == "1" else specs
    suggestion = " + ".join([parsed.fixed.strip(), slope, *rest])
    shown = " + ".join(specs)
    msg = (
        f"{', '.join(cols)} varies within the levels of every random effect ({shown}) and no random effect "
        f"carries it: every {group} has cells on both sides, so the test counts cells, not {group}s, as "
        f"replicates of the effect (pseudo-replication) and its p-values are far too small. Let each {group} "
        f"respond on its own with a random slope, e.g. formula={suggestion!r} (or add a sample-level "
        f"intercept '(1 | {group}:{variables[0]})')."
    )
    logger.warning("%s", msg)
