"""Tidy access to stored results."""

from ._composition import composition
from ._results import results
from ._varcomp import varcomp

__all__ = ["composition", "results", "varcomp"]
