"""CPU time and optimum of every random-effect structure: two source trees back to back.

Each tree (e.g. ``main``'s worktree and a branch's) is imported in its own subprocess, one after the
other in this command, and fits the paired data of :mod:`cpu_time` (``--genes`` genes; ``(1 | donor)``
from donor labels, then slope, nested and crossed from terms; ``fit_genes``, ``n_jobs=1``, CPU time of
the process, median of ``--repeats``). Then the
second tree's fits are compared with the first's: CPU ms/gene and their ratio, median evaluations,
the largest difference of the log-likelihoods, the largest relative difference of the SEs, and the
number of genes whose status differs.

    python benchmarks/re_compare.py /work/main /work/wt-branch [--genes 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STRUCTURES = ("(1 | donor)", "slope", "nested", "crossed")

_CHILD = """
import sys, time
import numpy as np
root, out, n_genes, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [root, root + "/benchmarks"]
import scglmm
assert scglmm.__file__.startswith(root), scglmm.__file__
from cpu_time import RE_FORMULAS, paired_data
from scglmm import fit_genes
from scglmm._formula import build_design, build_re_terms, parse_re_formula
adata = paired_data(n_genes)
Y = adata.X.tocsc()
off = np.log(adata.obs["libsize"].to_numpy(float))
res = {}
for name in sys.argv[5].split(","):
    parsed = parse_re_formula(RE_FORMULAS[name])
    X = build_design(parsed.fixed, adata.obs).matrix
    # a donor intercept as donor labels (the compiled kernels in every tree), the others as terms
    terms = adata.obs["donor"].to_numpy() if name == "(1 | donor)" else build_re_terms(parsed.terms, adata.obs)
    fit_genes(Y[:, :2], X, terms, off)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        r = fit_genes(Y, X, terms, off)
        times.append(time.process_time() - t0)
    res[name + "_ms"] = 1000 * np.median(times) / n_genes
    res[name + "_loglik"], res[name + "_se"], res[name + "_status"] = r.loglik, r.se, r.status
    res[name + "_evals"] = np.median(r.n_eval) if hasattr(r, "n_eval") and np.all(r.n_eval >= 0) else np.nan
np.savez(out, **res)
"""


def run(root: str, out: Path, n_genes: int, repeats: int) -> dict:
    """Fit the structures with the package of source tree ``root`` in a subprocess; its results."""
    args = [root, str(out), str(n_genes), str(repeats), ",".join(STRUCTURES)]
    subprocess.run([sys.executable, "-c", _CHILD, *args], check=True)
    return dict(np.load(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="source tree of the reference (e.g. main's worktree)")
    ap.add_argument("after", help="source tree to compare with it")
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        b = run(a.before, Path(tmp) / "before.npz", a.genes, a.repeats)
        c = run(a.after, Path(tmp) / "after.npz", a.genes, a.repeats)
    print("| structure | before ms/gene | after ms/gene | speed-up | evaluations | max |d loglik| | max rel d SE "
          "| status differs |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name in STRUCTURES:
        ok = np.isfinite(b[name + "_se"]) & np.isfinite(c[name + "_se"])
        dll = float(np.nanmax(np.abs(c[name + "_loglik"] - b[name + "_loglik"])))
        dse = float(np.max(np.abs(c[name + "_se"][ok] / b[name + "_se"][ok] - 1.0)))
        nst = int(np.sum(b[name + "_status"] != c[name + "_status"]))
        ms0, ms1 = float(b[name + "_ms"]), float(c[name + "_ms"])
        print(f"| {name} | {ms0:.2f} | {ms1:.2f} | {ms0 / ms1:.2f} | {b[name + '_evals']:.0f} -> "
              f"{c[name + '_evals']:.0f} | {dll:.1e} | {dse:.1e} | {nst} |")  # fmt: skip


if __name__ == "__main__":
    main()
