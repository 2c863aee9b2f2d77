"""Calibration and power study of scglmm's tests against scanpy and pseudobulk.

One command, seeded:

    python benchmarks/calibration.py            # the full study (~30-45 min on 2 cores)
    python benchmarks/calibration.py --quick    # a small version (minutes) to check it runs

Writes to ``benchmarks/results/``: ``calibration.md`` (the tables), ``calibration_*.csv`` (every
number) and ``calibration_*.png`` (figures). The real-data part reads the Kang 2018 PBMC data from
``../shared/data/kang2018_ifnb_pbmc`` (or ``--kang PATH``) and is skipped if it is not there.

Methods compared
----------------
scglmm, one fit of ``~ condition + covariate + (1 | donor)`` per gene, tested in several ways:
``z`` (ML Wald z), ``t`` (Wald on t with the between-donor df), ``t_reml`` (t plus the REML-type
correction of the donor variance), ``t_floor`` (t_reml with a floor on the donor variance),
``lrt`` (likelihood ratio against ``~ covariate + (1 | donor)``, chi-square 1 df) and ``lrt_t``
(the signed root of the LR statistic on t with the between-donor df).
scanpy ``rank_genes_groups`` on log1p-normalised data (``wilcoxon``, ``t-test``).
Pseudobulk: donor sums, PyDESeq2 ``~ condition`` (if installed; else an NB GLM on the sums).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, stats

import scglmm
from scglmm._core._api import fit_genes
from scglmm._core._inference import CALIBRATIONS, donor_level_design, wald_pvalues
from scglmm.datasets import simulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_slope import kang_slope_report, kang_slope_study, slope_report, slope_study

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
CACHE = OUT / ".cache"  # fitted results per simulated data set (not committed; delete to refit)
KANG = HERE.parent.parent / "shared" / "data" / "kang2018_ifnb_pbmc" / "kang2018_ifnb_pbmc.h5ad"
SCGLMM_METHODS = [f"scglmm_{c}" for c in CALIBRATIONS] + ["scglmm_lrt", "scglmm_lrt_t"]
OTHER_METHODS = ["scanpy_wilcoxon", "scanpy_t-test", "pseudobulk"]
# realistic settings: per-cell means log-uniform 0.02-10 at 5,000 counts, NB dispersion 0.05-1,
# donor variances mostly small with 30 % at 0 (Kang CD14 monocytes: median 0.003, 90 % below 0.07)
SIM = {"sigma2_range": (0.0, 0.08), "sigma2_zero_frac": 0.3, "phi_range": (0.05, 1.0), "covariate_sd": 0.1}

log = logging.getLogger("calibration")
# formulas compared in paired designs: (label, random-effect column, donor as fixed effect)
PAIRED_MODELS = [
    ("~ condition + (1 | donor)", "donor", False),
    ("~ condition + (1 | sample)", "sample", False),
    ("~ donor + condition + (1 | sample)", "sample", True),
]


# ------------------------------------------------------------------------------------------------
# methods; each returns (p-value, ranking score = -log p) per gene
# ------------------------------------------------------------------------------------------------
def _neglogp(stat: np.ndarray, df: float) -> np.ndarray:
    a = np.abs(stat)
    df = np.broadcast_to(np.asarray(df, dtype=float), a.shape)
    with np.errstate(invalid="ignore"):
        lp = np.where(np.isinf(df), stats.norm.logsf(a), stats.t.logsf(a, np.where(np.isinf(df), 1.0, df)))
    return -(lp + np.log(2.0))


def fit_scglmm(
    Y, obs: pd.DataFrame, off: np.ndarray, donor: str = "donor", *, lrt: bool = True, donor_fixed: bool = False
) -> dict:
    """Fit once (plus the reduced model for the LRT); what every test option needs.

    ``donor_fixed`` adds donor dummies as fixed effects (``~ donor + condition + (1 | sample)`` in
    paired designs).
    """
    X = np.column_stack([np.ones(len(obs)), (obs["condition"] == "stim").to_numpy(float)])
    cols = ["Intercept", "condition[T.stim]"]
    if "covariate" in obs:
        X = np.column_stack([X, obs["covariate"].to_numpy(float)])
        cols.append("covariate")
    if donor_fixed:
        d = pd.get_dummies(obs["donor"].astype(str)).to_numpy(float)[:, 1:]
        X = np.column_stack([X, d])
        cols += [f"donor{i}" for i in range(d.shape[1])]
    labels = obs[donor].astype(str).to_numpy()
    res = fit_genes(Y, X, labels, off, n_jobs=2, coef_names=cols, check=False)
    codes, _ = pd.factorize(labels, sort=True)
    mask, Xb = donor_level_design(X, codes)
    raw = {"coef": res.coef, "cov": res.cov, "sigma2": res.sigma2, "mask": mask, "Xb": Xb, "ll": res.loglik}
    if lrt:
        raw["ll_red"] = fit_genes(Y, np.delete(X, 1, axis=1), labels, off, n_jobs=2, check=False).loglik
    return raw


def scglmm_tests(raw: dict) -> dict:
    """Every scglmm test option of the condition coefficient from one stored fit."""
    c = np.zeros(raw["coef"].shape[1])
    c[1] = 1.0
    kw = {"sigma2": raw["sigma2"], "donor_mask": raw["mask"], "donor_design": raw["Xb"]}
    out = {}
    for cal in CALIBRATIONS:
        w = wald_pvalues(raw["coef"], raw["cov"], c, calibration=cal, **kw)
        out[f"scglmm_{cal}"] = (w["p_value"], _neglogp(w["stat"], w["df"]))
    df_b = wald_pvalues(raw["coef"], raw["cov"], c, calibration="t", **kw)["df"]
    if "ll_red" in raw:
        lr = np.maximum(2.0 * (raw["ll"] - raw["ll_red"]), 0.0)
        out["scglmm_lrt"] = (stats.chi2.sf(lr, 1), -stats.chi2.logsf(lr, 1))
        r = np.sign(raw["coef"][:, 1]) * np.sqrt(lr)
        out["scglmm_lrt_t"] = (2 * stats.t.sf(np.abs(r), df_b), _neglogp(r, df_b))
    return out


def run_scglmm(Y, obs: pd.DataFrame, off: np.ndarray, donor: str = "donor", *, lrt: bool = True) -> dict:
    return scglmm_tests(fit_scglmm(Y, obs, off, donor, lrt=lrt))


def run_scanpy(Y, obs: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=sparse.csr_matrix(Y, dtype=np.float32), obs=obs[["condition"]].copy())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(a, "condition", groups=["stim"], reference="ctrl", method=method)
    df = sc.get.rank_genes_groups_df(a, "stim").set_index("names").loc[a.var_names]
    z = df["scores"].to_numpy(float)
    p = df["pvals"].to_numpy(float)
    return p, _neglogp(z, np.inf)


def _pseudobulk_sums(Y, obs: pd.DataFrame, donor: str) -> tuple[np.ndarray, pd.DataFrame]:
    labels = obs[donor].astype(str).to_numpy()
    codes, donors = pd.factorize(labels, sort=True)
    D = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(donors), len(codes)))
    S = D @ (Y if sparse.issparse(Y) else np.asarray(Y))
    S = S.toarray() if sparse.issparse(S) else np.asarray(S)
    meta = obs.groupby(labels, observed=True)["condition"].first().loc[list(donors)].to_frame()
    return np.asarray(S).round().astype(np.int64), meta


def run_pseudobulk(Y, obs: pd.DataFrame, donor: str = "donor") -> tuple[np.ndarray, np.ndarray]:
    S, meta = _pseudobulk_sums(Y, obs, donor)
    try:
        from pydeseq2.dds import DeseqDataSet
        from pydeseq2.default_inference import DefaultInference
        from pydeseq2.ds import DeseqStats
    except ImportError:  # pragma: no cover - fallback
        return _nb_glm_sums(S, meta)
    keep = S.sum(axis=0) > 0
    counts = pd.DataFrame(S[:, keep], index=meta.index.astype(str), columns=[f"g{i}" for i in np.flatnonzero(keep)])
    meta = meta.copy()
    meta.index = counts.index
    meta["condition"] = pd.Categorical(meta["condition"].astype(str), categories=["ctrl", "stim"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inf = DefaultInference(n_cpus=1)
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~condition", quiet=True, inference=inf)
        dds.deseq2()
        ds = DeseqStats(
            dds,
            contrast=["condition", "stim", "ctrl"],
            quiet=True,
            inference=inf,
            cooks_filter=False,
            independent_filter=False,
        )
        ds.summary()
    r = ds.results_df
    p = np.full(S.shape[1], np.nan)
    st = np.full(S.shape[1], np.nan)
    p[keep] = r["pvalue"].to_numpy(float)
    st[keep] = r["stat"].to_numpy(float)
    return p, _neglogp(st, np.inf)


def _nb_glm_sums(S: np.ndarray, meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    import statsmodels.api as sm

    x = (meta["condition"].astype(str) == "stim").to_numpy(float)
    X = sm.add_constant(x)
    off = np.log(S.sum(axis=1))
    p = np.full(S.shape[1], np.nan)
    z = np.full(S.shape[1], np.nan)
    for g in range(S.shape[1]):
        try:
            m = sm.NegativeBinomial(S[:, g], X, offset=off).fit(disp=0)
            z[g] = m.tvalues[1]
            p[g] = m.pvalues[1]
        except Exception:  # a failed gene stays NaN
            pass
    return p, _neglogp(z, np.inf)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def auprc(score: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    s = np.where(np.isfinite(score), score, -np.inf)
    s = np.where(np.isneginf(s), np.nanmin(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else 0.0, s)
    return float(average_precision_score(truth, s))


def de_metrics(p: np.ndarray, score: np.ndarray, truth: np.ndarray) -> dict:
    q = scglmm._core._inference.bh_adjust(p)
    hit = np.nan_to_num(q, nan=1.0) < 0.05
    n_hit = int(hit.sum())
    return {
        "power": float(hit[truth].mean()),
        "fdr": float((hit & ~truth).sum() / n_hit) if n_hit else 0.0,
        "auprc": auprc(score, truth),
    }


# ------------------------------------------------------------------------------------------------
# one simulated data set
# ------------------------------------------------------------------------------------------------
def _cached(name: str, compute):
    """Load ``name`` from the fit cache, or compute and store it."""
    import pickle

    path = CACHE / f"{name}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh)
    out = compute()
    CACHE.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(out, fh)
    return out


def _expand(stored: dict) -> dict:
    out = {k: v for k, v in stored.items() if not k.startswith("_raw")}
    for k, v in stored.items():
        if k.startswith("_raw"):
            tag = k[len("_raw") :]
            out.update({f"{m}{tag}": r for m, r in scglmm_tests(v).items()})
    return out


def one_dataset(dpg: int, cpd: int, n_genes: int, frac_de: float, seed: int, *, lrt: bool) -> dict:
    """All methods on one simulated data set; fits are cached so test options can be re-evaluated."""
    import pickle

    path = CACHE / f"sim_{dpg}_{cpd}_{n_genes}_{frac_de}_{seed}_{int(lrt)}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            stored = pickle.load(fh)
    else:
        stored = _one_dataset(dpg, cpd, n_genes, frac_de, seed, lrt=lrt)
        CACHE.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            pickle.dump(stored, fh)
    out = {k: v for k, v in stored.items() if k != "_raw"}
    out.update(scglmm_tests(stored["_raw"]))
    return out


def _one_dataset(dpg: int, cpd: int, n_genes: int, frac_de: float, seed: int, *, lrt: bool) -> dict:
    a = simulate(n_donors=2 * dpg, cells_per_donor=cpd, n_genes=n_genes, frac_de=frac_de, seed=seed, **SIM)
    Y = a.X.tocsc()
    # the scglmm default gene filter, applied to every method alike
    nz = np.asarray((Y > 0).sum(axis=0)).ravel()
    keep = nz >= 3
    Y = Y[:, keep]
    truth = a.var["is_de"].to_numpy()[keep]
    obs = a.obs
    off = np.log(obs["libsize"].to_numpy(float))
    out = {"_raw": fit_scglmm(Y, obs, off, lrt=lrt)}
    for m in ("wilcoxon", "t-test"):
        out[f"scanpy_{m}"] = run_scanpy(Y.tocsr(), obs, m)
    out["pseudobulk"] = run_pseudobulk(Y, obs)
    out["_truth"] = truth
    return out


def null_grid(dpgs, cpds, n_genes, n_rep, seed0, lrt_max_cells) -> pd.DataFrame:
    rows = []
    for dpg in dpgs:
        for cpd in cpds:
            t0 = time.perf_counter()
            pooled: dict[str, list] = {}
            for rep in range(n_rep):
                seed = seed0 + 1000 * dpg + 10 * cpd + rep
                r = one_dataset(dpg, cpd, n_genes, 0.0, seed, lrt=cpd <= lrt_max_cells)
                for k, v in r.items():
                    if not k.startswith("_"):
                        pooled.setdefault(k, []).append(v[0])
            for meth, ps in pooled.items():
                p = np.concatenate(ps)
                p = p[np.isfinite(p)]
                rows.append(
                    {
                        "donors_per_group": dpg,
                        "cells_per_donor": cpd,
                        "method": meth,
                        "n_genes": p.size,
                        "fp_05": float(np.mean(p < 0.05)),
                        "fp_01": float(np.mean(p < 0.01)),
                    }
                )
            log.info("null %d donors/group x %d cells/donor: %.0f s", dpg, cpd, time.perf_counter() - t0)
    return pd.DataFrame(rows)


def de_grid(dpgs, cpds, n_genes, n_rep, seed0, lrt_max_cells) -> pd.DataFrame:
    rows = []
    for dpg in dpgs:
        for cpd in cpds:
            t0 = time.perf_counter()
            acc: dict[str, list] = {}
            for rep in range(n_rep):
                seed = seed0 + 1000 * dpg + 10 * cpd + rep + 500
                r = one_dataset(dpg, cpd, n_genes, 0.1, seed, lrt=cpd <= lrt_max_cells)
                truth = r["_truth"]
                for k, v in r.items():
                    if not k.startswith("_"):
                        acc.setdefault(k, []).append(de_metrics(v[0], v[1], truth))
            for meth, ms in acc.items():
                rows.append(
                    {
                        "donors_per_group": dpg,
                        "cells_per_donor": cpd,
                        "method": meth,
                        **{k: float(np.mean([m[k] for m in ms])) for k in ("power", "fdr", "auprc")},
                    }
                )
            log.info("DE %d donors/group x %d cells/donor: %.0f s", dpg, cpd, time.perf_counter() - t0)
    return pd.DataFrame(rows)


def paired_study(n_donors_list, slope_sds, cpd, n_genes, n_rep, seed0) -> pd.DataFrame:
    """Paired null (each donor in both conditions) with donor-specific condition effects."""
    rows = []
    for nd in n_donors_list:
        for sd in slope_sds:
            pooled: dict[str, list] = {}
            for rep in range(n_rep):
                a = simulate(
                    n_donors=nd, cells_per_donor=cpd, n_genes=n_genes, paired=True, slope_sd=sd,
                    seed=seed0 + 100 * nd + int(sd * 100) + rep, **SIM,
                )  # fmt: skip
                Y = a.X.tocsc()
                keep = np.asarray((Y > 0).sum(axis=0)).ravel() >= 3
                Y = Y[:, keep]
                off = np.log(a.obs["libsize"].to_numpy(float))
                for label, rterm, dfix in PAIRED_MODELS:
                    r = scglmm_tests(fit_scglmm(Y, a.obs, off, rterm, lrt=False, donor_fixed=dfix))
                    for cal in ("eb", "z", "t", "t_reml"):
                        pooled.setdefault(f"{label} {cal}", []).append(r[f"scglmm_{cal}"][0])
                pooled.setdefault("pseudobulk ~ condition (sample sums)", []).append(
                    run_pseudobulk(Y, a.obs, "sample")[0]
                )
                pooled.setdefault("pseudobulk ~ donor + condition (sample sums)", []).append(
                    run_pseudobulk_paired(Y, a.obs)[0]
                )
            for meth, ps in pooled.items():
                p = np.concatenate(ps)
                p = p[np.isfinite(p)]
                rows.append(
                    {"n_donors": nd, "slope_sd": sd, "method": meth, "n_genes": p.size,
                     "fp_05": float(np.mean(p < 0.05)), "fp_01": float(np.mean(p < 0.01))}
                )  # fmt: skip
            log.info("paired %d donors, slope_sd %.2f done", nd, sd)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# real data
# ------------------------------------------------------------------------------------------------
def kang_study(path: Path, n_splits: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    import anndata as ad

    a = ad.read_h5ad(path)
    mono = a[a.obs["cell_type"] == "CD14 Mono"].copy()
    mono.obs["donor"] = mono.obs["donor"].astype(str)
    nz = np.asarray((mono.X > 0).sum(axis=0)).ravel()
    mono = mono[:, nz >= 0.05 * mono.n_obs].copy()  # genes detected in >= 5 % of the cells
    lib = mono.obs["n_counts"].to_numpy(float)
    # (a) fake groups of donors among ctrl cells
    ctrl = mono[mono.obs["condition"] == "ctrl"].copy()
    donors = sorted(ctrl.obs["donor"].unique())
    rng = np.random.default_rng(seed)
    splits = [("101", "1015", "1039", "1256")]  # the split in data/kang2018_cd14_mono.h5ad
    while len(splits) < n_splits:
        s = tuple(sorted(rng.choice(donors, 4, replace=False)))
        if s not in splits and tuple(sorted(set(donors) - set(s))) not in splits:
            splits.append(s)
    rows = []
    Yc = ctrl.X.tocsc()
    offc = np.log(ctrl.obs["n_counts"].to_numpy(float))
    for i, s in enumerate(splits):
        obs = ctrl.obs[["donor"]].copy()
        obs["condition"] = np.where(obs["donor"].isin(s), "stim", "ctrl")
        res = _expand(
            _cached(
                f"kang_split_{'+'.join(s)}",
                lambda obs=obs: {
                    "_raw": fit_scglmm(Yc, obs, offc, lrt=True),
                    "scanpy_wilcoxon": run_scanpy(ctrl.X, obs, "wilcoxon"),
                    "scanpy_t-test": run_scanpy(ctrl.X, obs, "t-test"),
                    "pseudobulk": run_pseudobulk(Yc, obs),
                },
            )
        )
        for k, v in res.items():
            if k.startswith("_"):
                continue
            p = v[0][np.isfinite(v[0])]
            rows.append({"split": i, "group_A": "+".join(s), "method": k, "n_genes": p.size,
                         "fp_05": float(np.mean(p < 0.05)), "fp_01": float(np.mean(p < 0.01))})  # fmt: skip
        log.info("kang split %d done", i)
    fake = pd.DataFrame(rows)
    # (b) stim vs ctrl: ranks of interferon genes
    genes = ["ISG15", "IFI6", "IFIT3", "MX1", "IFIT1", "ISG20"]
    obs = mono.obs[["donor", "sample", "condition"]].copy()
    obs["condition"] = obs["condition"].astype(str)
    Y = mono.X.tocsc()
    off = np.log(lib)
    stored = _cached(
        "kang_stim_vs_ctrl",
        lambda: {
            "_raw (1 | donor)": fit_scglmm(Y, obs, off, "donor", lrt=False),
            "_raw (1 | sample)": fit_scglmm(Y, obs, off, "sample", lrt=False),
            "_raw ~ donor + condition + (1 | sample)": fit_scglmm(Y, obs, off, "sample", lrt=False, donor_fixed=True),
            "scanpy_wilcoxon": run_scanpy(mono.X, obs, "wilcoxon"),
            "pseudobulk (paired: ~ donor + condition)": run_pseudobulk_paired(Y, obs),
            "pseudobulk (unpaired)": run_pseudobulk(Y, obs, "sample"),
        },
    )
    res = {k: v for k, v in _expand(stored).items() if not k.startswith("scglmm_") or "lrt" not in k}
    names = np.asarray(mono.var_names)
    rrows = []
    for meth, (_p, score) in res.items():
        order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
        rank = np.empty(len(order), dtype=int)
        rank[order] = np.arange(1, len(order) + 1)
        row = {"method": meth, "n_genes": len(names)}
        for g in genes:
            row[g] = int(rank[names == g][0]) if (names == g).any() else -1
        rrows.append(row)
    return fake, pd.DataFrame(rrows)


def run_pseudobulk_paired(Y, obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    S, meta = _pseudobulk_sums(Y, obs, "sample")
    don = obs.groupby(obs["sample"].astype(str), observed=True)["donor"].first()
    keep = S.sum(axis=0) > 0
    counts = pd.DataFrame(S[:, keep], index=meta.index.astype(str), columns=[f"g{i}" for i in np.flatnonzero(keep)])
    meta = pd.DataFrame(
        {"condition": pd.Categorical(meta["condition"].astype(str), categories=["ctrl", "stim"]),
         "donor": pd.Categorical(don.loc[meta.index].astype(str).to_numpy())},
        index=counts.index,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inf = DefaultInference(n_cpus=1)
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~donor + condition", quiet=True, inference=inf)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "stim", "ctrl"], quiet=True, inference=inf, cooks_filter=False,
                        independent_filter=False)  # fmt: skip
        ds.summary()
    r = ds.results_df
    p = np.full(S.shape[1], np.nan)
    st = np.full(S.shape[1], np.nan)
    p[keep] = r["pvalue"].to_numpy(float)
    st[keep] = r["stat"].to_numpy(float)
    return p, _neglogp(st, np.inf)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _pivot(df: pd.DataFrame, value: str, index: list[str]) -> str:
    t = df.pivot_table(index=index, columns="method", values=value, sort=False)
    order = [m for m in SCGLMM_METHODS + OTHER_METHODS if m in t.columns] + [
        m for m in t.columns if m not in SCGLMM_METHODS + OTHER_METHODS
    ]
    return t[order].to_markdown(floatfmt=".3f")


def figures(null: pd.DataFrame, de: pd.DataFrame, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    methods = [m for m in SCGLMM_METHODS + OTHER_METHODS if m in set(null["method"])]
    style = {
        m: {"color": plt.cm.tab20(i / 20), "ls": "-" if m.startswith("scglmm") else "--", "marker": "o"}
        for i, m in enumerate(methods)
    }
    cpds = sorted(null["cells_per_donor"].unique())
    fig, axes = plt.subplots(1, len(cpds), figsize=(4.2 * len(cpds), 3.6), sharey=True, squeeze=False)
    for ax, cpd in zip(axes[0], cpds, strict=True):
        for m in methods:
            d = null[(null["cells_per_donor"] == cpd) & (null["method"] == m)]
            ax.plot(d["donors_per_group"], d["fp_05"], label=m, **style[m])
        ax.axhline(0.05, color="k", lw=0.8, ls="--")
        ax.axhspan(0.03, 0.065, color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted(null["donors_per_group"].unique()))
        ax.set_xticklabels(sorted(null["donors_per_group"].unique()))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{cpd} cells per donor")
        ax.set_xlabel("donors per group")
    axes[0][0].set_ylabel("false-positive rate at p < 0.05")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(OUT / f"calibration_null_fp{suffix}.png", dpi=110)
    plt.close(fig)
    if de.empty:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    lab = de["donors_per_group"].astype(str) + "x" + de["cells_per_donor"].astype(str)
    de = de.assign(setting=lab)
    settings = list(dict.fromkeys(lab))
    for m in methods:
        d = de[de["method"] == m].set_index("setting").loc[settings]
        axes[0].plot(range(len(settings)), d["auprc"], label=m, **style[m])
        axes[1].plot(range(len(settings)), d["fdr"], label=m, **style[m])
    for ax, t in zip(axes, ("AUPRC", "FDR at BH 0.05"), strict=True):
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=60, fontsize=7)
        ax.set_xlabel("donors per group x cells per donor")
        ax.set_ylabel(t)
    axes[1].axhline(0.05, color="k", lw=0.8, ls="--")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"calibration_de{suffix}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid and few genes (minutes)")
    ap.add_argument("--kang", type=Path, default=KANG, help="path of kang2018_ifnb_pbmc.h5ad")
    ap.add_argument("--seed", type=int, default=20260)
    ap.add_argument("--parts", default="null,de,paired,slope,kang,kang_slope", help="comma-separated parts to run")
    ap.add_argument(
        "--warm",
        metavar="DPG:CPD[,DPG:CPD...]",
        help="only fill the fit cache for these grid cells (to spread the work over processes); no tables",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    OUT.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    if args.quick:
        dpgs, cpds, n_null, rep_null, n_de, rep_de, lrt_max = [3, 5], [50, 200], 200, 1, 200, 1, 200
        paired = ([4], [0.0, 0.3], 100, 200, 1)
        slope = {"n_donors_list": [4, 6], "null_sds": [0.3], "de_sd": (0.0, 0.5), "n_genes": 150, "cpd": 50,
                 "n_rep": 1}  # fmt: skip
        n_splits = 1
    else:
        dpgs, cpds, n_null, rep_null, n_de, rep_de, lrt_max = [3, 5, 10, 20], [50, 200, 1000], 300, 8, 400, 4, 1000
        paired = ([4, 8], [0.0, 0.2, 0.4], 200, 300, 2)
        slope = {"n_donors_list": [4, 6, 10, 20], "null_sds": [0.0, 0.2, 0.4, (0.0, 0.5)], "de_sd": (0.0, 0.5),
                 "n_genes": 400, "cpd": 100, "n_rep": 3}  # fmt: skip
        n_splits = 3
    if args.warm:
        cells = [tuple(int(v) for v in c.split(":")) for c in args.warm.split(",")]
        for dpg, cpd in cells:
            if "null" in parts:
                null_grid([dpg], [cpd], n_null, rep_null, args.seed, lrt_max)
            if "de" in parts:
                de_grid([dpg], [cpd], n_de, rep_de, args.seed, lrt_max)
        return
    t0 = time.perf_counter()
    suffix = "_quick" if args.quick else ""
    settings = {"seed": args.seed, "n_null": n_null, "rep_null": rep_null, "n_de": n_de, "rep_de": rep_de,
                "n_splits": n_splits, "paired": paired, "slope": slope}  # fmt: skip
    if "null" in parts:
        null_grid(dpgs, cpds, n_null, rep_null, args.seed, lrt_max).to_csv(
            OUT / f"calibration_null{suffix}.csv", index=False
        )
    if "de" in parts:
        de_grid(dpgs, cpds, n_de, rep_de, args.seed, lrt_max).to_csv(OUT / f"calibration_de{suffix}.csv", index=False)
    if "paired" in parts:
        pr = paired_study(*paired[:2], paired[3], paired[2], paired[4], args.seed)
        pr.to_csv(OUT / f"calibration_paired{suffix}.csv", index=False)
    if "slope" in parts:
        slope_study(**slope, seed0=args.seed).to_csv(OUT / f"calibration_slope{suffix}.csv", index=False)
    if "kang_slope" in parts:
        if args.kang.exists():
            kr, ks = kang_slope_study(args.kang, n_swaps=2 if args.quick else 6, seed=args.seed)
            kr.to_csv(OUT / f"calibration_kang_slope_ranks{suffix}.csv", index=False)
            ks.to_csv(OUT / f"calibration_kang_slope_swaps{suffix}.csv", index=False)
        else:
            log.warning("Kang data not found at %s; real-data part skipped", args.kang)
    if "kang" in parts:
        if args.kang.exists():
            fake, ranks = kang_study(args.kang, n_splits, args.seed)
            fake.to_csv(OUT / f"calibration_kang_null{suffix}.csv", index=False)
            ranks.to_csv(OUT / f"calibration_kang_ranks{suffix}.csv", index=False)
        else:
            log.warning("Kang data not found at %s; real-data part skipped", args.kang)
    report(suffix, settings, time.perf_counter() - t0, args.quick)


def _escape_bars(line: str) -> str:
    """A '|' inside a formula in a markdown table cell must be escaped."""
    return line.replace("(1 | ", "(1 \\| ").replace("condition | ", "condition \\| ")


def report(suffix: str, settings: dict, seconds: float, quick: bool) -> None:
    """Markdown tables and figures from every part's CSV present in results/."""

    def load(name: str) -> pd.DataFrame:
        path = OUT / f"calibration_{name}{suffix}.csv"
        return pd.read_csv(path) if path.exists() else pd.DataFrame()

    null, de, pr, fake, ranks, sl, kr, ks = (
        load(n)
        for n in ("null", "de", "paired", "kang_null", "kang_ranks", "slope", "kang_slope_ranks", "kang_slope_swaps")
    )
    md = [
        "# scglmm calibration and power study",
        "",
        f"Command: `python benchmarks/calibration.py{' --quick' if quick else ''}` (seed {settings['seed']}), "
        f"scglmm {scglmm.__version__}. Simulation settings: {SIM}; library-size offsets; "
        "model `~ condition + covariate + (1 | donor)` with a donor-level condition; genes with counts "
        "in < 3 cells dropped for every method. Rows: (donors per group, cells per donor).",
        "",
    ]
    idx = ["donors_per_group", "cells_per_donor"]
    if not null.empty:
        md += [
            f"## Null: false-positive rate at p < 0.05 ({settings['rep_null']} data sets x {settings['n_null']} "
            "genes per cell)",
            "",
            _pivot(null, "fp_05", idx),
            "",
            "## Null: false-positive rate at p < 0.01",
            "",
            _pivot(null, "fp_01", idx),
            "",
        ]
    if not de.empty:
        for val, title in (("auprc", "AUPRC"), ("power", "power at BH 0.05"), ("fdr", "FDR at BH 0.05")):
            md += [f"## 10 % DE: {title} ({settings['rep_de']} data sets x {settings['n_de']} genes per cell)", "",
                   _pivot(de, val, idx), ""]  # fmt: skip
    if not null.empty:
        figures(null, de, suffix)
    if not pr.empty:
        md += ["## Paired designs (each donor in both conditions): null with donor-specific condition effects, "
               "false-positive rate at p < 0.05", "",
               pr.pivot_table(index=["n_donors", "slope_sd"], columns="method", values="fp_05",
                              sort=False).to_markdown(floatfmt=".3f"), ""]  # fmt: skip
    if not sl.empty:
        md += slope_report(sl, settings["slope"])
    md += kang_slope_report(kr, ks)
    if not fake.empty:
        summ = fake.groupby("method", sort=False)[["fp_05", "fp_01"]].mean()
        md += [f"## Kang 2018 CD14 monocytes, ctrl cells, donors split 4 vs 4 ({fake['split'].nunique()} splits, "
               "mean false-positive rate)", "", summ.to_markdown(floatfmt=".3f"), ""]  # fmt: skip
    if not ranks.empty:
        md += ["## Kang 2018 CD14 monocytes, stim vs ctrl: rank of interferon genes (1 = top)", "",
               ranks.set_index("method").to_markdown(), ""]  # fmt: skip
    md.append(f"Time of this run: {seconds:.0f} s.")
    text = "\n".join(md) + "\n"
    # a '|' inside a table cell (formula labels) must be escaped in markdown tables
    text = "\n".join(_escape_bars(ln) if ln.startswith("|") else ln for ln in text.split("\n"))
    (OUT / f"calibration{suffix}.md").write_text(text)
    log.info("wrote %s", OUT / f"calibration{suffix}.md")


if __name__ == "__main__":
    main()
