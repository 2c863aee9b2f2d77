"""The variance components of a fit, as a table (genes x components)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from .._layout import fit_params, run_keys, varm_key
from ._docs import GROUP_KEY, with_sections
from ._groups import per_group

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["varcomp"]


@with_sections(group_key=GROUP_KEY)
def varcomp(adata: AnnData, *, group: str | Sequence[str] | None = None, key: str = "scglmm") -> pd.DataFrame:
    """Per-gene variance components of a fit.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run.
    {group_key}

    Returns
    -------
    DataFrame indexed by gene with one column per variance component, natural-log scale:
    ``var(<coefficient>|<group>)`` for each random coefficient of each term and
    ``cor(<c1>,<c2>|<group>)`` for each pair of correlated coefficients, e.g.
    ``var(Intercept|donor)``, ``var(condition[T.stim]|donor)``,
    ``cor(Intercept,condition[T.stim]|donor)``, ``var(Intercept|donor:sample)`` (as stored in
    ``varm[f'{key}_varcomp']``). A fit with one donor random intercept ``(1 | donor)`` has one
    column, ``var(Intercept|donor)``, its ``sigma2``. Filtered genes are NaN.
    """
    return per_group(run_keys(adata, key, group), group, lambda sub: _one(adata, sub))


def _one(adata: AnnData, sub: str) -> pd.DataFrame:
    """The components of one run: the stored table, or the donor variance of a ``(1 | donor)`` fit."""
    stored = adata.varm.get(varm_key(sub, "varcomp"))
    if stored is not None:
        return pd.DataFrame(stored).copy()
    donor = str(fit_params(adata, sub)["donor_key"])
    sigma2 = adata.varm[varm_key(sub, "fit")]["sigma2"].to_numpy(dtype=float)
    return pd.DataFrame({f"var(Intercept|{donor})": sigma2}, index=adata.var_names.copy())
