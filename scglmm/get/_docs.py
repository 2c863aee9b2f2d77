"""Docstring sections shared by several public functions, written once and filled in at import.

A docstring line that holds only ``{name}`` is replaced by the section ``name``, each of its lines
indented as the marker was, so the filled docstring reads (and renders) as if written out in full.
Used by :mod:`scglmm.get` and :mod:`scglmm.pl`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["GROUP_KEY", "fill_sections", "with_sections"]

F = TypeVar("F", bound=Callable)

#: A line of a docstring that is only ``{name}`` (with its indentation).
_MARKER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)

#: ``group`` and ``key`` of the tables read from a fit (:func:`scglmm.get.results`, :func:`scglmm.get.varcomp`).
GROUP_KEY = """\
group
    For a fit with ``groupby``: one group, or several. ``None`` returns every fitted group,
    stacked, with a ``group`` column first.
key
    The ``key_added`` of the fit."""


def fill_sections(doc: str | None, sections: Mapping[str, str]) -> str | None:
    """``doc`` with each marker line ``{name}`` replaced by ``sections[name]``, indented as the marker.

    Parameters
    ----------
    doc
        A docstring (``None`` under ``python -OO``, returned as it is).
    sections
        The text of each section, unindented; its blank lines stay empty.

    Returns
    -------
    The filled docstring.

    Raises
    ------
    KeyError
        If a marker names no section (a typo in the docstring).
    """
    if doc is None:
        return None

    def section(hit: re.Match[str]) -> str:
        lines = sections[hit["name"]].split("\n")
        return "\n".join(hit["indent"] + line if line else "" for line in lines)

    return _MARKER.sub(section, doc)


def with_sections(**sections: str) -> Callable[[F], F]:
    """A decorator that fills the marker lines of a function's docstring (:func:`fill_sections`).

    Parameters
    ----------
    **sections
        The text of each section, by the name its marker uses.

    Returns
    -------
    The decorator; it returns the function itself, with ``__doc__`` filled.
    """

    def fill(func: F) -> F:
        func.__doc__ = fill_sections(func.__doc__, sections)
        return func

    return fill
