"""The scanpy step: fit the NB GLMM for every gene of an AnnData and store the results."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import norm

from .._core._api import check_counts, fit_genes
from .._core._status import status_names
from .._formula import build_design, parse_formula
from .._logging import logger, progress_bar, warn

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["fit"]

#: Suffixes of the varm keys written by :func:`fit` (``f"{key_added}_{suffix}"``).
VARM_SUFFIXES = ("coef", "se", "pval", "fit", "cov", "donor_effects")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("scglmm", "numpy", "scipy", "numba", "anndata", "scanpy", "formulaic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _get_counts(adata: AnnData, layer: str | None):
    if layer is None:
        Y = adata.X
        what = "adata.X"
    else:
        if layer not in adata.layers:
            msg = f"layer {layer!r} not found; available layers: {list(adata.layers.keys())} (or layer=None for adata.X)."
            raise KeyError(msg)
        Y = adata.layers[layer]
        what = f"adata.layers[{layer!r}]"
    if Y is None:
        msg = "adata.X is empty; pass the layer holding raw counts with `layer=`."
        raise ValueError(msg)
    if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        # backed datasets and other array types: read into memory block-wise later
        Y = Y[:, :] if hasattr(Y, "shape") else np.asarray(Y)
        if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
            Y = np.asarray(Y)
    return Y, what


def _log_offset(
    adata: AnnData, Y, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None
) -> tuple[np.ndarray, str]:
    n = adata.n_obs
    if size_factors is not None and offset is not None:
        msg = "pass either size_factors (a scale, logged internally) or offset (already on the log scale), not both."
        raise ValueError(msg)
    if offset is not None:
        if isinstance(offset, str):
            if offset not in adata.obs.columns:
                msg = f"offset column {offset!r} not in adata.obs; available columns: {list(adata.obs.columns)}."
                raise KeyError(msg)
            off = adata.obs[offset].to_numpy(dtype=float)
            src = f"obs[{offset!r}] (log offset)"
        else:
            off = np.asarray(offset, dtype=float).ravel()
            src = "user array (log offset)"
        if off.shape != (n,):
            msg = f"offset must have one value per cell ({n}); got shape {off.shape}."
            raise ValueError(msg)
        if not np.all(np.isfinite(off)):
            msg = "offset contains NaN or infinite values."
            raise ValueError(msg)
        return off, src
    if size_factors is None:
        sf = np.asarray(Y.sum(axis=1), dtype=float).ravel()
        src = "total counts per cell over all genes of the matrix"
        if np.any(sf <= 0):
            bad = adata.obs_names[sf <= 0][:5].tolist()
            msg = (
                f"{int((sf <= 0).sum())} cell(s) have zero total counts (e.g. {bad}), so the default size "
                "factor log(total counts) is undefined. Remove them first (sc.pp.filter_cells(adata, min_counts=1)) "
                "or pass size_factors=."
            )
            raise ValueError(msg)
        return np.log(sf), src
    if isinstance(size_factors, str):
        if size_factors not in adata.obs.columns:
            msg = (
                f"size_factors column {size_factors!r} not in adata.obs; available columns: "
                f"{list(adata.obs.columns)}."
            )
            raise KeyError(msg)
        sf = adata.obs[size_factors].to_numpy(dtype=float)
        src = f"obs[{size_factors!r}] (size factors, logged)"
    else:
        sf = np.asarray(size_factors, dtype=float).ravel()
        src = "user array (size factors, logged)"
    if sf.shape != (n,):
        msg = f"size_factors must have one value per cell ({n}); got shape {sf.shape}."
        raise ValueError(msg)
    if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
        nbad = int((~np.isfinite(sf) | (sf <= 0)).sum())
        msg = (
            f"size_factors must be positive and finite (a scale, not a log); {nbad} cell(s) are missing, "
            "zero, negative or infinite. If your column is already on the log scale, pass it as offset=."
        )
        raise ValueError(msg)
    return np.log(sf), src


def fit(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None = None,
    size_factors: str | ArrayLike | None = None,
    offset: str | ArrayLike | None = None,
    key_added: str = "scglmm",
    n_agq: int = 1,
    n_jobs: int | None = None,
    block_size: int = 64,
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    r"""Fit a negative binomial GLMM with a donor random intercept to every gene.

    For each gene, counts :math:`y_{ij}` of cell :math:`j` of donor :math:`i` follow
    :math:`y_{ij} \mid b_i \sim \mathrm{NB}(\mu_{ij}, \theta)` (variance :math:`\mu + \mu^2/\theta`),
    :math:`\log \mu_{ij} = x_{ij}^\top \beta + o_{ij} + b_i`, :math:`b_i \sim N(0, \sigma^2)`.
    The parameters maximise the Laplace approximation of the marginal likelihood (adaptive
    Gauss-Hermite with ``n_agq > 1``), as glmmTMB does. All effects are natural-log fold changes.

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts in ``X`` or ``layers[layer]`` (dense, CSR or CSC).
    formula
        lme4-style formula with one donor random intercept, e.g.
        ``"~ condition + pct_mito + (1 | donor)"``. The fixed part is built by formulaic with
        treatment coding, giving columns such as ``Intercept``, ``condition[T.stim]``, ``pct_mito``.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    size_factors
        Per-cell scale factors: an ``obs`` column name or an array. They are a **scale, not a log**:
        the offset is ``log(size_factors)``. Default: each cell's total counts over all genes of
        the matrix.
    offset
        Alternative to ``size_factors``: a per-cell offset already on the natural-log scale.
    key_added
        Prefix of the keys written to ``varm``, ``var`` and ``uns``.
    n_agq
        1 (default) for the Laplace approximation; K > 1 for adaptive Gauss-Hermite with K nodes.
    n_jobs
        Worker threads over gene blocks; ``None`` uses ``scanpy.settings.n_jobs``. Results are
        identical for any value.
    block_size
        Genes per compiled call.
    progress
        Show a progress bar; ``None`` shows it only in an interactive session.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy if ``copy=True``. Writes (``key`` = ``key_added``):

    `adata.varm[f'{key}_coef']` : :class:`pandas.DataFrame`
        Fixed effects (natural log), genes x design columns.
    `adata.varm[f'{key}_se']` : :class:`pandas.DataFrame`
        Their standard errors (full Hessian of the marginal log-likelihood).
    `adata.varm[f'{key}_pval']` : :class:`pandas.DataFrame`
        Two-sided Wald p-values per coefficient.
    `adata.varm[f'{key}_cov']` : :class:`numpy.ndarray`
        Genes x (p * p): the coefficient covariance, row-major, for contrasts without refitting.
    `adata.varm[f'{key}_fit']` : :class:`pandas.DataFrame`
        ``sigma2``, ``dispersion`` (= 1/theta), ``theta``, ``loglik``, ``n_iter``, ``converged``,
        ``status`` (``ok``, ``sigma2_boundary``, ``poisson_limit``, ``not_converged``,
        ``separation``, ``all_zero``, ``failed``, joined with ``+``), ``status_code``,
        ``n_nonzero``, ``grad_max``.
    `adata.varm[f'{key}_donor_effects']` : :class:`pandas.DataFrame`
        Conditional modes of the donor effects, genes x donors.
    `adata.var[f'{key}_status']` : :class:`pandas.Series`
        The status string, for quick filtering.
    `adata.uns[key]['params']` : `dict`
        Every setting of the run (formula, design columns, reference levels, offset source,
        n_agq, n_cells, n_donors, donors, versions, seconds, status counts).

    Re-running with the same ``key_added`` replaces these keys whole; nothing is written if
    anything fails.
    """
    t_start = time.perf_counter()
    # ---- validate everything before any work ------------------------------------------------
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string; got {key_added!r}."
        raise ValueError(msg)
    parsed = parse_formula(formula)
    if parsed.group not in adata.obs.columns:
        msg = f"donor column {parsed.group!r} of '(1 | {parsed.group})' is not in adata.obs; available columns: {list(adata.obs.columns)}."
        raise KeyError(msg)
    groups = adata.obs[parsed.group]
    if groups.isna().any():
        msg = f"donor column {parsed.group!r} has {int(groups.isna().sum())} missing value(s); every cell needs a donor."
        raise ValueError(msg)
    n_donors = int(pd.Series(groups).nunique())
    if n_donors < 2:
        msg = f"donor column {parsed.group!r} has {n_donors} distinct value(s); a donor variance needs at least 2 donors."
        raise ValueError(msg)
    design = build_design(parsed.fixed, adata.obs)
    if parsed.group in design.variables:
        pass  # a fixed effect of the donor itself is allowed but unusual; the design check caught rank problems
    Y, what = _get_counts(adata, layer)
    check_counts(Y, what=what)
    log_off, off_src = _log_offset(adata, Y, size_factors, offset)
    if n_jobs is None:
        import scanpy as sc

        n_jobs = int(sc.settings.n_jobs) if sc.settings.n_jobs else 1
    if not isinstance(n_agq, int | np.integer) or n_agq < 1:
        msg = f"n_agq must be a positive integer (1 = Laplace, e.g. 25 for adaptive Gauss-Hermite); got {n_agq!r}."
        raise ValueError(msg)

    # ---- fit -----------------------------------------------------------------------------------
    logger.info(
        "fitting %d genes x %d cells, %d donors, design %s, n_agq=%d, n_jobs=%d",
        adata.n_vars,
        adata.n_obs,
        n_donors,
        design.columns,
        n_agq,
        n_jobs,
    )
    with progress_bar(total=adata.n_vars, enabled=progress, desc="scglmm fit") as bar:
        res = fit_genes(
            Y,
            design.matrix,
            groups.astype(str).to_numpy(),
            log_off,
            n_agq=int(n_agq),
            n_jobs=int(n_jobs),
            block_size=block_size,
            coef_names=design.columns,
            check=False,
            progress=bar.update if bar is not None else None,
        )
    seconds = time.perf_counter() - t_start

    # ---- assemble every output before touching adata ------------------------------------------
    var_names = adata.var_names
    cols = design.columns
    with np.errstate(invalid="ignore", divide="ignore"):
        pval = 2.0 * norm.sf(np.abs(res.coef / res.se))
    status_str = res.status_str
    fit_df = pd.DataFrame(
        {
            "sigma2": res.sigma2,
            "dispersion": res.dispersion,
            "theta": res.theta,
            "loglik": res.loglik,
            "n_iter": res.n_iter,
            "converged": res.converged,
            "status": status_str.astype(str),
            "status_code": res.status,
            "n_nonzero": res.n_nonzero,
            "grad_max": res.grad_max,
        },
        index=var_names.copy(),
    )
    counts = pd.Series(status_str).value_counts()
    params = {
        "formula": parsed.formula,
        "fixed_formula": parsed.fixed,
        "donor_key": parsed.group,
        "design_columns": list(cols),
        "reference_levels": dict(design.reference_levels),
        "layer": "X" if layer is None else str(layer),
        "offset_source": off_src,
        "n_agq": int(n_agq),
        "method": "laplace" if n_agq == 1 else f"adaptive Gauss-Hermite ({n_agq} nodes)",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_donors": n_donors,
        "donors": [str(d) for d in res.donors],
        "n_jobs": int(n_jobs),
        "versions": _versions(),
        "seconds": float(seconds),
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "scale": "natural log (log2_fc = coef / ln 2)",
    }
    new_varm = {
        f"{key_added}_coef": pd.DataFrame(res.coef, index=var_names.copy(), columns=cols),
        f"{key_added}_se": pd.DataFrame(res.se, index=var_names.copy(), columns=cols),
        f"{key_added}_pval": pd.DataFrame(pval, index=var_names.copy(), columns=cols),
        f"{key_added}_cov": res.cov.reshape(res.cov.shape[0], -1),
        f"{key_added}_fit": fit_df,
        f"{key_added}_donor_effects": pd.DataFrame(
            res.modes, index=var_names.copy(), columns=[str(d) for d in res.donors]
        ),
    }
    n_bad = int((res.status != 0).sum())
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "ok")
    if n_bad:
        logger.info("status of %d genes not 'ok' (%s); see varm['%s_fit']['status']", n_bad, summary, key_added)
    unusable = int((~np.isfinite(res.coef[:, 0])).sum()) if res.coef.size else 0
    if unusable:
        examples = list(var_names[~np.isfinite(res.coef[:, 0])][:5])
        warn(
            f"{unusable} of {adata.n_vars} genes have no estimate (NaN; e.g. {examples}): "
            f"{summary}. See adata.varm['{key_added}_fit']['status']."
        )

    # ---- write (replace whole) ---------------------------------------------------------------
    target = adata.copy() if copy else adata
    _drop_key(target, key_added)
    for k, v in new_varm.items():
        target.varm[k] = v
    target.var[f"{key_added}_status"] = pd.Categorical(status_str.astype(str))
    target.uns[key_added] = {"params": params}
    logger.info("finished in %.1f s: added varm %s, var['%s_status'], uns['%s']", seconds, list(new_varm), key_added, key_added)
    return target if copy else None


def _drop_key(adata: AnnData, key: str) -> None:
    """Remove every output of a previous run under ``key``."""
    for suffix in VARM_SUFFIXES:
        adata.varm.pop(f"{key}_{suffix}", None)
    if f"{key}_status" in adata.var.columns:
        del adata.var[f"{key}_status"]
    adata.uns.pop(key, None)
