"""Crossed terms with many levels: donors crossed with plates, as the plates grow (issue 20, item 1).

Paired data from :func:`scglmm.datasets.simulate` (``--cells`` cells per donor and condition), ``~
condition + (1 | donor) + (1 | plate)`` with half as many plates as donors: donor ``d`` has its cells
on plates ``d // 2`` and ``d // 2 + 1`` (mod the plates), as when consecutive donors are processed on
shared plates, and the plates' labels are a random permutation of that sequence (barcodes, or names
that sort as text), so the natural order of the levels is no band. Every donor is a top-level block;
the plates are the border, whose Schur complement has about four non-zeros per row.

Per row of the table, one thread, kernels compiled before timing, CPU time per gene
(``time.process_time``, median over ``--genes`` genes):

- ``(1 | donor)``: the donor-intercept kernels, the baseline of the ratios;
- ``envelope``: the crossed model as prepared (:func:`scglmm._core._re.prepare_re`: the plates in reverse
  Cuthill-McKee order, the Schur complement over its envelope);
- ``dense border``: the same kernels with the envelope forced to the whole lower triangle, which is
  the dense elimination's memory and work (what the engine did before the envelope), stopped after
  ``--budget`` CPU seconds (at least one gene);
- the entries of the border x border matrices: envelope against the dense ``nc (nc + 1) / 2``;
- the factorisation of the whole random-effect system ``H`` at the first gene's optimum (weights drawn
  at random): the engine's block elimination with the envelope (:func:`.block_factor`) against
  CHOLMOD (supernodal, AMD order; through ``sksparse_minimal`` if installed, which repeats its
  symbolic analysis on every call, as an outside library called per inner iteration would have to).

    python benchmarks/crossed_levels.py [--donors 250,500,1000,2000] [--genes 10] [--budget 60] [--out FILE]

Prints a markdown table (and appends it, under ``--title``, to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time

import numpy as np
from scipy import sparse

import scglmm
from scglmm._core._design import few_rows_data, gauss_hermite, prepare_design
from scglmm._core._re import prepare_re
from scglmm._core._schedule import Design, fit_block, fit_columns
from scglmm._core.kernels._linalg import block_factor, envelope
from scglmm._core.kernels._re_laplace import _accumulate, re_amat, re_workspace
from scglmm._formula import build_design, build_re_terms, parse_re_formula

FORMULA = "~ condition + (1 | donor) + (1 | plate)"


def plate_data(donors: int, cells: int, n_genes: int, seed: int = 9):
    """Paired cells of ``donors`` donors on ``donors // 2`` plates (see the module docstring)."""
    adata = scglmm.datasets.simulate(
        n_donors=donors, cells_per_donor=2 * cells, n_genes=n_genes, paired=True, mean_range=(0.05, 3.0),
        sigma2_range=(0.1, 0.6), seed=seed,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    plates = donors // 2
    d = adata.obs["donor"].cat.codes.to_numpy().astype(np.int64)
    seq = (d // 2 + rng.integers(2, size=adata.n_obs)) % plates
    label = rng.permutation(plates)
    adata.obs["plate"] = np.char.add("P", label[seq].astype(str))
    return adata


def dense_border(s):
    """``s`` with its border's envelope forced to the whole lower triangle (the dense elimination)."""
    nc = s.n_border
    env = envelope(np.zeros(nc, dtype=np.int64))
    data = s.data._replace(eptr=env[0], efirst=env[1], cptr=env[2], crow=env[3])
    return dataclasses.replace(s, data=data, compiled={})


def median_cpu(run, cols: list, budget: float) -> tuple[float, int]:
    """Median CPU ms per gene over ``cols`` (after a first untimed call; stops after ``budget`` s)."""
    run(cols[0])
    times = []
    for col in cols:
        t0 = time.process_time()
        run(col)
        times.append(time.process_time() - t0)
        if sum(times) > budget:
            break
    return 1000.0 * float(np.median(times)), len(times)


def factor_times(s, phi: np.ndarray, reps: int = 20) -> tuple[float, float | None]:
    """ms per factorisation of ``H = A'WA + I`` (``A`` the rows of ``Z Lambda`` at ``phi``, weights drawn
    from U(0.1, 2)): the engine's, and CHOLMOD's if available."""
    d = s.data
    a = re_amat(d, phi)
    w = np.random.default_rng(0).uniform(0.1, 2.0, a.shape[0])
    work = re_workspace(d)
    _accumulate(d, a, w, work)
    block_factor(d.nk, d.bptr, d.bcol, work, 1.0)
    t0 = time.process_time()
    for _ in range(reps):
        block_factor(d.nk, d.bptr, d.bcol, work, 1.0)
    ours = 1000.0 * (time.process_time() - t0) / reps
    try:
        from sksparse_minimal import SparseCholesky
    except ImportError:
        return ours, None
    n, R = a.shape
    A = sparse.csr_matrix((a.ravel(), d.gidx.ravel(), np.arange(0, n * R + 1, R)), shape=(n, d.Q))
    H = sparse.csc_matrix(A.T @ sparse.diags(w) @ A + sparse.identity(d.Q))
    SparseCholesky(H)
    t0 = time.process_time()
    for _ in range(reps):
        SparseCholesky(H)
    return ours, 1000.0 * (time.process_time() - t0) / reps


def time_row(donors: int, cells: int, n_genes: int, budget: float) -> dict:
    """Every measurement of one row."""
    adata = plate_data(donors, cells, n_genes)
    Y = sparse.csc_matrix(adata.X)
    cols = [Y[:, [g]] for g in range(n_genes)]
    off = np.log(adata.obs["libsize"].to_numpy(float))
    X = build_design(parse_re_formula(FORMULA).fixed, adata.obs).matrix
    codes = adata.obs["donor"].cat.codes.to_numpy()
    prepared = prepare_design(X, codes, adata.obs["donor"].cat.categories.to_numpy(), off)
    design = Design(
        prepared.cells(), gauss_hermite(1), few_rows_data(prepared.X, prepared.offset, prepared.donors.starts)
    )
    s = prepare_re(X, off, build_re_terms(parse_re_formula(FORMULA).terms, adata.obs))
    sd = dense_border(s)
    nc = s.n_border
    out = {"donors": donors, "plates": nc, "cells": adata.n_obs}
    out["donor"] = median_cpu(lambda c: fit_block(c, design), cols, budget)
    out["envelope"] = median_cpu(lambda c: fit_columns(s, c), cols, budget)
    out["dense"] = median_cpu(lambda c: fit_columns(sd, c), cols, budget)
    out["entries"] = (int(s.data.eptr[-1]), nc * (nc + 1) // 2)
    fits, _ = fit_columns(s, cols[0])
    out["factor"] = factor_times(s, fits[0].phi)
    print(out, flush=True)
    return out


def table(rows: list[dict]) -> list[str]:
    """The markdown lines of the measurements."""
    lines = [
        "| donors x plates (cells) | `(1 \\| donor)` | envelope | dense border | ratio envelope / `(1 \\| donor)` "
        "| dense / envelope | border entries: envelope / dense | factorisation of H: engine / CHOLMOD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base, env, dense = r["donor"][0], r["envelope"][0], r["dense"][0]
        ours, chol = r["factor"]
        fac = f"{ours:.2f} / {chol:.2f} ms" if chol is not None else f"{ours:.2f} ms / (not installed)"
        lines.append(
            f"| {r['donors']} x {r['plates']} ({r['cells']:,}) | {base:.1f} ms | {env:.1f} ms | "
            f"{dense:.1f} ms ({r['dense'][1]}) | {env / base:.1f} | {dense / env:.1f} | "
            f"{r['entries'][0]:,} / {r['entries'][1]:,} | {fac} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donors", default="250,500,1000,2000")
    ap.add_argument("--cells", type=int, default=10, help="cells per donor and condition")
    ap.add_argument("--genes", type=int, default=10)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--out")
    ap.add_argument("--title", default="Donors crossed with plates")
    a = ap.parse_args()
    rows = [time_row(int(k), a.cells, a.genes, a.budget) for k in a.donors.split(",")]
    head = (
        f"{platform.machine()}, one thread, Python {sys.version.split()[0]}; `python benchmarks/crossed_levels.py "
        f"--donors {a.donors} --cells {a.cells} --genes {a.genes} --budget {a.budget:g}`. CPU ms per gene, "
        "median over the genes timed (the dense border's number of genes in brackets)."
    )
    lines = [head, "", *table(rows)]
    print("\n".join(lines))
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(f"\n## {a.title}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
