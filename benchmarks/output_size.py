"""What a fit adds to an ``.h5ad``: bytes per gene of every stored entry (issue 22, item 8, measured).

Fits the shipped example (Kang CD14 monocytes, 1,000 genes) with ``~ condition + (1 + condition | donor)``
by a two-level ``groupby`` (every other cell), writes it with ``write_h5ad`` and lists the stored entries
by size (HDF5 storage size, per gene of the matrix).

    python benchmarks/output_size.py
"""

from __future__ import annotations

import os
import tempfile
import warnings

import h5py
import numpy as np

import scglmm


def main() -> None:
    warnings.simplefilter("ignore")
    a = scglmm.datasets.kang2018_cd14_mono()
    a.obs["grp"] = np.where(np.arange(a.n_obs) % 2 == 0, "g1", "g2")
    scglmm.tl.fit(a, "~ condition + (1 + condition | donor)", size_factors="n_counts_all_genes", groupby="grp",
                  n_jobs=2, progress=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        out, inp = os.path.join(d, "fit.h5ad"), os.path.join(d, "in.h5ad")
        a.write_h5ad(out)
        scglmm.datasets.kang2018_cd14_mono().write_h5ad(inp)
        print(f"input {os.path.getsize(inp) / 1e6:.1f} MB, with the fit {os.path.getsize(out) / 1e6:.1f} MB")
        sizes: dict[str, int] = {}
        with h5py.File(out) as f:

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    key = "/".join(name.split("/")[:2])
                    sizes[key] = sizes.get(key, 0) + obj.id.get_storage_size()

            f.visititems(visit)
    print("| entry | bytes per gene |\n|---|---:|")
    for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if k.startswith(("varm/", "uns/scglmm", "var/")):
            print(f"| `{k}` | {v / a.n_vars:.0f} |")


if __name__ == "__main__":
    main()
