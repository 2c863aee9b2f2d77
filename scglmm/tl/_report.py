"""What :func:`scglmm.tl.fit` tells the user at the end of a call: one log summary, at most one warning.

Only what a user acts on is counted: genes without an estimate of some or all coefficients
(``separation``, ``partial_separation``, ``all_zero``, ``failed``) and genes whose fit did not
converge. ``sigma2_boundary`` and ``poisson_limit`` are
valid estimates at the edge of the parameter space (see ``docs/status.md``) and are not reported
as problems; ``filtered`` genes were left out on purpose by the gene filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._core._status import (
    ALL_ZERO,
    ATTENTION,
    FAILED,
    FILTERED,
    INFORMATION,
    NOT_CONVERGED,
    PARTIAL_SEPARATION,
    PENALISED,
    SEPARATION,
    STATUS_BITS,
)

__all__ = ["StatusSummary", "log_text", "status_summary", "warning_text"]

#: The flags of a fitted gene without an estimate, in the order they are counted.
NO_ESTIMATE_BITS = (SEPARATION, PARTIAL_SEPARATION, ALL_ZERO, FAILED)
#: Groups named one by one in the warning; the others are counted.
MAX_GROUPS_NAMED = 8


@dataclass(frozen=True)
class StatusSummary:
    """What a user must act on after one run (one group's cells, or all cells)."""

    n_genes: int
    n_cells: int
    n_donors: int
    n_filtered: int
    no_estimate: dict[str, int]
    """Genes without an estimate by flag (a gene with several flags counts under each)."""
    n_no_estimate: int
    n_not_converged: int
    examples: list[str]
    """A few genes without an estimate."""
    n_boundary: int = 0
    """Fitted genes with a valid estimate at the edge (a variance at 0, a correlation at +-1, the Poisson
    limit) and nothing that needs attention: information, not a problem."""
    n_penalised: int = 0
    """Fitted genes estimated with the weak prior (one side of a comparison (almost) without counts)."""

    @property
    def n_fitted(self) -> int:
        return self.n_genes - self.n_filtered


def status_summary(
    status: np.ndarray, coef: np.ndarray, var_names: pd.Index, *, n_cells: int, n_donors: int
) -> StatusSummary:
    """The summary of a run from its status codes and coefficients (genes x columns)."""
    status = np.asarray(status, dtype=np.int64)
    fitted = (status & FILTERED) == 0
    # without an estimate: every coefficient NaN, or those that diverged (partial_separation)
    no_estimate = fitted & ~np.isfinite(coef).all(axis=1) if coef.shape[1] else np.zeros(status.shape, dtype=bool)
    by_flag = {STATUS_BITS[b]: int(((status & b) != 0)[no_estimate].sum()) for b in NO_ESTIMATE_BITS}
    return StatusSummary(
        n_genes=int(status.size),
        n_cells=int(n_cells),
        n_donors=int(n_donors),
        n_filtered=int((~fitted).sum()),
        no_estimate={k: v for k, v in by_flag.items() if v},
        n_no_estimate=int(no_estimate.sum()),
        n_not_converged=int((fitted & ~no_estimate & ((status & NOT_CONVERGED) != 0)).sum()),
        examples=[str(g) for g in var_names[no_estimate][:5]],
        n_boundary=int((fitted & ((status & (ATTENTION | PENALISED)) == 0) & ((status & INFORMATION) != 0)).sum()),
        n_penalised=int((fitted & ((status & PENALISED) != 0)).sum()),
    )


def _flags(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _total_flags(summaries: list[StatusSummary]) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in summaries:
        for k, v in s.no_estimate.items():
            total[k] = total.get(k, 0) + v
    return total


def log_text(
    summaries: dict[str, StatusSummary], *, key: str, groupby: str | None, min_cells: int, min_donors: int
) -> str:
    """The one INFO summary of a fit: a sentence without ``groupby``, a small table per group with it.

    ``summaries`` maps group labels (``""`` without ``groupby``) to their run's summary.
    """
    filter_note = f"filtered: fewer than min_cells={min_cells} cells or min_donors={min_donors} donors with counts"
    if groupby is None:
        (s,) = summaries.values()
        no_est = f" ({_flags(s.no_estimate)})" if s.no_estimate else ""
        why = f" ({filter_note.removeprefix('filtered: ')})" if s.n_filtered else ""
        return (
            f"scglmm fit: {s.n_genes} genes: {s.n_fitted} fitted, {s.n_filtered} filtered{why}; of the fitted, "
            f"{s.n_no_estimate} without an estimate{no_est} and {s.n_not_converged} not converged (need "
            f"attention); {s.n_penalised} penalised (one side (almost) without counts: finite estimates with a "
            f"weak prior, see docs/separation.md); {s.n_boundary} at a boundary (a variance at 0, a correlation "
            f"at +-1 or the Poisson limit: valid estimates, information only). "
            f"Per-gene status: adata.varm['{key}_fit']['status']."
        )
    table = pd.DataFrame(
        {
            "cells": [s.n_cells for s in summaries.values()],
            "donors": [s.n_donors for s in summaries.values()],
            "fitted": [s.n_fitted for s in summaries.values()],
            "filtered": [s.n_filtered for s in summaries.values()],
            "no estimate": [s.n_no_estimate for s in summaries.values()],
            "not converged": [s.n_not_converged for s in summaries.values()],
            "penalised": [s.n_penalised for s in summaries.values()],
            "at a boundary": [s.n_boundary for s in summaries.values()],
        },
        index=pd.Index(list(summaries), name=groupby),
    ).reset_index()
    flags = _total_flags(list(summaries.values()))
    no_est = f"; without an estimate by status: {_flags(flags)}" if flags else ""
    return (
        f"scglmm fit by {groupby}: {len(summaries)} groups ({filter_note}{no_est}; "
        f"per-gene status in adata.varm['{key}:<group>_fit']['status']):\n{table.to_string(index=False)}"
    )


def warning_text(summaries: dict[str, StatusSummary], *, key: str, groupby: str | None) -> str | None:
    """The one warning of a fit with genes without an estimate (``None`` if every fitted gene has one)."""
    bad = {g: s for g, s in summaries.items() if s.n_no_estimate}
    if not bad:
        return None
    if groupby is None or len(bad) == 1:
        ((g, s),) = bad.items()
        where = f"scglmm fit [{g}]" if groupby is not None else "scglmm fit"
        sub = f"{key}:{g}" if groupby is not None else key
        return (
            f"{where}: {s.n_no_estimate} of {s.n_genes} genes have no estimate (NaN; e.g. {s.examples}): "
            f"{_flags(s.no_estimate)}. See adata.varm['{sub}_fit']['status']."
        )
    named = [f"[{g}] {s.n_no_estimate} of {s.n_genes}" for g, s in list(bad.items())[:MAX_GROUPS_NAMED]]
    more = f" and {len(bad) - MAX_GROUPS_NAMED} more" if len(bad) > MAX_GROUPS_NAMED else ""
    return (
        f"{len(bad)} groups have genes without an estimate (NaN): {', '.join(named)}{more}; "
        f"{_flags(_total_flags(list(bad.values())))}. The table per group: sc.settings.verbosity = 'info'; "
        f"see adata.varm['{key}:<group>_fit']['status']."
    )
