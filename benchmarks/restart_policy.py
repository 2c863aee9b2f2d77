"""Is the restart after a converged boundary fit worth its cost? (issue 20, fixed cost of small fits)

A fit of the general engine that ends on a boundary (a variance at 0, a correlation at +-1) used to be
restarted once from uncorrelated, non-zero standard deviations, and the better of the two kept, because a
boundary is a stationary point of the Cholesky parameterisation. A fit that *converged* there has a
negative definite Hessian (the Newton decrement's certificate): the boundary is then a local maximum,
and the restart can only find another, distant maximum. This script fits the same genes both ways
(:data:`scglmm._core._re.RESTART_CONVERGED` True, the old rule, and False, the new one: restart only a
boundary fit that did not converge) and reports, per data set and structure, how many genes the old rule
restarts, by how much the log-likelihood of the new rule is lower (it must never be lower by more than
1e-4), whether the statuses agree, and the CPU time of each rule (one thread, this process).

Data: simulated paired cohorts (:func:`cohort.cohort_data`, 50,000 cells, ``--donors``) with the random
slope, nested and crossed structures; with ``--kang PATH`` also the Kang 2018 cell types of ``--types``
(paired random slope, the ``--genes`` genes with most counts, tl.fit's default offsets).

    python benchmarks/restart_policy.py [--donors 20,100] [--genes 100] [--kang PATH [--types ...]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).parent))
from cohort import STRUCTURES, _general_runner, cohort_data

import scglmm
from scglmm._core import _re
from scglmm._core._schedule import fit_columns
from scglmm._formula import build_design, parse_re_formula

SLOPE = STRUCTURES["slope"]


def compare(run, cols: list, label: str) -> dict:
    """Fit every column under both rules; the summary row."""
    run(cols[0])  # compile / load the kernels
    out = {}
    for rule in (True, False):
        _re.RESTART_CONVERGED = rule
        calls = _count_restarts()
        ll, status, cpu = [], [], []
        for col in cols:
            t0 = time.process_time()
            fit = run(col)
            cpu.append(time.process_time() - t0)
            ll.append(fit.loglik)
            status.append(fit.status)
        out[rule] = (np.array(ll), np.array(status), np.array(cpu), calls())
    _re.RESTART_CONVERGED = False
    d = out[False][0] - out[True][0]
    return {
        "data, structure": label,
        "genes": len(cols),
        "restarted (old rule)": out[True][3],
        "restarted (new rule)": out[False][3],
        "min LL change": float(np.nanmin(d)),
        "genes lower by > 1e-4": int(np.sum(d < -1e-4)),
        "same status": float(np.mean(out[False][1] == out[True][1])),
        "CPU s, old rule": float(out[True][2].sum()),
        "CPU s, new rule": float(out[False][2].sum()),
        "ratio": float(out[True][2].sum() / out[False][2].sum()),
    }


def _count_restarts():
    """Count the calls of the restart start point from now on; returns the reader."""
    n = [0]
    orig = _re.__dict__.get("_orig_restart", _re._restart)
    _re._orig_restart = orig

    def counted(s, phi):
        n[0] += 1
        return orig(s, phi)

    _re._restart = counted
    return lambda: n[0]


def simulated(donors: int, n_genes: int) -> list[dict]:
    """The three general structures on a simulated paired cohort of ``donors`` donors."""
    adata = cohort_data(donors, n_genes)
    Y = sparse.csc_matrix(adata.X)
    cols = [Y[:, [g]] for g in range(n_genes)]
    off = np.log(adata.obs["libsize"].to_numpy(float))
    X = build_design(parse_re_formula(SLOPE).fixed, adata.obs).matrix
    rows = []
    for name in ("slope", "nested", "crossed"):
        runner = _general_runner(STRUCTURES[name], adata, X, off)
        rows.append(compare(lambda c, r=runner: r(c)[0][0], cols, f"simulated, {donors} donors, {name}"))
        print(rows[-1], flush=True)
    return rows


def kang(path: Path, types: list[str], n_genes: int) -> list[dict]:
    """The paired random slope on Kang cell types (tl.fit's offsets, the genes with most counts)."""
    full = ad.read_h5ad(path)
    rows = []
    for cell_type in types:
        a = full[full.obs["cell_type"].astype(str) == cell_type].copy()
        a = a[:, np.sort(np.argsort(-np.asarray(a.X.sum(axis=0)).ravel())[:n_genes])].copy()
        scglmm.tl.fit(a, SLOPE, n_jobs=1, progress=False)  # the offsets tl.fit uses
        terms = scglmm.random_terms("(1 + condition | donor)", a.obs)
        X = build_design(parse_re_formula(SLOPE).fixed, a.obs).matrix
        s = _re.prepare_re(X, np.asarray(a.uns["scglmm"]["log_offset"]), terms)
        Y = sparse.csc_matrix(a.X)
        cols = [Y[:, [g]] for g in range(a.n_vars)]
        rows.append(compare(lambda c, s=s: fit_columns(s, c)[0][0], cols, f"Kang {cell_type}, slope"))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donors", default="20,100")
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--kang", type=Path, default=None)
    ap.add_argument("--types", default="B Activated,DC,CD16 Mono,pDC")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "restart_policy.md")
    a = ap.parse_args()
    rows = [r for d in a.donors.split(",") for r in simulated(int(d), a.genes)]
    if a.kang is not None:
        rows += kang(a.kang, a.types.split(","), a.genes)
    cmd = f"python benchmarks/restart_policy.py --donors {a.donors} --genes {a.genes}"
    cmd += "" if a.kang is None else f" --kang {a.kang.name} --types '{a.types}'"
    text = (
        "# Restarting converged boundary fits: what it finds and what it costs\n\n"
        f"`{cmd}` (one thread; CPU seconds of this process for all genes).\n\n"
        + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
