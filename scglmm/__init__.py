"""scglmm: donor-aware differential expression with negative binomial GLMMs, for scanpy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, pl, tl
from ._core._api import fit_gene, fit_genes
from ._core._results import GeneFit, GenesFit
from ._core._status import status_name

try:
    __version__ = version("scglmm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["GeneFit", "GenesFit", "fit_gene", "fit_genes", "datasets", "get", "pl", "status_name", "tl", "__version__"]
