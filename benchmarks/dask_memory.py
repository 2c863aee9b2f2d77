"""The client's memory on a Dask cluster: gene blocks read by the client or by the workers (issue 20).

A simulated cohort (``scglmm.datasets.simulate``, paired donors) is written to an ``.h5ad`` file with
CSC counts (genes contiguous on disk). :func:`scglmm.fit_genes` is given the file's path and fits it on
a ``LocalCluster`` of two worker processes (one thread each) through joblib's Dask backend, ``n_jobs=-1``,
in two modes:

- ``client reads``: the client reads every gene block from the file and sends it to a worker (forced
  here by disabling :func:`scglmm._core._counts.block_reader`, as for a CSR file);
- ``workers read``: the default for a CSC or dense file: the client sends each worker a
  :class:`scglmm._core._counts.BlockRead` (path, element, columns) and the worker reads its block.

Each mode runs without the validation of the counts (``check=False``: the gene blocks are all the
client reads, if anything) and with it (the default: a streamed pass over the file in the client, in
chunks of rows). For each run: the growth of the client's peak resident memory during the fit (Linux: the peak
``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before the fit), the
largest peak growth of a worker, the wall time, and whether the results equal those of the other
mode bit for bit. The modes alternate over ``--rounds`` rounds after a warm-up fit of a few genes
(kernels loaded or compiled in the workers, the file in the page cache).

    python benchmarks/dask_memory.py [--cells 100000] [--genes 400] [--rounds 2] [--formula "(1 | donor)"]
        [--dir DIR] [--out FILE]

Prints a markdown report (and appends it, with the command, to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import joblib
import numpy as np
from scipy import sparse

import scglmm

FIELDS = ("coef", "se", "cov", "varcomp", "theta", "loglik", "modes", "status", "n_nonzero")


def write_cohort(path: Path, n_cells: int, n_genes: int) -> tuple[np.ndarray, object, np.ndarray]:
    """Simulate 20 paired donors, write their counts as CSC to ``path``; the design, groups and offsets."""
    a = scglmm.datasets.simulate(
        n_donors=20, cells_per_donor=n_cells // 20, n_genes=n_genes, paired=True, slope_sd=0.2, seed=7
    )
    a.X = sparse.csc_matrix(a.X)
    a.write_h5ad(path)
    X = np.column_stack([np.ones(a.n_obs), (a.obs["condition"] == "stim").to_numpy(float)])
    return X, a.obs, np.log(a.obs["libsize"].to_numpy(float))


def reset_peak() -> None:
    """Reset this process's peak resident memory (``VmHWM``)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def run(
    client, path: Path, X, groups, off, *, workers_read: bool, check: bool = False, genes=None
) -> tuple[scglmm.GenesFit, dict]:
    """One fit of the file on the cluster; its result and the memory and time it took."""
    from scglmm._core._counts import BackedCounts

    Y = BackedCounts(path) if genes is None else BackedCounts(path)[:, genes]
    force = nullcontext() if workers_read else mock.patch("scglmm._core._api.block_reader", return_value=None)
    client.run(reset_peak)
    worker_base = client.run(rss_mb)
    reset_peak()
    base = rss_mb()
    t0 = time.perf_counter()
    with force, joblib.parallel_config(backend="dask"):
        res = scglmm.fit_genes(Y, X, groups, off, n_jobs=-1, check=check, progress=None)
    wall = time.perf_counter() - t0
    peak = rss_mb("VmHWM")
    worker_peak = client.run(rss_mb, "VmHWM")
    grow = max(worker_peak[w] - worker_base[w] for w in worker_peak)
    return res, {"client": peak - base, "base": base, "worker": grow, "wall": wall}


def same(a: scglmm.GenesFit, b: scglmm.GenesFit) -> bool:
    """Every result array equal bit for bit (NaN where NaN)."""
    return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in FIELDS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=400)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--formula", default="(1 | donor)")
    p.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "cohort.h5ad"
        t0 = time.perf_counter()
        X, obs, off = write_cohort(path, args.cells, args.genes)
        written = time.perf_counter() - t0
        groups = obs["donor"].to_numpy() if args.formula == "(1 | donor)" else scglmm.random_terms(args.formula, obs)
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            run(client, path, X, groups, off, workers_read=True, genes=np.arange(8))  # warm-up
            rows, results = [], {}
            for r, check, mode in itertools.product(range(args.rounds), (False, True), (False, True)):
                res, m = run(client, path, X, groups, off, workers_read=mode, check=check)
                name = "workers read" if mode else "client reads"
                results.setdefault(name, res)
                rows.append((r + 1, name, check, m))
                print(f"round {r + 1}, {name}, check={check}: {m}", file=sys.stderr, flush=True)
        size = path.stat().st_size / 2**20
        identical = same(results["client reads"], results["workers read"])
    lines = [
        f"## {args.cells:,} cells x {args.genes} genes",
        "",
        f"`python benchmarks/dask_memory.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{args.cells:,} cells x {args.genes} genes, CSC `.h5ad` of {size:.0f} MB (written in {written:.0f} s), "
        f"`fit_genes(path, ..., n_jobs=-1)` with `{args.formula}`, default blocks, on a `LocalCluster` of 2 worker "
        f"processes x 1 thread; {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores "
        "shared with other jobs. Memory: growth of the peak resident memory (`VmHWM`) during the fit over the "
        "resident memory before it; worker: the larger of the two workers. `check=True` (the default of "
        "`fit_genes`) adds the validation of the counts, a streamed pass of the client over the file in chunks "
        "of about 4 million entries, whatever the mode.",
        "",
        "| round | mode | `check` | client peak growth | client before | worker peak growth | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, name, check, m in rows:
        lines.append(
            f"| {r} | {name} | {check} | {m['client']:.1f} MB | {m['base']:.0f} MB | {m['worker']:.1f} MB "
            f"| {m['wall']:.1f} s |"
        )
    lines += ["", f"Results of the two modes bitwise identical: {'yes' if identical else 'NO'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        title = "# The client's memory on a Dask cluster: blocks read by the client or by the workers\n\n"
        before = args.out.read_text() + "\n" if args.out.exists() else title
        args.out.write_text(before + text)


if __name__ == "__main__":
    main()
