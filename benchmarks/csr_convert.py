"""Reading CSR counts by gene: scglmm's CSR -> CSC panels against scipy's ``tocsc``.

scanpy stores counts as CSR (cells are rows); scglmm fits genes, so it reads in-memory CSR counts
through CSC *panels* of consecutive genes (``scglmm._core._counts.block_getter``), converted in
``n_threads`` threads that each scatter a range of rows. This script times, in one process on the
same matrix, the whole conversion (column counts + every panel) with 1 and 2 threads and scipy's
``tocsc()`` (single-threaded, the baseline), interleaved over the repeats, and reports medians in
nanoseconds per non-zero and the ratios to scipy.

    python benchmarks/csr_convert.py [--cells 50000] [--genes 500] [--repeats 9]

Prints a table and writes ``benchmarks/results/csr_convert.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

import scglmm
from scglmm._core._counts import block_getter
from scglmm._core._schedule import _block_bounds


def convert(Y, n_threads: int, panel_nnz: int) -> int:
    """Every block of 64 genes through the panels; returns the non-zeros seen (a check)."""
    get = block_getter(Y, panel_nnz=panel_nnz, n_threads=n_threads)
    return sum(get(a, b).data.shape[0] for a, b in _block_bounds(Y.shape[1], 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=50_000)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "csr_convert.md")
    a = ap.parse_args()

    adata = scglmm.datasets.simulate(
        n_donors=a.donors,
        cells_per_donor=a.cells // a.donors,
        n_genes=a.genes,
        mean_range=(0.01, 5.0),
        seed=5,
    )
    Y = adata.X
    assert Y.format == "csr"
    runs = {
        "scipy tocsc() (baseline)": lambda: Y.tocsc().nnz,
        "scglmm panels, 1 thread": lambda: convert(Y, 1, 2**25),
        "scglmm panels, 2 threads": lambda: convert(Y, 2, 2**25),
        "scglmm panels of nnz/4, 1 thread": lambda: convert(Y, 1, -(-Y.nnz // 4)),
        "scglmm panels of nnz/4, 2 threads": lambda: convert(Y, 2, -(-Y.nnz // 4)),
    }
    for f in runs.values():  # compile / load the kernels; check
        assert f() == Y.nnz
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.repeats):  # interleaved, so that drifts of a shared machine hit every run
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["scipy tocsc() (baseline)"]))
    lines = [
        "# CSR -> CSC conversion",
        "",
        f"Command: `python benchmarks/csr_convert.py --cells {a.cells} --genes {a.genes} --repeats {a.repeats}`  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"scglmm {scglmm.__version__}.  ",
        f"Matrix: {Y.shape[0]:,} cells x {Y.shape[1]:,} genes, {Y.nnz:,} non-zeros "
        f"({Y.nnz / (Y.shape[0] * Y.shape[1]):.0%}), {Y.data.dtype} counts, {Y.indices.dtype} indices. "
        f"Medians of {a.repeats} interleaved repeats (wall clock).",
        "",
        "| conversion | ms | ns per non-zero | x faster than scipy |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = float(np.median(ts))
        lines.append(f"| {name} | {1e3 * med:.1f} | {1e9 * med / Y.nnz:.1f} | {base / med:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)


if __name__ == "__main__":
    main()
