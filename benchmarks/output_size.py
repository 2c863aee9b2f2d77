"""What a fit adds to an ``.h5ad``: bytes per gene and group of every stored entry (issue 22, item 8).

Fits one data set by ``groupby``, writes it with ``write_h5ad`` (uncompressed, as ``adata.write_h5ad(path)``
does, and with ``compression="gzip"``, as ``scglmm fit`` does) and measures

- the whole file against the input written the same way, per gene and group;
- each stored entry on its own: the size of a file holding only the genes' names and that entry, less
  the same file without it. This counts what HDF5 keeps outside the datasets (variable-length strings
  such as a table's copy of the gene names live in a heap that a dataset's storage size leaves out).

Each configuration is a real fit: ``default`` (the checkout's defaults) and, where the checkout has the
option, ``store_modes=True``. By default the data is the shipped example (Kang CD14 monocytes, 1,000 genes)
split into two groups (every other cell), fitted with ``~ condition + (1 + condition | donor)``.

    python benchmarks/output_size.py [--data H5AD --groupby COL --formula F --size-factors COL]
        [--checkout PATH --label NAME ...] [--out FILE]

``--checkout`` also measures another checkout of the package (e.g. the commit before a change, extracted
with ``git archive``), in a child process that imports it; ``--out`` writes the tables (markdown).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "kang2018_cd14_mono.h5ad"
KEY = "scglmm"


# ------------------------------------------------------------------------------------------------
# the child: fit and measure with the checkout on sys.path
# ------------------------------------------------------------------------------------------------
def _read(args: argparse.Namespace):
    import anndata as ad
    import numpy as np

    a = ad.read_h5ad(args.data)
    if args.groupby is None:
        a.obs["grp"] = np.where(np.arange(a.n_obs) % 2 == 0, "g1", "g2")
    return a


def _file_bytes(adata, compression: str | None) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.h5ad")
        adata.write_h5ad(path, compression=compression)
        return os.path.getsize(path)


def _entry_bytes(adata) -> dict[str, int]:
    """Bytes of each entry the fit added, alone in a file with the genes' names."""
    import anndata as ad
    import pandas as pd

    def alone(kind: str, name: str) -> ad.AnnData:
        b = ad.AnnData(var=pd.DataFrame(index=adata.var_names.copy()))
        if kind == "varm":
            b.varm[name] = adata.varm[name]
        elif kind == "var":
            b.var[name] = adata.var[name].to_numpy()
        elif kind == "uns":
            b.uns[name] = adata.uns[name]
        return b

    base = _file_bytes(alone("", ""), None)
    entries = [("varm", k) for k in adata.varm] + [("var", k) for k in adata.var if k.startswith(KEY)]
    entries += [("uns", k) for k in adata.uns if k.startswith(KEY)]
    return {f"{kind}/{k}": _file_bytes(alone(kind, k), None) - base for kind, k in entries}


def _measure(args: argparse.Namespace) -> dict:
    import scglmm

    warnings.simplefilter("ignore")
    has_option = "store_modes" in inspect.signature(scglmm.tl.fit).parameters
    configs = {"default": {}} | ({"store_modes=True": {"store_modes": True}} if has_option else {})
    inp = _read(args)
    input_bytes = {"none": _file_bytes(inp, None), "gzip": _file_bytes(inp, "gzip")}
    out = {"scglmm": str(Path(scglmm.__file__).parent), "configs": {}}
    for name, extra in configs.items():
        a = _read(args)
        scglmm.tl.fit(
            a, args.formula, size_factors=args.size_factors, groupby=args.groupby or "grp", n_jobs=2, progress=False,
            **extra,
        )  # fmt: skip
        params = a.uns[KEY]["params"]
        n_fitted = sum(
            int(a.uns[s]["params"]["n_genes"] - a.uns[s]["params"]["n_filtered"]) for s in params["group_keys"]
        )
        out["configs"][name] = {
            "n_genes": int(a.n_vars),
            "n_cells": int(a.n_obs),
            "groups": [str(g) for g in params["group_keys"]],
            "fitted_share": n_fitted / (a.n_vars * len(params["group_keys"])),
            "input_bytes": input_bytes,
            "output_bytes": {"none": _file_bytes(a, None), "gzip": _file_bytes(a, "gzip")},
            "entries": _entry_bytes(a),
        }
        print(f"  measured {name}: {out['configs'][name]['output_bytes']}", file=sys.stderr, flush=True)
        del a
    return out


# ------------------------------------------------------------------------------------------------
# the parent: one child per checkout, then the tables
# ------------------------------------------------------------------------------------------------
def _child(path: Path, argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path)}
    with tempfile.TemporaryDirectory() as d:
        res = Path(d) / "res.json"
        subprocess.run([sys.executable, __file__, *argv, "--measure", str(res)], env=env, check=True)
        return json.loads(res.read_text())


def _suffix(entry: str, groups: list[str]) -> tuple[str, bool]:
    """An entry's name without its group (``varm/scglmm:g1_coef`` -> ``varm/KEY:GROUP_coef``) and whether
    it is per group."""
    for g in groups:
        for prefix in (f"varm/{g}_", f"var/{g}_"):
            if entry.startswith(prefix):
                return entry.replace(g, "KEY:GROUP", 1), True
        if entry == f"uns/{g}":
            return "uns/KEY:GROUP", True
    return entry.replace(KEY, "KEY", 1), False


def _per_entry(config: dict) -> dict[str, float]:
    """Bytes per gene and group of each entry kind (per gene for the fit's own entries)."""
    n, groups = config["n_genes"], config["groups"]
    out: dict[str, float] = {}
    for entry, size in config["entries"].items():
        name, per_group = _suffix(entry, groups)
        out[name] = out.get(name, 0.0) + size / (n * (len(groups) if per_group else 1))
    return out


def _tables(results: list[tuple[str, dict]], args: argparse.Namespace) -> list[str]:
    cols = [(label, name, c) for label, r in results for name, c in r["configs"].items()]
    first = cols[0][2]
    head = "| | " + " | ".join(f"{label}: {name}" for label, name, _ in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    lines = [
        f"Data: `{_shown(args.data)}` ({first['n_cells']:,} cells x {first['n_genes']:,} genes), groupby "
        f"`{args.groupby or 'grp'}` ({len(first['groups'])} groups; {first['fitted_share']:.0%} of the genes x groups "
        f"fitted, the others filtered by `min_cells` / `min_donors`), formula `{args.formula}`.",
        "",
        "Whole file, `write_h5ad` without compression and with `compression='gzip'`:",
        "",
        head,
        rule,
    ]
    for comp in ("none", "gzip"):
        lines.append(
            f"| input, {comp} (MB) | " + " | ".join(f"{c['input_bytes'][comp] / 1e6:.1f}" for *_, c in cols) + " |"
        )
        lines.append(
            f"| with the fit, {comp} (MB) | "
            + " | ".join(f"{c['output_bytes'][comp] / 1e6:.1f}" for *_, c in cols)
            + " |"
        )
        per = [(c["output_bytes"][comp] - c["input_bytes"][comp]) / (c["n_genes"] * len(c["groups"])) for *_, c in cols]
        lines.append(f"| added per gene and group, {comp} (bytes) | " + " | ".join(f"{x:.0f}" for x in per) + " |")
    per_entry = [_per_entry(c) for *_, c in cols]
    names = sorted({k for p in per_entry for k in p}, key=lambda k: -max(p.get(k, 0.0) for p in per_entry))
    lines += [
        "",
        "Each entry alone, uncompressed (bytes per gene and group; per gene for entries of the whole fit, "
        "`uns/KEY` holding the per-cell offset; `uns/KEY:GROUP`, a run's settings, has a fixed size per group):",
        "",
        head,
        rule,
    ]
    for k in names:
        lines.append(f"| `{k}` | " + " | ".join(f"{p[k]:.0f}" if k in p else "-" for p in per_entry) + " |")
    lines.append(
        "| sum of the per-group entries | "
        + " | ".join(f"{sum(v for k, v in p.items() if 'GROUP' in k):.0f}" for p in per_entry)
        + " |"
    )
    return lines


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=EXAMPLE, help="the .h5ad to fit (default: the shipped example)")
    ap.add_argument("--groupby", help="obs column of the groups (default: two groups, every other cell)")
    ap.add_argument("--formula", default="~ condition + (1 + condition | donor)")
    ap.add_argument("--size-factors", default="n_counts_all_genes", help="obs column of size factors")
    ap.add_argument("--checkout", type=Path, action="append", default=[], help="also measure this checkout")
    ap.add_argument("--label", action="append", default=[], help="a name per --checkout (default: its path)")
    ap.add_argument("--out", type=Path, help="write the tables (markdown) here")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child: write its JSON here
    return ap


def main() -> None:
    args = _parser().parse_args()
    if args.measure is not None:
        args.measure.write_text(json.dumps(_measure(args)))
        return
    labels = args.label + [str(c) for c in args.checkout[len(args.label) :]]
    checkouts = [*zip(labels, [c.resolve() for c in args.checkout], strict=True), ("this checkout", ROOT)]
    results = [(label, _child(path, _child_argv(args))) for label, path in checkouts]
    lines = ["# What a fit adds to an h5ad", "", _command(args), "", *_tables(results, args), ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The options that choose the data and the fit, for the child."""
    argv = ["--data", str(args.data), "--formula", args.formula, "--size-factors", args.size_factors]
    return argv + (["--groupby", args.groupby] if args.groupby else [])


def _command(args: argparse.Namespace) -> str:
    shown = [] if args.data.resolve() == EXAMPLE else ["--data", _shown(args.data)]
    if args.groupby:
        shown += ["--groupby", args.groupby]
    defaults = _parser().parse_args([])
    if args.formula != defaults.formula:
        shown += ["--formula", repr(args.formula)]
    if args.size_factors != defaults.size_factors:
        shown += ["--size-factors", args.size_factors]
    shown += [f"--checkout {c} --label {lab!r}" for c, lab in zip(args.checkout, args.label, strict=False)]
    return (
        f"`python benchmarks/output_size.py {' '.join(shown)}`".replace(" `", "`")
        + f"; {platform.machine()}, Python {platform.python_version()}, anndata's `write_h5ad`."
    )


if __name__ == "__main__":
    main()
