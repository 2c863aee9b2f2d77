"""The tables of a fit with ``groupby``: one group's, or every chosen group's stacked."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd

__all__ = ["per_group"]


def per_group(
    subs: Mapping[str, str], group: str | Sequence[str] | None, one: Callable[[str], pd.DataFrame]
) -> pd.DataFrame:
    """The table ``one(run key)`` of a fit's only run, of its one group ``group``, or of every run stacked.

    Parameters
    ----------
    subs
        ``{group label: run key}`` as :func:`scglmm._layout.run_keys` gives it (``{"": key}``
        without ``groupby``).
    group
        The ``group`` asked for: a single name returns that group's table as it is.
    one
        The table of one run, indexed by gene.

    Returns
    -------
    The one table, or the tables of all runs stacked in the order of ``subs`` with a categorical
    ``group`` column first; the stacked table's ``attrs`` are the last run's, without ``df``
    (which differs between groups).
    """
    if list(subs) == [""]:
        return one(subs[""])
    if isinstance(group, str):
        return one(subs[group])
    parts = []
    for label, sub in subs.items():
        part = one(sub)
        part.insert(0, "group", label)
        parts.append(part)
    out = pd.concat(parts)
    out["group"] = pd.Categorical(out["group"], categories=list(subs))
    out.attrs = {k: v for k, v in parts[-1].attrs.items() if k != "df"}
    return out
