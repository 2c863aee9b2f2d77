"""Example data: a simulator of the model scglmm fits, and the shipped Kang 2018 subset."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["simulate", "simulate_composition", "kang2018_cd14_mono"]


def simulate(
    *,
    n_donors: int = 8,
    cells_per_donor: int = 200,
    n_genes: int = 200,
    frac_de: float = 0.0,
    lfc: tuple[float, float] = (0.5, 1.5),
    de_direction: Literal["both", "up", "down"] = "both",
    mean_range: tuple[float, float] = (0.02, 10.0),
    sigma2_range: tuple[float, float] = (0.0, 0.5),
    sigma2_zero_frac: float = 0.1,
    phi_range: tuple[float, float] = (0.05, 1.0),
    covariate_sd: float = 0.1,
    paired: bool = False,
    slope_sd: float | tuple[float, float] = 0.0,
    libsize_median: float = 5000.0,
    libsize_sdlog: float = 0.4,
    cells_sdlog: float = 0.0,
    seed: int = 0,
    dtype: type = np.float32,
) -> AnnData:
    """Simulate counts from the NB GLMM with a donor random intercept.

    ``log mu = intercept + beta_condition * stim + beta_covariate * covariate + log(libsize) + b_donor``
    with ``b ~ N(0, sigma2)`` per gene and NB dispersion ``phi`` (``Var = mu + phi mu^2``).

    Parameters
    ----------
    n_donors
        Donors in total. Unpaired designs put the first half in ``ctrl``, the rest in ``stim``.
    cells_per_donor
        Cells per donor (per donor x condition sample when ``paired``).
    n_genes
        Number of genes.
    frac_de
        Fraction of genes with a non-zero condition effect (natural log, ``+-Uniform(lfc)``).
    lfc
        Range of absolute DE effects (natural log).
    de_direction
        Sign of the DE effects: ``"both"`` (random, half up), ``"up"`` (all induced in ``stim``: with
        many strongly induced genes the library size of stimulated cells grows, a global shift that
        makes every other gene look lower unless the size factors are robust to it) or ``"down"``.
    mean_range
        Range of mean counts per cell (log-uniform) at median library size.
    sigma2_range
        Range of the donor variance (uniform) for genes whose variance is not zero.
    sigma2_zero_frac
        Fraction of genes with no donor variance.
    phi_range
        Range of the NB dispersion (log-uniform).
    covariate_sd
        Standard deviation across genes of the effect of the cell-level covariate.
    paired
        Every donor contributes cells to both conditions (as in Kang 2018).
    slope_sd
        In paired designs: standard deviation of a donor-specific deviation of the condition
        effect (a donor x condition interaction the ``(1 | donor)`` model does not have, the random
        slope of ``(1 + condition | donor)``); a ``(low, high)`` pair draws it per gene, uniformly.
    libsize_median, libsize_sdlog
        Log-normal library sizes (the offset is ``log(libsize)``).
    cells_sdlog
        Log-normal spread of the number of cells per donor (0: all equal).
    seed
        Seed of :func:`numpy.random.default_rng`.
    dtype
        dtype of the CSR count matrix.

    Returns
    -------
    AnnData with CSR counts in ``X``; ``obs``: ``donor``, ``condition`` (ctrl/stim), ``sample``,
    ``covariate`` (standardised), ``libsize``; ``var``: the true ``intercept``, ``beta_condition``,
    ``beta_covariate``, ``sigma2``, ``phi``, ``slope_sd``, ``is_de``.
    """
    import anndata as ad

    if de_direction not in ("both", "up", "down"):
        msg = f"de_direction must be 'both', 'up' or 'down'; got {de_direction!r}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    donors = np.array([f"D{i + 1:02d}" for i in range(n_donors)])
    if cells_sdlog > 0:
        ncell = np.maximum(np.round(cells_per_donor * rng.lognormal(0, cells_sdlog, n_donors)).astype(int), 5)
    else:
        ncell = np.full(n_donors, int(cells_per_donor))
    if paired:
        d_idx = np.concatenate([np.repeat(i, 2 * ncell[i]) for i in range(n_donors)])
        stim = np.concatenate([np.repeat([0.0, 1.0], ncell[i]) for i in range(n_donors)])
    else:
        d_idx = np.repeat(np.arange(n_donors), ncell)
        stim = (d_idx >= n_donors // 2).astype(float)
    n = d_idx.shape[0]
    mito_d = rng.uniform(2.0, 8.0, n_donors)
    raw = mito_d[d_idx] * rng.gamma(4.0, 0.25, n)
    covariate = (raw - raw.mean()) / raw.std()
    lib_shift = rng.normal(0.0, 0.2, n_donors)
    libsize = np.maximum(np.round(libsize_median * np.exp(lib_shift[d_idx] + rng.normal(0, libsize_sdlog, n))), 50.0)

    lo, hi = np.log(mean_range[0]), np.log(mean_range[1])
    mean = np.exp(rng.uniform(lo, hi, n_genes))
    intercept = np.log(mean) - np.log(libsize_median)
    sigma2 = rng.uniform(sigma2_range[0], sigma2_range[1], n_genes)
    sigma2[rng.random(n_genes) < sigma2_zero_frac] = 0.0
    phi = np.exp(rng.uniform(np.log(phi_range[0]), np.log(phi_range[1]), n_genes))
    is_de = np.zeros(n_genes, dtype=bool)
    n_de = int(round(frac_de * n_genes))
    is_de[rng.choice(n_genes, n_de, replace=False)] = True
    beta_c = np.where(is_de, rng.choice([-1.0, 1.0], n_genes) * rng.uniform(lfc[0], lfc[1], n_genes), 0.0)
    if de_direction != "both":  # the same draws, only their signs fixed
        beta_c = np.abs(beta_c) * (1.0 if de_direction == "up" else -1.0)
    beta_x = rng.normal(0.0, covariate_sd, n_genes)
    b = rng.normal(size=(n_donors, n_genes)) * np.sqrt(sigma2)
    slope_sd_g = rng.uniform(*slope_sd, n_genes) if isinstance(slope_sd, tuple) else np.full(n_genes, slope_sd)
    with_slope = paired and bool(np.any(slope_sd_g > 0))
    slope = rng.normal(size=(n_donors, n_genes)) * slope_sd_g if with_slope else 0.0

    cols = []
    for g0 in range(0, n_genes, 256):
        g1 = min(g0 + 256, n_genes)
        sl = slice(g0, g1)
        eta = (
            intercept[sl]
            + np.outer(stim, beta_c[sl])
            + np.outer(covariate, beta_x[sl])
            + np.log(libsize)[:, None]
            + b[d_idx, sl]
        )
        if with_slope:
            eta = eta + stim[:, None] * slope[d_idx, sl]
        mu = np.exp(eta)
        size = 1.0 / phi[sl]
        lam = rng.gamma(size, mu / size)
        cols.append(sparse.csr_matrix(rng.poisson(lam).astype(dtype)))
    X = sparse.hstack(cols, format="csr")
    cond = np.where(stim > 0, "stim", "ctrl")
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(donors[d_idx], categories=donors),
            "condition": pd.Categorical(cond, categories=["ctrl", "stim"]),
            "sample": pd.Categorical([f"{donors[d]}_{c}" for d, c in zip(d_idx, cond, strict=True)]),
            "covariate": covariate,
            "libsize": libsize,
        },
        index=[f"cell{j:06d}" for j in range(n)],
    )
    var = pd.DataFrame(
        {
            "intercept": intercept,
            "beta_condition": beta_c,
            "beta_covariate": beta_x,
            "sigma2": sigma2,
            "phi": phi,
            "slope_sd": slope_sd_g if paired else np.zeros(n_genes),
            "is_de": is_de,
        },
        index=[f"G{g:05d}" for g in range(n_genes)],
    )
    return ad.AnnData(X=X, obs=obs, var=var)


def simulate_composition(
    *,
    n_donors: int = 6,
    n_types: int = 10,
    paired: bool = False,
    effect: dict[int, float] | None = None,
    donor_sd: tuple[float, float] = (0.15, 0.7),
    sample_sd: tuple[float, float] = (0.1, 0.4),
    cells_median: float = 2000.0,
    cells_range: tuple[int, int] = (300, 8000),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate cells per sample and cell type (a multinomial-logit composition with donor variation).

    Type ``k``'s logit share in a sample is ``base_k + d_ik (+ s_sk) (+ effect_k if stim)`` with
    ``base = log(Dirichlet(2) + 0.005)``, donor effects ``d_ik ~ N(0, sd_k)`` (``sd_k`` uniform in
    ``donor_sd``) and, with ``paired``, sample effects ``s_sk`` (sd uniform in ``sample_sd``); the
    sample's cells (log-normal around ``cells_median``, sdlog 0.5, clipped to ``cells_range``) are drawn
    multinomially (as the project's reference simulation of composition data).

    Parameters
    ----------
    n_donors
        Donors per condition (unpaired), or donors each sampled in both conditions (``paired``).
    n_types
        Cell types (``T00``, ``T01``, ...).
    paired
        Each donor in ``ctrl`` and ``stim`` (two samples per donor, with sample effects).
    effect
        ``{type index: logit effect of stim}``; none by default (a null).
    donor_sd, sample_sd
        Ranges of the per-type standard deviations of the donor and sample effects.
    cells_median, cells_range
        Cells per sample.
    seed
        Random seed.

    Returns
    -------
    ``(counts, sample_obs)``: cells per sample and type (samples x types) and the samples' ``donor``,
    ``condition`` and ``sample`` (same index), as :func:`scglmm.tl.composition` pools them.
    """
    rng = np.random.default_rng(seed)
    K = n_types
    base = np.log(rng.dirichlet(np.full(K, 2.0)) + 0.005)
    sd_d = rng.uniform(*donor_sd, K)
    sd_s = rng.uniform(*sample_sd, K)
    eff = np.zeros(K)
    for k, v in (effect or {}).items():
        eff[k] = v
    donors = [f"D{i:02d}" for i in range(n_donors if paired else 2 * n_donors)]
    if paired:
        rows = [(d, c) for d in donors for c in ("ctrl", "stim")]
    else:
        rows = [(d, "ctrl" if i < n_donors else "stim") for i, d in enumerate(donors)]
    sobs = pd.DataFrame(rows, columns=["donor", "condition"])
    sobs["sample"] = sobs["donor"] + "_" + sobs["condition"]
    bd = {d: rng.normal(0.0, sd_d) for d in donors}
    counts = np.empty((len(sobs), K), dtype=np.int64)
    for i, (d, c) in enumerate(rows):
        eta = base + bd[d] + (rng.normal(0.0, sd_s) if paired else 0.0) + (eff if c == "stim" else 0.0)
        p = np.exp(eta - eta.max())
        n = int(np.clip(np.round(np.exp(rng.normal(np.log(cells_median), 0.5))), *cells_range))
        counts[i] = rng.multinomial(n, p / p.sum())
    index = pd.Index(sobs["sample"].to_numpy(), name="sample")
    sobs.index = index
    for col in ("donor", "condition", "sample"):
        sobs[col] = sobs[col].astype("category")
    return pd.DataFrame(counts, index=index, columns=[f"T{k:02d}" for k in range(K)]), sobs


def _example_file(name: str) -> Path:
    """A file of the example data: inside the installed package (``scglmm/data/``, put there by
    the wheel build), or in ``data/`` of a source checkout (an editable install)."""
    shipped = Path(str(resources.files("scglmm"))) / "data" / name
    if shipped.is_file():
        return shipped
    return Path(__file__).resolve().parent.parent / "data" / name


def kang2018_cd14_mono(path: str | Path | None = None) -> AnnData:
    """The shipped Kang 2018 CD14 monocyte subset (2,913 cells x 1,000 genes, 8 donors, paired).

    Parameters
    ----------
    path
        Read this file instead of the copy that ships with the package.

    Returns
    -------
    The AnnData: raw counts in ``X``; ``obs`` has ``donor``, ``condition`` (``ctrl`` /
    ``stim``), ``sample``, ``n_counts_all_genes`` (library sizes over all genes of the original
    data) and more; provenance in ``uns['provenance']``.
    """
    import anndata as ad

    path = _example_file("kang2018_cd14_mono.h5ad") if path is None else Path(path)
    if not path.exists():
        msg = f"{path} not found; pass the path of kang2018_cd14_mono.h5ad (it ships in the repository's data/)."
        raise FileNotFoundError(msg)
    return ad.read_h5ad(path)


def kang2018_cell_types(path: str | Path | None = None) -> AnnData:
    """The cell labels of all 13,999 Kang 2018 PBMCs, without counts (for :func:`scglmm.tl.composition`).

    8 donors, each unstimulated (``ctrl``) and after interferon-beta (``stim``): 16 samples, 13 cell
    types (the Seurat ``ifnb`` annotation). Built by ``data/make_kang_obs.py``; provenance in
    ``data/README.md``.

    Parameters
    ----------
    path
        Read this file (a gzip-compressed CSV) instead of the copy that ships with the package.

    Returns
    -------
    An AnnData with an empty ``X`` (13,999 x 0) and ``obs`` columns ``donor``, ``condition`` (categories
    ``ctrl``, ``stim``), ``sample`` (``<donor>_<condition>``) and ``cell_type``, all categorical.
    """
    import anndata as ad

    path = _example_file("kang2018_obs.csv.gz") if path is None else Path(path)
    if not path.exists():
        msg = f"{path} not found; pass the path of kang2018_obs.csv.gz (it ships in the repository's data/)."
        raise FileNotFoundError(msg)
    obs = pd.read_csv(path, index_col=0, dtype=str)
    for col in obs.columns:
        obs[col] = obs[col].astype("category")
    obs["condition"] = obs["condition"].cat.reorder_categories(["ctrl", "stim"])
    return ad.AnnData(obs=obs)
