"""CPU time per gene of the kernels, robust to a shared, loaded machine.

Wall-clock timings on a machine shared with other jobs measure the other jobs as much as ours;
the CPU time of this process (``time.process_time``, one thread: ``n_jobs=1``) does not. This
script fits the reference-point data of the NEBULA timings (20 donors x 2,500 cells, library-size
offsets, ~30 % non-zero) with both designs and, in the same process and on the same data, the
donor-level design once more through the general kernel (the fast path switched off), which is
the baseline of the ratio.

The general random-effect structures are timed on a paired version of the same data (20 donors,
each with 1,250 ctrl and 1,250 stim cells, 50,000 cells; ``~ condition``): a random slope of the
condition (which varies within donors), samples nested in donors and batches crossing donors, next
to ``(1 | donor)`` on the same counts in the same process (``--re-genes`` genes; 0 skips them).

Last, the speed-up of ``fit_genes(n_jobs=2)`` (loky worker processes) over ``n_jobs=1`` on the
random slope, ``--jobs-genes`` genes of the paired data (wall time, the two runs alternating in
this process, median of the repeats; 0 skips it).

    python benchmarks/cpu_time.py [--genes 200] [--repeats 3] [--re-genes 100] [--jobs-genes 400]

Prints a table and writes ``benchmarks/results/cpu_time.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

import scglmm
from scglmm import fit_genes
from scglmm._core import _design
from scglmm._formula import build_design, build_re_terms, parse_re_formula

NEBULA_LN = 53.5  # ms per gene, one core, shared/oracle/TIMINGS.md data set B (design with the covariate)
NEBULA_NBLMM_LN = 160.0  # the same model as scglmm
#: The general structures timed on the paired data, and the baseline (the donor-intercept fast path).
RE_FORMULAS = {
    "(1 | donor)": "~ condition + (1 | donor)",
    "slope": "~ condition + (1 + condition | donor)",
    "nested": "~ condition + (1 | donor/sample)",
    "crossed": "~ condition + (1 | donor) + (1 | batch)",
}


def paired_data(n_genes: int, donors: int = 20, cells_per_sample: int = 1250, seed: int = 5):
    """The paired data of the structures' timings: ``batch`` (4 levels) crosses the donors (donor d's
    ctrl cells in batch d mod 4, its stim cells in batch d + 1 mod 4)."""
    adata = scglmm.datasets.simulate(
        n_donors=donors, cells_per_donor=cells_per_sample, n_genes=n_genes, paired=True, slope_sd=0.3,
        mean_range=(0.01, 5.0), phi_range=(0.02, 2.0), sigma2_range=(0.0, 0.8), seed=seed,
    )  # fmt: skip
    d = adata.obs["donor"].astype(str).str[1:].astype(int).to_numpy()
    stim = (adata.obs["condition"] == "stim").to_numpy()
    adata.obs["batch"] = np.char.add("B", ((d + stim) % 4).astype(str))
    return adata


def time_structures(n_genes: int, repeats: int) -> list[dict]:
    """CPU seconds per gene of every structure of :data:`RE_FORMULAS` on the paired data (median of repeats)."""
    adata = paired_data(n_genes)
    Y = adata.X.tocsc()
    off = np.log(adata.obs["libsize"].to_numpy(float))
    rows = []
    for name, formula in RE_FORMULAS.items():
        parsed = parse_re_formula(formula)
        X = build_design(parsed.fixed, adata.obs).matrix
        if name == "(1 | donor)":
            donors = adata.obs["donor"].to_numpy()

            def run(G=Y, X=X, donors=donors):
                return scglmm.fit_genes(G, X, donors, off, n_jobs=1)
        else:
            terms = build_re_terms(parsed.terms, adata.obs)

            def run(G=Y, X=X, terms=terms):
                return fit_genes(G, X, terms, off, n_jobs=1)

        run(Y[:, :2])  # compile / load the kernels
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            res = run()
            times.append(time.process_time() - t0)
        counted = hasattr(res, "n_eval") and bool(np.all(res.n_eval >= 0))  # -1: not counted (compiled kernels)
        evals = float(np.median(res.n_eval)) if counted else float("nan")
        ok = float(np.mean(res.converged)) if hasattr(res, "converged") else float(np.mean(res.status == 0))
        rows.append({"name": name, "formula": formula, "ms": 1000 * float(np.median(times)) / n_genes,
                     "evals": evals, "iters": float(np.median(res.n_iter)), "ok": ok})  # fmt: skip
        print(f"{name}: {rows[-1]['ms']:.2f} CPU ms/gene (median of {repeats})", flush=True)
    return rows


def time_n_jobs(n_genes: int, repeats: int) -> dict:
    """Wall seconds of ``fit_genes`` on the random slope with ``n_jobs=1`` and ``n_jobs=2``
    (alternating, median of the repeats), and whether both give the same fits."""
    adata = paired_data(n_genes)
    Y = adata.X.tocsc()
    off = np.log(adata.obs["libsize"].to_numpy(float))
    parsed = parse_re_formula(RE_FORMULAS["slope"])
    X = build_design(parsed.fixed, adata.obs).matrix
    terms = build_re_terms(parsed.terms, adata.obs)
    fit_genes(Y[:, :4], X, terms, off, n_jobs=2)  # start the workers, load the kernels there
    times: dict[int, list[float]] = {1: [], 2: []}
    res = {}
    for _ in range(repeats):
        for jobs in (1, 2):
            t0 = time.perf_counter()
            res[jobs] = fit_genes(Y, X, terms, off, n_jobs=jobs)
            times[jobs].append(time.perf_counter() - t0)
    same = bool(np.array_equal(res[1].loglik, res[2].loglik, equal_nan=True))
    out = {jobs: float(np.median(t)) for jobs, t in times.items()}
    print(f"n_jobs: 1 {out[1]:.2f} s, 2 {out[2]:.2f} s (x{out[1] / out[2]:.2f})", flush=True)
    return {"genes": n_genes, "s1": out[1], "s2": out[2], "same": same, "repeats": repeats}


def n_jobs_lines(r: dict) -> list[str]:
    """The markdown lines of the n_jobs timing."""
    return [
        "",
        f"## fit_genes with n_jobs=2 (random slope, {r['genes']} genes of the paired data)",
        "",
        "Wall time, `n_jobs=1` and `n_jobs=2` (joblib's loky worker processes, started before timing) "
        f"alternating in one process, median of {r['repeats']}:",
        "",
        "| n_jobs | wall s | s / gene | speed-up |",
        "|---:|---:|---:|---:|",
        f"| 1 | {r['s1']:.2f} | {1000 * r['s1'] / r['genes']:.2f} ms | 1.00 |",
        f"| 2 | {r['s2']:.2f} | {1000 * r['s2'] / r['genes']:.2f} ms | {r['s1'] / r['s2']:.2f} |",
        "",
        f"Identical log-likelihoods for n_jobs=1 and 2: {r['same']}. The machine has 2 cores shared with "
        "other jobs: the speed-up is bounded by 2 and by their load.",
    ]


def structures_table(rows: list[dict], n_genes: int, n_cells: int) -> list[str]:
    """The markdown lines of the structures' timings."""
    base = rows[0]["ms"]
    lines = [
        "",
        f"## General random-effect structures ({n_cells} paired cells, 20 donors, {n_genes} genes, one thread)",
        "",
        "Same process, same counts and offsets; 20 donors x (1,250 ctrl + 1,250 stim) cells, fixed design "
        "`~ condition`, batch (4 levels) crossing the donors. Ratio: CPU time per gene over `(1 | donor)`.",
        "",
        "| structure | formula | CPU ms/gene | ratio to `(1 \\| donor)` | median evaluations | median iterations "
        "| share converged |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shown = r["formula"].replace("|", "\\|")
        name = r["name"].replace("|", "\\|")
        ev = "" if np.isnan(r["evals"]) else f"{r['evals']:.0f}"
        lines.append(
            f"| {name} | `{shown}` | {r['ms']:.2f} | {r['ms'] / base:.1f} | {ev} | {r['iters']:.0f} | {r['ok']:.2f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--cells-per-donor", type=int, default=2500)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--re-genes", type=int, default=100, help="genes for the general structures (0: skip)")
    ap.add_argument("--jobs-genes", type=int, default=400, help="genes for the n_jobs=2 timing (0: skip)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_time.md")
    a = ap.parse_args()

    adata = scglmm.datasets.simulate(
        n_donors=a.donors,
        cells_per_donor=a.cells_per_donor,
        n_genes=a.genes,
        mean_range=(0.01, 5.0),
        phi_range=(0.02, 2.0),
        sigma2_range=(0.0, 0.8),
        seed=5,
    )
    Y = adata.X.tocsc()
    nnz = Y.nnz / (Y.shape[0] * Y.shape[1])
    off = np.log(adata.obs["libsize"].to_numpy())
    donors = adata.obs["donor"].to_numpy()
    Xa = np.column_stack([np.ones(adata.n_obs), (adata.obs["condition"] == "stim").to_numpy(float)])
    Xb = np.column_stack([Xa, adata.obs["covariate"].to_numpy()])
    scglmm.fit_genes(Y[:, :3], Xa, donors, off)  # compile / load the kernels
    _design.USE_FEW_ROWS = False
    scglmm.fit_genes(Y[:, :3], Xa, donors, off)
    _design.USE_FEW_ROWS = True
    scglmm.fit_genes(Y[:, :3], Xb, donors, off)

    runs = {
        "(a) ~ condition + (1 | donor), fast path": (Xa, True),
        "(a) same, general kernel (baseline)": (Xa, False),
        "(b) ~ condition + covariate + (1 | donor)": (Xb, True),
    }
    rows = []
    per_gene = {}
    for name, (X, fast) in runs.items():
        times = []
        for _ in range(a.repeats):
            t0 = time.process_time()
            _design.USE_FEW_ROWS = fast  # False: the general kernel
            res = scglmm.fit_genes(Y, X, donors, off, n_jobs=1)
            times.append(time.process_time() - t0)
        _design.USE_FEW_ROWS = True
        ms = 1000 * float(np.median(times)) / a.genes
        per_gene[name] = (ms, res)
        ok = float(np.mean(res.status == 0))
        rows.append((name, ms, 1000 / ms, NEBULA_LN / ms, NEBULA_NBLMM_LN / ms, ok, float(np.mean(res.n_iter))))
        print(f"{name}: {ms:.2f} CPU ms/gene (median of {a.repeats})", flush=True)

    fast_res = per_gene["(a) ~ condition + (1 | donor), fast path"][1]
    slow_res = per_gene["(a) same, general kernel (baseline)"][1]
    ok = np.isfinite(slow_res.se[:, 1]) & np.isfinite(fast_res.se[:, 1])
    dmax = float(np.max(np.abs(fast_res.coef[ok] - slow_res.coef[ok]) / slow_res.se[ok]))
    speedup = (
        per_gene["(a) same, general kernel (baseline)"][0] / per_gene["(a) ~ condition + (1 | donor), fast path"][0]
    )

    lines = [
        "# CPU time per gene (one thread)",
        "",
        f"Command: `python benchmarks/cpu_time.py --genes {a.genes} --repeats {a.repeats} --re-genes {a.re_genes} "
        f"--jobs-genes {a.jobs_genes}`; "
        f"{a.donors} donors x {a.cells_per_donor} cells = {adata.n_obs} cells, {a.genes} genes, "
        f"{100 * nnz:.0f} % non-zero, library-size offsets; scglmm {scglmm.__version__}, "
        f"{platform.machine()}, Python {platform.python_version()}.",
        "CPU time of this process (`time.process_time`), median of the repeats, `n_jobs=1`; kernels "
        "compiled before timing.",
        "",
        "| run | CPU ms/gene | genes/s | x NEBULA-LN (53.5 ms) | x NEBULA NBLMM-LN (160 ms) | share ok "
        "| mean Newton iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r[0].replace("|", "\\|")
        lines.append(f"| {name} | {r[1]:.2f} | {r[2]:.0f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} |")
    lines += [
        "",
        f"Fast path vs general kernel on the same genes, same process: {speedup:.1f}x; largest difference of "
        f"the condition effect {dmax:.1e} SE (both maximise the same objective; the fast path sums it by "
        "convergent series, exact to rounding).",
        "",
    ]
    if a.re_genes:
        lines += structures_table(time_structures(a.re_genes, a.repeats), a.re_genes, 2 * a.donors * 1250)
        lines.append("")
    if a.jobs_genes:
        lines += n_jobs_lines(time_n_jobs(a.jobs_genes, a.repeats))
        lines.append("")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
