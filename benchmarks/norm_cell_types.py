"""How much of the stimulation's shift each normalisation removes, per Kang 2018 cell type (issue 19, item 5).

For every cell type, the donor x condition pseudobulks of all 17,782 genes get a factor per sample from
``"tmm"`` (edgeR's TMM, the default), ``"tmm_mode"`` and ``"ratio"``
(:func:`scglmm._core._normalise.sample_factors`, with each sample's total count as its library size);
the table gives the mean log2 factor of the stimulated samples less that of the control samples: the
global shift each method takes out of every gene's fold change. Close values mean the choice matters
little on that cell type.

A second table computes the factors from a subset of the genes, the 1,000 or 2,000 with most counts in
the cell type (what a file that keeps part of the genes, like the shipped example, gives), and reports
each method's error against edgeR's TMM on all genes: which method stays nearer the whole-transcriptome
answer when it sees only the highly expressed genes.

A third table takes the genes of the shipped example (``data/kang2018_cd14_mono.h5ad``, CD14
monocytes, 1,000 genes) and gives the median of their pseudobulk log2 fold changes (stim over ctrl, mean
over donors) with the factors from all genes: the value a fit of the example should come near.

    python benchmarks/norm_cell_types.py PATH/kang2018_ifnb_pbmc.h5ad

Writes ``benchmarks/results/norm_cell_types.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scglmm._core._normalise import pseudobulk, sample_factors

METHODS = ("tmm", "tmm_mode", "ratio")


SUBSETS = (1000, 2000)


def shift(sub: ad.AnnData, method: str, n_genes: int | None = None) -> float:
    """Mean log2 factor of the stim samples less that of the ctrl samples, for one cell type.

    ``n_genes``: compute the factors from the genes with most counts only (library sizes still over all).
    """
    if n_genes is not None:
        totals = np.asarray(sub.X.sum(axis=0)).ravel()
        sub = sub[:, np.sort(np.argsort(-totals, kind="stable")[:n_genes])]
    key = (sub.obs["donor"].astype(str) + ":" + sub.obs["condition"].astype(str)).to_numpy()
    levels, codes = np.unique(key, return_inverse=True)
    pb = pseudobulk(sub.X, codes, len(levels))
    lib = np.bincount(codes, weights=np.asarray(sub.X.sum(axis=1)).ravel(), minlength=len(levels))
    f = np.log2(sample_factors(pb, lib, method=method))
    stim = np.array([lv.endswith("stim") for lv in levels])
    return float(f[stim].mean() - f[~stim].mean())


def example_median(full: ad.AnnData, example: Path) -> pd.DataFrame:
    """Median pseudobulk log2 FC of the example's genes, CD14 monocytes, factors from all genes."""
    sub = full[full.obs["cell_type"].astype(str) == "CD14 Mono"]
    genes = sub.var_names.get_indexer(ad.read_h5ad(example, backed="r").var_names)
    donor, cond = sub.obs["donor"].astype(str).to_numpy(), sub.obs["condition"].astype(str).to_numpy()
    levels, codes = np.unique(np.char.add(np.char.add(donor, ":"), cond), return_inverse=True)
    pb = pseudobulk(sub.X, codes, len(levels))
    lib = pb.sum(axis=1)
    rows = []
    for method in ("none", *METHODS):
        depth = lib * sample_factors(pb, lib, method=method)
        logp = np.log2((pb[:, genes] + 0.5) / depth[:, None])
        pairs = [(f"{d}:stim", f"{d}:ctrl") for d in np.unique(donor)]
        lfc = np.mean([logp[levels == s][0] - logp[levels == c][0] for s, c in pairs], axis=0)
        rows.append({"factors (all genes)": method, "median log2 FC of the example's genes": np.median(lfc)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5ad", type=Path)
    ap.add_argument("--example", type=Path, default=Path(__file__).parents[1] / "data" / "kang2018_cd14_mono.h5ad")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "norm_cell_types.md")
    a = ap.parse_args()
    full = ad.read_h5ad(a.h5ad)
    rows, errors = [], []
    for cell_type in sorted(full.obs["cell_type"].astype(str).unique()):
        sub = full[full.obs["cell_type"].astype(str) == cell_type]
        rows.append({"cell type": cell_type, "cells": sub.n_obs, **{m: shift(sub, m) for m in METHODS}})
        ref = rows[-1]["tmm"]
        errors.append(
            {"cell type": cell_type, **{f"{m}, top {n}": shift(sub, m, n) - ref for n in SUBSETS for m in METHODS}}
        )
    table = pd.DataFrame(rows)
    err = pd.DataFrame(errors)
    err.loc[len(err)] = {"cell type": "mean absolute error", **err.iloc[:, 1:].abs().mean().to_dict()}
    text = (
        "# The shift each normalisation removes, per Kang 2018 cell type\n\n"
        f"`python benchmarks/norm_cell_types.py {a.h5ad.name}`: mean log2 factor of the stim samples less "
        "that of the ctrl samples (donor x condition pseudobulks of all genes).\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n\n## Factors from the highly expressed genes only\n\n"
        "The same shift computed from the 1,000 or 2,000 genes with most counts in the cell type, less the "
        "shift of edgeR's TMM on all genes (the first table's `tmm` column).\n\n"
        + err.to_markdown(index=False, floatfmt=".3f")
        + "\n\n## The shipped example's genes\n\nCD14 monocytes, all cells, pseudobulk log2 fold changes of "
        f"the {a.example.name} genes, the factors computed from all genes.\n\n"
        + example_median(full, a.example).to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
