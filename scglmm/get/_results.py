"""Tidy results from what :func:`scglmm.tl.fit` and :func:`scglmm.tl.test` stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError, MissingKeyError
from .._core._inference import bh_adjust, contrast_vector, resolve_column
from .._core._status import status_codes, status_kinds
from .._layout import (
    contrast_key,
    contrast_name,
    expression_column,
    fit_params,
    run_keys,
    stored_contrasts,
    varm_key,
)
from ._docs import GROUP_KEY, with_sections
from ._groups import per_group
from ._log10p import log10_chi2_sf, log10_f_sf, log10_mixture_sf, log10_two_sided

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
    stat = adata.varm[varm_key(sub, "stat")][name].to_numpy(dtype=float)
    df = params["df"][name]
    if not np.isfinite(df) and not np.isinf(df):  # Satterthwaite: one df per gene
        df = np.asarray(params.get("df_per_gene", {}).get(name, np.full(stat.shape, np.nan)), dtype=float)
    table = _with_fit(
        adata,
        sub,
        {
            "log_fc": beta,
            "log2_fc": beta / np.log(2.0),
            "se": adata.varm[varm_key(sub, "se")][name].to_numpy(dtype=float),
            "stat": stat,
            "p_value": p,
            "log10_p_value": _finite_where_p(log10_two_sided(stat, df), p),
            "adj_p_value": bh_adjust(p),
            **_expression(adata, sub, _coef_levels(params, name)),
        },
    )
    table.attrs["coef"] = name
    table.attrs["calibration"] = str(params["calibration"])
    table.attrs["df"] = float(params["df"][name])
    return table


def _finite_where_p(log10p: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``log10p`` where the gene has a p-value, NaN where it has none."""
    return np.where(np.isnan(p), np.nan, log10p)


def _coef_levels(params: Mapping, column: str) -> tuple[str, str, str] | None:
    """``(variable, level, reference)`` compared by a design column that codes one level of a factor."""
    found = params.get("factor_levels", {}).get(column)
    if found is None:
        return None
    variable, level = (str(v) for v in found)
    ref = str(params["reference_levels"].get(variable, ""))
    return (variable, level, ref) if ref else None


def _contrast_levels(params: Mapping, info: Mapping) -> tuple[str, str, str] | None:
    """``(variable, level, other)`` compared by a tested contrast: one level-column (vs. the
    reference), or one level-column minus another of the same factor; else ``None``."""
    cols = [str(c) for c in params["design_columns"]]
    if info.get("method") == "lrt":
        dropped = list(info.get("dropped_columns", []))
        return _coef_levels(params, str(dropped[0])) if len(dropped) == 1 else None
    vec = np.asarray(info.get("vector", []), dtype=float)
    if vec.shape != (len(cols),):
        return None
    nz = {cols[i]: float(vec[i]) for i in np.flatnonzero(vec)}
    if len(nz) == 1 and next(iter(nz.values())) == 1.0:
        return _coef_levels(params, next(iter(nz)))
    if len(nz) == 2 and sorted(nz.values()) == [-1.0, 1.0]:
        plus, minus = (_coef_levels(params, c) for c in sorted(nz, key=lambda c: -nz[c]))
        if plus is not None and minus is not None and plus[0] == minus[0]:
            return plus[0], plus[1], minus[1]
    return None


def _expression(adata: AnnData, sub: str, levels: tuple[str, str, str] | None) -> dict[str, np.ndarray]:
    """``base_mean`` and, for a comparison of two levels, ``mean_<level>`` and ``pct_<level>`` of each
    (from ``varm[f"{sub}_expression"]``; nothing for a fit stored before these were)."""
    stored = adata.varm.get(varm_key(sub, "expression"))
    if stored is None:
        return {}
    out = {"base_mean": stored["base_mean"].to_numpy(dtype=float)}
    if levels is None:
        return out
    variable, *compared = levels
    for kind in ("mean", "pct"):
        for level in compared:
            col = expression_column(kind, variable, level)  # type: ignore[arg-type]
            if col in stored.columns:
                out[f"{kind}_{level}"] = stored[col].to_numpy(dtype=float)
    return out


def _with_fit(adata: AnnData, sub: str, columns: dict[str, np.ndarray], **after: np.ndarray) -> pd.DataFrame:
    """``columns``, then the run's ``sigma2``, ``dispersion``, ``status`` and ``status_kind``, then ``after``."""
    fit = adata.varm[varm_key(sub, "fit")]
    columns = {
        **columns,
        "sigma2": fit["sigma2"].to_numpy(),
        "dispersion": fit["dispersion"].to_numpy(),
        "status": fit["status"].astype(str).to_numpy(),
        "status_kind": status_kinds(
            fit["status_code"].to_numpy(dtype=np.int64) if "status_code" in fit else status_codes(fit["status"])
        ),
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
    info = stored_contrasts(adata, sub).get(name, {})
    columns = {"log_fc": est, "log2_fc": est / np.log(2.0)}
    for col in ("se", "stat", "p_value"):
        columns[col] = stored[col].to_numpy(dtype=float)
    df = stored["df"].to_numpy(dtype=float)
    lrt = info.get("method") == "lrt"
    if "mixture_df" in info:  # an LRT of a variance component
        log10p = log10_mixture_sf(columns["stat"], info["mixture_df"], info["mixture_weights"])
    elif lrt and "slope_df" in info:  # an LRT of a random slope's effect: LR / d on F(d, slope df)
        log10p = log10_f_sf(columns["stat"], int(info["df"]), float(info["slope_df"]))
    else:
        log10p = log10_chi2_sf(columns["stat"], df) if lrt else log10_two_sided(columns["stat"], df)
    columns["log10_p_value"] = _finite_where_p(log10p, columns["p_value"])
    columns["adj_p_value"] = stored["adj_p_value"].to_numpy(dtype=float)
    columns.update(_expression(adata, sub, _contrast_levels(fit_params(adata, sub), info)))
    table = _with_fit(adata, sub, columns, df=df)
    table.attrs["contrast"] = name
    table.attrs["method"] = str(info.get("method", ""))
    return table


@with_sections(group_key=GROUP_KEY)
def results(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | Sequence | Mapping[str, float] | None = None,
    group: str | Sequence[str] | None = None,
    key: str = "scglmm",
    sort: bool = False,
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
    {group_key}
    sort
        Most significant genes first (by ``log10_p_value``, which orders even p-values that underflow to
        0; genes without a p-value last; within each group when several are stacked), as
        :func:`scanpy.get.rank_genes_groups_df` lists them.

    Returns
    -------
    DataFrame indexed by gene, in the order of ``adata.var_names`` (or by significance with ``sort``),
    with ``log_fc`` (natural log), ``log2_fc``, ``se`` (model standard error), ``stat`` (the test
    statistic behind the p-value: Wald, with the calibration of the fit; for an LRT contrast the LR
    statistic), ``p_value``,
    ``log10_p_value``, ``adj_p_value`` (Benjamini-Hochberg over genes with a p-value, within each
    group), ``base_mean``, then for a comparison of two levels ``mean_<level>`` and ``pct_<level>``
    of each, then ``sigma2``, ``dispersion``, ``status`` and ``status_kind`` (``"ok"``, ``"boundary"``: a
    valid estimate at the edge, information only; ``"penalised"``: one side of a comparison (almost)
    without counts, estimated with a weak prior; ``"attention"``: no estimate of some coefficient or not
    converged; ``"filtered"``); contrasts add ``df``. ``attrs`` holds
    the coefficient or contrast name, and for coefficients the calibration and degrees of freedom.

    Notes
    -----
    ``log10_p_value`` is the ``log10`` of the p-value computed from ``stat`` and its reference
    distribution (``log10(2) + log S(|stat|) / ln 10`` with the normal or t(df) survival function
    ``S``; chi-square for an LRT), so it stays finite where ``p_value`` underflows to 0 and the
    strongest genes can still be ordered.

    ``base_mean`` is the mean normalised expression over the fitted cells (of the group): counts
    divided by size factors scaled to geometric mean 1 over those cells (DESeq2's ``baseMean``).
    For a coefficient that codes one level of a factor (e.g. ``condition[T.stim]``), or a
    contrast between two levels, ``mean_<level>`` (the same mean over the cells at that level)
    and ``pct_<level>`` (fraction of those cells with a count, 0 to 1, as scanpy's ``pts``) are
    given for each of the two compared levels, e.g. ``mean_stim``, ``mean_ctrl``, ``pct_stim``,
    ``pct_ctrl``; they come from ``varm[f'{key}_expression']``, computed from the counts at fit
    time.
    """
    if coef is not None and contrast is not None:
        msg = "pass either coef= or contrast=, not both."
        raise InvalidValueError(msg, param="contrast")
    subs = run_keys(adata, key, group)

    def one(sub: str) -> pd.DataFrame:
        return _coef_table(adata, coef, sub) if contrast is None else _contrast_table(adata, contrast, sub)

    out = per_group(subs, group, one)
    if isinstance(group, str):
        out.attrs["group"] = group
    if sort:
        by = ["group", "log10_p_value"] if "group" in out.columns else ["log10_p_value"]
        out = out.sort_values(by, na_position="last", kind="stable")
    return out
