"""The full Kang 2018 data one cell type at a time, with the README's paired model (issues 19 and 20).

Fits ``~ condition + (1 + condition | donor)`` with ``groupby="cell_type"`` (13 types, default gene filter,
``size_factors="n_counts"``) as a user would and reports, per cell type: genes fitted, genes refitted with
the weak prior (status ``penalised``; issue 19 items 1-2), those among them detected in at least 10 % of
the cells of one condition (the switched-on genes a biologist looks for), genes whose condition effect
has no p-value, and the wall time. With ``--baseline`` the ``(1 | donor)`` fit of the same data runs first
in the same command, for the time ratio (issue 20, item 3).

    python benchmarks/kang_cell_types.py PATH/kang2018_ifnb_pbmc.h5ad [--n-jobs 2] [--baseline]

``PATH`` is the shared data folder (``shared/data/kang2018_ifnb_pbmc/``). Writes
``benchmarks/results/kang_cell_types.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd

import scglmm

FORMULA = "~ condition + (1 + condition | donor)"
BASELINE = "~ condition + (1 | donor)"
COEF = "condition[T.stim]"


def _fit(adata: ad.AnnData, formula: str, n_jobs: int) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(adata, formula, groupby="cell_type", size_factors="n_counts", n_jobs=n_jobs, progress=False)
    return time.perf_counter() - t0


def _per_type(adata: ad.AnnData) -> pd.DataFrame:
    rows = []
    for group in adata.uns["scglmm"]["params"]["groups"]:
        res = scglmm.get.results(adata, COEF, group=group)
        fitted = res[res["status_kind"] != "filtered"]
        pen = fitted[fitted["status_kind"] == "penalised"]
        detected = (pen["pct_stim"] >= 0.1) | (pen["pct_ctrl"] >= 0.1)
        rows.append({
            "cell type": group, "genes fitted": len(fitted), "penalised": len(pen),
            "penalised, in >= 10 % of one side": int(detected.sum()),
            "no p-value": int(fitted["p_value"].isna().sum()),
            "adj. p < 0.05": int((fitted["adj_p_value"] < 0.05).sum()),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table.loc[len(table)] = {"cell type": "all", **table.drop(columns="cell type").sum().to_dict()}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5ad", type=Path)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="also time the (1 | donor) fit, first")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kang_cell_types.md")
    a = ap.parse_args()
    adata = ad.read_h5ad(a.h5ad)
    adata.var_names = adata.var["gene_symbol"].astype(str).to_numpy()
    adata.var_names_make_unique()
    times = {}
    if a.baseline:
        times[BASELINE] = _fit(adata.copy(), BASELINE, a.n_jobs)
        print(f"{BASELINE}: {times[BASELINE]:.0f} s", flush=True)
    times[FORMULA] = _fit(adata, FORMULA, a.n_jobs)
    print(f"{FORMULA}: {times[FORMULA]:.0f} s", flush=True)
    table = _per_type(adata)
    n_fits = int(table["genes fitted"].iloc[-1])
    timing = "; ".join(f"`{f}` {s:.0f} s ({1000 * s * a.n_jobs / n_fits:.1f} ms of worker time per fit)"
                       for f, s in times.items())  # fmt: skip
    if len(times) == 2:
        timing += f"; ratio {times[FORMULA] / times[BASELINE]:.1f}"
    text = (
        "# Kang 2018, one cell type at a time, paired random-slope model\n\n"
        f"`python benchmarks/kang_cell_types.py {a.h5ad.name} --n-jobs {a.n_jobs}"
        f"{' --baseline' if a.baseline else ''}`: `{FORMULA}`, `groupby='cell_type'`, "
        f"`size_factors='n_counts'`, default gene filter and `separation='prior'`; {n_fits} gene fits. "
        f"Wall time: {timing}.\n\n" + table.to_markdown(index=False) + "\n"
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
