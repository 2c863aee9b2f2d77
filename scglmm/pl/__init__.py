"""Plots of stored fits (matplotlib, scanpy's ``show`` / ``save`` / ``ax`` conventions)."""

from ._plots import donor_effects, pvalue_hist, pvalue_qq, volcano

__all__ = ["donor_effects", "pvalue_hist", "pvalue_qq", "volcano"]
