# ruff: noqa: PT028  (the public function is named `test`; it is not a pytest test)
"""Tests after a fit: Wald tests of linear contrasts (no refit) and likelihood-ratio tests."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._core._api import fit_genes
from .._core._inference import CALIBRATIONS, bh_adjust, contrast_vector, lrt_pvalues, wald_pvalues
from .._core._status import FILTERED
from .._formula import build_design, parse_formula
from .._inputs import counts
from .._logging import logger, progress_bar

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["test"]


def _fit_params(adata: AnnData, key: str) -> dict:
    if key not in adata.uns or "params" not in adata.uns[key]:
        found = [k for k in adata.uns if isinstance(adata.uns[k], Mapping) and "params" in adata.uns[k]]
        msg = f"no scglmm results under key {key!r}; run scglmm.tl.fit(adata, ...) first (keys with results: {found})."
        raise KeyError(msg)
    return adata.uns[key]["params"]


def subkeys(adata: AnnData, key: str, group: str | Sequence[str] | None = None) -> dict[str, str]:
    """``{group label: storage key}`` of a fit (``{"": key}`` without ``groupby``)."""
    params = _fit_params(adata, key)
    if "group_keys" not in params:
        if group is not None:
            msg = f"the fit under key {key!r} was not run with groupby; leave group=None."
            raise ValueError(msg)
        return {"": key}
    groups = {str(g): str(s) for g, s in zip(params["groups"], params["group_keys"], strict=True)}
    if group is None:
        return groups
    wanted = [group] if isinstance(group, str) else list(group)
    missing = [g for g in wanted if str(g) not in groups]
    if missing:
        skipped = dict(zip(params.get("skipped_groups", []), params.get("skipped_reasons", []), strict=True))
        extra = f" (skipped in the fit: {skipped})" if skipped else ""
        msg = f"group(s) {missing} not fitted under key {key!r}; fitted groups: {list(groups)}{extra}."
        raise KeyError(msg)
    return {str(g): groups[str(g)] for g in wanted}


def _clean_name(name: str) -> str:
    name = re.sub(r"\s+", "", str(name))
    return name.replace("/", "_")


def test(
    adata: AnnData,
    contrast: str | Sequence | Mapping[str, float] | ArrayLike,
    *,
    key: str = "scglmm",
    method: Literal["wald", "lrt"] = "wald",
    reduced_formula: str | None = None,
    key_added: str | None = None,
    calibration: str | None = None,
    group: str | Sequence[str] | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
) -> str:
    """Test a linear contrast of the fixed effects of a fit, for every gene.

    ``method="wald"`` uses the stored coefficients and covariance (no refit): the estimate
    ``c' beta``, its standard error ``sqrt(c' V c)`` and a two-sided p-value whose reference
    distribution follows ``calibration`` (see :func:`scglmm.tl.fit`). ``method="lrt"`` refits the
    reduced model with identical settings (cells, genes, offset, layer, donor, ``n_agq``) and
    refers ``LR = 2 (l_full - l_reduced)`` to a chi-square with as many degrees of freedom as
    columns were dropped. Benjamini-Hochberg adjusts over the genes with a p-value.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run.
    contrast
        What to test. For ``"wald"``:

        - a design column or a variable with one column: ``"condition[T.stim]"``, ``"condition"``;
        - two levels of a factor, first minus second: ``("treatment", "B", "A")`` (either may be
          the reference level);
        - an expression of design columns: ``"treatment[T.B] - treatment[T.A]"``, with optional
          numeric weights (``"0.5*x[T.a] + 0.5*x[T.b]"``);
        - a mapping ``{column: weight}`` or a numeric vector with one weight per design column.

        For ``"lrt"``: a label for the test and, without ``reduced_formula``, the column(s) to
        drop (a column, a variable name, which drops all of its columns, or a list of columns).
    key
        The ``key_added`` of the fit.
    method
        ``"wald"`` or ``"lrt"``.
    reduced_formula
        For ``"lrt"``: the null model's formula, nested in the fitted one, e.g. ``"~ 1"`` or
        ``"~ 1 + (1 | donor)"`` (the donor term is added if left out).
    key_added
        Name of the stored results; default: derived from the contrast (``condition[T.stim]``,
        ``treatment_B_vs_A``, ``treatment[T.B]-treatment[T.A]``, ``lrt_condition``).
    calibration
        Reference distribution of Wald tests (see :func:`scglmm.tl.fit` and docs/calibration.md),
        one of ``"eb"``, ``"z"``, ``"t"``, ``"t_reml"``, ``"t_floor"``,
        ``"satterthwaite"``, ``"satterthwaite_floor"``; ``None`` uses the fit's. ``"eb"`` estimates
        its prior from the genes tested here (with ``group``, from each group's genes).
    group
        With a ``groupby`` fit: the group(s) to test; ``None`` tests every fitted group.
    n_jobs
        Threads for the refit of ``"lrt"``; ``None`` uses the fit's.
    progress
        Progress bar for the refit; ``None`` shows it only in an interactive session.

    Returns
    -------
    The name of the stored results (for :func:`scglmm.get.results` with ``contrast=``). Writes,
    for each fitted key ``k`` (the fit's key, or each group's key ``f'{key}:{group}'``):

    `adata.varm[f'{k}_contrast_{name}']` : :class:`pandas.DataFrame`
        Per gene: ``estimate`` (natural log; for an LRT the estimate of a single dropped column,
        else NaN), ``log2_fc``, ``se`` (model), ``se_test`` (used in the statistic), ``stat``
        (Wald statistic, or the LR statistic), ``df``, ``p_value``, ``adj_p_value``; an LRT adds
        ``loglik_full`` and ``loglik_reduced``.
    `adata.uns[k]['contrasts'][name]` : `dict`
        The test's settings: method, contrast vector, design columns, calibration, reference
        distribution, reduced formula.
    """
    if method not in ("wald", "lrt"):
        msg = f"method must be 'wald' or 'lrt'; got {method!r}."
        raise ValueError(msg)
    if calibration is not None and calibration not in CALIBRATIONS:
        msg = f"calibration must be one of {CALIBRATIONS} or None (the fit's); got {calibration!r}."
        raise ValueError(msg)
    if method == "wald" and reduced_formula is not None:
        msg = "reduced_formula is only used with method='lrt'."
        raise ValueError(msg)
    subs = subkeys(adata, key, group)
    outputs: dict[str, tuple[pd.DataFrame, dict]] = {}
    name = None
    for label, sub in subs.items():
        if method == "wald":
            df, info, nm = _wald_one(adata, sub, contrast, calibration)
        else:
            df, info, nm = _lrt_one(adata, key, sub, label, contrast, reduced_formula, n_jobs, progress)
        name = _clean_name(key_added) if key_added else nm
        outputs[sub] = (df, info)
    # write only after every group succeeded
    for sub, (df, info) in outputs.items():
        adata.varm[f"{sub}_contrast_{name}"] = df
        uns = adata.uns[sub]
        contrasts = dict(uns.get("contrasts", {}))
        contrasts[name] = info
        uns["contrasts"] = contrasts
    logger.info("added varm %s", [f"{s}_contrast_{name}" for s in outputs])
    return name


def _wald_one(adata: AnnData, sub: str, contrast, calibration: str | None) -> tuple[pd.DataFrame, dict, str]:
    params = _fit_params(adata, sub)
    cols = [str(c) for c in params["design_columns"]]
    vec, nm = contrast_vector(contrast, cols, reference_levels=params.get("reference_levels"))
    cal = calibration or str(params.get("calibration", "z"))
    coef = adata.varm[f"{sub}_coef"][cols].to_numpy(dtype=float)
    cov = np.asarray(adata.varm[f"{sub}_cov"], dtype=float)
    fitdf = adata.varm[f"{sub}_fit"]
    dmask = np.array([c in set(params.get("donor_level_columns", [])) for c in cols])
    Xb = np.asarray(params.get("donor_design", np.zeros((int(params["n_donors"]), len(cols)))), dtype=float)
    if cal != "z" and "donor_design" not in params:
        msg = f"the fit under {sub!r} predates calibrated tests (no donor design stored); refit or use calibration='z'."
        raise ValueError(msg)
    out = wald_pvalues(
        coef, cov, vec, sigma2=fitdf["sigma2"].to_numpy(dtype=float), donor_mask=dmask, donor_design=Xb,
        calibration=cal,
    )  # fmt: skip
    df_col = np.broadcast_to(np.asarray(out["df"], dtype=float), out["stat"].shape)
    res = pd.DataFrame(
        {
            "estimate": out["estimate"],
            "log2_fc": out["estimate"] / np.log(2.0),
            "se": out["se"],
            "se_test": out["se_test"],
            "stat": out["stat"],
            "df": df_col,
            "p_value": out["p_value"],
            "adj_p_value": bh_adjust(out["p_value"]),
        },
        index=adata.var_names.copy(),
    )
    info = {
        "method": "wald",
        "contrast": str(contrast) if not isinstance(contrast, np.ndarray) else str(contrast.tolist()),
        "vector": np.asarray(vec, dtype=float),
        "design_columns": cols,
        "calibration": cal,
        "donor_level": bool(out["donor_level"]),
        "scale": "natural log (log2_fc = estimate / ln 2)",
    }
    return res, info, _clean_name(nm)


def _drop_columns(contrast, cols: list[str]) -> list[str]:
    if isinstance(contrast, str):
        items = [contrast]
    elif isinstance(contrast, Sequence) and all(isinstance(c, str) for c in contrast):
        items = list(contrast)
    else:
        msg = (
            "for method='lrt' without reduced_formula, contrast names the column(s) to drop: a design column, "
            f"a variable (all its columns) or a list of columns; got {contrast!r}. Or pass reduced_formula."
        )
        raise ValueError(msg)
    drop: list[str] = []
    for it in items:
        if it in cols:
            drop.append(it)
            continue
        cands = [c for c in cols if c.startswith(f"{it}[")]
        if not cands:
            msg = f"{it!r} is neither a design column nor a variable of the design; columns: {cols}."
            raise KeyError(msg)
        drop += cands
    if "Intercept" in drop and len(drop) == len(cols):
        msg = "the reduced model would have no fixed effect at all."
        raise ValueError(msg)
    return list(dict.fromkeys(drop))


def _lrt_one(
    adata: AnnData, key: str, sub: str, label: str, contrast, reduced_formula: str | None, n_jobs, progress
) -> tuple[pd.DataFrame, dict, str]:
    params = _fit_params(adata, sub)
    top = _fit_params(adata, key)
    cols = [str(c) for c in params["design_columns"]]
    donor_key = str(params["donor_key"])
    groupby = top.get("groupby")
    mask = np.ones(adata.n_obs, dtype=bool)
    if groupby is not None and label != "":
        mask = (adata.obs[groupby].astype(str) == label).to_numpy()
    obs = adata.obs.loc[mask]
    if int(mask.sum()) != int(params["n_cells"]):
        msg = (
            f"the cells of {sub!r} changed since the fit ({int(mask.sum())} now, {params['n_cells']} fitted); "
            "the likelihood-ratio test needs the fitted cells: refit first."
        )
        raise ValueError(msg)
    full = build_design(str(params["fixed_formula"]), obs)
    if full.columns != cols:
        msg = f"the design of {sub!r} changed since the fit ({full.columns} now, {cols} fitted); refit first."
        raise ValueError(msg)
    if reduced_formula is not None:
        red_f = reduced_formula if "|" in reduced_formula else f"{reduced_formula.rstrip()} + (1 | {donor_key})"
        parsed = parse_formula(red_f)
        if parsed.group != donor_key:
            msg = f"reduced_formula groups by {parsed.group!r} but the fit by {donor_key!r}; use '(1 | {donor_key})'."
            raise ValueError(msg)
        red = build_design(parsed.fixed, obs)
        extra = [c for c in red.columns if c not in cols]
        if extra:
            msg = f"reduced_formula is not nested in the fitted model: column(s) {extra} are not in {cols}."
            raise ValueError(msg)
        Xr = red.matrix
        red_cols = red.columns
        dropped = [c for c in cols if c not in red_cols]
        reduced_desc = parsed.formula
    else:
        dropped = _drop_columns(contrast, cols)
        keep = [i for i, c in enumerate(cols) if c not in dropped]
        Xr = full.matrix[:, keep]
        red_cols = [cols[i] for i in keep]
        reduced_desc = f"{params['fixed_formula']} without {dropped} + (1 | {donor_key})"
    df_lr = len(cols) - len(red_cols)
    if df_lr < 1:
        msg = f"the reduced model drops no column of {cols}; nothing to test."
        raise ValueError(msg)
    fitdf = adata.varm[f"{sub}_fit"]
    status = fitdf["status_code"].to_numpy(dtype=np.int64)
    idx = np.flatnonzero((status & FILTERED) == 0)
    layer = params.get("layer", "X")
    Y, _ = counts(adata, None if layer in (None, "X") else str(layer))
    off_all = np.asarray(adata.uns[key]["log_offset"], dtype=float)
    Ysub = Y[mask][:, idx]
    if n_jobs is None:
        n_jobs = int(params.get("n_jobs", 1))
    t0 = time.perf_counter()
    with progress_bar(total=int(idx.size), enabled=progress, desc="scglmm lrt refit") as bar:
        res = fit_genes(
            Ysub,
            Xr,
            obs[donor_key].astype(str).to_numpy(),
            off_all[mask],
            n_agq=int(params["n_agq"]),
            n_jobs=int(n_jobs),
            coef_names=red_cols,
            check=False,
            progress=bar.update if bar is not None else None,
        )
    ll_red = np.full(adata.n_vars, np.nan)
    ll_red[idx] = res.loglik
    ll_full = fitdf["loglik"].to_numpy(dtype=float)
    stat, p = lrt_pvalues(ll_full, ll_red, df_lr)
    est = np.full(adata.n_vars, np.nan)
    se = np.full(adata.n_vars, np.nan)
    if df_lr == 1:
        est = adata.varm[f"{sub}_coef"][dropped[0]].to_numpy(dtype=float)
        se = adata.varm[f"{sub}_se"][dropped[0]].to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "estimate": est,
            "log2_fc": est / np.log(2.0),
            "se": se,
            "se_test": np.full(adata.n_vars, np.nan),
            "stat": stat,
            "df": np.full(adata.n_vars, float(df_lr)),
            "p_value": p,
            "adj_p_value": bh_adjust(p),
            "loglik_full": ll_full,
            "loglik_reduced": ll_red,
        },
        index=adata.var_names.copy(),
    )
    info = {
        "method": "lrt",
        "contrast": str(contrast),
        "dropped_columns": dropped,
        "reduced_formula": reduced_desc,
        "reduced_columns": list(red_cols),
        "df": int(df_lr),
        "reference": f"chi-square({df_lr})",
        "seconds": float(time.perf_counter() - t0),
    }
    nm = "lrt_" + ("_".join(dropped) if reduced_formula is None else _clean_name(str(contrast)))
    return out, info, _clean_name(nm)
