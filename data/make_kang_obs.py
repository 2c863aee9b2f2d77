#!/usr/bin/env python
"""Build ``data/kang2018_obs.csv.gz``: the cell labels of Kang et al. (2018), no counts.

The composition tutorial (``tutorials/05_composition.ipynb``) needs only which donor, condition,
sample and cell type every cell belongs to. This script copies those four ``obs`` columns of all
13,999 cells of ``shared/data/kang2018_ifnb_pbmc/kang2018_ifnb_pbmc.h5ad`` (see its
``PROVENANCE.md`` and ``data/README.md``) to a gzip-compressed CSV, index = the source's cell names.
Nothing is selected, subsampled or changed; the rows keep the source order.

Run from the repository root (needs anndata and pandas):

    python data/make_kang_obs.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import anndata as ad

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = "../shared/data/kang2018_ifnb_pbmc/kang2018_ifnb_pbmc.h5ad"
DEFAULT_OUT = "data/kang2018_obs.csv.gz"
EXPECTED_SHA256 = "073063ca716a3c161d69e3e5ab092c57fb208af6a37feb86fd9ca6ec45b5c5b2"
COLUMNS = ["donor", "condition", "sample", "cell_type"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    source = (REPO_ROOT / args.source).resolve()
    out = REPO_ROOT / args.out
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != EXPECTED_SHA256:
        print(f"warning: {source} has sha256 {digest}, not {EXPECTED_SHA256}")
    obs = ad.read_h5ad(source, backed="r").obs[COLUMNS].copy()
    obs.index.name = "cell"
    # mtime=0 so that two runs give byte-identical files
    with gzip.GzipFile(out, "wb", mtime=0) as fh:
        fh.write(obs.to_csv().encode())
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {len(obs)} cells)")


if __name__ == "__main__":
    main()
