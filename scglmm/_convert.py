"""Rewriting an ``.h5ad`` file with its counts stored by gene (CSC), out of core.

scanpy writes count matrices by cell (CSR). A gene block of a CSR file cannot be read alone, so
fitting a file larger than memory reads it once per panel of genes (``docs/scaling.md``), and a
Dask worker cannot read its own genes. :func:`to_csc` writes a copy whose counts are stored by
gene: one pass over the rows of a CSR file appends each chunk's entries to a temporary file per
range of genes (a bucket of at most ``panel_nnz`` entries), then each bucket is sorted by gene in
memory and written, so the source is read once and a bucket is the most held in memory. Every
element of the file other than the counts is copied as it is (HDF5 copies, attributes included).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import sparse

from ._core._counts import PANEL_NNZ, BackedCounts
from ._core._errors import InvalidValueError, MissingKeyError

__all__ = ["to_csc"]

#: Entries per HDF5 chunk of the written ``data`` and ``indices`` arrays.
_CHUNK = 1 << 20


def to_csc(
    src: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    compression: str | None = None,
    panel_nnz: int = PANEL_NNZ,
) -> None:
    """Write a copy of an ``.h5ad`` file with its counts stored by gene (CSC), without loading them.

    A fit reads a CSC file once in all, and Dask workers read their own genes from it
    (``docs/scaling.md``); a CSR file (what scanpy writes) is read once per panel of genes. The
    conversion reads a CSR file once (plus its column indices once, to size the buckets), writes its
    entries once to temporary files beside ``out`` (12-16 bytes per non-zero, removed at the end) and
    holds at most ``panel_nnz`` of them in memory.

    Parameters
    ----------
    src
        The ``.h5ad`` file to convert.
    out
        The file to write (overwritten); must differ from ``src``.
    layer
        The layer holding the counts; ``None`` converts ``X``. The other elements are copied as they are.
    compression
        HDF5 compression of the written counts: ``None`` (fastest to read), ``"gzip"`` or ``"lzf"``.
    panel_nnz
        Non-zeros held in memory at a time (a bucket of genes).

    Examples
    --------
    >>> scglmm.to_csc("cohort.h5ad", "cohort_csc.h5ad")  # doctest: +SKIP
    >>> adata = anndata.read_h5ad("cohort_csc.h5ad", backed="r")  # doctest: +SKIP
    """
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        msg = f"out must differ from src ({str(src)!r}): the conversion never overwrites its input."
        raise InvalidValueError(msg, param="out")
    if compression not in (None, "gzip", "lzf"):
        msg = f"compression must be None, 'gzip' or 'lzf'; got {compression!r}."
        raise InvalidValueError(msg, param="compression")
    key = "X" if layer is None else f"layers/{layer}"
    counts = _source_counts(src, key, layer, panel_nnz)
    with (
        tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder,
        h5py.File(src, "r") as fin,
        h5py.File(out, "w") as fout,
    ):
        _copy_except(fin, fout, key)
        panels = _by_gene(counts, panel_nnz, Path(folder)) if counts.format == "csr" else counts.gene_panels()
        _write_panels(counts, panels, fout.create_group(key), compression)


def _source_counts(src: Path, key: str, layer: str | None, panel_nnz: int) -> BackedCounts:
    """The counts to convert, after the checks (present, not already CSC)."""
    if not src.is_file():
        msg = f"{str(src)!r} is not a file."
        raise FileNotFoundError(msg)
    with h5py.File(src, "r") as fh:
        if key not in fh:
            layers = list(fh["layers"].keys()) if "layers" in fh else []
            msg = f"layer {layer!r} not found in {str(src)!r}; layers: {layers}."
            raise MissingKeyError(msg, param="layer")
    counts = BackedCounts(src, key=key, panel_nnz=panel_nnz)
    if counts.format == "csc":
        msg = f"the counts {key!r} of {str(src)!r} are already stored by gene (CSC); nothing to convert."
        raise InvalidValueError(msg, param="src")
    return counts


def _copy_except(fin: h5py.Group, fout: h5py.Group, key: str) -> None:
    """Copy every element of ``fin`` into ``fout`` (attributes included) except the one at ``key``."""
    for name, value in fin.attrs.items():
        fout.attrs[name] = value
    head, _, rest = key.partition("/")
    for name in fin:
        if name == head and not rest:
            continue
        if name == head:
            _copy_except(fin[name], fout.create_group(name), rest)
        else:
            fin.copy(fin[name], fout, name=name)


def _by_gene(counts: BackedCounts, panel_nnz: int, folder: Path) -> Iterator[tuple[int, sparse.csc_matrix]]:
    """``(first_gene, panel)`` over the genes of a CSR file in order, from one pass over its rows: each
    chunk's entries go to the temporary file of their bucket (a range of genes with at most ``panel_nnz``
    entries) in ``folder``, in row order; each bucket is then read back, sorted by gene (stably: rows
    stay in order) and removed."""
    n, G = counts.shape
    cum = np.concatenate([[0], np.cumsum(counts.gene_nnz())])
    starts = [0]
    while starts[-1] < G:
        a = starts[-1]
        b = int(np.searchsorted(cum, cum[a] + panel_nnz, side="right")) - 1
        starts.append(min(max(b, a + 1), G))
    width = np.diff(starts)
    key = np.uint16 if width.size < 2**16 else np.int64  # small keys: numpy's stable sort is a radix sort
    bucket = np.repeat(np.arange(width.size), width).astype(key)
    rec = np.dtype([("row", np.int32 if n < 2**31 else np.int64), ("gene", np.int32), ("value", counts.dtype)])
    paths = [folder / f"{k}.bin" for k in range(width.size)]
    for _, base, ptr, ind, val, _ in counts.iter_raw():
        ind = np.asarray(ind)
        b = bucket[ind]
        order = np.argsort(b, kind="stable")
        cuts = np.searchsorted(b[order], np.arange(width.size + 1))
        recs = np.empty(ind.size, dtype=rec)
        recs["row"] = np.repeat(np.arange(base, base + ptr.size - 1), np.diff(ptr))[order]
        recs["gene"], recs["value"] = ind[order], val[order]
        for k in np.flatnonzero(np.diff(cuts)):
            with open(paths[k], "ab") as fh:
                recs[cuts[k] : cuts[k + 1]].tofile(fh)
    for k, path in enumerate(paths):
        recs = np.fromfile(path, dtype=rec) if path.exists() else np.empty(0, dtype=rec)
        path.unlink(missing_ok=True)
        g = recs["gene"] - starts[k]
        order = np.argsort(g.astype(np.uint16) if width[k] < 2**16 else g, kind="stable")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(g, minlength=width[k]))])
        panel = sparse.csc_matrix((recs["value"][order], recs["row"][order], ptr), shape=(n, int(width[k])))
        panel.sum_duplicates()
        yield starts[k], panel


def _write_panels(
    counts: BackedCounts, panels: Iterator[tuple[int, sparse.csc_matrix]], group: h5py.Group, compression: str | None
) -> None:
    """Write ``panels`` (``(first_gene, CSC panel)`` in gene order) of ``counts`` into ``group`` as
    anndata's ``csc_matrix`` encoding."""
    n, G = counts.shape
    itype = np.int32 if n < 2**31 else np.int64
    opts: dict[str, Any] = {"maxshape": (None,), "chunks": (_CHUNK,), "compression": compression}
    data = group.create_dataset("data", shape=(0,), dtype=counts.dtype, **opts)
    indices = group.create_dataset("indices", shape=(0,), dtype=itype, **opts)
    indptr = np.zeros(G + 1, dtype=np.int64)
    for a, panel in panels:
        start, size = int(indptr[a]), int(panel.nnz)
        for dset, values in ((data, panel.data), (indices, panel.indices)):
            dset.resize((start + size,))
            dset[start:] = values.astype(dset.dtype, copy=False)
        indptr[a + 1 : a + panel.shape[1] + 1] = start + panel.indptr[1:]
    group.create_dataset("indptr", data=indptr)
    group.attrs["encoding-type"] = "csc_matrix"
    group.attrs["encoding-version"] = "0.1.0"
    group.attrs["shape"] = np.array([n, G], dtype=np.int64)
