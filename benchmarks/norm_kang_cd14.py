"""What each normalisation gives on one whole Kang 2018 cell type, against pseudobulk edgeR (issue 19, item 5).

Fits ``~ condition + (1 + condition | donor)`` to every gene of one cell type of the full Kang 2018
file (all 17,782 genes, so the library sizes and the factors see the whole transcriptome) with
``norm_method`` ``"tmm_mode"`` (the default), ``"tmm"`` and ``"none"``, and reports the genes up
and down at adjusted p < 0.05 and the median log2 fold change of all tested genes. With ``--edger``
(``shared/reference/kang_pseudobulk/<type>.de.csv``: paired pseudobulk edgeR QL with TMM) the same
counts for edgeR, and each fit's correlation of log2 fold changes with edgeR's on the genes both test.

    python benchmarks/norm_kang_cd14.py PATH/kang2018_ifnb_pbmc.h5ad [--cell-type "CD14 Mono"]
        [--edger PATH/CD14_Mono.de.csv] [--n-jobs 2]

Writes ``benchmarks/results/norm_kang_<type>.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import scglmm

FORMULA = "~ condition + (1 + condition | donor)"
METHODS = ("tmm_mode", "tmm", "none")


def fit_row(a: ad.AnnData, method: str, n_jobs: int) -> tuple[dict, pd.Series]:
    """One fit: genes up / down at adjusted p < 0.05, median log2 FC, seconds; and the log2 FCs."""
    t0 = time.perf_counter()
    scglmm.tl.fit(a, FORMULA, norm_method=method, key_added=method, n_jobs=n_jobs, progress=False)
    seconds = time.perf_counter() - t0
    res = scglmm.get.results(a, "condition", key=method)
    tested = res["p_value"].notna()
    sig = res["adj_p_value"] < 0.05
    row = {
        "method": f"scglmm, {method}",
        "tested": int(tested.sum()),
        "up": int((sig & (res["log2_fc"] > 0)).sum()),
        "down": int((sig & (res["log2_fc"] < 0)).sum()),
        "median log2 FC": float(res.loc[tested, "log2_fc"].median()),
        "seconds": seconds,
    }
    return row, res.loc[tested, "log2_fc"]


def edger_row(path: Path) -> tuple[dict, pd.Series]:
    """The same counts for pseudobulk edgeR."""
    de = pd.read_csv(path).set_index("gene")
    sig = de["edger_fdr"] < 0.05
    row = {
        "method": "pseudobulk edgeR QL, TMM",
        "tested": len(de),
        "up": int((sig & (de["edger_logFC"] > 0)).sum()),
        "down": int((sig & (de["edger_logFC"] < 0)).sum()),
        "median log2 FC": float(de["edger_logFC"].median()),
        "seconds": np.nan,
    }
    return row, de["edger_logFC"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5ad", type=Path)
    ap.add_argument("--cell-type", default="CD14 Mono")
    ap.add_argument("--edger", type=Path, default=None)
    ap.add_argument("--n-jobs", type=int, default=2)
    a = ap.parse_args()
    full = ad.read_h5ad(a.h5ad)
    sub = full[full.obs["cell_type"].astype(str) == a.cell_type].copy()
    rows, lfc = [], {}
    for method in METHODS:
        row, lfc[row["method"]] = fit_row(sub, method, a.n_jobs)
        rows.append(row)
    if a.edger is not None:
        row, ref = edger_row(a.edger)
        rows.append(row)
        for r in rows[:-1]:
            common = lfc[r["method"]].index.intersection(ref.index)
            r["cor with edgeR log2 FC"] = float(np.corrcoef(lfc[r["method"]][common], ref[common])[0, 1])
    table = pd.DataFrame(rows)
    text = (
        f"# Normalisation on the whole Kang 2018 {a.cell_type} ({sub.n_obs} cells, {sub.n_vars} genes)\n\n"
        f"`python benchmarks/norm_kang_cd14.py {a.h5ad.name} --cell-type '{a.cell_type}'"
        + ("" if a.edger is None else f" --edger {a.edger.name}")
        + f" --n-jobs {a.n_jobs}` (scglmm {scglmm.__version__}): `{FORMULA}`, adjusted p < 0.05.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    out = Path(__file__).parent / "results" / f"norm_kang_{a.cell_type.replace(' ', '_')}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
