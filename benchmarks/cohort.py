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

``--large``: a whole cohort end to end (issue 20, item 4). :func:`large_data` simulates ``--donors``
donors x 2 conditions x ``--cells`` cells (default 1,000 x 2 x 500 = 1M cells) and ``--genes`` genes
(default 2,000; 20% DE), written to ``--work`` as an uncompressed ``.h5ad`` (``--layout`` CSR, as
scanpy writes it, or CSC). ``scglmm fit FILE --backed --n-jobs N`` then fits
``~ condition + (1 + condition | donor)`` in a subprocess, as a user with data larger than memory
would (``docs/scaling.md``), offset the cells' true library sizes (``--norm-method none``); its wall
time, CPU time (``RUSAGE_CHILDREN``) and peak RSS (``ru_maxrss``, and the process tree's RSS summed,
sampled every 0.5 s) are measured. Beside it (unless ``--skip-deseq2``), pseudobulk PyDESeq2 on the
donor x condition sums, paired design ``~ donor + condition``, size factors the samples' summed
library sizes, Wald test of stim vs ctrl with ``n_cpus=N``, on the first ``--deseq2-genes`` genes (a
random subset; default all). Both: false-positive rate at p < 0.05 on the null genes, AUPRC of -log p
for the DE genes, median absolute log2 fold-change error on the DE genes.

    python benchmarks/cohort.py --large [--donors 1000] [--cells 500] [--genes 2000] [--n-jobs 2]
        [--layout csr] [--work DIR] [--skip-deseq2] [--deseq2-genes N] [--out FILE]

Prints a markdown report (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
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


# ------------------------------------------------------------------------------------------------
# --large: a whole cohort end to end (a backed .h5ad, the CLI, pseudobulk PyDESeq2 beside it)
# ------------------------------------------------------------------------------------------------
LARGE_FORMULA = "~ condition + (1 + condition | donor)"


def large_data(donors: int, cells: int, n_genes: int, seed: int = 20):
    """The paired cohort: ``donors`` donors x 2 conditions x ``cells`` cells, 20% of the genes DE.

    Effects (natural log) ``+-U(0.02, 0.12)`` and donor slopes of sd ``U(0.1, 0.4)`` per gene: with
    1,000 donors the standard error of a fold change is about 0.01, so the DE genes range from
    invisible to obvious and the precision-recall curve has something to separate.
    """
    return scglmm.datasets.simulate(
        n_donors=donors, cells_per_donor=cells, n_genes=n_genes, paired=True, slope_sd=(0.1, 0.4),
        frac_de=0.2, lfc=(0.02, 0.12), mean_range=(0.01, 5.0), phi_range=(0.02, 2.0),
        sigma2_range=(0.0, 0.8), seed=seed,
    )  # fmt: skip


def pseudobulk(adata) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts summed per donor x condition sample (samples x genes); the samples' donor, condition and
    summed library size."""
    codes = adata.obs["sample"].cat.codes.to_numpy()
    n_samples = len(adata.obs["sample"].cat.categories)
    ones = np.ones(codes.size, dtype=np.float32)  # float32 as the counts: no float64 copy of the matrix
    ind = sparse.csr_matrix((ones, (codes, np.arange(codes.size))), shape=(n_samples, codes.size))
    sums = np.asarray((ind @ adata.X).todense()).round().astype(np.int64)
    meta = adata.obs[["sample", "donor", "condition"]].drop_duplicates("sample").set_index("sample")
    meta = meta.loc[adata.obs["sample"].cat.categories].astype(str)
    meta.index = meta.index.astype(str)
    meta["libsize"] = ind.astype(np.float64) @ adata.obs["libsize"].to_numpy(float)
    return pd.DataFrame(sums, index=meta.index, columns=adata.var_names), meta


def write_counts(adata, path: Path, layout: str) -> float:
    """Write ``adata`` with its counts as ``layout`` (``csr`` or ``csc``) to ``path``; the matrix's GB."""
    if layout == "csc":
        adata.X = sparse.csc_matrix(adata.X)
    X = adata.X
    gb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e9
    adata.write_h5ad(path, compression=None)
    return gb


def _hwm(pid: int) -> int:
    """The peak RSS (bytes) of process ``pid`` since its ``exec`` (``VmHWM``), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_monitored(cmd: list[str], poll: float = 0.5) -> dict:
    """Run ``cmd``; its wall time, CPU seconds (``RUSAGE_CHILDREN``) and peak memory.

    Memory: the RSS of its process tree summed (sampled every ``poll`` seconds) and each process's
    own peak (``VmHWM``, kept by the kernel, read at every sample). ``ru_maxrss`` of the children is
    not used: a child forked from this process starts its count from this process's peak (the
    simulation's), whatever it uses after ``exec``.
    """
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak, hwm = psutil.Process(proc.pid), 0, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            tree = []
        for p in tree:
            hwm[p.pid] = max(hwm.get(p.pid, 0), _hwm(p.pid))
        time.sleep(poll)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall": wall, "cpu": cpu, "tree_rss_gb": peak / 1e9, "main_hwm_gb": hwm.get(proc.pid, 0) / 1e9,
        "max_hwm_gb": max(hwm.values(), default=0) / 1e9, "sum_hwm_gb": sum(hwm.values()) / 1e9, "log": err,
    }  # fmt: skip


def fit_cli(path: Path, work: Path, n_jobs: int) -> dict:
    """``scglmm fit --backed`` on ``path`` as a user would run it, timed; its p-values and log2 fold changes."""
    table = work / "cohort_large_fit.tsv"
    cmd = [
        sys.executable, "-m", "scglmm", "fit", str(path), "--formula", LARGE_FORMULA, "--backed",
        "--size-factors", "libsize", "--norm-method", "none", "--coef", "condition", "--n-jobs", str(n_jobs),
        "--compression", "lzf",
        "--out", str(work / "cohort_large_fit.h5ad"), "--table", str(table), "--quiet",
    ]  # fmt: skip
    out = run_monitored(cmd)
    res = pd.read_csv(table, sep="\t").set_index("gene")
    out["cmd"] = shlex.join(["scglmm", *cmd[3:]])
    out["p"], out["log2_fc"] = res["p_value"], res["log2_fc"]
    return out


def fit_deseq2(counts: pd.DataFrame, meta: pd.DataFrame, n_cpus: int) -> dict:
    """Pseudobulk PyDESeq2, paired design ``~ donor + condition``, Wald test of stim vs ctrl, timed.

    The size factors are the samples' summed library sizes (geometric mean 1), the offsets the
    single-cell fit is given, so that the two differ by their model, not their normalisation.
    """
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    inference = DefaultInference(n_cpus=n_cpus)
    t0, c0 = time.perf_counter(), time.process_time()
    obs = meta[["donor", "condition"]]
    dds = DeseqDataSet(counts=counts, metadata=obs, design="~ donor + condition", inference=inference, quiet=True)
    sf = meta["libsize"].to_numpy(float)
    sf = sf / np.exp(np.mean(np.log(sf)))

    def known_size_factors(**_) -> None:  # the cells' library sizes, as the single-cell fit is given
        dds.obs["size_factors"] = sf
        dds.layers["normed_counts"] = dds.X / sf[:, None]
        dds.var["_normed_means"] = dds.layers["normed_counts"].mean(axis=0)

    dds.fit_size_factors = known_size_factors
    dds.deseq2()
    stats = DeseqStats(dds, contrast=["condition", "stim", "ctrl"], inference=inference, quiet=True)
    stats.summary()
    wall = time.perf_counter() - t0
    res = stats.results_df
    return {
        "wall": wall, "cpu_main": time.process_time() - c0, "n": counts.shape[1],
        "p": res["pvalue"], "log2_fc": res["log2FoldChange"],
    }  # fmt: skip


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    """Average precision of ``score`` (higher = more likely positive) for the boolean ``label``.

    The mean over the positives of the precision at their rank; ties are broken against the
    positives (a conservative value), missing scores rank last.
    """
    score = np.where(np.isfinite(score), score, -np.inf)
    order = np.lexsort((label, -score))  # by score descending, negatives first among ties
    hits = label[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(np.sum(precision * hits) / max(hits.sum(), 1.0))


def metrics(p: pd.Series, log2_fc: pd.Series, var: pd.DataFrame) -> dict:
    """False-positive rate at p < 0.05 on the null genes, AUPRC of -log p, median |log2 FC error| on DE genes."""
    p = p.reindex(var.index).to_numpy(float)
    fc = log2_fc.reindex(var.index).to_numpy(float)
    de = var["is_de"].to_numpy(bool)
    truth = var["beta_condition"].to_numpy(float) / np.log(2.0)
    null_p = p[~de]
    return {
        "fpr": float(np.mean(null_p[np.isfinite(null_p)] < 0.05)),
        "n_null": int(np.isfinite(null_p).sum()),
        "n_na": int((~np.isfinite(p)).sum()),
        "auprc": average_precision(-np.log10(np.clip(p, 1e-300, None)), de),
        "fc_err": float(np.nanmedian(np.abs(fc[de] - truth[de]))),
    }


def large_lines(a: argparse.Namespace, sim: dict, fit: dict, rows: dict[str, dict], deseq: dict | None) -> list[str]:
    """The markdown report of a ``--large`` run."""
    n, cells = a.genes, 2 * a.donors * a.cells
    scale = 20_000 / n
    fresh = np.isfinite(sim["sim_s"])
    made = f"simulated in {sim['sim_s']:.0f} s, written in {sim['write_s']:.0f} s" if fresh else "an earlier run's file"
    peak = f"; peak RSS of the simulation (in memory, this process) {sim['self_hwm_gb']:.1f} GB" if fresh else ""
    lines = [
        f"`python benchmarks/cohort.py --large --donors {a.donors} --cells {a.cells} --genes {n} "
        f"--n-jobs {a.n_jobs} --layout {a.layout}"
        + ("" if fresh else " --reuse")
        + (" --skip-deseq2`" if deseq is None else f" --deseq2-genes {deseq['n']}`"),
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load average at the end "
        f"{os.getloadavg()[0]:.1f}), "
        f"Python {platform.python_version()}. {a.donors:,} donors x 2 conditions x {a.cells} cells = {cells:,} cells, "
        f"{n:,} genes ({int(sim['n_de'])} DE), {made} "
        f"as {a.layout.upper()} ({sim['nnz'] / 1e6:.0f} M non-zeros, count matrix {sim['gb']:.2f} GB in memory, "
        f"file {sim['file_gb']:.2f} GB){peak}.",
        "",
        f"scglmm: `{fit['cmd']}`",
        "",
        "| | value |",
        "|---|---:|",
        f"| wall time | {fit['wall']:.0f} s ({fit['wall'] / n:.2f} s per gene) |",
        f"| CPU time (process tree) | {fit['cpu']:.0f} s ({fit['cpu'] / n:.2f} s per gene) |",
        f"| peak RSS, process tree summed (sampled every 0.5 s) | {fit['tree_rss_gb']:.2f} GB |",
        f"| peak RSS of the CLI process / of the largest process (VmHWM) | "
        f"{fit['main_hwm_gb']:.2f} / {fit['max_hwm_gb']:.2f} GB |",
        f"| sum of every process's own peak (VmHWM; an upper bound) | {fit['sum_hwm_gb']:.2f} GB |",
        f"| count matrix (data + indices + indptr) | {sim['gb']:.2f} GB |",
    ]
    if deseq is not None:
        lines.append(
            f"| pseudobulk PyDESeq2 (`~ donor + condition`, {2 * a.donors:,} samples, n_cpus={a.n_jobs}), "
            f"{deseq['n']:,} genes | {deseq['wall']:.0f} s ({deseq['wall'] / deseq['n']:.2f} s per gene) |"
        )
    lines += [
        "",
        "| method | FPR at p < 0.05 (null genes) | AUPRC (DE genes, -log p) | median abs log2 FC error (DE) | no p |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['fpr']:.3f} ({m['n_null']} genes) | {m['auprc']:.3f} | {m['fc_err']:.4f} | {m['n_na']} |"
        )
    lines += [
        "",
        f"Linear extrapolation to 20,000 genes (x{scale:.1f}): scglmm {fit['wall'] * scale / 60:.0f} min wall, "
        f"{fit['cpu'] * scale / 3600:.1f} CPU hours; count matrix {sim['gb'] * scale:.1f} GB"
        + (f"; PyDESeq2 {deseq['wall'] * 20_000 / deseq['n'] / 60:.0f} min." if deseq is not None else "."),
    ]
    return lines


def reuse_file(path: Path) -> tuple[dict, pd.DataFrame]:
    """The sizes and true gene table of a cohort written by an earlier run (``--reuse``)."""
    import h5py

    with h5py.File(path, "r") as f:
        X = f["X"]
        gb = sum(X[k].size * X[k].dtype.itemsize for k in ("data", "indices", "indptr")) / 1e9
        sim = {"sim_s": float("nan"), "write_s": float("nan"), "nnz": int(X["indptr"][-1]), "gb": gb}
    var = anndata.read_h5ad(path, backed="r").var.copy()
    sim.update(n_de=var["is_de"].sum(), file_gb=path.stat().st_size / 1e9, self_hwm_gb=float("nan"))
    print(f"reusing {path} ({sim['nnz'] / 1e6:.0f} M non-zeros)", flush=True)
    return sim, var


def simulate_and_write(a: argparse.Namespace, path: Path) -> tuple[dict, pd.DataFrame, tuple | None]:
    """Simulate the cohort, write it to ``path``; its sizes, true gene table and pseudobulk (unless skipped).
    With ``--reuse`` and the file there (and no PyDESeq2), the file of an earlier run with the same flags."""
    if a.reuse and path.exists() and a.skip_deseq2:
        return (*reuse_file(path), None)
    t0 = time.perf_counter()
    adata = large_data(a.donors, a.cells, a.genes)
    sim = {"sim_s": time.perf_counter() - t0, "nnz": adata.X.nnz, "n_de": adata.var["is_de"].sum()}
    print(f"simulated {adata.n_obs:,} cells x {adata.n_vars} genes in {sim['sim_s']:.0f} s", flush=True)
    pb = None if a.skip_deseq2 else pseudobulk(adata)
    t0 = time.perf_counter()
    sim["gb"] = write_counts(adata, path, a.layout)
    sim["write_s"] = time.perf_counter() - t0
    sim["file_gb"] = path.stat().st_size / 1e9
    sim["self_hwm_gb"] = _hwm(os.getpid()) / 1e9
    return sim, adata.var.copy(), pb


def main_large(a: argparse.Namespace) -> None:
    """Simulate, write, fit with the CLI (and PyDESeq2), print the report (and write it to ``--out``)."""
    a.work.mkdir(parents=True, exist_ok=True)
    path = a.work / "cohort_large.h5ad"
    sim, var, pb = simulate_and_write(a, path)
    gc.collect()  # the cells are on disk now; the fit reads them from there
    fit = fit_cli(path, a.work, a.n_jobs)
    print(f"scglmm: {fit['wall']:.0f} s wall, peak RSS {fit['tree_rss_gb']:.2f} GB", flush=True)
    rows = {f"scglmm `(1 + condition \\| donor)`, {a.genes:,} genes": metrics(fit["p"], fit["log2_fc"], var)}
    deseq = None
    if pb is not None:
        k = min(a.deseq2_genes or a.genes, a.genes)  # the first k genes: a random subset
        deseq = fit_deseq2(pb[0].iloc[:, :k], pb[1], n_cpus=a.n_jobs)
        print(f"PyDESeq2: {deseq['wall']:.0f} s wall", flush=True)
        if k < a.genes:
            rows[f"scglmm, the {k:,} genes of PyDESeq2"] = metrics(fit["p"], fit["log2_fc"], var.iloc[:k])
        rows[f"pseudobulk PyDESeq2 `~ donor + condition`, {k:,} genes"] = metrics(
            deseq["p"], deseq["log2_fc"], var.iloc[:k]
        )
    lines = large_lines(a, sim, fit, rows, deseq)
    print("\n".join(lines))
    if a.out is not None:
        a.out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=None, help="genes (default 40; with --large 2,000)")
    ap.add_argument("--budget", type=float, default=120.0, help="CPU seconds per structure and row")
    ap.add_argument("--rows", default="20,100,500,1000", help="numbers of donors")
    ap.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    ap.add_argument("--title", default="scglmm at " + str(Path(scglmm.__file__).parents[1]))
    large = ap.add_argument_group("--large: a whole cohort end to end")
    large.add_argument("--large", action="store_true", help="the end-to-end cohort instead of the CPU table")
    large.add_argument("--donors", type=int, default=1000, help="donors (each in both conditions)")
    large.add_argument("--cells", type=int, default=500, help="cells per donor and condition")
    large.add_argument("--n-jobs", type=int, default=2, help="workers of the fit, CPUs of PyDESeq2")
    large.add_argument("--layout", choices=["csr", "csc"], default="csr", help="sparse layout of the file")
    large.add_argument("--work", type=Path, default=Path("cohort_large"), help="directory of the .h5ad files")
    large.add_argument("--skip-deseq2", action="store_true", help="no pseudobulk PyDESeq2")
    large.add_argument(
        "--reuse", action="store_true", help="with --skip-deseq2: fit the file an earlier run left in --work"
    )
    large.add_argument("--deseq2-genes", type=int, default=None, help="PyDESeq2 on the first N genes only")
    a = ap.parse_args()
    if a.large:
        a.genes = 2000 if a.genes is None else a.genes
        main_large(a)
        return
    a.genes = 40 if a.genes is None else a.genes
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
