"""The scanpy step: fit the NB GLMM for every gene of an AnnData and store the results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._api import fit_genes
from .._core._checks import check_counts
from .._core._inference import (
    CALIBRATIONS,
    DEFAULT_CALIBRATION,
    EB_GRID,
    bh_adjust,
    donor_level_design,
    wald_pvalues,
)
from .._core._results import GenesFit
from .._core._status import FILTERED
from .._formula import build_design, parse_formula
from .._inputs import counts, gene_counts, log_offset, min_count
from .._logging import logger, progress_bar, warn

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["fit"]

#: Suffixes of the varm keys written by :func:`fit` (``f"{key_added}_{suffix}"``).
VARM_SUFFIXES = ("coef", "se", "pval", "stat", "fit", "cov", "donor_effects")

#: Default gene filter: a gene is fitted only if at least this many cells have a count ...
MIN_CELLS = 3
#: ... and at least this many donors have a count in at least one cell.
MIN_DONORS = 2
#: Groups of ``groupby`` with fewer cells or donors than these are skipped.
MIN_CELLS_GROUP = 20
MIN_DONORS_GROUP = 3


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("scglmm", "numpy", "scipy", "numba", "anndata", "scanpy", "formulaic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


@dataclass
class _Run:
    """Everything one fit (all cells, or one group's cells) writes, before it is written."""

    varm: dict
    status: np.ndarray
    params: dict
    res: GenesFit
    warning: str | None = None
    """Summary of the genes without an estimate; :func:`fit` emits one warning per run."""


def _fit_cells(
    obs: pd.DataFrame,
    Y,
    log_off: np.ndarray,
    parsed,
    design,
    var_names: pd.Index,
    *,
    key: str,
    min_cells: int,
    min_donors: int,
    calibration: str,
    n_agq: int,
    n_jobs: int,
    block_size: int,
    progress: bool | None,
    desc: str,
) -> _Run:
    """Filter genes, fit the kept ones, scatter back to all genes, compute the calibrated tests."""
    t0 = time.perf_counter()
    labels = obs[parsed.group].astype(str).to_numpy()
    codes, donors = pd.factorize(labels, sort=True)
    m = len(donors)
    G = len(var_names)
    p = len(design.columns)
    ncell, ndon = gene_counts(Y, codes, m)
    keep = (ncell >= min_cells) & (ndon >= min_donors)
    idx = np.flatnonzero(keep)
    n_filtered = int(G - idx.size)
    if n_filtered:
        logger.info(
            "%s: %d of %d genes filtered out before fitting (fewer than min_cells=%d cells or min_donors=%d "
            "donors with counts); their rows are NaN with status 'filtered'",
            desc,
            n_filtered,
            G,
            min_cells,
            min_donors,
        )
    logger.info(
        "%s: fitting %d genes x %d cells, %d donors, design %s, n_agq=%d, n_jobs=%d",
        desc,
        idx.size,
        len(obs),
        m,
        design.columns,
        n_agq,
        n_jobs,
    )
    coef = np.full((G, p), np.nan)
    se = np.full((G, p), np.nan)
    cov = np.full((G, p, p), np.nan)
    sigma2 = np.full(G, np.nan)
    theta = np.full(G, np.nan)
    dispersion = np.full(G, np.nan)
    loglik = np.full(G, np.nan)
    modes = np.full((G, m), np.nan)
    n_iter = np.zeros(G, dtype=np.int64)
    status = np.full(G, FILTERED, dtype=np.int64)
    grad_max = np.full(G, np.nan)
    n_nonzero = ncell.copy()
    sub = None
    if idx.size:
        Ysub = Y if idx.size == G else Y[:, idx]
        with progress_bar(total=int(idx.size), enabled=progress, desc=desc) as bar:
            sub = fit_genes(
                Ysub,
                design.matrix,
                labels,
                log_off,
                n_agq=int(n_agq),
                n_jobs=int(n_jobs),
                block_size=block_size,
                coef_names=design.columns,
                check=False,
                progress=bar.update if bar is not None else None,
            )
        coef[idx], se[idx], cov[idx] = sub.coef, sub.se, sub.cov
        sigma2[idx], theta[idx], dispersion[idx], loglik[idx] = sub.sigma2, sub.theta, sub.dispersion, sub.loglik
        modes[idx], n_iter[idx], status[idx], grad_max[idx] = sub.modes, sub.n_iter, sub.status, sub.grad_max
        n_nonzero[idx] = sub.n_nonzero
    res = GenesFit(
        coef=coef,
        se=se,
        cov=cov,
        sigma2=sigma2,
        theta=theta,
        dispersion=dispersion,
        loglik=loglik,
        modes=modes,
        n_iter=n_iter,
        status=status,
        grad_max=grad_max,
        n_nonzero=n_nonzero,
        coef_names=list(design.columns),
        donors=np.asarray(donors, dtype=object),
        log_sigma2_se=np.full(G, np.nan),
        log_theta_se=np.full(G, np.nan),
    )
    seconds = time.perf_counter() - t0

    # ---- calibrated Wald tests of each coefficient -------------------------------------------
    cols = list(design.columns)
    dmask, Xb = donor_level_design(design.matrix, codes)
    pval = np.full((G, p), np.nan)
    stat = np.full((G, p), np.nan)
    dfs: dict[str, float] = {}
    eb_prior: dict[str, np.ndarray] = {}
    for j, col in enumerate(cols):
        e = np.zeros(p)
        e[j] = 1.0
        out = wald_pvalues(coef, cov, e, sigma2=sigma2, donor_mask=dmask, donor_design=Xb, calibration=calibration)
        pval[:, j] = out["p_value"]
        stat[:, j] = out["stat"]
        dfs[col] = float(out["df"])
        if "eb_prior" in out:
            eb_prior[col] = np.asarray(out["eb_prior"], dtype=float)

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
        "design_columns": cols,
        "reference_levels": dict(design.reference_levels),
        "n_agq": int(n_agq),
        "method": "laplace" if n_agq == 1 else f"adaptive Gauss-Hermite ({n_agq} nodes)",
        "n_cells": len(obs),
        "n_genes": int(G),
        "n_donors": int(m),
        "donors": [str(d) for d in donors],
        "n_jobs": int(n_jobs),
        "seconds": float(seconds),
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "scale": "natural log (log2_fc = coef / ln 2)",
        "calibration": calibration,
        "df": dfs,
        # "eb": the learnt prior of the donor variance (weights on eb_grid) per donor-level column
        **({"eb_grid": np.asarray(EB_GRID, dtype=float), "eb_prior": eb_prior} if eb_prior else {}),
        "donor_level_columns": [c for c, b in zip(cols, dmask, strict=True) if b],
        "donor_design": np.asarray(Xb, dtype=float),
        "min_cells": int(min_cells),
        "min_donors": int(min_donors),
        "n_filtered": n_filtered,
    }
    new_varm = {
        f"{key}_coef": pd.DataFrame(res.coef, index=var_names.copy(), columns=cols),
        f"{key}_se": pd.DataFrame(res.se, index=var_names.copy(), columns=cols),
        f"{key}_pval": pd.DataFrame(pval, index=var_names.copy(), columns=cols),
        f"{key}_stat": pd.DataFrame(stat, index=var_names.copy(), columns=cols),
        f"{key}_cov": res.cov.reshape(res.cov.shape[0], -1),
        f"{key}_fit": fit_df,
        f"{key}_donor_effects": pd.DataFrame(res.modes, index=var_names.copy(), columns=[str(d) for d in donors]),
    }
    n_bad = int(((status != 0) & ((status & FILTERED) == 0)).sum())
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items() if k not in ("ok", "filtered"))
    if n_bad:
        logger.info("%s: status of %d genes not 'ok' (%s); see varm['%s_fit']['status']", desc, n_bad, summary, key)
    unusable_mask = ~np.isfinite(res.coef[:, 0]) & ((status & FILTERED) == 0) if p else np.zeros(G, bool)
    unusable = int(unusable_mask.sum())
    message = None
    if unusable:
        examples = list(var_names[unusable_mask][:5])
        message = (
            f"{desc}: {unusable} of {G} genes have no estimate (NaN; e.g. {examples}): "
            f"{summary}. See adata.varm['{key}_fit']['status']."
        )
    return _Run(varm=new_varm, status=status_str.astype(str), params=params, res=res, warning=message)


def _group_key(key: str, group: str) -> str:
    """The key under which the results of one group of ``groupby`` are stored."""
    return f"{key}:{str(group).replace('/', '_')}"


def _rank_block(
    runs: dict[str, _Run],
    labels: dict[str, str],
    coef: str,
    var_names: pd.Index,
    *,
    groupby: str,
    reference: str,
    layer: str | None,
) -> dict:
    """A ``uns`` block laid out as :func:`scanpy.tl.rank_genes_groups` writes it."""
    names, scores, lfcs, pvals, padj = [], [], [], [], []
    fields = []
    for sub, run in runs.items():
        st = run.varm[f"{sub}_stat"][coef].to_numpy(dtype=float)
        lfc = run.varm[f"{sub}_coef"][coef].to_numpy(dtype=float) / np.log(2.0)
        pv = run.varm[f"{sub}_pval"][coef].to_numpy(dtype=float)
        key_sort = np.where(np.isfinite(st), -st, np.inf)
        order = np.argsort(key_sort, kind="stable")
        names.append(np.asarray(var_names)[order].astype(str))
        scores.append(st[order].astype(np.float32))
        lfcs.append(lfc[order].astype(np.float32))
        pvals.append(pv[order])
        padj.append(bh_adjust(pv)[order])
        fields.append(labels[sub].replace("/", "_"))  # "/" cannot be written to h5ad
    width = max([len(n) for arr in names for n in arr] + [1])

    def rec(arrs, dtype):
        return np.rec.fromarrays(arrs, dtype=[(f, dtype) for f in fields])

    return {
        "params": {
            "groupby": groupby,
            "reference": reference,
            "method": "scglmm",
            "use_raw": False,
            "layer": "X" if layer is None else str(layer),
            "corr_method": "benjamini-hochberg",
            "coef": coef,
        },
        "names": rec(names, f"U{width}"),
        "scores": rec(scores, "float32"),
        "logfoldchanges": rec(lfcs, "float32"),
        "pvals": rec(pvals, "float64"),
        "pvals_adj": rec(padj, "float64"),
    }


def fit(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None = None,
    size_factors: str | ArrayLike | None = None,
    offset: str | ArrayLike | None = None,
    key_added: str = "scglmm",
    groupby: str | None = None,
    min_cells: int | None = MIN_CELLS,
    min_donors: int | None = MIN_DONORS,
    min_cells_group: int | None = MIN_CELLS_GROUP,
    min_donors_group: int | None = MIN_DONORS_GROUP,
    calibration: str = DEFAULT_CALIBRATION,
    rank_coef: str | None = None,
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
    groupby
        An ``obs`` column (e.g. ``"cell_type"``): fit each group's cells separately. Groups with
        fewer than ``min_cells_group`` cells or ``min_donors_group`` donors, or whose design cannot
        be estimated (e.g. one condition missing), are skipped with one log message naming them
        and the reason. See Returns for where each group's results go.
    min_cells
        Gene filter: fit a gene only if at least this many cells (of the group) have a count.
        ``None`` or 0 disables it. Filtered genes keep their rows, NaN, status ``filtered``.
    min_donors
        Gene filter: fit a gene only if at least this many donors have a count in some cell.
        ``None`` or 0 disables it.
    min_cells_group
        With ``groupby``: skip groups with fewer cells. ``None`` or 0 disables it.
    min_donors_group
        With ``groupby``: skip groups with fewer donors. ``None`` or 0 disables it (a fit still
        needs two donors).
    calibration
        Reference distribution of the stored Wald p-values. ``"eb"`` (default): a coefficient
        that is constant within every donor (a donor-level condition) is tested with an
        empirical-Bayes estimate of its gene's donor variance, borrowing strength from all genes
        (needs 50 genes; fewer fall back to ``"t"``); coefficients that vary within donors keep the
        normal reference. ``"t"``: the ML Wald statistic on a t distribution with
        ``n_donors - r`` degrees of freedom, ``r`` the rank of the donor-level columns of the
        design. ``"z"``: the ML Wald z test (glmmTMB's ``summary``), anti-conservative with few
        donors. Also ``"t_reml"``, ``"t_floor"``, ``"satterthwaite"``,
        ``"satterthwaite_floor"``; the calibration study behind the default and what each option
        does are in ``docs/calibration.md``.
    rank_coef
        Coefficient ranked in the ``rank_genes_groups``-style block (see Returns); ``None`` takes
        the first non-intercept column. Only written when that column is a level of a factor (or
        with ``groupby``).
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
        Two-sided Wald p-values per coefficient, with the reference chosen by ``calibration``.
    `adata.varm[f'{key}_stat']` : :class:`pandas.DataFrame`
        The test statistic behind each p-value (``coef / se`` for ``"z"`` and ``"t"``; with the
        corrected standard error for the other options); its degrees of freedom per coefficient
        are in ``uns[key]['params']['df']`` (``inf``: normal reference).
    `adata.varm[f'{key}_cov']` : :class:`numpy.ndarray`
        Genes x (p * p): the coefficient covariance, row-major, for contrasts without refitting.
    `adata.varm[f'{key}_fit']` : :class:`pandas.DataFrame`
        ``sigma2``, ``dispersion`` (= 1/theta), ``theta``, ``loglik``, ``n_iter``, ``converged``,
        ``status`` (``ok``, ``sigma2_boundary``, ``poisson_limit``, ``not_converged``,
        ``separation``, ``all_zero``, ``failed``, ``filtered``, joined with ``+``), ``status_code``,
        ``n_nonzero``, ``grad_max``.
    `adata.varm[f'{key}_donor_effects']` : :class:`pandas.DataFrame`
        Conditional modes of the donor effects, genes x donors.
    `adata.var[f'{key}_status']` : :class:`pandas.Series`
        The status string, for quick filtering.
    `adata.uns[key]['params']` : `dict`
        Every setting of the run (formula, design columns, reference levels, offset source,
        n_agq, n_cells, n_donors, donors, calibration, df, the donor-level design, the gene
        filter, versions, seconds, status counts); ``uns[key]['log_offset']`` holds the per-cell
        log offset so that :func:`scglmm.tl.test` can refit with identical settings.
    `adata.uns[f'{key}_rank_genes_groups']` : `dict`
        ``params``, ``names``, ``scores`` (the test statistic), ``logfoldchanges`` (log2),
        ``pvals``, ``pvals_adj`` as record arrays with one field per group, laid out as
        :func:`scanpy.tl.rank_genes_groups` writes them, so :func:`scanpy.get.rank_genes_groups_df`
        and ``sc.pl.rank_genes_groups_*`` work with ``key=f'{key}_rank_genes_groups'``. Without
        ``groupby`` the one field is the tested level (e.g. ``stim`` for ``condition[T.stim]``).

    With ``groupby``, each fitted group ``g`` gets all of the varm/var/uns outputs above under
    its own key ``f'{key}:{g}'`` (``/`` in a group name becomes ``_``), which survives
    ``write_h5ad``; ``uns[key]['params']`` then lists ``groups`` and their ``group_keys``, and
    ``skipped_groups`` with ``skipped_reasons``
    (group -> reason), and :func:`scglmm.get.results` takes ``group=``.

    Re-running with the same ``key_added`` replaces these keys whole; nothing is written if
    anything fails.
    """
    t_start = time.perf_counter()
    # ---- validate everything before any work ------------------------------------------------
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string; got {key_added!r}."
        raise ValueError(msg)
    if calibration not in CALIBRATIONS:
        msg = f"calibration must be one of {CALIBRATIONS}; got {calibration!r}."
        raise ValueError(msg)
    min_cells = min_count("min_cells", min_cells)
    min_donors = min_count("min_donors", min_donors)
    min_cells_group = min_count("min_cells_group", min_cells_group)
    min_donors_group = min_count("min_donors_group", min_donors_group)
    parsed = parse_formula(formula)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata has {adata.n_obs} cells x {adata.n_vars} genes; nothing to fit (was it subset to empty?)."
        raise ValueError(msg)
    if parsed.group not in adata.obs.columns:
        msg = (
            f"donor column {parsed.group!r} of '(1 | {parsed.group})' is not in adata.obs; "
            f"available columns: {list(adata.obs.columns)}."
        )
        raise KeyError(msg)
    groups = adata.obs[parsed.group]
    if groups.isna().any():
        msg = (
            f"donor column {parsed.group!r} has {int(groups.isna().sum())} missing value(s); every cell needs a donor."
        )
        raise ValueError(msg)
    if (groups.astype(str).str.strip() == "").any():
        msg = (
            f"donor column {parsed.group!r} has {int((groups.astype(str).str.strip() == '').sum())} empty label(s) "
            "''; every cell needs a donor name (an empty name cannot be stored in .h5ad either)."
        )
        raise ValueError(msg)
    if groupby is not None:
        if groupby not in adata.obs.columns:
            msg = f"groupby column {groupby!r} is not in adata.obs; available columns: {list(adata.obs.columns)}."
            raise KeyError(msg)
        if adata.obs[groupby].isna().any():
            msg = (
                f"groupby column {groupby!r} has {int(adata.obs[groupby].isna().sum())} missing value(s); "
                "label every cell or subset the cells first."
            )
            raise ValueError(msg)
    n_donors = int(pd.Series(groups).nunique())
    if n_donors < 2:
        msg = (
            f"donor column {parsed.group!r} has {n_donors} distinct value(s) {[str(d) for d in pd.unique(groups)]}; "
            "a donor variance needs at least 2 donors. Check that the formula's '(1 | ...)' names the donor column "
            "and that the cells were not subset to one donor."
        )
        raise ValueError(msg)
    design = build_design(parsed.fixed, adata.obs) if groupby is None else None
    Y, what = counts(adata, layer)
    check_counts(Y, what=what)
    log_off, off_src = log_offset(adata, Y, size_factors, offset)
    if n_jobs is None:
        import scanpy as sc

        n_jobs = int(sc.settings.n_jobs) if sc.settings.n_jobs else 1
    if not isinstance(n_agq, int | np.integer) or n_agq < 1:
        msg = f"n_agq must be a positive integer (1 = Laplace, e.g. 25 for adaptive Gauss-Hermite); got {n_agq!r}."
        raise ValueError(msg)
    if not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        msg = f"n_jobs must be a non-zero integer (-1 = all cores) or None; got {n_jobs!r}."
        raise ValueError(msg)
    if not isinstance(block_size, int | np.integer) or block_size < 1:
        msg = f"block_size must be a positive integer; got {block_size!r}."
        raise ValueError(msg)
    var_names = adata.var_names
    common = {
        "min_cells": min_cells,
        "min_donors": min_donors,
        "calibration": calibration,
        "n_agq": int(n_agq),
        "n_jobs": int(n_jobs),
        "block_size": block_size,
        "progress": progress,
    }
    settings = {
        "layer": "X" if layer is None else str(layer),
        **off_src.to_params(),
        "size_factors": size_factors if isinstance(size_factors, str) else None,
        "offset": offset if isinstance(offset, str) else None,
        "versions": _versions(),
    }

    # ---- fit -----------------------------------------------------------------------------------
    runs: dict[str, _Run] = {}
    labels: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if groupby is None:
        runs[key_added] = _fit_cells(
            adata.obs, Y, log_off, parsed, design, var_names, key=key_added, desc="scglmm fit", **common
        )
        labels[key_added] = ""
    else:
        col = adata.obs[groupby]
        cats = (
            [c for c in col.cat.categories if (col == c).any()]
            if isinstance(col.dtype, pd.CategoricalDtype)
            else sorted(pd.unique(col), key=str)
        )
        for g in cats:
            mask = (col == g).to_numpy()
            obs_g = adata.obs.loc[mask]
            n_c = int(mask.sum())
            n_d = int(obs_g[parsed.group].nunique())
            if n_c < min_cells_group:
                skipped[str(g)] = f"{n_c} cells < min_cells_group={min_cells_group}"
                continue
            if n_d < max(min_donors_group, 2):
                skipped[str(g)] = f"{n_d} donors < min_donors_group={max(min_donors_group, 2)}"
                continue
            try:
                design_g = build_design(parsed.fixed, obs_g)
            except (ValueError, KeyError) as err:
                skipped[str(g)] = f"design not estimable in this group ({err})"
                continue
            sub = _group_key(key_added, str(g))
            runs[sub] = _fit_cells(
                obs_g,
                Y[mask],
                log_off[mask],
                parsed,
                design_g,
                var_names,
                key=sub,
                desc=f"scglmm fit [{g}]",
                **common,
            )
            labels[sub] = str(g)
        if skipped:
            logger.warning(
                "groupby=%r: skipped %d of %d groups: %s",
                groupby,
                len(skipped),
                len(cats),
                "; ".join(f"{g!r}: {why}" for g, why in skipped.items()),
            )
        if not runs:
            msg = (
                f"no group of {groupby!r} could be fitted: "
                + "; ".join(f"{g!r}: {why}" for g, why in skipped.items())
                + ". Lower min_cells_group / min_donors_group or check the design."
            )
            raise ValueError(msg)
    seconds = time.perf_counter() - t_start
    # one summary warning per run (all groups together), never one per gene or per group
    messages = [run.warning for run in runs.values() if run.warning]
    if len(messages) == 1:
        warn(messages[0])
    elif messages:
        warn(f"{len(messages)} groups have genes without an estimate: " + " | ".join(messages))

    # ---- assemble every output before touching adata ------------------------------------------
    for run in runs.values():
        run.params.update(settings)
    first = next(iter(runs.values()))
    cols = list(first.params["design_columns"])
    non_int = [c for c in cols if c != "Intercept"]
    rank_block = None
    if rank_coef is not None:
        from ..get._results import resolve_coef

        rcoef = resolve_coef(rank_coef, cols)
    else:
        rcoef = non_int[0] if non_int else None
    if rcoef is not None and all(rcoef in r.params["design_columns"] for r in runs.values()):
        if groupby is not None:
            rank_block = _rank_block(runs, labels, rcoef, var_names, groupby=groupby, reference="rest", layer=layer)
        elif "[" in rcoef and rcoef.endswith("]"):
            var, lev = rcoef[:-1].split("[", 1)
            lev = lev.removeprefix("T.")
            ref = first.params["reference_levels"].get(var, "rest")
            rank_block = _rank_block(
                runs, {key_added: lev}, rcoef, var_names, groupby=var, reference=str(ref), layer=layer
            )
    uns_top: dict = {}
    if groupby is None:
        first.params["seconds"] = float(seconds)
        uns_top[key_added] = {"params": first.params, "log_offset": np.asarray(log_off, dtype=float)}
    else:
        top = {
            "formula": parsed.formula,
            "fixed_formula": parsed.fixed,
            "donor_key": parsed.group,
            "groupby": groupby,
            "design_columns": cols,
            "reference_levels": dict(first.params["reference_levels"]),
            # lists, not dicts keyed by group: group names may hold characters h5ad keys cannot
            "groups": list(labels.values()),
            "group_keys": list(labels.keys()),
            "skipped_groups": list(skipped.keys()),
            "skipped_reasons": list(skipped.values()),
            "min_cells_group": int(min_cells_group),
            "min_donors_group": int(min_donors_group),
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "seconds": float(seconds),
            **settings,
            **{k: v for k, v in common.items() if k in ("min_cells", "min_donors", "calibration", "n_agq")},
        }
        uns_top[key_added] = {"params": top, "log_offset": np.asarray(log_off, dtype=float)}
        for sub, run in runs.items():
            run.params["group"] = labels[sub]
            run.params["groupby"] = groupby
            run.params["parent_key"] = key_added
            uns_top[sub] = {"params": run.params}

    # ---- write (replace whole) ---------------------------------------------------------------
    target = adata.copy() if copy else adata
    _drop_key(target, key_added)
    for sub, run in runs.items():
        for k, v in run.varm.items():
            target.varm[k] = v
        target.var[f"{sub}_status"] = pd.Categorical(run.status)
    for k, v in uns_top.items():
        target.uns[k] = v
    if rank_block is not None:
        target.uns[f"{key_added}_rank_genes_groups"] = rank_block
    logger.info(
        "finished in %.1f s: added varm/var/uns under %s%s",
        seconds,
        list(runs),
        f" and uns['{key_added}_rank_genes_groups']" if rank_block is not None else "",
    )
    return target if copy else None


def _drop_key(adata: AnnData, key: str) -> None:
    """Remove every output of a previous run under ``key`` (its groups and contrasts included)."""
    subs = [key]
    old = adata.uns.get(key)
    if isinstance(old, dict) and isinstance(old.get("params"), dict):
        grp = old["params"].get("group_keys")
        if grp is not None:
            subs += [str(s) for s in grp]
    for sub in subs:
        for suffix in VARM_SUFFIXES:
            adata.varm.pop(f"{sub}_{suffix}", None)
        for k in [k for k in adata.varm if k.startswith(f"{sub}_contrast_")]:
            adata.varm.pop(k, None)
        if f"{sub}_status" in adata.var.columns:
            del adata.var[f"{sub}_status"]
        if sub != key:
            adata.uns.pop(sub, None)
    adata.uns.pop(key, None)
    adata.uns.pop(f"{key}_rank_genes_groups", None)
