"""How much of the stimulation's shift each normalisation removes, per Kang 2018 cell type (issue 19, item 5).

For every cell type, the donor x condition pseudobulks of all 17,782 genes get a factor per sample from
``"tmm"`` (edgeR's TMM, the default), ``"tmm_mode"`` and ``"ratio"``
(:func:`scglmm._core._normalise.sample_factors`, with each sample's total count as its library size);
the table gives the mean log2 factor of the stimulated samples less that of the control samples: the
global shift each method takes out of every gene's fold change. Close values mean the choice matters
little on that cell type.

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


def shift(sub: ad.AnnData, method: str) -> float:
    """Mean log2 factor of the stim samples less that of the ctrl samples, for one cell type."""
    key = (sub.obs["donor"].astype(str) + ":" + sub.obs["condition"].astype(str)).to_numpy()
    levels, codes = np.unique(key, return_inverse=True)
    pb = pseudobulk(sub.X, codes, len(levels))
    lib = np.bincount(codes, weights=np.asarray(sub.X.sum(axis=1)).ravel(), minlength=len(levels))
    f = np.log2(sample_factors(pb, lib, method=method))
    stim = np.array([lv.endswith("stim") for lv in levels])
    return float(f[stim].mean() - f[~stim].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5ad", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "norm_cell_types.md")
    a = ap.parse_args()
    full = ad.read_h5ad(a.h5ad)
    rows = []
    for cell_type in sorted(full.obs["cell_type"].astype(str).unique()):
        sub = full[full.obs["cell_type"].astype(str) == cell_type]
        rows.append({"cell type": cell_type, "cells": sub.n_obs, **{m: shift(sub, m) for m in METHODS}})
    table = pd.DataFrame(rows)
    text = (
        "# The shift each normalisation removes, per Kang 2018 cell type\n\n"
        f"`python benchmarks/norm_cell_types.py {a.h5ad.name}`: mean log2 factor of the stim samples less "
        "that of the ctrl samples (donor x condition pseudobulks of all genes).\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
