"""lme4-style formulas: split off the random-effect term, build the fixed design with formulaic."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._core._design import redundant_columns
from ._core._errors import InvalidTypeError, InvalidValueError, MissingKeyError

if TYPE_CHECKING:
    from formulaic import ModelMatrix, ModelSpec

_BAR_TERM = re.compile(r"\(([^()]*)\|([^()]*)\)")
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m|[\u29da\u29db]")


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its fixed part and its single donor random intercept."""

    formula: str
    fixed: str
    donor: str
    """The ``obs`` column of the donor random intercept."""


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``"~ condition + x + (1 | donor)"`` into ``"~ condition + x"`` and ``"donor"``.

    Raises InvalidValueError with a suggestion when the formula is not of the supported form.
    """
    if not isinstance(formula, str):
        msg = f"formula must be a string such as '~ condition + (1 | donor)'; got {type(formula).__name__}."
        raise InvalidTypeError(msg, param="formula")
    f = formula.strip()
    if not f.startswith("~"):
        if "~" in f:
            msg = (
                f"formula {formula!r} has a left-hand side; leave it out, the response is each gene: "
                f"'~ {f.split('~', 1)[1].strip()}'."
            )
        else:
            msg = f"formula {formula!r} must start with '~', e.g. '~ condition + (1 | donor)'."
        raise InvalidValueError(msg, param="formula")
    if f.count("(") != f.count(")"):
        msg = (
            f"formula {formula!r} has unbalanced parentheses ({f.count('(')} '(' but {f.count(')')} ')'); "
            "close every one, e.g. '~ condition + (1 | donor)'."
        )
        raise InvalidValueError(msg, param="formula")
    if "||" in f.replace(" ", ""):
        msg = (
            f"formula {formula!r}: the double-bar '(1 || donor)' form is not supported; "
            "use a single random intercept '(1 | donor)'."
        )
        raise InvalidValueError(msg, param="formula")
    donor = _donor_term(formula, f)
    rest = _BAR_TERM.sub("", f[1:])
    rest = re.sub(r"\+\s*\+", "+", rest)
    rest = rest.strip().strip("+").strip()
    rest = re.sub(r"\+\s*$", "", rest).strip()
    if "|" in rest:
        msg = f"formula {formula!r}: a '|' outside a '( ... | group)' term is not valid."
        raise InvalidValueError(msg, param="formula")
    fixed = "~ " + (rest if rest else "1")
    return ParsedFormula(formula=formula, fixed=fixed, donor=donor)


def _donor_term(formula: str, f: str) -> str:
    """The donor column of the one random-intercept term ``(1 | donor)`` of ``f``."""
    terms = _BAR_TERM.findall(f)
    if not terms:
        raise InvalidValueError(_no_random_term(formula, f), param="formula")
    if len(terms) > 1:
        msg = (
            f"formula {formula!r} has {len(terms)} random-effect terms; scglmm supports exactly one "
            "random intercept, '(1 | donor)'."
        )
        raise InvalidValueError(msg, param="formula")
    lhs, donor = (s.strip() for s in terms[0])
    if lhs.replace(" ", "") in ("", "0", "-1", "0+1"):
        msg = (
            f"random-effect term '({lhs} | {donor})' has no intercept before the '|'; "
            f"write the donor random intercept as '(1 | {donor or 'donor'})'."
        )
        raise InvalidValueError(msg, param="formula")
    if lhs.replace(" ", "") not in ("1",):
        msg = (
            f"random-effect term '({lhs} | {donor})' is not supported: only a random intercept "
            f"'(1 | {donor})' is. Random slopes are planned; for now add '{lhs}' as a fixed effect."
        )
        raise InvalidValueError(msg, param="formula")
    if not _NAME.match(donor):
        msg = (
            f"grouping factor {donor!r} in '(1 | {donor})' is not supported: use a single obs column. "
            "For nested designs make one column of the combined labels, e.g. obs['sample']."
        )
        raise InvalidValueError(msg, param="formula")
    return donor


#: ``1 | donor`` without its parentheses.
_BARE_BAR = re.compile(r"(?<![(|])\b1\s*\|\s*([A-Za-z_.][A-Za-z0-9_.]*)")
#: ``(1 / donor)``, ``[1 | donor]`` and similar near misses of ``(1 | donor)``.
_NEAR_BAR = re.compile(r"[(\[{]\s*1\s*[|/\\!:;,]\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*[)\]}]")


def _no_random_term(formula: str, f: str) -> str:
    """The message for a formula without a ``( ... | group)`` term, with the intended formula when it can be guessed."""
    for pattern, why in (
        (_NEAR_BAR, "a random intercept is written with a bar '|' inside round parentheses"),
        (_BARE_BAR, "the random intercept needs its parentheses"),
    ):
        hit = pattern.search(f)
        if hit is not None:
            fixed = f[: hit.start()] + f"(1 | {hit.group(1)})" + f[hit.end() :]
            return (
                f"formula {formula!r} has no random-effect term: {why}; "
                f"did you mean {' '.join(fixed.split())!r}?"
            )
    return (
        f"formula {formula!r} has no random-effect term; add a donor random intercept, "
        "e.g. '~ condition + (1 | donor)'."
    )


@dataclass(frozen=True)
class FixedDesign:
    """The fixed-effect design built from ``obs``."""

    matrix: np.ndarray
    columns: list[str]
    variables: list[str]
    reference_levels: dict[str, str]
    factor_levels: dict[str, tuple[str, str]] = field(default_factory=dict)
    """``{column: (variable, level)}`` for each column that codes one level of one factor, e.g.
    ``{"condition[T.stim]": ("condition", "stim")}`` (as formulaic's model matrix encodes it);
    numeric columns and interactions are not in it."""


def required_variables(fixed: str) -> list[str]:
    """Names of the obs columns a fixed formula uses."""
    from formulaic import Formula

    try:
        form = Formula(fixed)
    except Exception as err:  # formulaic raises several parser error types
        detail = " ".join(_ANSI.sub("", str(err)).split("\n\n")[0].split()).rstrip(".")
        msg = (
            f"could not parse the fixed part of the formula {fixed!r}: {detail}. Join terms with '+', "
            "e.g. '~ condition + pct_mito + (1 | donor)'; quote column names that are not Python names "
            "with backticks, e.g. `cell type`."
        )
        raise InvalidValueError(msg, param="formula") from err
    return sorted(str(v) for v in form.required_variables)


def build_design(fixed: str, obs: pd.DataFrame) -> FixedDesign:
    """Treatment-coded fixed design, with checks for unknown columns, NaN and rank deficiency."""
    variables = required_variables(fixed)
    missing = [v for v in variables if v not in obs.columns]
    if missing:
        msg = (
            f"column(s) {missing} of the formula are not in adata.obs (nor known functions); "
            f"available columns: {list(obs.columns)}."
        )
        raise MissingKeyError(msg, param="formula")
    reference = {}
    for v in variables:
        ref = _checked_variable(v, obs[v])
        if ref is not None:
            reference[v] = ref
    mm = _model_matrix(fixed, obs, variables)
    X = np.asarray(mm, dtype=np.float64)
    cols = [str(c) for c in mm.columns]
    if X.shape[0] != len(obs):
        msg = "the design lost rows (missing values?); check the formula's columns."
        raise InvalidValueError(msg, param="formula")
    _check_rank(X, cols)
    return FixedDesign(
        matrix=X,
        columns=cols,
        variables=variables,
        reference_levels=reference,
        factor_levels=_factor_levels(mm.model_spec),
    )


def _checked_variable(name: str, col: pd.Series) -> str | None:
    """Refuse a variable with NaN, infinite values or a single level; return its reference level
    (the first used category; the first sorted value of strings; ``""`` for booleans; ``None``
    for numbers)."""
    if col.isna().any():
        msg = (
            f"obs column {name!r} has {int(col.isna().sum())} missing value(s) (NaN); "
            "fill them or subset the cells first (nothing is dropped silently)."
        )
        raise InvalidValueError(msg, param="adata")
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if numeric:
        if not np.all(np.isfinite(col.to_numpy(dtype=float))):
            n_inf = int((~np.isfinite(col.to_numpy(dtype=float))).sum())
            msg = (
                f"obs column {name!r} has {n_inf} infinite value(s); replace them (e.g. clip or log-transform "
                "the covariate) or subset the cells first."
            )
            raise InvalidValueError(msg, param="adata")
        return None
    if not numeric:
        levels = pd.unique(col.astype(str))
        if len(levels) < 2:
            msg = (
                f"obs column {name!r} has a single value ({levels[0]!r}) in these cells, so its effect "
                f"cannot be estimated; remove {name!r} from the formula or check how the cells were subset."
            )
            raise InvalidValueError(msg, param="formula")
    if isinstance(col.dtype, pd.CategoricalDtype):
        used = [c for c in col.cat.categories if (col == c).any()]
        return str(used[0]) if used else ""
    return str(sorted(pd.unique(col.astype(str)))[0]) if pd.api.types.is_object_dtype(col) else ""


def _model_matrix(fixed: str, obs: pd.DataFrame, variables: list[str]) -> ModelMatrix:
    """formulaic's model matrix of ``fixed`` on the used categories of ``obs``."""
    from formulaic import model_matrix

    data = obs[variables].copy() if variables else pd.DataFrame(index=obs.index)
    for v in variables:  # drop unused categories so no all-zero dummy columns appear
        if isinstance(data[v].dtype, pd.CategoricalDtype):
            data[v] = data[v].cat.remove_unused_categories()
    try:
        return model_matrix(fixed, data, na_action="raise")
    except Exception as err:
        detail = " ".join(_ANSI.sub("", str(err)).split("\n\n")[0].split()).rstrip(".")
        msg = f"could not build the design for {fixed!r}: {detail}. Check the formula's terms and functions."
        raise InvalidValueError(msg, param="formula") from err


def _check_rank(X: np.ndarray, cols: list[str]) -> None:
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        dropped = redundant_columns(X, cols)
        msg = (
            f"the fixed-effect design is rank deficient ({rank} of {X.shape[1]} columns estimable): "
            f"column(s) {dropped} are linear combinations of the others {cols}. Remove or merge "
            "the redundant terms (e.g. a covariate constant within the data, or two columns coding the same thing)."
        )
        raise InvalidValueError(msg, param="formula")


def _factor_levels(spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """``{column: (variable, level)}`` of the columns that code one level of one factor alone.

    Read from the model spec: for a term of one categorical factor, column ``j`` of its coding
    matrix (levels x columns) is the indicator of one level under treatment (or full) coding.
    """
    out: dict[str, tuple[str, str]] = {}
    for term in spec.structure:
        if len(term.scoped_terms) != 1 or len(term.scoped_terms[0].factors) != 1:
            continue
        scoped = term.scoped_terms[0].factors[0]
        state = spec.factor_contrasts.get(scoped.factor.factor)
        if state is None:
            continue
        coding = np.asarray(state.contrasts.get_coding_matrix(state.levels, reduced_rank=scoped.reduced), dtype=float)
        if coding.shape[1] != len(term.columns):
            continue
        for col, codes in zip(term.columns, coding.T, strict=True):
            (hits,) = np.nonzero(codes)
            if hits.size == 1 and codes[hits[0]] == 1.0:
                out[str(col)] = (str(scoped.factor.expr), str(state.levels[hits[0]]))
    return out
