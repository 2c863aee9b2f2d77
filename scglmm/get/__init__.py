"""Tidy access to stored results."""

from ._results import results

__all__ = ["results"]
