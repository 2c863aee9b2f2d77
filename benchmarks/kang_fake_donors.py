"""Real-data null: Kang 2018 CD14 monocytes, ctrl cells, donors split into two fake groups.

All 35 balanced 4 vs 4 splits of the 8 donors (70 ordered splits, halved by symmetry: the group
holding the first donor is called ``stim``). Each split is fitted once with
``~ condition + (1 | donor)`` (offsets log(n_counts), genes detected in >= 5 % of the CD14
monocytes, as ``calibration.py``'s ``kang_study``) and tested with every calibration of
``scglmm._core._inference.CALIBRATIONS``; pseudobulk is PyDESeq2 ``~ condition`` on donor sums.
Fits are cached in ``benchmarks/results/.cache/kang_fake4v4_*.pkl`` (delete to refit), so the
tests can be re-evaluated after a change of ``_inference.py`` in seconds.

    python benchmarks/kang_fake_donors.py            # all 35 splits
    python benchmarks/kang_fake_donors.py --splits 5 # the first 5 (to check it runs)

Writes ``benchmarks/results/kang_fake_donors.csv`` (one row per split and method) and
``kang_fake_donors.md`` (the means over splits, with the standard error across splits).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from calibration import CACHE, KANG, OUT, _cached, fit_scglmm, run_pseudobulk, scglmm_tests  # noqa: E402

from scglmm._core._inference import EB_GRID, eb_donor_variance, wald, wald_pvalues  # noqa: E402

log = logging.getLogger("kang_fake_donors")


def load_ctrl(path: Path):
    """CD14 monocyte ctrl cells, genes detected in >= 5 % of all CD14 monocytes; counts (CSC), obs, offsets."""
    import anndata as ad

    a = ad.read_h5ad(path)
    mono = a[a.obs["cell_type"] == "CD14 Mono"].copy()
    mono.obs["donor"] = mono.obs["donor"].astype(str)
    nz = np.asarray((mono.X > 0).sum(axis=0)).ravel()
    mono = mono[:, nz >= 0.05 * mono.n_obs].copy()
    ctrl = mono[mono.obs["condition"] == "ctrl"].copy()
    return ctrl.X.tocsc(), ctrl.obs[["donor"]].copy(), np.log(ctrl.obs["n_counts"].to_numpy(float)), ctrl.var_names


def donor_cells(obs: pd.DataFrame) -> np.ndarray:
    """Cells per donor, in the sorted order of the fit's donor rows."""
    return obs.groupby("donor", observed=True).size().sort_index().to_numpy(float)


def balanced_splits(donors: list[str]) -> list[tuple[str, ...]]:
    """Every 4 vs 4 split once: the groups of 4 that hold the first donor."""
    return [s for s in itertools.combinations(sorted(donors), len(donors) // 2) if sorted(donors)[0] in s]


def split_fit(Y, obs: pd.DataFrame, off: np.ndarray, group: tuple[str, ...]) -> dict:
    """Cached scglmm fit (``_raw``) and pseudobulk p-values of one split."""
    o = obs.copy()
    o["condition"] = np.where(o["donor"].isin(group), "stim", "ctrl")
    return _cached(
        f"kang_fake4v4_{'+'.join(group)}",
        lambda: {"_raw": fit_scglmm(Y, o, off, lrt=False), "pseudobulk": run_pseudobulk(Y, o)},
    )


def eb_cells(raw: dict, cells: np.ndarray) -> np.ndarray:
    """``"eb"`` p-values of the condition with each gene's own donor information (``donor_cells``)."""
    c = np.zeros(raw["coef"].shape[1])
    c[1] = 1.0
    kw = {"sigma2": raw["sigma2"], "donor_mask": raw["mask"], "donor_design": raw["Xb"]}
    return wald_pvalues(raw["coef"], raw["cov"], c, calibration="eb", donor_cells=cells, **kw)["p_value"]


def fpr_rows(stored: dict, i: int, group: tuple[str, ...], cells: np.ndarray) -> list[dict]:
    res = {k: v for k, v in stored.items() if not k.startswith("_")}
    res.update(scglmm_tests(stored["_raw"]))
    res["scglmm_eb_cells"] = (eb_cells(stored["_raw"], cells), None)
    rows = []
    for meth, (p, _score) in res.items():
        p = p[np.isfinite(p)]
        rows.append({"split": i, "group_stim": "+".join(group), "method": meth, "n_genes": p.size,
                     "fp_05": float(np.mean(p < 0.05)), "fp_01": float(np.mean(p < 0.01))})  # fmt: skip
    return rows


def run(path: Path, n_splits: int | None = None) -> pd.DataFrame:
    Y, obs, off, _ = load_ctrl(path)
    splits = balanced_splits(list(obs["donor"].unique()))[:n_splits]
    cells = donor_cells(obs)
    rows = []
    for i, g in enumerate(splits):
        rows += fpr_rows(split_fit(Y, obs, off, g), i, g, cells)
        log.info("split %d/%d (%s) done", i + 1, len(splits), "+".join(g))
    return pd.DataFrame(rows)


def diagnose_split(stored: dict, cells: np.ndarray) -> pd.DataFrame:
    """Per gene of one split: expression quartile, boundary, ``est^2 / v`` and eb's predicted ratio, p-values."""
    raw = stored["_raw"]
    c = np.zeros(raw["coef"].shape[1])
    c[1] = 1.0
    est, var = wald(raw["coef"], raw["cov"], c)
    s2 = np.nan_to_num(raw["sigma2"])
    k = 0.5  # 4 vs 4 donors
    eb = eb_donor_variance(est, var, s2, n_donors=8, df=6, k=k, grid=EB_GRID)
    kw = {"sigma2": raw["sigma2"], "donor_mask": raw["mask"], "donor_design": raw["Xb"]}
    b0 = raw["coef"][:, 0]
    d = pd.DataFrame({
        "quartile": pd.qcut(b0, 4, labels=["q1 (lowest)", "q2", "q3", "q4 (highest)"]),
        "boundary": np.where(s2 <= 1e-8 * (var / k - s2), "sigma2 = 0", "sigma2 > 0"),
        "est2_over_v": est**2 / var,
        # the variance eb assumes on average: c'Vc + k (posterior mean of sigma2 - sigma2), over c'Vc
        "eb_predicted": 1.0 + k * (eb["sigma2_post"] - s2) / var,
        "eb": eb["p_value"] < 0.05,
        "eb_cells": eb_cells(raw, cells) < 0.05,
        "t": wald_pvalues(raw["coef"], raw["cov"], c, calibration="t", **kw)["p_value"] < 0.05,
        "pseudobulk": stored["pseudobulk"][0] < 0.05,
    })  # fmt: skip
    return d[np.isfinite(eb["p_value"])]


def diagnosis(path: Path) -> pd.DataFrame:
    """False positives at p < 0.05 by expression quartile (intercept) and boundary, over the cached splits."""
    _, obs, _, _ = load_ctrl(path)
    cells = donor_cells(obs)
    parts = []
    for g in balanced_splits(list(obs["donor"].unique())):
        f = CACHE / f"kang_fake4v4_{'+'.join(g)}.pkl"
        if f.exists():
            parts.append(diagnose_split(_cached(f.stem, lambda: None), cells))
    d = pd.concat(parts)
    out = d.groupby(["quartile", "boundary"], observed=True).mean()
    out.insert(0, "genes_per_split", d.groupby(["quartile", "boundary"], observed=True).size() / len(parts))
    return out, len(parts)


#: Cells per donor of the Kang ctrl CD14 monocytes, for the simulation with the same imbalance.
KANG_CELLS = (175, 641, 286, 98, 171, 328, 323, 193)


def _unequal_dataset(seed: int, equal: bool, frac_de: float) -> dict:
    """Simulated 4 vs 4 donors with Kang's cells per donor (or 277 each), 800 genes; cached fit."""
    from calibration import SIM

    from scglmm.datasets import simulate

    def compute() -> dict:
        a = simulate(n_donors=8, cells_per_donor=641, n_genes=800, frac_de=frac_de, seed=seed, **SIM)
        rng = np.random.default_rng(seed)
        don = a.obs["donor"].to_numpy()
        keep = [rng.choice(np.flatnonzero(don == d), 277 if equal else n, replace=False)
                for d, n in zip(sorted(set(don)), KANG_CELLS, strict=True)]  # fmt: skip
        a = a[np.sort(np.concatenate(keep))].copy()
        Y = a.X.tocsc()
        nz = np.asarray((Y > 0).sum(axis=0)).ravel() >= 3
        obs, Y = a.obs, Y[:, nz]
        off = np.log(obs["libsize"].to_numpy(float))
        return {"_raw": fit_scglmm(Y, obs, off, lrt=False), "pseudobulk": run_pseudobulk(Y, obs),
                "_truth": a.var["is_de"].to_numpy()[nz], "_cells": donor_cells(obs)}  # fmt: skip

    return _cached(f"unequal_{seed}_{int(equal)}_{frac_de}", compute)


def unequal_simulation() -> pd.DataFrame:
    """eb with and without the cells per donor on simulated data with Kang's donor sizes."""
    from calibration import _neglogp, de_metrics

    rows = []
    for seed, equal, frac in [(1, 0, 0.0), (2, 0, 0.0), (3, 0, 0.0), (1, 1, 0.0), (2, 1, 0.0), (3, 1, 0.0),
                              (11, 0, 0.1), (12, 0, 0.1)]:  # fmt: skip
        d = _unequal_dataset(seed, bool(equal), frac)
        raw = d["_raw"]
        c = np.zeros(raw["coef"].shape[1])
        c[1] = 1.0
        kw = {"sigma2": raw["sigma2"], "donor_mask": raw["mask"], "donor_design": raw["Xb"]}
        res = {"pseudobulk": d["pseudobulk"]}
        for lab, cal, cells in (("scglmm_eb", "eb", None), ("scglmm_eb_cells", "eb", d["_cells"]),
                                ("scglmm_t", "t", None)):  # fmt: skip
            w = wald_pvalues(raw["coef"], raw["cov"], c, calibration=cal, donor_cells=cells, **kw)
            res[lab] = (w["p_value"], _neglogp(w["stat"], w["df"]))
        truth = d["_truth"]
        for meth, (p, score) in res.items():
            p0 = p[~truth]
            row = {"seed": seed, "cells": "equal (277)" if equal else "Kang", "frac_de": frac, "method": meth,
                   "fp_05": float(np.nanmean(p0 < 0.05)), "fp_01": float(np.nanmean(p0 < 0.01))}  # fmt: skip
            if frac > 0:
                row.update(de_metrics(p, score, truth))
            rows.append(row)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("method", sort=False)
    out = g[["fp_05", "fp_01"]].mean()
    out["se_05"] = g["fp_05"].std() / np.sqrt(df["split"].nunique())
    out["min_05"] = g["fp_05"].min()
    out["max_05"] = g["fp_05"].max()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kang", type=Path, default=KANG)
    ap.add_argument("--splits", type=int, default=None, help="only the first N splits")
    ap.add_argument("--simulate", action="store_true", help="only the simulation with Kang's donor sizes")
    ap.add_argument("--diagnose", action="store_true", help="only the diagnosis table, from the cached splits")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.simulate:
        sim = unequal_simulation()
        sim.to_csv(OUT / "kang_fake_donors_sim.csv", index=False)
        null = sim[sim["frac_de"] == 0].pivot_table(index=["cells", "seed"], columns="method", values="fp_05")
        de = sim[sim["frac_de"] > 0].pivot_table(index="seed", columns="method", values=["power", "auprc", "fdr"])
        md = ["# Simulated 4 vs 4 donors with Kang's cells per donor (175, 641, 286, 98 | 171, 328, 323, 193)", "",
              "Command: `python benchmarks/kang_fake_donors.py --simulate`. 800 genes per data set, settings of "
              "`calibration.py` (SIM), `~ condition + covariate + (1 | donor)`; `eb_cells` is `eb` given the cells "
              "per donor (`wald_pvalues(..., donor_cells=)`). With equal cells (277 per donor) it is `eb` exactly.",
              "", "## Null: false-positive rate at p < 0.05", "", null.to_markdown(floatfmt=".4f"), "",
              "## 10 % DE: power and FDR at BH 0.05, AUPRC", "", de.to_markdown(floatfmt=".4f"), ""]  # fmt: skip
        (OUT / "kang_fake_donors_sim.md").write_text("\n".join(md))
        print("\n".join(md))
        return
    if args.diagnose:
        tab, n = diagnosis(args.kang)
        md = [f"# Where eb's false positives come from ({n} cached 4 vs 4 splits of the Kang ctrl monocytes)", "",
              "Command: `python benchmarks/kang_fake_donors.py --diagnose`. Genes by quartile of the fitted intercept "
              "(expression) and by the donor variance at the boundary or not. `est2_over_v`: mean of "
              "`(c' beta)^2 / c' V c` (1 if the ML variance were right); `eb_predicted`: the mean variance ratio eb "
              "assumes (its posterior of sigma2); other columns: false-positive rate at p < 0.05.", "",
              tab.to_markdown(floatfmt=".3f"), ""]  # fmt: skip
        (OUT / "kang_fake_donors_diagnosis.md").write_text("\n".join(md))
        print("\n".join(md))
        return
    df = run(args.kang, args.splits)
    suffix = "" if args.splits is None else f"_{args.splits}"
    df.to_csv(OUT / f"kang_fake_donors{suffix}.csv", index=False)
    n = df["split"].nunique()
    md = [
        f"# Kang 2018 CD14 monocytes, ctrl cells: {n} balanced 4 vs 4 donor splits",
        "",
        "Command: `python benchmarks/kang_fake_donors.py`. `~ condition + (1 | donor)`, offsets log(n_counts), "
        f"{int(df['n_genes'].max())} genes. Mean false-positive rate over splits (se_05: standard error of the "
        "mean across splits; splits share cells, so it is indicative only).",
        "",
        summary(df).to_markdown(floatfmt=".4f"),
        "",
    ]
    (OUT / f"kang_fake_donors{suffix}.md").write_text("\n".join(md))
    print("\n".join(md))
    log.info("cache in %s", CACHE)


if __name__ == "__main__":
    main()
