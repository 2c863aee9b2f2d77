"""Tools: model fits and tests that write into an AnnData."""

from ._composition import composition
from ._fit import fit
from ._test import test

__all__ = ["composition", "fit", "test"]
