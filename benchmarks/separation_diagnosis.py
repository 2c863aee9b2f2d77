"""What separates in the Kang 2018 fits of one cell type, and whether the condition effect is estimable.

Fits ``~ donor + condition + (1 | sample)`` on the cells of the given cell types and classifies the
fitted genes by their counts per sample (the distinct design rows): the largest set of vanishing
cells (:func:`scglmm._core._separation._vanishing`: those whose mean can go to 0), whether the
reference donor (the intercept's level) is among them, and whether the reduced model estimates the
condition effect and the sample variance. For the genes whose condition effect is reported after a
separation, the estimate is compared with a paired pseudobulk log fold change (the mean over the
donors with counts in both samples of log(stim / ctrl) of counts per library size).

    python benchmarks/separation_diagnosis.py PATH/kang2018_ifnb_pbmc.h5ad "CD14 Mono" Eryth

Writes ``benchmarks/results/separation_diagnosis.md``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

import scglmm
from scglmm._core._separation import _reduced, _vanishing

FORMULA = "~ donor + condition + (1 | sample)"
COEF = "condition[T.stim]"


def _classes(sub: ad.AnnData, X: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per fitted gene: its separation class (see the module notes)."""
    U, row = np.unique(X, axis=0, return_inverse=True)
    row = row.ravel()
    codes = pd.factorize(sub.obs["sample"].astype(str), sort=True)[0]
    to_rows = sparse.csr_matrix((np.ones(row.size), (row, np.arange(row.size))), shape=(U.shape[0], row.size))
    has = np.asarray((to_rows @ (sparse.csc_matrix(sub.X) != 0).astype(float)).todense()).T > 0
    ref_rows = np.all(U[:, 1 : names.index(COEF)] == 0, axis=1)  # the reference donor's rows
    cache: dict[bytes, str] = {}
    out = []
    for h in has:
        key = np.packbits(h).tobytes()
        if key not in cache:
            cache[key] = _class(U, h, row, X, codes, ref_rows, names.index(COEF))
        out.append(cache[key])
    return pd.DataFrame({"class": out}, index=sub.var_names)


def _class(U, has, row, X, codes, ref_rows, k) -> str:
    gone = _vanishing(U, has)
    if gone is None or not gone.any():
        return "no separation"
    which = "reference donor without counts" if np.all(gone[ref_rows]) else "other cells vanish"
    red = _reduced(X, codes, gone[row])
    if red is None:
        return f"{which}: not estimable (variance or all coefficients)"
    ok = k in red.cols[red.estimable]
    return f"{which}: condition {'estimable' if ok else 'not estimable'}"


def _pseudobulk(sub: ad.AnnData) -> pd.Series:
    """Paired pseudobulk log fold change per gene over donors with counts in both samples."""
    lib = sub.obs.groupby("sample", observed=True)["n_counts"].sum()
    sums = pd.DataFrame(
        np.vstack([np.asarray(sub.X[(sub.obs["sample"] == s).to_numpy()].sum(axis=0)).ravel() for s in lib.index]),
        index=lib.index, columns=sub.var_names,
    )  # fmt: skip
    rate = sums.div(lib, axis=0)
    donor = sub.obs.groupby("sample", observed=True)["donor"].first().astype(str)
    cond = sub.obs.groupby("sample", observed=True)["condition"].first().astype(str)
    ctrl = rate[cond == "ctrl"].set_axis(donor[cond == "ctrl"])
    stim = rate[cond == "stim"].set_axis(donor[cond == "stim"])
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log(stim / ctrl.reindex(stim.index))
    return lfc.replace([np.inf, -np.inf], np.nan).mean(axis=0)


def diagnose(adata: ad.AnnData, cell_type: str, n_jobs: int) -> tuple[pd.DataFrame, str]:
    sub = adata[adata.obs["cell_type"] == cell_type].copy()
    sub.obs["donor"] = sub.obs["donor"].cat.remove_unused_categories()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(sub, FORMULA, n_jobs=n_jobs, progress=False)
    status = sub.varm["scglmm_fit"]["status"].astype(str)
    fitted = ~status.str.contains("filtered")
    names = list(sub.uns["scglmm"]["params"]["design_columns"])
    X = sub.obsm["scglmm_design"] if "scglmm_design" in sub.obsm else _design(sub)
    cls = _classes(sub[:, fitted.to_numpy()], X, names)["class"]
    coef = sub.varm["scglmm_coef"][COEF][fitted]
    table = pd.crosstab(cls, np.where(np.isfinite(coef), "condition reported", "condition NaN"))
    table.insert(0, "cell type", cell_type)
    pb = _pseudobulk(sub[:, fitted.to_numpy()])
    sep = status[fitted].str.contains("partial_separation") & np.isfinite(coef)
    okg = (status[fitted] == "ok") | (status[fitted] == "sigma2_boundary")
    line = (
        f"{cell_type}: correlation of the condition effect with the pseudobulk log fold change: "
        f"{_corr(coef[sep], pb[sep]):.3f} over {int(sep.sum())} genes reported after a separation, "
        f"{_corr(coef[okg], pb[okg]):.3f} over {int(okg.sum())} genes without one"
    )
    return table.reset_index(names="class"), line


def _corr(a: pd.Series, b: pd.Series) -> float:
    m = np.isfinite(a.to_numpy()) & np.isfinite(b.to_numpy())
    return float(np.corrcoef(a.to_numpy()[m], b.to_numpy()[m])[0, 1]) if m.sum() > 2 else float("nan")


def _design(sub: ad.AnnData) -> np.ndarray:
    from scglmm._formula import build_design

    return build_design("~ donor + condition", sub.obs).matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5ad", type=Path)
    ap.add_argument("cell_types", nargs="+")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "separation_diagnosis.md")
    a = ap.parse_args()
    adata = ad.read_h5ad(a.h5ad)
    parts = [diagnose(adata, ct, a.n_jobs) for ct in a.cell_types]
    table = pd.concat([t for t, _ in parts]).fillna(0)
    cts = " ".join(f'"{c}"' if " " in c else c for c in a.cell_types)
    text = (
        "# What separates on Kang 2018, and whether the condition effect is estimable\n\n"
        f"Command: `python benchmarks/separation_diagnosis.py {a.h5ad.name} {cts}`; formula `{FORMULA}`.\n\n"
        + table.to_markdown(index=False, floatfmt=".0f")
        + "\n\n"
        + "\n".join(f"- {line}" for _, line in parts)
        + "\n"
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
