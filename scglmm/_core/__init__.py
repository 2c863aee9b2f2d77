"""Numerics: pure-array estimators (no AnnData)."""
