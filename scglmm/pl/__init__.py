"""Plots of stored fits: volcano, donor effects of one gene, p-value calibration checks, and a
summary across the groups of a fit with ``groupby``.

All functions read what :func:`scglmm.tl.fit` stored and write nothing into the AnnData.
They follow scanpy's conventions: ``ax`` draws into an existing Axes, ``save`` writes the figure
to a file, ``show`` decides whether :func:`matplotlib.pyplot.show` is called, and the Axes is
returned when ``show`` is False (a dict of Axes for the two-panel :func:`groups_summary`).

Modules: ``_utils`` (the shared Axes / ``show`` / ``save`` helper and the docstring sections of
those parameters, the run and the result to plot, gene labels, titles in words, input checks,
``-log10 p`` heights), ``_labels`` (labels that do
not overlap, with adjustText), ``_volcano``, ``_donor_effects``, ``_pvalues`` (QQ plot and
histogram) and ``_groups`` (the summary across groups). Stored results are read through
:mod:`scglmm._layout` and :func:`scglmm.get.results`, AnnData inputs through :mod:`scglmm._inputs`.
"""

from ._composition import composition
from ._donor_effects import donor_effects
from ._groups import groups_summary
from ._pvalues import pvalue_hist, pvalue_qq
from ._volcano import volcano

__all__ = ["composition", "donor_effects", "groups_summary", "pvalue_hist", "pvalue_qq", "volcano"]
