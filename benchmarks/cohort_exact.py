"""Before/after exactness of the general engine on simulated paired cohorts (issue 20).

Fits every gene of three simulated data sets with ``fit_re_one`` and saves, per structure, the
log-likelihoods, statuses, parameters, their standard errors, evaluations and CPU times to an ``.npz``; run it on two
versions (the older one on ``PYTHONPATH``) and compare the files:

    PYTHONPATH=/tmp/base python benchmarks/cohort_exact.py before.npz [A,B,C]
    python benchmarks/cohort_exact.py after.npz [A,B,C]

A: 200 donors x 20 cells, 200 genes (slope, nested, crossed with 40 batches); B: 1,000 donors x 50
cells, 40 genes (slope, nested); C: 250 donors x 40 cells, 250 genes (slope, nested).
"""

import sys
import time

import numpy as np
from scipy import sparse

import scglmm
from scglmm._core._re import fit_re_one, prepare_re
from scglmm._formula import build_design, build_re_terms, parse_re_formula

SETS = {"A": (200, 10, 200, 40, 11), "B": (1000, 25, 40, 300, 5), "C": (250, 20, 250, 300, 7)}
FORMS = {
    "slope": "~ condition + (1 + condition | donor)",
    "nested": "~ condition + (1 | donor/sample)",
    "crossed": "~ condition + (1 | donor) + (1 | batch)",
}


def data(donors: int, cpd: int, genes: int, nb: int, seed: int):
    """Paired data with a batch label per cell."""
    ad = scglmm.datasets.simulate(
        n_donors=donors, cells_per_donor=cpd, n_genes=genes, paired=True, slope_sd=0.3,
        mean_range=(0.01, 5.0), phi_range=(0.02, 2.0), sigma2_range=(0.0, 0.8), seed=seed,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    ad.obs["batch"] = np.char.add("B", rng.integers(nb, size=ad.n_obs).astype(str))
    return ad


def main() -> None:
    out = sys.argv[1]
    which = sys.argv[2].split(",") if len(sys.argv) > 2 else list(SETS)
    res = {}
    for key in which:
        donors, cpd, genes, nb, seed = SETS[key]
        ad = data(donors, cpd, genes, nb, seed)
        Y = sparse.csc_matrix(ad.X)
        off = np.log(ad.obs["libsize"].to_numpy(float))
        for name, f in FORMS.items():
            if key in "BC" and name == "crossed":
                continue
            pf = parse_re_formula(f)
            s = prepare_re(build_design(pf.fixed, ad.obs).matrix, off, build_re_terms(pf.terms, ad.obs))
            ll, st, ph, tm, ne, se = [], [], [], [], [], []
            for g in range(genes):
                y = Y[:, g].toarray().ravel().astype(float)
                t0 = time.process_time()
                r = fit_re_one(s, y)
                tm.append(time.process_time() - t0)
                ll.append(r.loglik)
                st.append(r.status)
                ph.append(r.phi)
                ne.append(r.n_eval)
                se.append(np.sqrt(np.diag(r.cov_phi)))
            for suffix, v in (("ll", ll), ("st", st), ("phi", ph), ("t", tm), ("ne", ne), ("se", se)):
                res[f"{key}_{name}_{suffix}"] = np.array(v)
            rows = "blocks" if s.blocks is not None else "cells"
            print(
                key, name, rows, f"median {1000 * np.median(tm[1:]):.1f} ms, {np.mean(ne):.1f} evaluations", flush=True
            )
    np.savez(out, **res)


if __name__ == "__main__":
    main()
