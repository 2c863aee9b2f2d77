"""Speed and memory benchmark of scglmm (seeded; data from ``scglmm.datasets.simulate``).

Times :func:`scglmm.fit_genes` (the public array API: the fit alone, no I/O, no p-value
calibration) after the numba kernels are compiled, and reports:

* compilation: a cold compile (fresh ``NUMBA_CACHE_DIR`` in a child process) and a warm start
  (kernels loaded from the on-disk cache), each the time of the first tiny fit of a new process;
* the reference point of ``shared/oracle/TIMINGS.md`` (20 donors x 2,500 cells, 500 genes, one
  core) beside NEBULA's timings on the same machine class;
* scaling in cells (5k ... 200k) and in genes; ``n_jobs`` 1 against 2 in the same run;
* ``--large``: 20,000 genes x 100,000 cells x 40 donors, about 8 % non-zero, 2 cores.

Designs: (a) ``~ condition + (1 | donor)`` (donor-level), (b) ``~ condition + covariate +
(1 | donor)`` with the simulator's cell-level continuous covariate; library-size offsets
``log(libsize)`` in both.

Memory: the peak resident set size (RSS) during the fit minus the RSS just before it, sampled
every 2 ms from ``/proc/self/statm`` by a background thread, after ``malloc_trim(0)`` returned freed
heap pages to the OS (numba allocates outside Python's allocator, so tracemalloc would miss it). The
input matrix is allocated before and is not counted.

Usage::

    python benchmarks/speed.py                # full run (tens of minutes with the current kernels)
    python benchmarks/speed.py --quick        # small subset
    python benchmarks/speed.py --large        # also the 20,000 x 100,000 run (long)
    python benchmarks/speed.py --tag baseline # writes results/speed_baseline.{md,csv}
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scglmm
from scglmm.datasets import simulate

RESULTS = Path(__file__).resolve().parent / "results"

#: shared/oracle/TIMINGS.md, data set B (20 donors x 2,500 cells, 500 genes), one core, seconds per gene.
NEBULA = {"NEBULA NBGMM-LN (default)": 0.0535, "NEBULA NBLMM-LN (same model)": 0.160}
#: mean count per cell range giving ~31 % non-zeros, as data set B of TIMINGS.md (7.8 M of 25 M).
MEAN_RANGE_REF = (0.005, 5.0)
#: mean count range giving ~8 % non-zeros (the 'large' target of issue 4).
MEAN_RANGE_SPARSE = (0.002, 0.45)
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------------
# measurement helpers
# ------------------------------------------------------------------------------------------------
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def trim_heap() -> None:
    """Return freed heap memory to the OS, so that the next allocations show up in the RSS."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Context manager sampling the RSS in a thread; ``.delta`` = peak during the block - RSS before."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval

    def __enter__(self) -> PeakRSS:
        trim_heap()
        self.before = rss_bytes()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.before


def design_of(adata, kind: str) -> tuple[np.ndarray, list[str]]:
    stim = (adata.obs["condition"] == "stim").to_numpy(dtype=float)
    cols = [np.ones(adata.n_obs), stim]
    names = ["Intercept", "condition[T.stim]"]
    if kind == "b":
        cols.append(adata.obs["covariate"].to_numpy(dtype=float))
        names.append("covariate")
    return np.column_stack(cols), names


def make_data(n_cells: int, n_genes: int, n_donors: int, mean_range, seed: int):
    adata = simulate(
        n_donors=n_donors,
        cells_per_donor=n_cells // n_donors,
        n_genes=n_genes,
        mean_range=mean_range,
        frac_de=0.1,
        seed=seed,
    )
    return adata


def time_fit(adata, kind: str, *, n_jobs: int, repeats: int, block_size: int) -> dict:
    """Time ``scglmm.fit_genes`` on the simulated counts (CSR, as scanpy holds them)."""
    X, names = design_of(adata, kind)
    groups = adata.obs["donor"].to_numpy()
    off = np.log(adata.obs["libsize"].to_numpy(dtype=float))
    Y = adata.X
    times, mems = [], []
    res = None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = scglmm.fit_genes(
                Y, X, groups, off, n_jobs=n_jobs, block_size=block_size, coef_names=names, check=False
            )
            times.append(time.perf_counter() - t0)
        mems.append(mem.delta)
    G = Y.shape[1]
    sec = float(np.median(times))
    return {
        "design": kind,
        "n_cells": int(Y.shape[0]),
        "n_genes": int(G),
        "n_donors": int(len(res.donors)),
        "nonzero_frac": float(Y.nnz / (Y.shape[0] * G)),
        "n_jobs": int(n_jobs),
        "repeats": int(repeats),
        "seconds": sec,
        "seconds_min": float(np.min(times)),
        "seconds_max": float(np.max(times)),
        "ms_per_gene": 1e3 * sec / G,
        "ms_per_gene_per_core": 1e3 * sec * n_jobs / G,
        "genes_per_s": G / sec,
        "peak_rss_delta_mb": float(np.max(mems)) / 2**20,
        "ok_frac": float(np.mean(res.status == 0)),
        "converged_frac": float(np.mean(res.converged)),
        "median_n_iter": float(np.median(res.n_iter)),
    }


def time_threads(adata, kind: str, *, rounds: int, block_size: int, csc: bool) -> dict:
    """n_jobs 1 against 2, interleaved: each round times one fit with each, so that drifts of a
    shared machine hit both. Reported: the ratio of the best times (other jobs on the machine only
    ever add time) and the median and range of the rounds' paired ratios."""
    X, names = design_of(adata, kind)
    groups = adata.obs["donor"].to_numpy()
    off = np.log(adata.obs["libsize"].to_numpy(dtype=float))
    Y = adata.X.tocsc() if csc else adata.X
    t = {1: [], 2: []}
    for _ in range(rounds):
        for nj in (1, 2):
            t0 = time.perf_counter()
            scglmm.fit_genes(Y, X, groups, off, n_jobs=nj, block_size=block_size, coef_names=names, check=False)
            t[nj].append(time.perf_counter() - t0)
    ratio = np.array(t[1]) / np.array(t[2])
    out = {
        "design": kind,
        "counts": "CSC" if csc else "CSR",
        "n_cells": int(Y.shape[0]),
        "n_genes": int(Y.shape[1]),
        "rounds": int(rounds),
        "s_1": float(np.min(t[1])),
        "s_2": float(np.min(t[2])),
        "median_1": float(np.median(t[1])),
        "median_2": float(np.median(t[2])),
        "speedup_best": float(np.min(t[1]) / np.min(t[2])),
        "speedup": float(np.median(ratio)),
        "speedup_min": float(ratio.min()),
        "speedup_max": float(ratio.max()),
    }
    print(f"[threads] {out}", flush=True)
    return out


def warm_up() -> float:
    """First fit of this process on a tiny problem (compiles or loads the kernels); seconds."""
    ad = simulate(n_donors=4, cells_per_donor=30, n_genes=3, seed=0)
    t0 = time.perf_counter()
    for kind in ("a", "b"):
        X, _ = design_of(ad, kind)
        scglmm.fit_genes(ad.X, X, ad.obs["donor"].to_numpy(), np.log(ad.obs["libsize"].to_numpy()), n_jobs=1)
    return time.perf_counter() - t0


def compile_times() -> dict:
    """Time the first tiny fit in child processes: cold (empty numba cache) and warm (cache on disk)."""
    code = (
        "import time; t=time.perf_counter(); import scglmm; ti=time.perf_counter()-t; "
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import speed; "
        "print(ti, speed.warm_up())"
    )
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold_compile", "warm_cache"):  # the first run fills the empty cache, the second reads it
            env = {**os.environ, "NUMBA_CACHE_DIR": tmp}
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            t_import, t_first = map(float, r.stdout.split()[-2:])
            out[label] = {"import_s": t_import, "first_fit_s": t_first}
    return out


# ------------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------------
def run(args) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    meta: dict = {}

    def record(section: str, r: dict) -> None:
        r = {"section": section, **r, "loadavg_1min": os.getloadavg()[0]}
        rows.append(r)
        print(
            f"[{section}] design {r['design']} cells {r['n_cells']:>7} genes {r['n_genes']:>6}"
            f" nz {r['nonzero_frac']:.2f}"
            f" jobs {r['n_jobs']}: {r['ms_per_gene']:8.2f} ms/gene, {r['ms_per_gene_per_core']:8.2f} ms/gene/core,"
            f" {r['genes_per_s']:8.1f} genes/s, peak +{r['peak_rss_delta_mb']:.0f} MB, ok {r['ok_frac']:.2f}",
            flush=True,
        )

    if not args.no_compile:
        print("compilation (child processes) ...", flush=True)
        meta["compile"] = compile_times()
        print(json.dumps(meta["compile"]), flush=True)
    meta["warm_up_s_this_process"] = warm_up()

    bs = args.block_size
    rep = args.repeats
    if args.large_only:
        args.ref_genes, args.gene_sizes, args.cell_sizes = 0, [], []
    # -- reference point + n_jobs 1 vs 2 --------------------------------------------------------
    g_ref = args.ref_genes
    ad = make_data(50_000, g_ref, 20, MEAN_RANGE_REF, seed=5) if g_ref else None
    for kind in ("a", "b") if g_ref else ():
        for nj in (1, 2):
            record("reference", time_fit(ad, kind, n_jobs=nj, repeats=rep, block_size=bs))
        for csc in (False, True):
            meta.setdefault("threads", []).append(time_threads(ad, kind, rounds=args.rounds, block_size=bs, csc=csc))
    # -- scaling in genes (50k cells) -----------------------------------------------------------
    for G in args.gene_sizes:
        if g_ref == G:
            continue
        adg = ad[:, :G].copy() if g_ref > G else make_data(50_000, G, 20, MEAN_RANGE_REF, seed=5)
        for kind in ("a", "b"):
            record("genes", time_fit(adg, kind, n_jobs=1, repeats=rep, block_size=bs))
    del ad
    gc.collect()
    # -- scaling in cells ------------------------------------------------------------------------
    for n in args.cell_sizes:
        adn = make_data(n, args.scale_genes, 20, MEAN_RANGE_REF, seed=7)
        for kind in ("a", "b"):
            record("cells", time_fit(adn, kind, n_jobs=1, repeats=rep, block_size=bs))
        del adn
        gc.collect()
    # -- large ------------------------------------------------------------------------------------
    if args.large:
        t0 = time.perf_counter()
        adl = make_data(100_000, args.large_genes, 40, MEAN_RANGE_SPARSE, seed=11)
        Y = adl.X
        meta["large_simulate_s"] = time.perf_counter() - t0
        meta["large_n_genes"] = int(adl.n_vars)
        meta["large_csr_mb"] = (Y.data.nbytes + Y.indices.nbytes + Y.indptr.nbytes) / 2**20
        meta["large_csr_dtypes"] = f"data {Y.data.dtype}, indices {Y.indices.dtype}"
        meta["large_rss_before_mb"] = rss_bytes() / 2**20
        for kind in args.large_designs:
            sub = adl
            if kind == "b" and args.large_genes_b and args.large_genes_b < adl.n_vars:
                sub = adl[:, : args.large_genes_b].copy()  # the first genes of the same matrix
            r = time_fit(sub, kind, n_jobs=2, repeats=1, block_size=bs)
            r["csr_mb"] = meta["large_csr_mb"]
            r["extrapolated_s_all_genes"] = r["seconds"] * adl.n_vars / r["n_genes"]
            record("large", r)
            del sub
        for kind in args.large_threads_designs if args.large_threads_rounds else ():
            meta.setdefault("threads", []).append(
                time_threads(adl, kind, rounds=args.large_threads_rounds, block_size=bs, csc=False)
            )
        meta["large_maxrss_process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rows, meta


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def markdown(rows: list[dict], meta: dict, args) -> str:
    df = pd.DataFrame(rows)
    lines = [
        f"# scglmm speed benchmark{' (' + args.tag + ')' if args.tag else ''}",
        "",
        f"Command: `{meta.get('command', 'python benchmarks/speed.py ' + ' '.join(sys.argv[1:]))}`  ",
        f"Date (UTC): {meta.get('date', time.strftime('%Y-%m-%d %H:%M', time.gmtime()))}; git {meta.get('git', '?')}; "
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, "
        f"scglmm {scglmm.__version__}.  ",
        "Timed: `scglmm.fit_genes` alone (after warm-up), median of "
        f"{args.repeats} repeat(s); library-size offsets; block_size {args.block_size}.  ",
        "Designs: (a) `~ condition + (1 | donor)`, (b) `~ condition + covariate + (1 | donor)` "
        "(cell-level covariate).  ",
        "Memory: peak RSS during the fit minus RSS before it (sampled every 2 ms from /proc/self/statm after "
        "malloc_trim; the input matrix is not included).  ",
        f"Load average (1 min) when each fit finished: {', '.join(f'{x:.1f}' for x in df.loadavg_1min)} "
        f"(the machine has {os.cpu_count()} CPUs; above that, other jobs shared the cores, so the timings, "
        "and the n_jobs 2 / 1 ratio above all, are pessimistic).",
        "",
    ]
    if "compile" in meta:
        c = meta["compile"]
        lines += [
            "## Compilation",
            "",
            "| | import scglmm (s) | first tiny fit (s) |",
            "|---|---|---|",
            f"| cold (empty NUMBA_CACHE_DIR) | {c['cold_compile']['import_s']:.2f} "
            f"| {c['cold_compile']['first_fit_s']:.2f} |",
            f"| warm (kernels cached on disk) | {c['warm_cache']['import_s']:.2f} "
            f"| {c['warm_cache']['first_fit_s']:.2f} |",
            "",
        ]
        if meta.get("compile_note"):
            lines += [str(meta["compile_note"]), ""]
    ref = df[df.section == "reference"]
    if len(ref):
        lines += [
            f"## Reference point: 20 donors x 2,500 cells = 50,000 cells, {int(ref.n_genes.iloc[0])} genes "
            f"({ref.nonzero_frac.iloc[0]:.0%} non-zero)",
            "",
            "NEBULA on the same machine class, data set B of shared/oracle/TIMINGS.md (500 genes, 31 % non-zero, "
            "one core, design with the covariate).",
            "",
            "| design | n_jobs | ms/gene | ms/gene/core | genes/s | peak RSS +MB | "
            + " | ".join(f"x faster than {k}" for k in NEBULA)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(NEBULA),
        ]
        for _, r in ref.iterrows():
            ratios = " | ".join(f"{1e3 * v / r.ms_per_gene_per_core:.1f}" for v in NEBULA.values())
            lines.append(
                f"| {r.design} | {r.n_jobs} | {r.ms_per_gene:.2f} | {r.ms_per_gene_per_core:.2f} | {r.genes_per_s:.1f} "
                f"| {r.peak_rss_delta_mb:.0f} | {ratios} |"
            )
        for kind in ("a", "b"):
            s = ref[ref.design == kind].set_index("n_jobs")
            if 1 in s.index and 2 in s.index:
                lines.append("")
                lines.append(
                    f"n_jobs 2 vs 1, design {kind}: {s.loc[1, 'seconds'] / s.loc[2, 'seconds']:.2f}x faster "
                    "(same run, same data)."
                )
        lines.append("")
        lines += [f"- {k}: {1e3 * v:.1f} ms/gene" for k, v in NEBULA.items()] + [""]
    if meta.get("threads"):
        lines += [
            "## Threads: n_jobs 2 against 1 (interleaved rounds)",
            "",
            "Each round fits the same genes once with `n_jobs=1` and once with `n_jobs=2`; the speed-up is the "
            "median of the rounds' own ratios (beside it their range), so that drifts of a shared machine hit both "
            "sides of each ratio. Also shown: the median times and the ratio of the best times (other jobs only "
            "ever add time; one thread runs fastest when the other core is idle, so this ratio is the pessimistic "
            "one). CSR: the simulator's counts, read through CSC panels during the fit (as scanpy's matrices are); "
            "CSC: converted before timing.",
            "",
            "| design | counts | cells | genes | rounds | n_jobs 1: median (best) s | n_jobs 2: median (best) s "
            "| speed-up per round: median (range) | speed-up of the best times |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in meta["threads"]:
            m1 = f"{r['median_1']:.3f} ({r['s_1']:.3f})" if "median_1" in r else f"({r['s_1']:.3f})"
            m2 = f"{r['median_2']:.3f} ({r['s_2']:.3f})" if "median_2" in r else f"({r['s_2']:.3f})"
            lines.append(
                f"| {r['design']} | {r['counts']} | {r.get('n_cells', 50_000):,} | {r['n_genes']:,} | {r['rounds']} "
                f"| {m1} | {m2} "
                f"| **{r['speedup']:.2f}x** ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) "
                f"| {r['speedup_best']:.2f}x |"
            )
        lines.append("")
    for section, title in (
        ("genes", "Scaling in genes (50,000 cells, 20 donors, one core)"),
        ("cells", "Scaling in cells (20 donors, one core)"),
        ("large", "Large: 100,000 cells x 40 donors, 2 cores"),
    ):
        s = df[df.section == section] if len(df) else df
        if section == "genes" and len(ref):
            s = pd.concat([s, ref[ref.n_jobs == 1]]).sort_values(["design", "n_genes"])
        if not len(s):
            continue
        lines += [
            f"## {title}",
            "",
            "| design | cells | genes | non-zero | n_jobs | total s | ms/gene | ms/gene/core | genes/s "
            "| us per non-zero per gene-core | peak RSS +MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in s.sort_values(["design", "n_cells", "n_genes"]).iterrows():
            us_nz = 1e6 * r.seconds * r.n_jobs / (r.nonzero_frac * r.n_cells * r.n_genes)
            lines.append(
                f"| {r.design} | {r.n_cells:,} | {r.n_genes:,} | {r.nonzero_frac:.1%} | {r.n_jobs} | {r.seconds:.2f} "
                f"| {r.ms_per_gene:.2f} | {r.ms_per_gene_per_core:.2f} | {r.genes_per_s:.1f} | {us_nz:.3f} "
                f"| {r.peak_rss_delta_mb:.0f} |"
            )
        lines.append("")
    lg = df[df.section == "large"] if len(df) else df
    for _, r in lg.iterrows():
        if r.n_genes < meta.get("large_n_genes", r.n_genes):
            lines.append(
                f"Large, design {r.design}: fitted the first {r.n_genes:,} of {meta['large_n_genes']:,} genes; "
                f"all genes extrapolated linearly: {r.extrapolated_s_all_genes:.0f} s "
                f"({r.extrapolated_s_all_genes / 60:.1f} min) on 2 cores."
            )
        else:
            lines.append(f"Large, design {r.design}: all {r.n_genes:,} genes in {r.seconds / 60:.1f} min on 2 cores.")
    if len(lg):
        lines.append("")
    if "large_csr_mb" in meta:
        lines += [
            f"Large: CSR matrix {meta['large_csr_mb']:.0f} MB ({meta['large_csr_dtypes']}); RSS before the fit "
            f"{meta['large_rss_before_mb']:.0f} MB; process peak RSS (ru_maxrss, includes simulating) "
            f"{meta['large_maxrss_process_mb']:.0f} MB; simulating took {meta['large_simulate_s']:.0f} s.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small subset (a few minutes)")
    p.add_argument("--large", action="store_true", help="also 20,000 genes x 100,000 cells x 40 donors on 2 cores")
    p.add_argument("--large-only", action="store_true", help="only the large run (implies --large)")
    p.add_argument("--large-genes", type=int, default=20_000)
    p.add_argument(
        "--large-threads-rounds",
        type=int,
        default=0,
        help="also n_jobs 1 against 2 on the large matrix, in this many interleaved rounds",
    )
    p.add_argument("--large-threads-designs", nargs="+", default=["a"], choices=["a", "b"])
    p.add_argument("--large-designs", nargs="+", default=["a", "b"], choices=["a", "b"])
    p.add_argument(
        "--large-genes-b", type=int, default=0, help="fit design b on only the first N genes of the large matrix"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of n_jobs 1 and 2")
    p.add_argument("--ref-genes", type=int, default=500, help="genes at the reference point")
    p.add_argument("--scale-genes", type=int, default=200, help="genes for the scaling in cells")
    p.add_argument("--cell-sizes", type=int, nargs="*", default=[5_000, 20_000, 50_000, 100_000, 200_000])
    p.add_argument("--gene-sizes", type=int, nargs="*", default=[100, 250, 500, 1000])
    p.add_argument("--no-compile", action="store_true", help="skip the compilation timing")
    p.add_argument("--tag", default="", help="suffix of the result files (speed_<tag>.md)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .csv and meta")
    args = p.parse_args(argv)
    args.large = args.large or args.large_only
    stem = "speed" + (f"_{args.tag}" if args.tag else "")
    if args.render:
        rows = pd.read_csv(RESULTS / f"{stem}.csv").to_dict("records")
        meta = json.loads((RESULTS / f"{stem}_meta.json").read_text())
        args.repeats = int(rows[0]["repeats"]) if rows else args.repeats
        (RESULTS / f"{stem}.md").write_text(markdown(rows, meta, args) + "\n")
        return
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.ref_genes = min(args.ref_genes, 100)
        args.scale_genes = min(args.scale_genes, 50)
        args.cell_sizes = [n for n in args.cell_sizes if n <= 20_000] or [5_000]
        args.gene_sizes = [g for g in args.gene_sizes if g <= args.ref_genes][:2]
    rows, meta = run(args)
    meta["command"] = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta["date"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    try:
        meta["git"] = subprocess.run(
            ["git", "-C", str(RESULTS.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        meta["git"] = "?"
    md = markdown(rows, meta, args)
    print()
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    pd.DataFrame(rows).to_csv(RESULTS / f"{stem}.csv", index=False)
    (RESULTS / f"{stem}_meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
