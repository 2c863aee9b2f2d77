"""The likelihood-ratio test of a random slope's effect on the shipped Kang CD14 monocytes (issue 19, item 7).

Fits ``~ condition + (1 + condition | donor)`` (8 donors, each in both conditions) and tests ``condition``
by the Wald test (default ``"eb"``) and by the LRT with the slope kept in both models, whose ``LR / 1`` is
referred to ``F(1, 7)``; prints, for the genes the issue names and the LRT's top genes, the Wald p, the
LRT's F p and the chi-square(1) p of the same statistic (the reference used before).

    python benchmarks/lrt_slope_kang.py [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
from scipy import stats

import scglmm

GENES = ["RPS3", "ENO1", "CCL8", "ISG15", "IFIT3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-jobs", type=int, default=2)
    a = ap.parse_args()
    adata = scglmm.datasets.kang2018_cd14_mono()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(adata, "~ condition + (1 + condition | donor)", size_factors="n_counts_all_genes",
                      n_jobs=a.n_jobs, progress=False)  # fmt: skip
        name = scglmm.tl.test(adata, "condition", method="lrt", n_jobs=a.n_jobs, progress=False)
    wald = scglmm.get.results(adata, "condition")
    lrt = scglmm.get.results(adata, contrast=name)
    table = pd.DataFrame({
        "wald_p": wald["p_value"], "lrt_F_p": lrt["p_value"], "lrt_chi2_p": stats.chi2.sf(lrt["stat"], 1),
        "LR": lrt["stat"],
    })  # fmt: skip
    info = adata.uns["scglmm"]["contrasts"][name]
    print(f"LRT reference: {info['reference']}")
    shown = [g for g in GENES if g in table.index]
    top = table.sort_values("lrt_F_p").head(5)
    print(pd.concat([table.loc[shown], top]).drop_duplicates().to_string(float_format=lambda x: f"{x:.3g}"))
    ok = np.isfinite(table["lrt_F_p"])
    for col in ("wald_p", "lrt_F_p", "lrt_chi2_p"):
        print(f"genes at p < 1e-6 by {col}: {int((table.loc[ok, col] < 1e-6).sum())} of {int(ok.sum())}")


if __name__ == "__main__":
    main()
