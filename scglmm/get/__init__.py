"""Tidy access to stored results."""

from ._results import results
from ._varcomp import varcomp

__all__ = ["results", "varcomp"]
