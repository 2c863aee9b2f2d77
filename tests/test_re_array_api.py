"""The array-level API with general random-effect structures: ``scglmm.fit_genes(Y, X, terms, offset)``."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import sparse

import scglmm
from scglmm._core._api import fit_general_engine
from scglmm._core._errors import InvalidValueError

FORMULA = "~ condition + (1 + condition | donor)"


@cache
def data():
    a = scglmm.datasets.simulate(n_donors=6, cells_per_donor=40, n_genes=6, paired=True, slope_sd=0.4, seed=3)
    X = np.column_stack([np.ones(a.n_obs), (a.obs["condition"] == "stim").to_numpy(float)])
    off = np.log(a.obs["libsize"].to_numpy(float))
    return a, X, off


def test_random_terms_from_a_formula_or_its_random_part() -> None:
    a, _, _ = data()
    full, part = scglmm.random_terms(FORMULA, a.obs), scglmm.random_terms("(1 + condition | donor)", a.obs)
    assert len(full) == len(part) == 1
    assert full[0].coef_names == part[0].coef_names == ("Intercept", "condition[T.stim]")
    np.testing.assert_array_equal(full[0].Z, part[0].Z)
    np.testing.assert_array_equal(full[0].codes, part[0].codes)
    nested = scglmm.random_terms("(1 | donor/sample)", a.obs)
    assert [t.group for t in nested] == ["donor", "donor:sample"] and nested[1].m == 12


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_fit_genes_with_terms_is_the_general_engine(fmt: str) -> None:
    """Same numbers as the general engine on dense counts, from dense, CSR and CSC counts; names from the terms."""
    a, X, off = data()
    terms = scglmm.random_terms(FORMULA, a.obs)
    Y = {"dense": a.X.toarray(), "csr": sparse.csr_matrix(a.X), "csc": sparse.csc_matrix(a.X)}[fmt]
    res = scglmm.fit_genes(Y, X, terms, off, coef_names=["Intercept", "condition[T.stim]"])
    ref = fit_general_engine(a.X.toarray(), X, terms, off, coef_names=["Intercept", "condition[T.stim]"])
    assert isinstance(res, scglmm.GenesFit)
    np.testing.assert_allclose(res.coef, ref.coef, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.se, ref.se, rtol=1e-8)
    np.testing.assert_allclose(res.loglik, ref.loglik, rtol=1e-12)
    assert res.varcomp_names == ["var(Intercept|donor)", "var(condition[T.stim]|donor)",
                                 "cor(Intercept,condition[T.stim]|donor)"]  # fmt: skip
    assert res.mode_names[:2] == ["donor[D01]:Intercept", "donor[D01]:condition[T.stim]"]
    assert res.converged.all()


def test_fit_gene_with_terms_is_a_gene_fit() -> None:
    a, X, off = data()
    terms = scglmm.random_terms(FORMULA, a.obs)
    one = scglmm.fit_gene(a.X[:, 2], X, terms, off)
    every = scglmm.fit_genes(a.X, X, terms, off)
    assert isinstance(one, scglmm.GeneFit) and one.coef.shape == (2,) and one.varcomp.shape == (3,)
    np.testing.assert_allclose(one.coef, every.coef[2], rtol=1e-10)
    np.testing.assert_allclose(one.varcomp, every.varcomp[2], rtol=1e-8, atol=1e-12)
    assert one.varcomp_names == every.varcomp_names and one.mode_names == every.mode_names


def test_terms_refuse_quadrature_and_a_bare_term() -> None:
    a, X, off = data()
    terms = scglmm.random_terms(FORMULA, a.obs)
    with pytest.raises(InvalidValueError, match="n_agq=3"):
        scglmm.fit_genes(a.X, X, terms, off, n_agq=3)
    with pytest.raises(InvalidValueError, match="sequence of terms"):
        scglmm.fit_genes(a.X, X, terms[0], off)
