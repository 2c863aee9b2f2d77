"""Normalisation that survives a global shift (issue 19, item 5): library size against TMM.

When a condition induces many genes (interferon), the total count of every stimulated cell grows
and every other gene looks lower if each cell's size factor is its total count. This script
compares, with the same data and model:

- ``none``: the library size alone (``norm_method="none"``, glmmTMB's ``offset(log(libsize))``);
- ``tmm``: the default, the library size times the TMM factor (edgeR's) of the cell's sample
  (donor x condition);
- ``tmm_mode``: the same with TMM's window of kept log ratios re-centred on the mode;
- ``ratio``: the same with DESeq2's median-of-ratios factor;
- ``oracle`` (simulations only): the true sequencing depth of the simulation, ``obs["libsize"]``.

Part 1 simulates ``scglmm.datasets.simulate`` data with 10 % or 20 % of the genes strongly induced in
``stim`` (natural-log effects 1.5 to 3, i.e. 4.5- to 20-fold; ``de_direction="up"``), 6 or 10 donors,
with the simulator's default donor variances (uniform 0 to 0.5 on the log scale) and with donor
variances like the Kang data's (uniform 0 to 0.1; measured there: median 0.011, 90 % below 0.06);
each donor in one condition, ``~ condition + (1 | donor)``, and paired with
``~ condition + (1 + condition | donor)``. For the null genes it reports the median log2 fold change
(0 is right) and the fraction with p < 0.05 (0.05 is right), and the fraction of induced genes found.

Part 2 fits the shipped Kang 2018 CD14 monocytes (1,000 genes) with the README's model
``~ condition + (1 + condition | donor)`` and ``size_factors="n_counts_all_genes"``, and reports
genes up and down at adjusted p < 0.05, the median log2 fold change of all tested genes and the time.

Part 3 (optional, ``--full-kang PATH``, the team's full Kang 2018 file ``kang2018_ifnb_pbmc.h5ad``,
13,999 cells x 17,782 genes) computes the factors on the CD14 monocytes' donor x condition pseudobulks from
three gene sets (all genes, genes with 10 counts in every sample, the 1,000 with most counts, as the shipped
example) and reports the median pseudobulk log2 fold change (stim over ctrl, mean over donors of the log of
count / effective depth) of the genes with 5 counts in every sample: how much each choice depends on
the genes it is computed from, on real data.

    python benchmarks/normalisation.py [--seeds 2] [--n-jobs 2] [--full-kang PATH]

Writes ``benchmarks/results/normalisation.md``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import scglmm

OUT = Path(__file__).parent / "results" / "normalisation.md"
METHODS = ("none", "tmm", "tmm_mode", "ratio")
SIGMA2 = {"simulator default (0-0.5)": (0.0, 0.5), "Kang-like (0-0.1)": (0.0, 0.1)}
DESIGNS = {
    "unpaired": (False, "~ condition + (1 | donor)"),
    "paired": (True, "~ condition + (1 + condition | donor)"),
}


def _fit(adata, formula: str, method: str, n_jobs: int) -> pd.DataFrame:
    """``get.results`` of ``condition`` for one normalisation (``oracle``: the simulation's true depth)."""
    kw = {"size_factors": "libsize", "norm_method": "none"} if method == "oracle" else {"norm_method": method}
    scglmm.tl.fit(adata, formula, key_added=method, n_jobs=n_jobs, progress=False, **kw)
    return scglmm.get.results(adata, "condition", key=method).loc[adata.var_names]


def _scores(res: pd.DataFrame, induced: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(res["p_value"].to_numpy())
    p, lfc = res["p_value"].to_numpy(), res["log2_fc"].to_numpy()
    null = ok & ~induced
    return {
        "null median log2 FC": float(np.median(lfc[null])),
        "null p < 0.05": float(np.mean(p[null] < 0.05)),
        "induced p < 0.05": float(np.mean(p[ok & induced] < 0.05)),
    }


def simulations(seeds: int, n_jobs: int) -> pd.DataFrame:
    """Part 1: one row per design, donor variances, donors, fraction induced and method (mean over seeds)."""
    rows = []
    for design, (paired, formula) in DESIGNS.items():
        for s2_name, s2 in SIGMA2.items():
            if paired and s2[1] > 0.1:
                continue  # the random-slope fits are slower: the realistic variances only
            for n_donors in (6, 10):
                for frac in (0.1, 0.2):
                    rows += _one_setting(design, paired, formula, s2_name, s2, n_donors, frac, seeds, n_jobs)
    return pd.DataFrame(rows)


def _one_setting(design, paired, formula, s2_name, s2, n_donors, frac, seeds, n_jobs) -> list[dict]:
    per_method: dict[str, list[dict]] = {m: [] for m in (*METHODS, "oracle")}
    for seed in range(seeds):
        a = scglmm.datasets.simulate(
            n_donors=n_donors, cells_per_donor=60, n_genes=1000, frac_de=frac, lfc=(1.5, 3.0), de_direction="up",
            sigma2_range=s2, paired=paired, seed=seed,
        )  # fmt: skip
        induced = a.var["is_de"].to_numpy()
        for m in per_method:
            per_method[m].append(_scores(_fit(a, formula, m, n_jobs), induced))
    out = []
    for m, scores in per_method.items():
        mean = pd.DataFrame(scores).mean().to_dict()
        out.append({"design": design, "donor variances": s2_name, "donors": n_donors, "induced": frac, "method": m})
        out[-1].update(mean)
    print(pd.DataFrame(out).to_string(index=False), flush=True)
    return out


def kang(n_jobs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Part 2: the README's model on the shipped Kang 2018 CD14 monocytes, once per method."""
    a = scglmm.datasets.kang2018_cd14_mono()
    rows = []
    for m in METHODS:
        t0 = time.perf_counter()
        scglmm.tl.fit(
            a, "~ condition + (1 + condition | donor)", size_factors="n_counts_all_genes", norm_method=m,
            key_added=m, n_jobs=n_jobs, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        r = scglmm.get.results(a, "condition", key=m)
        hit = r["adj_p_value"] < 0.05
        rows.append(
            {
                "method": m,
                "up (adj. p < 0.05)": int((hit & (r["log_fc"] > 0)).sum()),
                "down (adj. p < 0.05)": int((hit & (r["log_fc"] < 0)).sum()),
                "median log2 FC (all tested)": float(np.nanmedian(r["log2_fc"])),
                "seconds": round(seconds, 1),
            }
        )
        print(rows[-1], flush=True)
    factors = a.uns["tmm"]["norm_factors"].assign(tmm_mode=a.uns["tmm_mode"]["norm_factors"]["factor"])
    return pd.DataFrame(rows), factors


def full_kang(path: Path) -> pd.DataFrame:
    """Part 3: pseudobulk median log2 fold changes of the full CD14 monocytes, factors from three gene sets."""
    import anndata as ad

    from scglmm._core._normalise import median_ratio_factors, pseudobulk, tmm_factors

    a = ad.read_h5ad(path)
    a = a[a.obs["cell_type"] == "CD14 Mono"]
    codes, names = pd.factorize(a.obs["donor"].astype(str) + ":" + a.obs["condition"].astype(str), sort=True)
    P = pseudobulk(a.X, codes, len(names))
    stim = np.array([n.endswith(":stim") for n in names])
    tested = P.min(axis=0) >= 5
    gene_sets = {
        "all genes": np.ones(P.shape[1], dtype=bool),
        "10 counts in every sample": P.min(axis=0) >= 10,
        "the 1,000 with most counts": np.isin(np.arange(P.shape[1]), np.argsort(-P.sum(axis=0))[:1000]),
    }
    methods = {
        "none": lambda x: np.ones(x.shape[0]),
        "tmm": tmm_factors,
        "tmm_mode": lambda x: tmm_factors(x, mode=True),
        "ratio": median_ratio_factors,
    }
    rows = []
    for label, genes in gene_sets.items():
        row = {"factors from": label, "genes": int(genes.sum()), "tested": int(tested.sum())}
        for name, fn in methods.items():
            logs = np.log2(P[:, tested] / (P.sum(axis=1) * fn(P[:, genes]))[:, None])
            row[name] = float(np.median(logs[stim].mean(axis=0) - logs[~stim].mean(axis=0)))
        rows.append(row)
        print(row, flush=True)
    return pd.DataFrame(rows)


def _write(sim: pd.DataFrame, kang_rows: pd.DataFrame, factors: pd.DataFrame, args, total: float) -> None:
    cmd = f"python benchmarks/normalisation.py --seeds {args.seeds} --n-jobs {args.n_jobs}"
    cmd += "" if args.full_kang is None else f" --full-kang {args.full_kang.name}"
    text = [
        "# Normalisation that survives a global shift: library size against TMM",
        "",
        f"Command: `{cmd}` (scglmm {scglmm.__version__}, 2-core machine shared with other jobs; {total:.0f} s in all).",
        "Produced by `benchmarks/normalisation.py`; its docstring describes the set-up.",
        "",
        "## Simulations: 10 % or 20 % of the genes strongly induced",
        "",
        f"1,000 genes, 60 cells per donor (per donor and condition when paired), induced genes 4.5- to 20-fold "
        f"up in `stim`; means over {args.seeds} seeds. `none`: each cell's total count; `tmm` (the "
        "default), `tmm_mode` and `ratio`: times the factor of its sample (donor x condition); `oracle`: the "
        "simulation's true depth.",
        "",
        sim.to_markdown(index=False, floatfmt=".3f"),
        "",
        "## Kang 2018 CD14 monocytes (shipped data, 1,000 genes)",
        "",
        "`scglmm.tl.fit(adata, '~ condition + (1 + condition | donor)', size_factors='n_counts_all_genes', "
        "norm_method=...)`; kernels compiled and cached beforehand (numba cache).",
        "",
        kang_rows.to_markdown(index=False, floatfmt=".3f"),
        "",
        "The TMM factors of the 16 samples (`uns['tmm']['norm_factors']`; `tmm_mode`: the re-centred ones):",
        "",
        factors.to_markdown(floatfmt=".3f"),
        "",
    ]
    if args.full is not None:
        text += [
            "## Full Kang 2018 CD14 monocytes: pseudobulks, factors from three gene sets",
            "",
            f"`--full-kang {args.full_kang.name}`: 4,362 cells, 16 donor x condition pseudobulks; median over the "
            "genes with 5 counts in every sample (`tested`) of the pseudobulk log2 fold change (stim over ctrl, "
            "mean over donors of log2(count / (total x factor))), the factors computed from each gene set.",
            "",
            args.full.to_markdown(index=False, floatfmt=".3f"),
            "",
        ]
    OUT.write_text("\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--full-kang", type=Path, default=None, help="kang2018_ifnb_pbmc.h5ad (part 3)")
    args = ap.parse_args()
    args.full = None if args.full_kang is None else full_kang(args.full_kang)
    logging.getLogger("scglmm").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", UserWarning)  # genes without an estimate (separation), named in each fit
    t0 = time.perf_counter()
    kang_rows, factors = kang(args.n_jobs)
    sim = simulations(args.seeds, args.n_jobs)
    _write(sim, kang_rows, factors, args, time.perf_counter() - t0)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
