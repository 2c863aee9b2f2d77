"""Calibration of the default test on nested and crossed random effects: null simulations, 4 to 20 donors.

Counts are drawn from the NB GLMM with every random effect of the design and no condition effect, and
fitted with :func:`scglmm.tl.fit` as a user would, then tested with :func:`scglmm.tl.test` under each
calibration of a general structure; the share of genes with p < 0.05 (and < 0.01) for ``condition`` is
reported for the fit's default test and for each calibration.

Designs (``cells`` cells per sample, library sizes log-normal):

- ``nested_sample``: every donor has a ctrl and a stim sample (the condition varies within donors,
  constant within samples); ``~ condition + (1 | donor/sample)``.
- ``nested_donor``: half the donors ctrl, half stim, three samples per donor (the condition is constant
  within donors); ``~ condition + (1 | donor/sample)``.
- ``crossed``: half the donors ctrl, half stim, each donor's cells split over two of four batches shared
  by all donors; ``~ condition + (1 | donor) + (1 | batch)``.

    python benchmarks/calibration_structures.py [--donors 4 6 10 20] [--genes 300] [--cells 60] [--seed 1]

Prints a table and writes ``benchmarks/results/calibration_structures.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

import scglmm

DESIGNS = {
    "nested_sample": "~ condition + (1 | donor/sample)",
    "nested_donor": "~ condition + (1 | donor/sample)",
    "crossed": "~ condition + (1 | donor) + (1 | batch)",
}
CALIBRATIONS = ("eb", "t", "z")


def cells_of(design: str, n_donors: int, cells: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per cell: donor, sample, batch, condition."""
    rows = []
    for d in range(n_donors):
        if design == "nested_sample":
            samples = [(f"D{d}_{c}", c) for c in ("ctrl", "stim")]
        else:
            cond = "ctrl" if d < n_donors // 2 else "stim"
            samples = [(f"D{d}_s{k}", cond) for k in range(3 if design == "nested_donor" else 2)]
        for k, (s, c) in enumerate(samples):
            batch = f"B{(d + k) % 4}"
            rows += [(f"D{d}", s, batch, c)] * cells
    obs = pd.DataFrame(rows, columns=["donor", "sample", "batch", "condition"])
    obs["libsize"] = np.exp(np.log(5000.0) + 0.4 * rng.standard_normal(len(obs)))
    for col in ("donor", "sample", "batch", "condition"):
        obs[col] = pd.Categorical(obs[col])
    obs.index = [f"c{i}" for i in range(len(obs))]
    return obs


def simulate_null(design: str, n_donors: int, n_genes: int, cells: int, seed: int) -> ad.AnnData:
    """Null counts: per gene a mean, NB dispersion and a variance for every grouping factor."""
    rng = np.random.default_rng(seed)
    obs = cells_of(design, n_donors, cells, rng)
    base = np.log(rng.uniform(0.02, 5.0, n_genes) / 5000.0)
    phi = np.exp(rng.uniform(np.log(0.05), np.log(1.0), n_genes))
    eta = base[None, :] + np.log(obs["libsize"].to_numpy())[:, None]
    for col in ("donor", "sample") if design.startswith("nested") else ("donor", "batch"):
        codes = obs[col].cat.codes.to_numpy()
        sd = np.sqrt(rng.uniform(0.0, 0.5, n_genes))
        eta += (rng.standard_normal((codes.max() + 1, n_genes)) * sd)[codes]
    mu = np.exp(eta)
    Y = rng.negative_binomial(1.0 / phi, 1.0 / (1.0 + phi * mu)).astype(np.float32)
    var = pd.DataFrame(index=[f"G{g:04d}" for g in range(n_genes)])
    return ad.AnnData(sparse.csr_matrix(Y), obs=obs, var=var)


def rejection(design: str, n_donors: int, n_genes: int, cells: int, seed: int) -> list[dict]:
    """Share of null genes with p < 0.05 and < 0.01 for ``condition``: the fit's default test, then each
    calibration through :func:`scglmm.tl.test` (the contrast path) on the same fit."""
    a = simulate_null(design, n_donors, n_genes, cells, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scglmm.tl.fit(a, DESIGNS[design], size_factors="libsize", n_jobs=2, progress=False)
    seconds = time.perf_counter() - t0
    tests = {"fit (default)": a.varm["scglmm_pval"]["condition[T.stim]"].to_numpy()}
    for cal in CALIBRATIONS:
        name = scglmm.tl.test(a, "condition", calibration=cal, key_added=f"cond_{cal}")
        tests[f"test {cal}"] = a.varm[f"scglmm_contrast_{name}"]["p_value"].to_numpy()
    rows = []
    for method, p in tests.items():
        p = p[np.isfinite(p)]
        rows.append({
            "design": design, "donors": n_donors, "test": method, "genes": p.size,
            "p<0.05": float(np.mean(p < 0.05)), "p<0.01": float(np.mean(p < 0.01)), "fit_seconds": seconds,
        })  # fmt: skip
        print(f"{design} {n_donors} donors {method}: {rows[-1]['p<0.05']:.3f} at 0.05 ({p.size} genes)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donors", type=int, nargs="+", default=[4, 6, 10, 20])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS))
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--cells", type=int, default=60, help="cells per sample")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration_structures.md")
    a = ap.parse_args()
    rows = [
        r
        for design in a.designs
        for i, nd in enumerate(a.donors)
        for r in rejection(design, nd, a.genes, a.cells, a.seed + 1000 * i)
    ]
    df = pd.DataFrame(rows)
    table = df.pivot_table(index=["design", "donors"], columns="test", values="p<0.05").round(3)
    strict = df.pivot_table(index=["design", "donors"], columns="test", values="p<0.01").round(3)
    lines = [
        "# Calibration of nested and crossed random effects (null simulations)",
        "",
        f"`python benchmarks/calibration_structures.py --genes {a.genes} --cells {a.cells} --seed {a.seed} "
        f"--donors {' '.join(map(str, a.donors))}`; scglmm {scglmm.__version__}.",
        "",
        "Share of null genes with p < 0.05 for `condition` (target 0.05; within [0.02, 0.07] from 6 donors on):",
        "",
        table.to_markdown(),
        "",
        "p < 0.01 (target 0.01):",
        "",
        strict.to_markdown(),
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
