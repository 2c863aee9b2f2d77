"""Write the pseudobulk matrices whose edgeR factors ``edger_factors.R`` computes (run once, from the repo root).

``python tests/data/normalisation/make_inputs.py``: ``kang_pseudobulk.csv`` (the shipped Kang 2018 CD14
monocytes summed per donor x condition, 16 samples x 1,000 genes), ``shift_pseudobulk.csv`` (a simulation
with 15 % of genes induced, 12 samples x 300 genes) and ``small.csv`` (a hand-made matrix with ties, zeros
and an all-zero gene). Samples are rows, genes columns.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import scglmm
from scglmm._core._normalise import pseudobulk

HERE = Path(__file__).parent


def _write(adata: ad.AnnData, columns: list[str], name: str) -> None:
    labels = adata.obs[columns].astype(str).agg(":".join, axis=1)
    codes, uniques = pd.factorize(labels, sort=True)
    sums = pseudobulk(adata.X, codes, len(uniques)).astype(np.int64)
    pd.DataFrame(sums, index=uniques, columns=adata.var_names).to_csv(HERE / name)


if __name__ == "__main__":
    kang = ad.read_h5ad(HERE.parents[2] / "data" / "kang2018_cd14_mono.h5ad")
    _write(kang, ["donor", "condition"], "kang_pseudobulk.csv")
    sim = scglmm.datasets.simulate(
        n_donors=6, cells_per_donor=30, n_genes=300, frac_de=0.15, lfc=(1.0, 2.0), paired=True, seed=3,
        de_direction="up",
    )  # fmt: skip
    _write(sim, ["donor", "condition"], "shift_pseudobulk.csv")
    small = np.array(
        [[10, 0, 5, 5, 3, 0, 100, 7, 2, 2], [20, 0, 5, 0, 6, 1, 40, 7, 2, 2], [15, 0, 9, 5, 3, 3, 80, 0, 4, 1]]
    )
    pd.DataFrame(small, index=["s1", "s2", "s3"], columns=[f"g{i}" for i in range(10)]).to_csv(HERE / "small.csv")
