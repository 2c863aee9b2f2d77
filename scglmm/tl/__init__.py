"""Tools: model fits and tests that write into an AnnData."""

from ._fit import fit
from ._test import test

__all__ = ["fit", "test"]
