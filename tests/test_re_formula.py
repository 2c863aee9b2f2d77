"""The lme4 grammar of random-effect structures (scglmm._formula.parse_re_formula / build_re_terms)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scglmm._formula import RETermSpec, build_re_terms, check_re_agq, parse_formula, parse_re_formula
from tests.test_re import load, terms_of


@pytest.mark.parametrize(
    ("formula", "fixed", "terms"),
    [
        ("~ condition + (1 | donor)", "~ condition", ["(1 | donor)"]),
        ("~ condition + covariate + (1 + condition | donor)", "~ condition + covariate", ["(1 + condition | donor)"]),
        ("~ condition + (condition | donor)", "~ condition", ["(1 + condition | donor)"]),
        ("~ condition + (0 + condition | donor)", "~ condition", ["(0 + condition | donor)"]),
        ("~ x + (x - 1 | donor)", "~ x", ["(0 + x | donor)"]),
        ("~ x + (1 + x || donor)", "~ x", ["(1 + x || donor)"]),
        ("~ c + (1 | donor/sample)", "~ c", ["(1 | donor)", "(1 | donor:sample)"]),
        ("~ c + (1 | donor:sample)", "~ c", ["(1 | donor:sample)"]),
        ("~ c + (1 | donor) + (1 | batch)", "~ c", ["(1 | donor)", "(1 | batch)"]),
        ("~ (1 + x + z | a/b/c)", "~ 1", ["(1 + x + z | a)", "(1 + x + z | a:b)", "(1 + x + z | a:b:c)"]),
        ("~ c + (1 || donor)", "~ c", ["(1 | donor)"]),
    ],
)
def test_parse(formula: str, fixed: str, terms: list[str]) -> None:
    parsed = parse_re_formula(formula)
    assert parsed.fixed == fixed
    assert [str(t) for t in parsed.terms] == terms


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("~ condition", "has no random-effect term"),
        ("y ~ condition + (1 | donor)", "has a left-hand side"),
        ("~ condition + (1 | donor", "unbalanced parentheses"),
        ("~ condition + (0 | donor)", "has no coefficient"),
        ("~ condition + (x * z | donor)", "is not supported before"),
        ("~ condition + (1 | donor + batch)", "grouping factor 'donor \\+ batch'"),
        ("~ condition + (1 | donor) + (1 | donor)", "appears twice"),
        ("~ condition | donor + (1 | donor)", "outside a"),
        ("~ c + (1 + log(x) | donor)", r"term '\(1 \+ log\(x\) \| donor\)' has parentheses inside"),
        ("~ c + (1 | donor) + (1 + log(x) | donor)", r"term '\(1 \+ log\(x\) \| donor\)' has parentheses"),
        ("~ c + (1 | (donor))", r"term '\(1 \| \(donor\)\)' has parentheses inside"),
        (
            "~ c + (1 + c | donor) + (1 | donor)",
            r"\(1 \+ c \| donor\) and \(1 \| donor\) both give 'donor' a random intercept",
        ),
        ("~ c + (1 + x || donor) + (0 + x | donor)", r"both give 'donor' a random slope of 'x'"),
        ("~ c + (1 | donor/donor)", r"names an obs column twice \(\['donor', 'donor'\]\)"),
    ],
)
def test_parse_errors(formula: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_re_formula(formula)


def test_same_coefficient_in_two_terms_of_different_factors_is_fine() -> None:
    """lme4's uncorrelated form and a slope in two nested factors give each coefficient one variance."""
    assert [str(t) for t in parse_re_formula("~ c + (1 | donor) + (0 + c | donor)").terms] == [
        "(1 | donor)",
        "(0 + c | donor)",
    ]
    assert len(parse_re_formula("~ c + (1 + c | donor/sample)").terms) == 2


def test_single_donor_parser_unchanged() -> None:
    """tl's parser still refuses slopes (its messages are asserted in test_validation)."""
    assert parse_formula("~ condition + (1 | donor)").donor == "donor"
    with pytest.raises(ValueError, match="Random slopes are planned"):
        parse_formula("~ condition + (1 + condition | donor)")


def test_agq_refused_beyond_one_intercept() -> None:
    check_re_agq(parse_re_formula("~ c + (1 | donor)").terms, 5)
    with pytest.raises(ValueError, match="single scalar random effect"):
        check_re_agq(parse_re_formula("~ c + (1 | donor/sample)").terms, 5)
    with pytest.raises(ValueError, match="single scalar random effect"):
        check_re_agq(parse_re_formula("~ c + (1 + c | donor)").terms, 3)


def _obs(kind: str) -> pd.DataFrame:
    import anndata as ad

    from tests.test_re import REF

    return ad.read_h5ad(REF / f"{kind}.h5ad").obs


@pytest.mark.parametrize(
    ("kind", "formula"),
    [
        ("slope", "~ condition + covariate + (1 + condition | donor)"),
        ("nested", "~ condition + covariate + (1 | donor/sample)"),
        ("crossed", "~ condition + covariate + (1 | donor) + (1 | batch)"),
    ],
)
def test_build_matches_reference_terms(kind: str, formula: str) -> None:
    """Built from obs, the terms are those the glmmTMB comparison uses (names included)."""
    built = build_re_terms(parse_re_formula(formula).terms, _obs(kind))
    expected = terms_of(kind)
    assert [t.group for t in built] == [t.group for t in expected]
    for b, e in zip(built, expected, strict=True):
        assert b.coef_names == e.coef_names
        np.testing.assert_array_equal(b.Z, e.Z)
        np.testing.assert_array_equal(b.codes, e.codes)
        np.testing.assert_array_equal(b.levels, e.levels)


def test_repeated_sample_labels_nest_in_donors() -> None:
    """S1-S3 repeat in every donor: donor:sample has one level per (donor, sample), as in lme4."""
    obs = _obs("nested")
    _, sample = build_re_terms(parse_re_formula("~ (1 | donor/sample)").terms, obs)
    assert sample.m == obs.groupby(["donor", "sample"], observed=True).ngroups == 24
    assert "D01:S1" in set(sample.levels) and "D02:S1" in set(sample.levels)


def test_factor_slope_columns() -> None:
    obs = _obs("slope")
    (with_int,) = build_re_terms((RETermSpec("1 + condition", ("donor",)),), obs)
    (without,) = build_re_terms((RETermSpec("0 + condition", ("donor",)),), obs)
    (num,) = build_re_terms((RETermSpec("1 + covariate", ("donor",), diagonal=True),), obs)
    assert with_int.coef_names == ("Intercept", "condition[T.stim]")
    assert without.coef_names == ("condition[ctrl]", "condition[stim]")
    assert num.coef_names == ("Intercept", "covariate") and num.diagonal
    np.testing.assert_array_equal(num.Z[:, 1], obs["covariate"].to_numpy(float))
    assert load("slope")[0].shape[0] == with_int.Z.shape[0]


def test_build_errors() -> None:
    obs = _obs("slope")
    with pytest.raises(KeyError, match="not in adata.obs"):
        build_re_terms(parse_re_formula("~ (1 | lab)").terms, obs)
    one = obs.assign(lab="L1")
    with pytest.raises(ValueError, match="single level"):
        build_re_terms(parse_re_formula("~ (1 | lab)").terms, one)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("~ condition (1 + condition | donor)", "~ condition + (1 + condition | donor)"),
        ("~ condition + (1 | donor) (1 | batch)", "~ condition + (1 | donor) + (1 | batch)"),
        ("~ (1 | donor) condition", "~ (1 | donor) + condition"),
    ],
)
def test_a_term_without_its_plus_is_refused_with_the_fix(typo: str, meant: str) -> None:
    from scglmm._core._errors import InvalidValueError
    from scglmm._formula import parse_fit_formula

    with pytest.raises(InvalidValueError, match="joined to the other terms with '\\+'") as info:
        parse_fit_formula(typo)
    assert f"did you mean {meant!r}" in str(info.value) and info.value.param == "formula"
    parse_fit_formula(meant)  # the suggestion itself is accepted


def test_two_terms_with_the_same_levels_are_refused() -> None:
    import scglmm
    from scglmm._core._errors import InvalidValueError
    from scglmm._formula import parse_fit_formula

    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=20, n_genes=3, paired=True, seed=1)
    with pytest.raises(InvalidValueError, match="have the same levels") as info:
        build_re_terms(parse_fit_formula("~ condition + (1 | donor/sample/condition)").specs, a.obs)
    assert "(1 | donor:sample)" in str(info.value) and info.value.param == "formula"
    assert len(build_re_terms(parse_fit_formula("~ condition + (1 | donor/sample)").specs, a.obs)) == 2


def test_a_constant_slope_covariate_names_the_random_effect_term() -> None:
    import scglmm
    from scglmm._core._errors import InvalidValueError
    from scglmm._formula import parse_fit_formula

    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=20, n_genes=3, paired=True, seed=1)
    a.obs["x"] = 1.0
    term = r"in the random-effect term \(1 \+ x \| donor\): its covariates are rank"
    with pytest.raises(InvalidValueError, match=term):
        build_re_terms(parse_fit_formula("~ condition + (1 + x | donor)").specs, a.obs)
