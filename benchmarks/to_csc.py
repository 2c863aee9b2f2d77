"""Rewriting a CSR .h5ad by gene (:func:`scglmm.to_csc`): its cost, and what it saves each later read.

Simulates ``--cells`` x ``--genes`` counts (:func:`scglmm.datasets.simulate`), writes them as scanpy
does (CSR), converts the file with :func:`scglmm.to_csc` (timed, with the growth of this process's peak
memory), then reads every gene block of both files as a backed fit does (``BackedCounts.gene_panels``,
``--panel-nnz`` non-zeros per panel of the CSR file: the default is 2^25) and reports the seconds of
each read and the passes over the CSR file. Medians of ``--repeats`` reads, interleaved.

    python benchmarks/to_csc.py [--cells 200000] [--genes 2000] [--panel-nnz 33554432] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

import scglmm
from scglmm._core._counts import PANEL_NNZ, BackedCounts


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_all(path: Path, panel_nnz: int) -> tuple[float, int, int]:
    """Seconds to read every gene panel of ``path``; the number of panels and of non-zeros read."""
    counts = BackedCounts(path, panel_nnz=panel_nnz)
    t0 = time.perf_counter()
    sizes = [(panel.nnz, panel.shape[1]) for _, panel in counts.gene_panels()]
    assert sum(g for _, g in sizes) == counts.shape[1]
    return time.perf_counter() - t0, len(sizes), sum(n for n, _ in sizes)


def convert(src: Path, out: Path, panel_nnz: int) -> tuple[float, float]:
    """Seconds of :func:`scglmm.to_csc` in a fresh process, and that process's peak memory (MB)."""
    code = (
        "import time, scglmm, sys; sys.path.insert(0, sys.argv[4]); from to_csc import peak_mb; "
        "t = time.perf_counter(); "
        "scglmm.to_csc(sys.argv[1], sys.argv[2], panel_nnz=int(sys.argv[3])); "
        "print(time.perf_counter() - t, peak_mb())"
    )
    args = [sys.executable, "-c", code, str(src), str(out), str(panel_nnz), str(Path(__file__).parent)]
    seconds, peak = subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()
    return float(seconds), float(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--panel-nnz", type=int, default=PANEL_NNZ)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "csr.h5ad", Path(tmp) / "csc.h5ad"
        adata = scglmm.datasets.simulate(n_donors=20, cells_per_donor=a.cells // 20, n_genes=a.genes, seed=1)
        adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
        adata.write_h5ad(src)
        nnz = adata.X.nnz
        del adata
        seconds, peak = convert(src, out, a.panel_nnz)
        reads = {"CSR": [], "CSC": []}
        for _ in range(a.repeats):
            for name, path in (("CSR", src), ("CSC", out)):
                reads[name].append(read_all(path, a.panel_nnz))
    med = {k: float(np.median([r[0] for r in v])) for k, v in reads.items()}
    print(
        f"# `scglmm.to_csc`: {a.cells:,} cells x {a.genes:,} genes, {nnz:,} non-zeros, panels of {a.panel_nnz:,}\n\n"
        f"`python benchmarks/to_csc.py --cells {a.cells} --genes {a.genes} --panel-nnz {a.panel_nnz} "
        f"--repeats {a.repeats}`\n\n"
        f"- conversion: {seconds:.1f} s in a fresh process whose peak memory was {peak:.0f} MB "
        f"(the counts: {nnz * 8 / 1e6:.0f} MB as float32 values and int32 indices)\n"
        f"- reading every gene block, median of {a.repeats}: CSR file {med['CSR']:.2f} s "
        f"({reads['CSR'][0][1]} panels, one pass over the file each), CSC file {med['CSC']:.2f} s "
        f"({med['CSR'] / med['CSC']:.1f}x faster); non-zeros read: {reads['CSR'][0][2]:,} and {reads['CSC'][0][2]:,}"
    )


if __name__ == "__main__":
    main()
