"""Tidy results from what :func:`scglmm.tl.fit` stored."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["results", "bh_adjust", "resolve_coef"]


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def _params(adata: AnnData, key: str) -> dict:
    if key not in adata.uns or "params" not in adata.uns[key]:
        found = [k for k in adata.uns if isinstance(adata.uns[k], dict) and "params" in adata.uns[k]]
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


def results(adata: AnnData, coef: str | None = None, *, key: str = "scglmm") -> pd.DataFrame:
    """Tidy per-gene results for one coefficient of a fit.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run.
    coef
        A design column (e.g. ``"condition[T.stim]"``), or a variable name with a single column
        (``"condition"``). ``None`` takes the only non-intercept column if there is exactly one.
    key
        The ``key_added`` of the fit.

    Returns
    -------
    DataFrame indexed by gene with ``log_fc`` (natural log), ``log2_fc``, ``se``, ``stat`` (Wald z),
    ``p_value``, ``adj_p_value`` (Benjamini-Hochberg over genes with a p-value), ``sigma2``,
    ``dispersion`` and ``status``, sorted as the genes are in ``adata``.
    """
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
    return df
