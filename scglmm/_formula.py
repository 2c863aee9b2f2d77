"""lme4-style formulas: split off the random-effect term, build the fixed design with formulaic."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._core._design import redundant_columns

_BAR_TERM = re.compile(r"\(([^()]*)\|([^()]*)\)")
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m|[\u29da\u29db]")


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its fixed part and its single donor random intercept."""

    formula: str
    fixed: str
    group: str


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``"~ condition + x + (1 | donor)"`` into ``"~ condition + x"`` and ``"donor"``.

    Raises ValueError with a suggestion when the formula is not of the supported form.
    """
    if not isinstance(formula, str):
        msg = f"formula must be a string such as '~ condition + (1 | donor)'; got {type(formula).__name__}."
        raise TypeError(msg)
    f = formula.strip()
    if not f.startswith("~"):
        if "~" in f:
            msg = (
                f"formula {formula!r} has a left-hand side; leave it out, the response is each gene: "
                f"'~ {f.split('~', 1)[1].strip()}'."
            )
        else:
            msg = f"formula {formula!r} must start with '~', e.g. '~ condition + (1 | donor)'."
        raise ValueError(msg)
    if f.count("(") != f.count(")"):
        msg = (
            f"formula {formula!r} has unbalanced parentheses ({f.count('(')} '(' but {f.count(')')} ')'); "
            "close every one, e.g. '~ condition + (1 | donor)'."
        )
        raise ValueError(msg)
    if "||" in f.replace(" ", ""):
        msg = (
            f"formula {formula!r}: the double-bar '(1 || donor)' form is not supported; "
            "use a single random intercept '(1 | donor)'."
        )
        raise ValueError(msg)
    terms = _BAR_TERM.findall(f)
    if not terms:
        msg = (
            f"formula {formula!r} has no random-effect term; add a donor random intercept, "
            "e.g. '~ condition + (1 | donor)'."
        )
        raise ValueError(msg)
    if len(terms) > 1:
        msg = (
            f"formula {formula!r} has {len(terms)} random-effect terms; scglmm supports exactly one "
            "random intercept, '(1 | donor)'."
        )
        raise ValueError(msg)
    lhs, grp = (s.strip() for s in terms[0])
    if lhs.replace(" ", "") in ("", "0", "-1", "0+1"):
        msg = (
            f"random-effect term '({lhs} | {grp})' has no intercept before the '|'; "
            f"write the donor random intercept as '(1 | {grp or 'donor'})'."
        )
        raise ValueError(msg)
    if lhs.replace(" ", "") not in ("1",):
        msg = (
            f"random-effect term '({lhs} | {grp})' is not supported: only a random intercept "
            f"'(1 | {grp})' is. Random slopes are planned; for now add '{lhs}' as a fixed effect."
        )
        raise ValueError(msg)
    if not _NAME.match(grp):
        msg = (
            f"grouping factor {grp!r} in '(1 | {grp})' is not supported: use a single obs column. "
            "For nested designs make one column of the combined labels, e.g. obs['sample']."
        )
        raise ValueError(msg)
    rest = _BAR_TERM.sub("", f[1:])
    rest = re.sub(r"\+\s*\+", "+", rest)
    rest = rest.strip().strip("+").strip()
    rest = re.sub(r"\+\s*$", "", rest).strip()
    if "|" in rest:
        msg = f"formula {formula!r}: a '|' outside a '( ... | group)' term is not valid."
        raise ValueError(msg)
    fixed = "~ " + (rest if rest else "1")
    return ParsedFormula(formula=formula, fixed=fixed, group=grp)


@dataclass(frozen=True)
class Design:
    """The fixed-effect design built from ``obs``."""

    matrix: np.ndarray
    columns: list[str]
    variables: list[str]
    reference_levels: dict[str, str]


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
        raise ValueError(msg) from err
    return sorted(str(v) for v in form.required_variables)


def build_design(fixed: str, obs: pd.DataFrame) -> Design:
    """Treatment-coded fixed design, with checks for unknown columns, NaN and rank deficiency."""
    from formulaic import model_matrix

    variables = required_variables(fixed)
    missing = [v for v in variables if v not in obs.columns]
    if missing:
        msg = (
            f"column(s) {missing} of the formula are not in adata.obs (nor known functions); "
            f"available columns: {list(obs.columns)}."
        )
        raise KeyError(msg)
    ref: dict[str, str] = {}
    for v in variables:
        col = obs[v]
        if col.isna().any():
            msg = (
                f"obs column {v!r} has {int(col.isna().sum())} missing value(s) (NaN); "
                "fill them or subset the cells first (nothing is dropped silently)."
            )
            raise ValueError(msg)
        if isinstance(col.dtype, pd.CategoricalDtype):
            used = [c for c in col.cat.categories if (col == c).any()]
            ref[v] = str(used[0]) if used else ""
        elif not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            ref[v] = str(sorted(pd.unique(col.astype(str)))[0]) if pd.api.types.is_object_dtype(col) else ""
        elif not np.all(np.isfinite(col.to_numpy(dtype=float))):
            n_inf = int((~np.isfinite(col.to_numpy(dtype=float))).sum())
            msg = (
                f"obs column {v!r} has {n_inf} infinite value(s); replace them (e.g. clip or log-transform "
                "the covariate) or subset the cells first."
            )
            raise ValueError(msg)
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            levels = pd.unique(col.astype(str))
            if len(levels) < 2:
                msg = (
                    f"obs column {v!r} has a single value ({levels[0]!r}) in these cells, so its effect "
                    f"cannot be estimated; remove {v!r} from the formula or check how the cells were subset."
                )
                raise ValueError(msg)
    data = obs[variables].copy() if variables else pd.DataFrame(index=obs.index)
    for v in variables:  # drop unused categories so no all-zero dummy columns appear
        if isinstance(data[v].dtype, pd.CategoricalDtype):
            data[v] = data[v].cat.remove_unused_categories()
    try:
        mm = model_matrix(fixed, data, na_action="raise")
    except Exception as err:
        detail = " ".join(_ANSI.sub("", str(err)).split("\n\n")[0].split()).rstrip(".")
        msg = f"could not build the design for {fixed!r}: {detail}. Check the formula's terms and functions."
        raise ValueError(msg) from err
    X = np.asarray(mm, dtype=np.float64)
    cols = [str(c) for c in mm.columns]
    if X.shape[0] != len(obs):
        msg = "the design lost rows (missing values?); check the formula's columns."
        raise ValueError(msg)
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        dropped = redundant_columns(X, cols)
        msg = (
            f"the fixed-effect design is rank deficient ({rank} of {X.shape[1]} columns estimable): "
            f"column(s) {dropped} are linear combinations of the others {cols}. Remove or merge "
            "the redundant terms (e.g. a covariate constant within the data, or two columns coding the same thing)."
        )
        raise ValueError(msg)
    return Design(matrix=X, columns=cols, variables=variables, reference_levels=ref)
