"""scglmm: donor-aware differential expression with negative binomial GLMMs, for scanpy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, pl, tl
from ._convert import to_csc
from ._core._api import fit_gene, fit_genes
from ._core._normalise import robust_size_factors
from ._core._re import RETerm
from ._core._results import GeneFit, GenesFit
from ._core._status import status_name
from ._formula import random_terms

try:
    __version__ = version("scglmm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "GeneFit",
    "GenesFit",
    "RETerm",
    "fit_gene",
    "fit_genes",
    "random_terms",
    "robust_size_factors",
    "datasets",
    "get",
    "pl",
    "status_name",
    "tl",
    "to_csc",
    "__version__",
]
