"""Inputs read from an AnnData: the counts, the log offset and the gene filter's thresholds.

The rules for these inputs live here once; :mod:`scglmm.tl`, :mod:`scglmm.pl` and the command
line call them. Errors are :class:`scglmm._core._errors.InputError` subclasses naming the
offending parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from ._core._counts import as_backed_counts
from ._core._errors import InvalidTypeError, InvalidValueError, MissingKeyError
from ._layout import OffsetSource

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["counts", "gene_counts", "log_offset", "min_count"]


def counts(adata: AnnData, layer: str | None) -> tuple[object, str]:
    """The count matrix (``adata.X`` or a layer) and how to name it in messages; a matrix of an
    AnnData opened with ``backed="r"`` is streamed from disk, never loaded."""
    if layer is None:
        Y = adata.X
        what = "adata.X"
    else:
        if layer not in adata.layers:
            msg = (
                f"layer {layer!r} not found; available layers: {list(adata.layers.keys())} (or layer=None for adata.X)."
            )
            raise MissingKeyError(msg, param="layer")
        Y = adata.layers[layer]
        what = f"adata.layers[{layer!r}]"
    if Y is None:
        msg = "adata.X is empty; pass the layer holding raw counts with `layer=`."
        raise InvalidValueError(msg, param="layer")
    backed = as_backed_counts(Y) if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)) else None
    if backed is not None:  # backed="r": stream from disk, never load the matrix
        Y = backed
    elif not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        Y = Y[:, :] if hasattr(Y, "shape") else np.asarray(Y)
        if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
            Y = np.asarray(Y)
    return Y, what


def log_offset(
    adata: AnnData, Y, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None
) -> tuple[np.ndarray, OffsetSource]:
    """The per-cell log offset of a fit and its source: ``offset`` (log scale) or
    ``size_factors`` (a scale, logged), each an ``obs`` column or an array, or by default the log
    of each cell's total count over all genes of ``Y``."""
    n = adata.n_obs
    if size_factors is not None and offset is not None:
        msg = "pass either size_factors (a scale, logged internally) or offset (already on the log scale), not both."
        raise InvalidValueError(msg, param="size_factors")
    if offset is not None:
        if isinstance(offset, str):
            if offset not in adata.obs.columns:
                msg = f"offset column {offset!r} not in adata.obs; available columns: {list(adata.obs.columns)}."
                raise MissingKeyError(msg, param="offset")
            if not pd.api.types.is_numeric_dtype(adata.obs[offset]) or pd.api.types.is_bool_dtype(adata.obs[offset]):
                msg = f"offset column {offset!r} must be numeric (log scale); it has dtype {adata.obs[offset].dtype}."
                raise InvalidTypeError(msg, param="offset")
            off = adata.obs[offset].to_numpy(dtype=float)
            src = OffsetSource("log_offset", offset)
        else:
            off = np.asarray(offset, dtype=float).ravel()
            src = OffsetSource("log_offset")
        if off.shape != (n,):
            msg = f"offset must have one value per cell ({n}); got shape {off.shape}."
            raise InvalidValueError(msg, param="offset")
        if not np.all(np.isfinite(off)):
            msg = (
                f"offset contains {int((~np.isfinite(off)).sum())} NaN or infinite value(s) (log scale: a zero "
                "size factor gives -inf); fix them or remove those cells."
            )
            raise InvalidValueError(msg, param="offset")
        return off, src
    if size_factors is None:
        sf = np.asarray(Y.sum(axis=1), dtype=float).ravel()
        src = OffsetSource("total_counts")
        if np.any(sf <= 0):
            bad = adata.obs_names[sf <= 0][:5].tolist()
            msg = (
                f"{int((sf <= 0).sum())} cell(s) have zero total counts (e.g. {bad}), so the default size "
                "factor log(total counts) is undefined. Remove them first (sc.pp.filter_cells(adata, min_counts=1)) "
                "or pass size_factors=."
            )
            raise InvalidValueError(msg, param="size_factors")
        return np.log(sf), src
    if isinstance(size_factors, str):
        if size_factors not in adata.obs.columns:
            msg = (
                f"size_factors column {size_factors!r} not in adata.obs; available columns: {list(adata.obs.columns)}."
            )
            raise MissingKeyError(msg, param="size_factors")
        col = adata.obs[size_factors]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            msg = f"size_factors column {size_factors!r} must be numeric (positive scale factors), not {col.dtype}."
            raise InvalidTypeError(msg, param="size_factors")
        sf = col.to_numpy(dtype=float)
        src = OffsetSource("size_factors", size_factors)
    else:
        sf = np.asarray(size_factors, dtype=float).ravel()
        src = OffsetSource("size_factors")
    if sf.shape != (n,):
        msg = f"size_factors must have one value per cell ({n}); got shape {sf.shape}."
        raise InvalidValueError(msg, param="size_factors")
    if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
        kinds = {"missing (NaN)": np.isnan(sf), "infinite": np.isinf(sf), "zero": sf == 0, "negative": sf < 0}
        found = ", ".join(f"{int(v.sum())} {k}" for k, v in kinds.items() if v.any())
        msg = (
            f"size_factors must be positive and finite (a scale, not a log); found {found}. "
            "Remove those cells or fix the factors; if your column is already on the log scale, pass it as offset=."
        )
        raise InvalidValueError(msg, param="size_factors")
    return np.log(sf), src


def min_count(name: str, value: int | None) -> int:
    """A gene or group filter threshold (``None``: no filter, i.e. 0)."""
    if value is None:
        return 0
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        msg = f"{name} must be a non-negative integer or None (no filter); got {value!r}."
        raise InvalidValueError(msg, param=name)
    return int(value)


def gene_counts(Y, codes: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells with a count and donors with a count, per gene (never densifies a sparse matrix)."""
    if hasattr(Y, "gene_counts"):  # counts on disk: streamed
        return Y.gene_counts(codes, m)
    n = codes.shape[0]
    D = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(m, n))
    if sparse.issparse(Y):
        B = sparse.csr_matrix(Y) > 0
        ncell = np.asarray(B.sum(axis=0)).ravel().astype(np.int64)
        per = D @ B.astype(np.float64)
        ndon = np.asarray((per > 0).sum(axis=0)).ravel().astype(np.int64)
    else:
        B = np.asarray(Y) > 0
        ncell = B.sum(axis=0).astype(np.int64)
        per = np.asarray(D @ B.astype(np.float64))
        ndon = (per > 0).sum(axis=0).astype(np.int64)
    return ncell, ndon
