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
from pathlib import Path

import h5py

from ._core._counts import PANEL_NNZ, BackedCounts, write_csc
from ._core._errors import InvalidValueError, MissingKeyError

__all__ = ["to_csc"]


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
        panels = counts.gene_buckets(Path(folder), panel_nnz) if counts.format == "csr" else counts.gene_panels()
        write_csc(panels, counts, fout.create_group(key), compression)


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
