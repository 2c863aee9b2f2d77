"""Tidy results from what :func:`scglmm.tl.fit` and :func:`scglmm.tl.test` stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._inference import bh_adjust, contrast_vector

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["results", "bh_adjust", "resolve_coef"]


def _params(adata: AnnData, key: str) -> dict:
    if key not in adata.uns or "params" not in adata.uns[key]:
        found = [k for k in adata.uns if isinstance(adata.uns[k], Mapping) and "params" in adata.uns[k]]
        msg = f"no scglmm results under key {key!r}; run scglmm.tl.fit(adata, ...) first (keys with results: {found})."
        raise KeyError(msg)
    return adata.uns[key]["params"]


def resolve_coef(coef: str, columns: list[str]) -> str:
    """Match ``coef`` to a design column: exact name, or a unique column of that variable."""
    if coef in columns:
        return coef
    cands = [c for c in columns if c.startswith(f"{coef}[") or c == coef]
    if len(cands) == 1:
        return cands[0]
    msg = f"coefficient {coef!r} is not in the design; choose one of {columns}."
    if len(cands) > 1:
        msg = f"coefficient {coef!r} matches several design columns {cands}; choose one of them."
    raise KeyError(msg)


def _coef_table(adata: AnnData, coef: str | None, key: str) -> pd.DataFrame:
    params = _params(adata, key)
    columns = list(params["design_columns"])
    if coef is None:
        non_int = [c for c in columns if c != "Intercept"]
        if len(non_int) != 1:
            msg = f"several coefficients were fitted; choose one with coef=, one of {columns}."
            raise ValueError(msg)
        coef = non_int[0]
    name = resolve_coef(coef, columns)
    beta = adata.varm[f"{key}_coef"][name].to_numpy(dtype=float)
    se = adata.varm[f"{key}_se"][name].to_numpy(dtype=float)
    fitdf = adata.varm[f"{key}_fit"]
    if f"{key}_stat" in adata.varm:
        stat = adata.varm[f"{key}_stat"][name].to_numpy(dtype=float)
    else:  # fits stored before calibrated tests: the Wald z
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = beta / se
    p = adata.varm[f"{key}_pval"][name].to_numpy(dtype=float)
    df = pd.DataFrame(
        {
            "log_fc": beta,
            "log2_fc": beta / np.log(2.0),
            "se": se,
            "stat": stat,
            "p_value": p,
            "adj_p_value": bh_adjust(p),
            "sigma2": fitdf["sigma2"].to_numpy(),
            "dispersion": fitdf["dispersion"].to_numpy(),
            "status": fitdf["status"].astype(str).to_numpy(),
        },
        index=adata.var_names.copy(),
    )
    df.attrs["coef"] = name
    df.attrs["calibration"] = str(params.get("calibration", "z"))
    dfs = params.get("df", {})
    df.attrs["df"] = float(dfs[name]) if name in dfs else float("inf")
    return df


def _contrast_name(adata: AnnData, key: str, contrast) -> str:
    uns = adata.uns[key]
    stored = dict(uns.get("contrasts", {})) if isinstance(uns, Mapping) else {}
    if isinstance(contrast, str):
        for cand in (contrast, contrast.replace(" ", "")):
            if cand in stored or f"{key}_contrast_{cand}" in adata.varm:
                return cand
    params = _params(adata, key)
    try:
        _, nm = contrast_vector(
            contrast, list(params["design_columns"]), reference_levels=params.get("reference_levels")
        )
    except (KeyError, ValueError):
        nm = None
    if nm is not None:
        nm = nm.replace(" ", "").replace("/", "_")
        if nm in stored or f"{key}_contrast_{nm}" in adata.varm:
            return nm
    msg = (
        f"no tested contrast {contrast!r} under key {key!r}; run scglmm.tl.test(adata, contrast) first "
        f"(stored contrasts: {list(stored)})."
    )
    raise KeyError(msg)


def _contrast_table(adata: AnnData, contrast, key: str) -> pd.DataFrame:
    name = _contrast_name(adata, key, contrast)
    stored = adata.varm[f"{key}_contrast_{name}"]
    fitdf = adata.varm[f"{key}_fit"]
    est = stored["estimate"].to_numpy(dtype=float)
    df = pd.DataFrame(
        {
            "log_fc": est,
            "log2_fc": est / np.log(2.0),
            "se": stored["se"].to_numpy(dtype=float),
            "stat": stored["stat"].to_numpy(dtype=float),
            "p_value": stored["p_value"].to_numpy(dtype=float),
            "adj_p_value": stored["adj_p_value"].to_numpy(dtype=float),
            "sigma2": fitdf["sigma2"].to_numpy(),
            "dispersion": fitdf["dispersion"].to_numpy(),
            "status": fitdf["status"].astype(str).to_numpy(),
            "df": stored["df"].to_numpy(dtype=float),
        },
        index=adata.var_names.copy(),
    )
    info = dict(adata.uns[key].get("contrasts", {}).get(name, {}))
    df.attrs["contrast"] = name
    df.attrs["method"] = str(info.get("method", ""))
    return df


def results(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | Sequence | Mapping[str, float] | None = None,
    group: str | Sequence[str] | None = None,
    key: str = "scglmm",
) -> pd.DataFrame:
    """Tidy per-gene results of one coefficient of a fit, or of a tested contrast.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run.
    coef
        A design column (e.g. ``"condition[T.stim]"``), or a variable name with a single column
        (``"condition"``). ``None`` takes the only non-intercept column if there is exactly one.
    contrast
        Instead of ``coef``: the name returned by :func:`scglmm.tl.test` (or the contrast as it
        was passed to it).
    group
        For a fit with ``groupby``: one group, or several. ``None`` returns every fitted group,
        stacked, with a ``group`` column first.
    key
        The ``key_added`` of the fit.

    Returns
    -------
    DataFrame indexed by gene with ``log_fc`` (natural log), ``log2_fc``, ``se`` (model standard
    error), ``stat`` (the test statistic behind the p-value: Wald, with the calibration of the
    fit; for an LRT contrast the LR statistic), ``p_value``, ``adj_p_value`` (Benjamini-Hochberg
    over genes with a p-value, within each group), ``sigma2``, ``dispersion`` and ``status``, in
    the order of ``adata.var_names``; contrasts add ``df``. ``attrs`` holds the coefficient or
    contrast name, and for coefficients the calibration and degrees of freedom.
    """
    from ..tl._test import subkeys

    if coef is not None and contrast is not None:
        msg = "pass either coef= or contrast=, not both."
        raise ValueError(msg)
    _params(adata, key)
    subs = subkeys(adata, key, group)

    def one(sub: str) -> pd.DataFrame:
        return _coef_table(adata, coef, sub) if contrast is None else _contrast_table(adata, contrast, sub)

    if list(subs) == [""]:
        return one(subs[""])
    if isinstance(group, str):
        out = one(subs[group])
        out.attrs["group"] = group
        return out
    parts = []
    for label, sub in subs.items():
        part = one(sub)
        attrs = dict(part.attrs)
        part.insert(0, "group", label)
        parts.append(part)
    out = pd.concat(parts)
    out["group"] = pd.Categorical(out["group"], categories=list(subs))
    out.attrs = {k: v for k, v in attrs.items() if k != "df"}
    return out
