"""Tools: model fits and tests that write into an AnnData."""

from ._fit import fit

__all__ = ["fit"]
