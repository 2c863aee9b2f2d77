"""The one exception family for bad input, raised before any work starts.

Every input rule of the package (array API, AnnData layer, plots) raises one of these. Each
carries ``param``, the name of the offending parameter as the Python API spells it (``"layer"``,
``"formula"``, ``"size_factors"``, ...), so that the command line names its own flag for it
without rewriting the message. They subclass the built-in type a caller would expect
(``ValueError``, ``KeyError``, ``TypeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["InputError", "InvalidTypeError", "InvalidValueError", "MissingKeyError"]


class InputError(Exception):
    """Bad input, named by the parameter that carried it.

    Parameters
    ----------
    message
        What is wrong and what the valid choices are.
    param
        The offending parameter (Python name), or ``None`` when no single parameter is to blame.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidValueError(InputError, ValueError):
    """A value outside the valid choices (wrong shape, range, content)."""


class InvalidTypeError(InputError, TypeError):
    """A value of the wrong type."""


class MissingKeyError(InputError, KeyError):
    """A name that does not exist (an ``obs`` column, a layer, a stored result, a coefficient)."""
