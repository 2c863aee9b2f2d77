"""The table of a composition analysis (:func:`scglmm.tl.composition`): one row per cell type."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError, MissingKeyError
from .._core._inference import bh_adjust, resolve_column

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["composition", "sample_proportions"]

#: Stored p-values of each test of :func:`scglmm.tl.composition`.
_P_KEYS = {"z": "p_z", "t": "p_t", "lrt": "p_lrt", "lrt_f": "p_lrt_f", "lrt_fn": "p_lrt_fn"}


def composition(adata: AnnData, coef: str, *, key: str = "scglmm_composition", test: str | None = None) -> pd.DataFrame:
    """One coefficient of a composition analysis, per cell type.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.composition` has run.
    coef
        A design column (``"condition[T.stim]"``) or a variable with one column (``"condition"``).
    key
        The ``uns`` key of the analysis.
    test
        ``"t"``, ``"z"``, ``"lrt"``, ``"lrt_f"`` or ``"lrt_fn"`` (see :func:`scglmm.tl.composition`); default: the
        analysis' own.

    Returns
    -------
    DataFrame indexed by cell type: ``n_cells``, ``prop_<level>`` (mean over the samples of each level of
    the coefficient's factor of the type's share of the sample's cells; one ``prop_mean`` column for a
    numeric coefficient), ``log_or`` (log odds ratio), ``se``, ``stat`` (Wald z, or the likelihood-ratio
    statistic for the LRTs), ``df``, ``p_value``, ``adj_p_value`` (Benjamini-Hochberg across the types),
    ``status`` and one column per variance component (``var(Intercept|donor)``, ...).
    """
    stored = _stored(adata, key)
    names = [str(c) for c in stored["coef_names"]]
    col = resolve_column(coef, names, asked_as="coef", param="coef")
    j = names.index(col)
    test = str(stored["params"]["test"]) if test is None else test
    if test not in _P_KEYS:
        msg = f"test={test!r}: must be one of {list(_P_KEYS)}."
        raise InvalidValueError(msg, param="test")
    types = [str(t) for t in stored["types"]]
    p = np.asarray(stored[_P_KEYS[test]], dtype=float)[:, j]
    stat = np.asarray(stored["lrt_stat" if test.startswith("lrt") else "wald_stat"], dtype=float)[:, j]
    out = pd.DataFrame(index=pd.Index(types, name="cell_type"))
    counts = pd.DataFrame(stored["counts"], columns=[str(t) for t in stored["all_types"]])
    out["n_cells"] = counts[types].sum(axis=0).to_numpy()
    for name, values in _proportions(stored, col, counts, types).items():
        out[name] = values
    out["log_or"] = np.asarray(stored["coef"], dtype=float)[:, j]
    out["se"] = np.asarray(stored["se"], dtype=float)[:, j]
    out["stat"] = stat
    out["df"] = float(np.asarray(stored["df"])[j]) if test in ("t", "lrt_f", "lrt_fn") else np.inf
    out["p_value"] = p
    out["adj_p_value"] = bh_adjust(p)
    out["status"] = pd.Categorical([str(s) for s in stored["status"]])
    for k, vname in enumerate(stored["varcomp_names"]):
        out[str(vname)] = np.asarray(stored["varcomp"], dtype=float)[:, k]
    return out


def _stored(adata: AnnData, key: str) -> dict:
    if key not in adata.uns:
        msg = f"adata.uns has no composition analysis {key!r}: run scglmm.tl.composition(adata, ...) first."
        raise MissingKeyError(msg, param="key")
    return adata.uns[key]


def sample_proportions(adata: AnnData, *, key: str = "scglmm_composition") -> pd.DataFrame:
    """Each sample's share of its cells per cell type (samples x all types), with the samples' variables
    (``sample_obs``) joined on the right."""
    stored = _stored(adata, key)
    counts = np.asarray(stored["counts"], dtype=float)
    props = pd.DataFrame(
        counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0),
        columns=[str(t) for t in stored["all_types"]],
        index=pd.Index([str(s) for s in stored["samples"]], name="sample"),
    )
    sobs = pd.DataFrame(stored["sample_obs"]).set_index(props.index)
    return props.join(sobs, rsuffix="_obs")


def _proportions(stored: dict, col: str, counts: pd.DataFrame, types: list[str]) -> dict[str, np.ndarray]:
    """``prop_<level>`` per level of the coefficient's factor (mean share over its samples)."""
    share = counts[types].to_numpy(float) / np.maximum(counts.to_numpy(float).sum(axis=1, keepdims=True), 1.0)
    params = stored["params"]
    fcols = [str(c) for c in np.atleast_1d(params.get("factor_columns", []))]
    if col not in fcols:
        return {"prop_mean": share.mean(axis=0)}
    var = str(np.atleast_1d(params["factor_variables"])[fcols.index(col)])
    values = pd.DataFrame(stored["sample_obs"])[var].astype(str).to_numpy()
    return {f"prop_{lv}": share[values == lv].mean(axis=0) for lv in pd.unique(values)}
