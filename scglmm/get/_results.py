"""Tidy results from what :func:`scglmm.tl.fit` and :func:`scglmm.tl.test` stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError, MissingKeyError
from .._core._inference import bh_adjust, contrast_vector, resolve_column
from .._layout import contrast_key, contrast_name, fit_params, run_keys, stored_contrasts, varm_key

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["results"]


def _coef_table(adata: AnnData, coef: str | None, sub: str) -> pd.DataFrame:
    """The results of one design column of one run."""
    params = fit_params(adata, sub)
    columns = list(params["design_columns"])
    if coef is None:
        non_int = [c for c in columns if c != "Intercept"]
        if len(non_int) != 1:
            msg = f"several coefficients were fitted; choose one with coef=, one of {columns}."
            raise InvalidValueError(msg, param="coef")
        coef = non_int[0]
    name = resolve_column(coef, columns, asked_as="coef", param="coef")
    beta = adata.varm[varm_key(sub, "coef")][name].to_numpy(dtype=float)
    p = adata.varm[varm_key(sub, "pval")][name].to_numpy(dtype=float)
    table = _with_fit(
        adata,
        sub,
        {
            "log_fc": beta,
            "log2_fc": beta / np.log(2.0),
            "se": adata.varm[varm_key(sub, "se")][name].to_numpy(dtype=float),
            "stat": adata.varm[varm_key(sub, "stat")][name].to_numpy(dtype=float),
            "p_value": p,
            "adj_p_value": bh_adjust(p),
        },
    )
    table.attrs["coef"] = name
    table.attrs["calibration"] = str(params["calibration"])
    table.attrs["df"] = float(params["df"][name])
    return table


def _with_fit(adata: AnnData, sub: str, columns: dict[str, np.ndarray], **after: np.ndarray) -> pd.DataFrame:
    """``columns``, then the run's ``sigma2``, ``dispersion`` and ``status``, then ``after``."""
    fit = adata.varm[varm_key(sub, "fit")]
    columns = {
        **columns,
        "sigma2": fit["sigma2"].to_numpy(),
        "dispersion": fit["dispersion"].to_numpy(),
        "status": fit["status"].astype(str).to_numpy(),
        **after,
    }
    return pd.DataFrame(columns, index=adata.var_names.copy())


def _stored_contrast(adata: AnnData, sub: str, contrast) -> str:
    """The stored name of a tested contrast: as given, without spaces, or derived as tl.test did."""
    stored = stored_contrasts(adata, sub)

    def found(name: str) -> bool:
        return name in stored or contrast_key(sub, name) in adata.varm

    if isinstance(contrast, str):
        for name in (contrast, contrast.replace(" ", "")):
            if found(name):
                return name
    params = fit_params(adata, sub)
    try:
        _, derived = contrast_vector(
            contrast, list(params["design_columns"]), reference_levels=params["reference_levels"]
        )
    except (KeyError, ValueError):
        derived = None
    if derived is not None and found(contrast_name(derived)):
        return contrast_name(derived)
    msg = (
        f"no tested contrast {contrast!r} under key {sub!r}; run scglmm.tl.test(adata, contrast) first "
        f"(stored contrasts: {list(stored)})."
    )
    raise MissingKeyError(msg, param="contrast")


def _contrast_table(adata: AnnData, contrast, sub: str) -> pd.DataFrame:
    """The results of one tested contrast of one run."""
    name = _stored_contrast(adata, sub, contrast)
    stored = adata.varm[contrast_key(sub, name)]
    est = stored["estimate"].to_numpy(dtype=float)
    columns = {"log_fc": est, "log2_fc": est / np.log(2.0)}
    for col in ("se", "stat", "p_value", "adj_p_value"):
        columns[col] = stored[col].to_numpy(dtype=float)
    table = _with_fit(adata, sub, columns, df=stored["df"].to_numpy(dtype=float))
    table.attrs["contrast"] = name
    table.attrs["method"] = str(stored_contrasts(adata, sub).get(name, {}).get("method", ""))
    return table


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
    if coef is not None and contrast is not None:
        msg = "pass either coef= or contrast=, not both."
        raise InvalidValueError(msg, param="contrast")
    subs = run_keys(adata, key, group)

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
