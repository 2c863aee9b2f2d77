"""glmmTMB's seconds per gene on the data of the structures' timings in ``benchmarks/cpu_time.py``.

Writes the first ``--genes`` genes of the paired 50,000-cell data (with the obs columns) to a CSV,
fits every structure of :data:`cpu_time.RE_FORMULAS` with glmmTMB (``re_glmmtmb.R``, one
``glmmTMB()`` call per gene, ``nbinom2``, library-size offset, one thread: ``OMP_NUM_THREADS=1``),
and fits the same genes with scglmm in this process (wall seconds per gene, kernels compiled
beforehand). Needs R with glmmTMB (Debian: ``apt-get install r-cran-glmmtmb``).

    python benchmarks/re_glmmtmb.py [--genes 3]

Writes ``benchmarks/results/re_glmmtmb.md`` and ``re_glmmtmb.csv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scglmm
from scglmm import fit_genes
from scglmm._formula import build_design, build_re_terms, parse_re_formula

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cpu_time import RE_FORMULAS, paired_data  # noqa: E402


def scglmm_seconds(adata, formula: str, n_genes: int) -> tuple[float, np.ndarray]:
    """Wall seconds per gene of scglmm on the first genes, and the loglik of each."""
    parsed = parse_re_formula(formula)
    X = build_design(parsed.fixed, adata.obs).matrix
    off = np.log(adata.obs["libsize"].to_numpy(float))
    Y = adata.X.tocsc()[:, :n_genes]
    if formula == RE_FORMULAS["(1 | donor)"]:
        donors = adata.obs["donor"].to_numpy()
        scglmm.fit_genes(Y, X, donors, off)
        t0 = time.perf_counter()
        res = scglmm.fit_genes(Y, X, donors, off)
    else:
        terms = build_re_terms(parsed.terms, adata.obs)
        fit_genes(Y[:, :1], X, terms, off)
        t0 = time.perf_counter()
        res = fit_genes(Y, X, terms, off)
    return (time.perf_counter() - t0) / n_genes, res.loglik


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--genes", type=int, default=3)
    a = ap.parse_args()
    adata = paired_data(200)
    obs = adata.obs[["donor", "condition", "sample", "batch", "libsize"]].astype({"libsize": float})
    counts = pd.DataFrame(adata.X[:, : a.genes].toarray(), columns=adata.var_names[: a.genes], index=obs.index)
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.csv", Path(tmp) / "out.csv"
        pd.concat([obs, counts], axis=1).to_csv(data, index=False)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        subprocess.run(["Rscript", str(HERE / "re_glmmtmb.R"), str(data), str(out)], check=True, env=env)
        tmb = pd.read_csv(out)
    tmb.to_csv(HERE / "results" / "re_glmmtmb.csv", index=False)
    version = subprocess.run(
        ["Rscript", "-e", 'cat(as.character(packageVersion("glmmTMB")))'], capture_output=True, text=True
    ).stdout.strip()
    rows = []
    for name, formula in RE_FORMULAS.items():
        sec, ll = scglmm_seconds(adata, formula, a.genes)
        t = tmb[tmb.structure == name]
        rows.append((name, formula, float(t.seconds.median()), sec, float(np.max(np.abs(ll - t.loglik.to_numpy())))))
    lines = [
        "# glmmTMB and scglmm on the paired 50,000-cell data (seconds per gene)",
        "",
        f"Command: `python benchmarks/re_glmmtmb.py --genes {a.genes}`; the data of the structures' timings in "
        f"`benchmarks/cpu_time.py` (20 donors x 2 x 1,250 cells), its first {a.genes} genes; glmmTMB {version} "
        f"(`nbinom2`, offset `log(libsize)`, one `glmmTMB()` call per gene: set-up, fit and sdreport; "
        f"`OMP_NUM_THREADS=1`), scglmm {scglmm.__version__} wall time in one thread, kernels compiled "
        f"beforehand; {platform.machine()}, on a machine shared with other jobs.",
        "",
        "| structure | formula | glmmTMB s / gene (median) | scglmm s / gene | glmmTMB / scglmm "
        "| max \\|loglik difference\\| |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, formula, tsec, ssec, dll in rows:
        shown, nm = formula.replace("|", "\\|"), name.replace("|", "\\|")
        lines.append(f"| {nm} | `{shown}` | {tsec:.2f} | {ssec:.4f} | {tsec / ssec:.0f} | {dll:.2g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / "re_glmmtmb.md").write_text(text)


if __name__ == "__main__":
    main()
