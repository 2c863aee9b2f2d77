"""CPU time per gene of the random-effect structures as donors get more numerous (issue 20).

Paired data from :func:`scglmm.datasets.simulate` (``paired=True, slope_sd=0.3``), 50,000 cells in
all, the donors getting fewer cells as they get more numerous: 20 x 2,500, 100 x 500, 500 x 100 and
1,000 x 50 cells per donor (half ctrl, half stim). Fixed design ``~ condition``; the structures:

- ``(1 | donor)``: the donor-intercept kernels (the baseline of the ratios);
- ``(1 + condition | donor)``: a correlated random slope;
- ``(1 | donor/sample)``: sample = donor x condition, nested in the donor;
- ``(1 | donor) + (1 | batch)``: 300 batch labels drawn uniformly at random for every cell, so
  that every donor spreads over many batches (the crossing is as dense as it gets: with 50 cells per
  donor, about 46 batches per donor).

One thread, one process, kernels compiled (or loaded) before timing; each gene is timed alone with
``time.process_time`` (CPU of this process, robust to a shared machine): the donor intercept through
:func:`scglmm._core._schedule.fit_block` on the gene's column, the other structures through
:func:`scglmm._core._schedule.fit_columns` on a structure prepared once per row (the per-gene work of
:func:`scglmm.fit_genes` without the refit of genes that separate). The table gives the median over
the genes and the ratio to ``(1 | donor)`` in the same run. A structure is stopped after
``--budget`` CPU seconds on a row (at least 3 genes): the baseline's slow rows.

    python benchmarks/cohort.py [--genes 40] [--budget 120] [--rows 20,100,500,1000] [--out FILE]

Prints a markdown table (and appends it, under ``--title``, to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from scipy import sparse

import scglmm
from scglmm._core._design import few_rows_data, gauss_hermite, prepare_design
from scglmm._core._re import prepare_re
from scglmm._core._schedule import Design, fit_block, fit_columns
from scglmm._formula import build_design, build_re_terms, parse_re_formula

N_CELLS = 50_000
N_BATCH = 300
STRUCTURES = {
    "(1 | donor)": "~ condition + (1 | donor)",
    "slope": "~ condition + (1 + condition | donor)",
    "nested": "~ condition + (1 | donor/sample)",
    "crossed": "~ condition + (1 | donor) + (1 | batch)",
}


def cohort_data(donors: int, n_genes: int, seed: int = 5):
    """Paired data: ``donors`` donors sharing :data:`N_CELLS` cells, a batch label per cell."""
    adata = scglmm.datasets.simulate(
        n_donors=donors, cells_per_donor=N_CELLS // (2 * donors), n_genes=n_genes, paired=True, slope_sd=0.3,
        mean_range=(0.01, 5.0), phi_range=(0.02, 2.0), sigma2_range=(0.0, 0.8), seed=seed,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    adata.obs["batch"] = np.char.add("B", rng.integers(N_BATCH, size=adata.n_obs).astype(str))
    return adata


def _donor_runner(adata, X, off):
    """A function fitting one gene's CSC column with the donor-intercept kernels."""
    donors = adata.obs["donor"].astype(str).to_numpy()
    levels, codes = np.unique(donors, return_inverse=True)
    prepared = prepare_design(X, codes, levels, off)
    design = Design(
        prepared.cells(), gauss_hermite(1), few_rows_data(prepared.X, prepared.offset, prepared.donors.starts)
    )

    def run(col: sparse.csc_matrix):
        return fit_block(col, design)

    return run


def _general_runner(formula: str, adata, X, off):
    """A function fitting one gene's CSC column with the general engine (structure prepared once)."""
    terms = build_re_terms(parse_re_formula(formula).terms, adata.obs)
    s = prepare_re(X, off, terms)

    def run(col: sparse.csc_matrix):
        return fit_columns(s, col)

    return run


def time_structure(run, cols: list, budget: float) -> tuple[float, int]:
    """Median CPU ms per gene over ``cols`` (stopping once ``budget`` CPU seconds are spent, after 3 genes)."""
    run(cols[0])  # compile / load the kernels, fill the structure's compiled functions
    times = []
    for col in cols:
        t0 = time.process_time()
        run(col)
        times.append(time.process_time() - t0)
        if sum(times) > budget and len(times) >= 3:
            break
    return 1000.0 * float(np.median(times)), len(times)


def time_row(donors: int, n_genes: int, budget: float) -> dict:
    """Median CPU ms per gene of every structure at ``donors`` donors."""
    adata = cohort_data(donors, n_genes)
    Y = sparse.csc_matrix(adata.X)
    cols = [Y[:, [g]] for g in range(n_genes)]
    off = np.log(adata.obs["libsize"].to_numpy(float))
    X = build_design(parse_re_formula(STRUCTURES["slope"]).fixed, adata.obs).matrix
    out = {"donors": donors, "cells": N_CELLS // donors}
    for name, formula in STRUCTURES.items():
        donor = name == "(1 | donor)"
        run = _donor_runner(adata, X, off) if donor else _general_runner(formula, adata, X, off)
        out[name] = time_structure(run, cols, budget)
        print(f"{donors} donors, {name}: {out[name][0]:.2f} ms/gene ({out[name][1]} genes)", flush=True)
    return out


def table(rows: list[dict]) -> list[str]:
    """The markdown lines of the timings."""
    names = list(STRUCTURES)
    head = " | ".join(f"`{STRUCTURES[k].split('+', 1)[1].strip()}`".replace("|", "\\|") for k in names)
    lines = [
        f"| donors x cells per donor | {head} | ratios (slope, nested, crossed) |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for r in rows:
        base = r[names[0]][0]
        ms = " | ".join(f"{r[k][0]:.1f} ms ({r[k][1]})" for k in names)
        ratios = ", ".join(f"{r[k][0] / base:.1f}" for k in names[1:])
        lines.append(f"| {r['donors']} x {r['cells']} | {ms} | {ratios} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=40)
    ap.add_argument("--budget", type=float, default=120.0, help="CPU seconds per structure and row")
    ap.add_argument("--rows", default="20,100,500,1000", help="numbers of donors")
    ap.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    ap.add_argument("--title", default="scglmm at " + str(Path(scglmm.__file__).parents[1]))
    a = ap.parse_args()
    rows = [time_row(int(k), a.genes, a.budget) for k in a.rows.split(",")]
    lines = [
        f"## {a.title}",
        "",
        f"{platform.processor() or platform.machine()}, one thread, Python {platform.python_version()}; "
        f"`python benchmarks/cohort.py --genes {a.genes} --budget {a.budget:g} --rows {a.rows}`. "
        "CPU ms per gene, median over the genes timed (their number in brackets).",
        "",
        *table(rows),
        "",
    ]
    print("\n".join(lines))
    if a.out is not None:
        with a.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
