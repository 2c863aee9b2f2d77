#!/usr/bin/env python
"""Build the scglmm example dataset: CD14 monocytes from Kang et al. (2018).

The source is the Kang et al. 2018 IFN-beta PBMC data (8 lupus donors, each
sequenced as unstimulated "ctrl" and 6 h IFN-beta "stim"), with the Seurat
``ifnb`` cell-type labels; see ``shared/data/kang2018_ifnb_pbmc/PROVENANCE.md``.

Selection rule (everything is deterministic; the only randomness is the cell
subsampling, seeded with ``--seed``, default 0):

1. Keep cells with ``cell_type == "CD14 Mono"`` (all 8 donors, both conditions).
2. Within each donor x condition sample, keep at most ``--max-cells`` (200)
   cells, drawn without replacement with ``numpy.random.default_rng(seed)``.
   Samples are visited in sorted order, so the draws are reproducible.
   Kept cells stay in their original file order.
3. Keep ``--n-genes`` (1000) genes: the marker genes ISG15, IFI6, IFIT3, MX1,
   IFIT1, ISG20, CD14 (if present) plus the genes with the largest total counts
   in the kept cells, filling up to 1000. Ties are broken by the original gene
   order. Kept genes stay in their original order.

   Size decision: the first plan was 2000 genes, but with all ~2,900 cells
   that file is 3.85 MB (gzip) without a counts layer. To stay under ~3 MB
   we keep all cells (the donor x condition design is what the model needs)
   and halve the genes to 1000, giving about 2.8 MB.
4. Drop any cell whose total over the kept genes is zero.

The file is written with gzip compression. ``layers["counts"]`` (a copy of X)
is only stored if the file stays under ``--max-mb`` (3 MB); otherwise it is
left out and the script says so.

Run from the repository root:

    python data/make_example_data.py

Relative default paths are resolved against the repository root, so the
script can also be started from any other directory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

# Repository root = parent of the data/ directory holding this script.
REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SOURCE = "../shared/data/kang2018_ifnb_pbmc/kang2018_ifnb_pbmc.h5ad"
DEFAULT_OUT = "data/kang2018_cd14_mono.h5ad"

# sha256 of the source file as listed in PROVENANCE.md.
EXPECTED_SHA256 = "073063ca716a3c161d69e3e5ab092c57fb208af6a37feb86fd9ca6ec45b5c5b2"

CELL_TYPE = "CD14 Mono"
# Interferon-stimulated genes (up in stim) and CD14 (down in stim): always kept
# so the example has known positive signals.
MARKER_GENES = ["ISG15", "IFI6", "IFIT3", "MX1", "IFIT1", "ISG20", "CD14"]
CONDITIONS = ["ctrl", "stim"]


def resolve(path: str, default: str) -> Path:
    """Resolve the default path against the repo root, user paths against cwd."""
    p = Path(path)
    if path == default and not p.is_absolute():
        return (REPO_ROOT / p).resolve()
    return p.resolve()


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def donor_sort_key(donor: str):
    """Sort donor ids numerically when they are numbers (101 < 107 < 1015)."""
    return (0, int(donor), donor) if donor.isdigit() else (1, 0, donor)


def subsample_cells(obs: pd.DataFrame, max_cells: int, seed: int) -> np.ndarray:
    """Boolean mask keeping at most max_cells cells per sample (seeded)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(obs.shape[0], dtype=bool)
    samples = obs["sample"].astype(str).to_numpy()
    for s in sorted(set(samples)):  # fixed visiting order -> reproducible draws
        idx = np.flatnonzero(samples == s)
        if idx.size > max_cells:
            idx = rng.choice(idx, size=max_cells, replace=False)
        keep[idx] = True
    return keep


def select_genes(X: sp.csr_matrix, var_names: pd.Index, n_genes: int) -> np.ndarray:
    """Boolean mask: marker genes + top genes by total counts, n_genes in all."""
    totals = np.asarray(X.sum(axis=0)).ravel()
    forced = np.isin(var_names.to_numpy(), MARKER_GENES)
    missing = sorted(set(MARKER_GENES) - set(var_names))
    if missing:
        print(f"note: marker genes not in source, skipped: {missing}")
    # Rank by descending total; stable sort breaks ties by original gene order.
    order = np.argsort(-totals, kind="stable")
    keep = forced.copy()
    for j in order:
        if keep.sum() >= n_genes:
            break
        keep[j] = True
    return keep


def build(source: Path, max_cells: int, n_genes: int, seed: int) -> ad.AnnData:
    adata = ad.read_h5ad(source)
    X_all = sp.csr_matrix(adata.X)

    # Library size over ALL genes of the source file, before any gene subset.
    n_counts_all = np.asarray(X_all.sum(axis=1)).ravel().astype(np.float64)

    # 1-2. CD14 monocytes, capped per donor x condition sample.
    is_type = (adata.obs["cell_type"].astype(str) == CELL_TYPE).to_numpy()
    cells = np.flatnonzero(is_type)
    sub_mask = subsample_cells(adata.obs.iloc[cells], max_cells, seed)
    cells = cells[sub_mask]  # still in original order

    X_cells = X_all[cells]

    # 3. Gene selection on the kept cells.
    gene_mask = select_genes(X_cells, adata.var_names, n_genes)
    X = X_cells[:, gene_mask].tocsr()

    # 4. Drop cells with zero counts over the kept genes.
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    nonzero = n_counts > 0
    if not nonzero.all():
        print(f"dropping {int((~nonzero).sum())} cells with zero total counts")
    cells, X, n_counts = cells[nonzero], X[nonzero], n_counts[nonzero]

    X = sp.csr_matrix(X, dtype=np.int32)
    X.sort_indices()
    X.eliminate_zeros()

    # obs: clean string categoricals with a fixed category order.
    src = adata.obs.iloc[cells]
    donor = src["donor"].astype(str).to_numpy()
    condition = src["condition"].astype(str).to_numpy()
    donors = sorted(set(donor), key=donor_sort_key)
    samples = [f"{d}_{c}" for d in donors for c in CONDITIONS]
    # Fake grouping for null tests: donors sorted numerically, alternating A/B.
    group_of = {d: "AB"[i % 2] for i, d in enumerate(donors)}

    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(donor, categories=donors),
            "condition": pd.Categorical(condition, categories=CONDITIONS),
            "sample": pd.Categorical(
                src["sample"].astype(str).to_numpy(),
                categories=[s for s in samples if s in set(src["sample"].astype(str))],
            ),
            "cell_type": pd.Categorical(src["cell_type"].astype(str).to_numpy()),
            "n_counts_all_genes": n_counts_all[cells],
            "n_counts": n_counts.astype(np.float64),
            "donor_group": pd.Categorical(
                [group_of[d] for d in donor], categories=["A", "B"]
            ),
        },
        index=pd.Index(src.index.astype(str), name=None),
    )

    var_names = pd.Index(adata.var_names[gene_mask].astype(str), name=None)
    var = pd.DataFrame(
        {"n_cells": np.diff(X.tocsc().indptr).astype(np.int64)}, index=var_names
    )

    out = ad.AnnData(X=X, obs=obs, var=var)
    assert out.obs_names.is_unique and out.var_names.is_unique
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="source h5ad (default relative to the repo root)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output h5ad (default relative to the repo root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cells", type=int, default=200,
                        help="max cells per donor x condition sample")
    parser.add_argument("--n-genes", type=int, default=1000,
                        help="genes to keep (1000 keeps the file under ~3 MB)")
    parser.add_argument("--max-mb", type=float, default=3.0,
                        help="store layers['counts'] only if the file stays below this")
    args = parser.parse_args()

    source = resolve(args.source, DEFAULT_SOURCE)
    out_path = resolve(args.out, DEFAULT_OUT)

    digest = sha256sum(source)
    if digest != EXPECTED_SHA256:
        print(f"WARNING: source sha256 {digest} differs from PROVENANCE.md")

    adata = build(source, args.max_cells, args.n_genes, args.seed)
    adata.uns["provenance"] = {
        "source_file": source.name,
        "source_sha256": digest,
        "script": "data/make_example_data.py",
        "selection": (
            f"cell_type == '{CELL_TYPE}'; at most {args.max_cells} cells per "
            f"donor x condition sample (numpy default_rng, seed {args.seed}); "
            f"{args.n_genes} genes = {', '.join(MARKER_GENES)} plus the genes "
            "with most total counts in the kept cells, original gene order; "
            "cells with zero total counts dropped"
        ),
        "seed": str(args.seed),
        "citation": "Kang et al. 2018 Nat Biotechnol 36:89-94, doi:10.1038/nbt.4042; "
                    "GEO GSE96583; cell_type from Seurat/SeuratData ifnb",
    }

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Try with a counts layer first; drop it if the file gets too large.
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(out_path, compression="gzip")
    size_mb = os.path.getsize(out_path) / 1e6
    if size_mb >= args.max_mb:
        print(f"with layers['counts'] the file is {size_mb:.2f} MB; writing without it")
        del adata.layers["counts"]
        adata.write_h5ad(out_path, compression="gzip")
        size_mb = os.path.getsize(out_path) / 1e6

    print(f"wrote {out_path} ({size_mb:.2f} MB), {adata.n_obs} cells x {adata.n_vars} genes")
    print(pd.crosstab(adata.obs["donor"], adata.obs["condition"]).T.to_string())


if __name__ == "__main__":
    main()
