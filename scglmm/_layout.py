"""What scglmm stores in an AnnData: the keys, the readers and the writer of a run.

Everything that :mod:`scglmm.tl` writes and :mod:`scglmm.get`, :mod:`scglmm.pl` and the command
line read goes through this module, so the layout is defined once. For a fit under ``key``
(``key_added``; with ``groupby`` each group ``g`` has its own storage key ``f"{key}:{g}"``, the
*run key* ``sub`` below):

- ``varm[f"{sub}_{suffix}"]`` for each suffix of :data:`VARM_SUFFIXES`; the conditional modes
  (:data:`MODE_SUFFIXES`) only when the fit stored them (``params["store_modes"]``, read with
  :func:`modes_key`);
- ``varm[f"{sub}_expression"]``: ``base_mean`` and, per level of each factor of the design,
  :func:`expression_column` ``mean[...]`` and ``pct[...]`` (levels in ``params["expression_levels"]``);
- ``varm[f"{sub}_contrast_{name}"]`` for each test of :func:`scglmm.tl.test`;
- ``var[f"{sub}_status"]``;
- ``uns[sub]["params"]`` (the settings of the run) and ``uns[sub]["contrasts"]``;
- ``uns[key]["log_offset"]`` (per cell of the whole AnnData) and, in ``uns[key]["params"]``,
  the offset's source as data (:class:`OffsetSource`) and its normalisation (:class:`Normalisation`),
  whose factors per sample are ``uns[key]["norm_factors"]``;
- ``uns[f"{key}_rank_genes_groups"]``, laid out as scanpy's ``rank_genes_groups`` writes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._core._errors import InvalidValueError, MissingKeyError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "MODE_SUFFIXES",
    "VARM_SUFFIXES",
    "Normalisation",
    "OffsetSource",
    "StoredFit",
    "contrast_key",
    "contrast_name",
    "coef_cov",
    "drop_fit",
    "expression_column",
    "fit_params",
    "group_key",
    "h5ad_name",
    "modes_key",
    "normalisation",
    "rank_key",
    "run_keys",
    "status_key",
    "stored_contrasts",
    "stored_log_offset",
    "varm_key",
    "write_contrast",
    "write_fit",
]

#: Suffixes of the varm keys of one run (``f"{sub}_{suffix}"``).
VARM_SUFFIXES = ("coef", "se", "pval", "stat", "fit", "cov", "donor_effects", "expression", "varcomp", "modes")
#: Suffixes of the conditional modes: ``donor_effects`` with one ``(1 | donor)``, ``modes`` with any other
#: structure; stored only with ``store_modes`` (by default without ``groupby``).
MODE_SUFFIXES = ("donor_effects", "modes")


# ------------------------------------------------------------------------------------------------
# key builders
# ------------------------------------------------------------------------------------------------
def h5ad_name(name: object) -> str:
    """``name`` as a string that h5ad can store as a key (no ``/``, which h5ad reads as a path)."""
    return str(name).replace("/", "_")


def contrast_name(name: object) -> str:
    """The stored name of a contrast: :func:`h5ad_name` without whitespace."""
    return h5ad_name(re.sub(r"\s+", "", str(name)))


def group_key(key: str, group: object) -> str:
    """The run key of one group of ``groupby`` (group names keep their spaces)."""
    return f"{key}:{h5ad_name(group)}"


def varm_key(sub: str, suffix: str) -> str:
    """``varm`` key of one output of a run, e.g. ``varm_key("scglmm", "coef")``."""
    return f"{sub}_{suffix}"


def contrast_key(sub: str, name: str) -> str:
    """``varm`` key of a tested contrast of a run."""
    return f"{sub}_contrast_{name}"


def status_key(sub: str) -> str:
    """``var`` column holding the status strings of a run."""
    return f"{sub}_status"


def expression_column(kind: Literal["mean", "pct"], variable: str, level: str) -> str:
    """Column of ``varm[f"{sub}_expression"]``: the mean normalised expression (``"mean"``) or the
    fraction of cells with a count (``"pct"``) among the cells at one level of a factor."""
    return h5ad_name(f"{kind}[{variable}={level}]")


def rank_key(key: str) -> str:
    """``uns`` key of the ``rank_genes_groups``-style block of a fit."""
    return f"{key}_rank_genes_groups"


# ------------------------------------------------------------------------------------------------
# the offset of a fit, as data
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OffsetSource:
    """Where the log offset of a fit came from.

    ``kind`` is ``"total_counts"`` (log of each cell's total count over all genes of the
    matrix), ``"size_factors"`` (a scale, logged) or ``"log_offset"``; ``column`` is the ``obs``
    column it was read from, ``""`` for the total counts or an array passed by the user.
    """

    kind: Literal["total_counts", "size_factors", "log_offset"]
    column: str = ""

    def describe(self) -> str:
        """A readable description (stored as ``params["offset_source"]``)."""
        if self.kind == "total_counts":
            return "total counts per cell over all genes of the matrix"
        what = "log offset" if self.kind == "log_offset" else "size factors, logged"
        return f"obs[{self.column!r}] ({what})" if self.column else f"user array ({what})"

    def to_params(self) -> dict[str, str]:
        """The entries stored in ``uns[key]["params"]``."""
        return {"offset_kind": self.kind, "offset_column": self.column, "offset_source": self.describe()}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OffsetSource:
        """Read back what :meth:`to_params` stored."""
        return cls(kind=str(params["offset_kind"]), column=str(params.get("offset_column", "")))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Normalisation:
    """The robust factor per sample that multiplies each cell's library size (:mod:`scglmm._core._normalise`).

    ``method`` is ``"tmm"``, ``"tmm_mode"``, ``"ratio"`` or ``"none"``; ``samples`` the ``obs`` columns whose combined
    levels are the samples (empty for ``"none"``); ``groupby`` the column within whose groups the factors
    are computed, if any. Stored in ``uns[key]["params"]`` as ``norm_method`` and ``norm_samples``; the
    factors themselves in ``uns[key]["norm_factors"]``.
    """

    method: Literal["tmm", "tmm_mode", "ratio", "none"] = "none"
    samples: tuple[str, ...] = ()
    groupby: str | None = None

    def to_params(self) -> dict[str, Any]:
        """The entries stored in ``uns[key]["params"]``."""
        return {"norm_method": self.method, "norm_samples": list(self.samples)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Normalisation:
        """Read back what :meth:`to_params` stored (``"none"`` for a fit made before normalisation existed)."""
        samples = tuple(str(c) for c in np.atleast_1d(params.get("norm_samples", [])))
        groupby = params.get("groupby")
        return cls(str(params.get("norm_method", "none")), samples, None if groupby is None else str(groupby))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------
def fit_params(adata: AnnData, key: str) -> dict:
    """``uns[key]["params"]`` of a fit (or of one group's run); a clear error if there is none."""
    entry = adata.uns.get(key)
    if not _is_fit(entry):
        found = [k for k in adata.uns if _is_fit(adata.uns[k])]
        msg = f"no scglmm results under key {key!r}; run scglmm.tl.fit(adata, ...) first (keys with results: {found})."
        raise MissingKeyError(msg, param="key")
    return entry["params"]


def _is_fit(entry: object) -> bool:
    """Whether an ``uns`` entry holds a fit (its params name a formula; a rank block's do not)."""
    return isinstance(entry, Mapping) and isinstance(entry.get("params"), Mapping) and "formula" in entry["params"]


def run_keys(adata: AnnData, key: str, group: str | Sequence[str] | None = None) -> dict[str, str]:
    """``{group label: run key}`` of a fit: ``{"": key}`` without ``groupby``, else the fitted
    groups (all, or those named by ``group``)."""
    params = fit_params(adata, key)
    if "group_keys" not in params:
        if group is not None:
            msg = f"the fit under key {key!r} was not run with groupby; leave group=None."
            raise InvalidValueError(msg, param="group")
        return {"": key}
    groups = {str(g): str(s) for g, s in zip(params["groups"], params["group_keys"], strict=True)}
    if group is None:
        return groups
    wanted = [group] if isinstance(group, str) else list(group)
    missing = [g for g in wanted if str(g) not in groups]
    if missing:
        skipped = dict(zip(params.get("skipped_groups", []), params.get("skipped_reasons", []), strict=True))
        extra = f" (skipped in the fit: {skipped})" if skipped else ""
        msg = f"group(s) {missing} not fitted under key {key!r}; fitted groups: {list(groups)}{extra}."
        raise MissingKeyError(msg, param="group")
    return {str(g): groups[str(g)] for g in wanted}


def parent_key(adata: AnnData, sub: str) -> str:
    """The fit's key of a run key (itself without ``groupby``)."""
    return str(fit_params(adata, sub).get("parent_key", sub))


def stored_log_offset(adata: AnnData, sub: str) -> np.ndarray:
    """The log offset of the fit, one value per cell of ``adata`` (``uns[key]["log_offset"]``)."""
    key = parent_key(adata, sub)
    off = adata.uns[key].get("log_offset")
    if off is None or np.shape(off) != (adata.n_obs,):
        msg = (
            f"cannot rebuild the offset of the fit under {key!r}: no stored offset for the {adata.n_obs} cells of "
            "adata (subset after the fit?); refit, or pass the same size_factors= or offset= given to scglmm.tl.fit."
        )
        raise InvalidValueError(msg, param="adata")
    return np.asarray(off, dtype=float)


def offset_source(adata: AnnData, sub: str) -> OffsetSource:
    """How the fit's offset was made."""
    return OffsetSource.from_params(fit_params(adata, parent_key(adata, sub)))


def normalisation(adata: AnnData, sub: str) -> Normalisation:
    """How the fit's library sizes were normalised."""
    return Normalisation.from_params(fit_params(adata, parent_key(adata, sub)))


def coef_cov(adata: AnnData, sub: str) -> np.ndarray:
    """(genes, p, p) covariance of the fixed effects of a run."""
    p = len(fit_params(adata, sub)["design_columns"])
    cov = np.asarray(adata.varm[varm_key(sub, "cov")], dtype=float)
    return cov.reshape(cov.shape[0], p, p)


def modes_key(adata: AnnData, sub: str) -> str:
    """``varm`` key of the conditional modes of a run; a clear error naming ``store_modes`` if the fit
    did not store them."""
    for suffix in MODE_SUFFIXES:
        if varm_key(sub, suffix) in adata.varm:
            return varm_key(sub, suffix)
    params = fit_params(adata, sub)
    why = " (a fit with groupby stores them only when asked)" if params.get("groupby") is not None else ""
    msg = (
        f"the fit under {sub!r} did not store the conditional modes of its random effects{why}; refit with "
        "scglmm.tl.fit(..., store_modes=True) (on the command line: scglmm fit --store-modes) to plot them."
    )
    raise MissingKeyError(msg, param="key")


def stored_contrasts(adata: AnnData, sub: str) -> dict[str, dict]:
    """``{name: settings}`` of the contrasts tested on a run."""
    entry = adata.uns.get(sub, {})
    return dict(entry.get("contrasts", {})) if isinstance(entry, Mapping) else {}


# ------------------------------------------------------------------------------------------------
# the writer
# ------------------------------------------------------------------------------------------------
@dataclass
class StoredFit:
    """Everything a fit writes, assembled before the AnnData is touched."""

    varm: dict[str, Any] = field(default_factory=dict)
    var: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)


def drop_fit(adata: AnnData, key: str) -> None:
    """Remove every output of a previous fit under ``key`` (its groups and contrasts included)."""
    subs = [key]
    old = adata.uns.get(key)
    if isinstance(old, Mapping) and isinstance(old.get("params"), Mapping):
        subs += [str(s) for s in old["params"].get("group_keys", [])]
    for sub in subs:
        for suffix in VARM_SUFFIXES:
            adata.varm.pop(varm_key(sub, suffix), None)
        for k in [k for k in adata.varm if k.startswith(contrast_key(sub, ""))]:
            adata.varm.pop(k, None)
        if status_key(sub) in adata.var.columns:
            del adata.var[status_key(sub)]
        adata.uns.pop(sub, None)
    adata.uns.pop(rank_key(key), None)


def write_fit(adata: AnnData, key: str, stored: StoredFit) -> None:
    """Replace the fit under ``key`` whole by ``stored`` (call only once everything is computed)."""
    drop_fit(adata, key)
    for k, v in stored.varm.items():
        adata.varm[k] = v
    for k, v in stored.var.items():
        adata.var[k] = v
    for k, v in stored.uns.items():
        adata.uns[k] = v


def write_contrast(adata: AnnData, sub: str, name: str, table: Any, info: dict) -> None:
    """Store one tested contrast of a run (its per-gene table and its settings)."""
    adata.varm[contrast_key(sub, name)] = table
    contrasts = stored_contrasts(adata, sub)
    contrasts[name] = info
    adata.uns[sub]["contrasts"] = contrasts
