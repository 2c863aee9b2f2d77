"""lme4-style formulas: split off the random-effect term(s), build the fixed design with formulaic.

:func:`parse_formula` reads the one donor random intercept ``(1 | donor)`` (the kernels' path);
:func:`parse_re_formula` and :func:`build_re_terms` read general random-effect structures for the
array engine of ``scglmm._core._re``; :func:`parse_fit_formula`, what :func:`scglmm.tl.fit` calls,
chooses between the two."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._core._design import redundant_columns
from ._core._errors import InputError, InvalidTypeError, InvalidValueError, MissingKeyError
from ._core._re import RETerm

if TYPE_CHECKING:
    from formulaic import ModelMatrix, ModelSpec

_BAR_TERM = re.compile(r"\(([^()]*)\|([^()]*)\)")
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m|[\u29da\u29db]")


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its fixed part and its random effects."""

    formula: str
    fixed: str
    donor: str
    """The ``obs`` column of the donor random intercept; for a general structure the grouping factor of
    its first term (``"donor"``, ``"donor:sample"``), whose levels the gene filter counts."""
    terms: tuple[RETermSpec, ...] = ()
    """Empty for the single random intercept ``(1 | donor)``; else the terms of the general structure."""

    @property
    def general(self) -> bool:
        """Whether the random effects are anything but one ``(1 | donor)`` (stored with their variance
        components and modes rather than as donor effects)."""
        return bool(self.terms)

    @property
    def specs(self) -> tuple[RETermSpec, ...]:
        """The random-effect terms; ``(1 | donor)`` as one term."""
        return self.terms if self.general else (RETermSpec(lhs="1", group=(self.donor,)),)


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``"~ condition + x + (1 | donor)"`` into ``"~ condition + x"`` and ``"donor"``.

    Raises InvalidValueError with a suggestion when the formula is not of the supported form.
    """
    f = _checked_text(formula)
    if "||" in f.replace(" ", ""):
        msg = (
            f"formula {formula!r}: the double-bar '(1 || donor)' form is not supported; "
            "use a single random intercept '(1 | donor)'."
        )
        raise InvalidValueError(msg, param="formula")
    donor = _donor_term(formula, f)
    return ParsedFormula(formula=formula, fixed=_fixed_part(formula, f, _BAR_TERM), donor=donor)


def parse_fit_formula(formula: str) -> ParsedFormula:
    """The formula of :func:`scglmm.tl.fit`: one ``(1 | donor)`` as :func:`parse_formula` reads it, or
    any structure :func:`parse_re_formula` accepts (then ``terms`` holds its terms).

    A structure that reduces to one random intercept grouped by one obs column (e.g. ``(1 || donor)``)
    is returned as ``(1 | donor)``. A formula refused by both is refused with :func:`parse_re_formula`'s
    message when it has a ``( ... | group)`` term, else with :func:`parse_formula`'s (which suggests
    the intended random intercept).
    """
    _check_no_inner_parentheses(formula, _checked_text(formula))
    try:
        return parse_formula(formula)
    except InvalidValueError:
        if not _RE_TERM.search(_checked_text(formula)):
            raise
    parsed = parse_re_formula(formula)
    first = parsed.terms[0]
    if len(parsed.terms) == 1 and first.scalar_intercept and len(first.group) == 1:
        return ParsedFormula(formula=formula, fixed=parsed.fixed, donor=first.group_name)
    return ParsedFormula(formula=formula, fixed=parsed.fixed, donor=first.group_name, terms=parsed.terms)


def _checked_text(formula: object) -> str:
    """The stripped formula text, after the checks every formula passes (a string, no left-hand side,
    balanced parentheses)."""
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
    return f


def _fixed_part(formula: str, f: str, bar: re.Pattern) -> str:
    """The fixed part of ``f``: the formula without its random-effect terms (``'~ 1'`` if nothing is left)."""
    _check_joined(formula, f, bar)
    rest = bar.sub("", f[1:])
    rest = re.sub(r"\+\s*\+", "+", rest)
    rest = rest.strip().strip("+").strip()
    rest = re.sub(r"\+\s*$", "", rest).strip()
    if "|" in rest:
        msg = f"formula {formula!r}: a '|' outside a '( ... | group)' term is not valid."
        raise InvalidValueError(msg, param="formula")
    return "~ " + (rest if rest else "1")


def _check_joined(formula: str, f: str, bar: re.Pattern) -> None:
    """Refuse a random-effect term not joined to its neighbours by ``+`` (a typo such as
    ``'~ condition (1 | donor)'``), suggesting the formula with the ``+``."""
    for hit in bar.finditer(f):
        before, after = f[: hit.start()].rstrip(), f[hit.end() :].lstrip()
        # a term's neighbour that ends (or starts) a term of its own, with no operator between them
        joined_before = not re.search(r"[\w)\]`]$", before) or before.endswith("~")
        joined_after = not re.match(r"[\w(`]", after)
        if joined_before and joined_after:
            continue
        fixed = f"{before}{' ' if joined_before else ' + '}{hit.group(0)}{'' if joined_after else ' + '}{after}"
        msg = (
            f"formula {formula!r}: the random-effect term {hit.group(0)!r} must be joined to the other terms "
            f"with '+'; did you mean {' '.join(fixed.split())!r}?"
        )
        raise InvalidValueError(msg, param="formula")


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
            return f"formula {formula!r} has no random-effect term: {why}; did you mean {' '.join(fixed.split())!r}?"
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


# ------------------------------------------------------------------------------------------------
# general random-effect structures (lme4 grammar)
# ------------------------------------------------------------------------------------------------
_RE_TERM = re.compile(r"\(([^()|]*)(\|\|?)([^()|]*)\)")
_GROUP = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*(?:\s*[:/]\s*[A-Za-z_.][A-Za-z0-9_.]*)*$")


@dataclass(frozen=True)
class RETermSpec:
    """One random-effect term after expansion: ``(lhs | g1:g2)``, or ``(lhs || g)`` when ``diagonal``."""

    lhs: str
    """The formula of the per-level coefficients, with its intercept made explicit (``"1 + condition"``,
    ``"0 + covariate"``)."""
    group: tuple[str, ...]
    """The obs columns whose interaction is the grouping factor (``("donor", "sample")`` for ``donor:sample``)."""
    diagonal: bool = False

    @property
    def group_name(self) -> str:
        """``"donor"``, ``"donor:sample"``."""
        return ":".join(self.group)

    @property
    def scalar_intercept(self) -> bool:
        """Whether the term is a random intercept ``(1 | g)``."""
        return self.lhs == "1"

    def __str__(self) -> str:
        return f"({self.lhs} {'||' if self.diagonal else '|'} {self.group_name})"


@dataclass(frozen=True)
class ParsedREFormula:
    """A formula split into its fixed part and its random-effect terms (lme4 semantics)."""

    formula: str
    fixed: str
    terms: tuple[RETermSpec, ...]


def parse_re_formula(formula: str) -> ParsedREFormula:
    """Split a formula with lme4 random-effect terms into its fixed part and a list of terms.

    Accepted terms: ``(1 | g)``, ``(1 + x | g)`` and ``(x | g)`` (intercept implied, correlated
    coefficients), ``(0 + x | g)`` (no intercept), ``(1 + x || g)`` (independent coefficients: a
    diagonal covariance, glmmTMB's ``diag``; for a numeric ``x`` the same as lme4's expansion
    ``(1 | g) + (0 + x | g)``), ``(f | a/b)`` = ``(f | a) + (f | a:b)`` and ``(f | a:b)`` (the
    interaction of two obs columns as grouping factor). ``x`` may be several columns joined by ``+``.

    Raises InvalidValueError for anything else, with the messages of :func:`parse_formula` where the
    input is invalid for both.
    """
    f = _checked_text(formula)
    _check_no_inner_parentheses(formula, f)
    found = _RE_TERM.findall(f)
    if not found:
        msg = (
            f"formula {formula!r} has no random-effect term; add a donor random intercept, "
            "e.g. '~ condition + (1 | donor)'."
        )
        raise InvalidValueError(msg, param="formula")
    terms: list[RETermSpec] = []
    for lhs, bar, grp in found:
        for spec in _expand_term(lhs.strip(), bar, grp.strip()):
            if spec in terms:
                msg = f"formula {formula!r}: the random-effect term {spec} appears twice; keep one."
                raise InvalidValueError(msg, param="formula")
            terms.append(spec)
    _check_one_variance_each(formula, terms)
    return ParsedREFormula(formula=formula, fixed=_fixed_part(formula, f, _RE_TERM), terms=tuple(terms))


def _check_no_inner_parentheses(formula: str, f: str) -> None:
    """Refuse a ``( ... | group)`` term with parentheses inside (a function call such as ``log(x)``,
    ``(donor)``): the grammar reads obs column names only, and without this check the term would not
    be seen at all."""
    depth, start = 0, 0
    for i, ch in enumerate(f):
        if ch == "(":
            start = i if depth == 0 else start
            depth += 1
        elif ch == ")":
            depth -= 1
            inner = f[start + 1 : i]
            if depth == 0 and "|" in inner and "(" in inner:
                msg = (
                    f"formula {formula!r}: the random-effect term '{f[start : i + 1]}' has parentheses inside; "
                    "write '( ... | group)' with obs column names only (for a transformed covariate such as "
                    "log(x), add it to adata.obs as a column first)."
                )
                raise InvalidValueError(msg, param="formula")


def _check_one_variance_each(formula: str, terms: list[RETermSpec]) -> None:
    """Refuse two terms that give the same grouping factor the same coefficient (e.g. its intercept in
    ``(1 + x | g) + (1 | g)``): that coefficient would have two variances, which the data cannot tell apart."""
    seen: dict[tuple[tuple[str, ...], str], RETermSpec] = {}
    for t in terms:
        for part in t.lhs.split(" + "):
            if part == "0":
                continue
            first = seen.setdefault((t.group, part), t)
            if first is not t:
                what = "intercept" if part == "1" else f"slope of {part!r}"
                msg = (
                    f"formula {formula!r}: the terms {first} and {t} both give {t.group_name!r} a random {what}, "
                    "which would have two variances that the data cannot tell apart; keep it in one term."
                )
                raise InvalidValueError(msg, param="formula")


def _expand_term(lhs: str, bar: str, grp: str) -> list[RETermSpec]:
    """The terms of one ``( lhs | grp )``: the intercept made explicit, ``a/b`` expanded."""
    shown = f"({lhs} {bar} {grp})"
    parts = [p.strip() for p in re.sub(r"-\s*1\b", "+ 0", lhs).split("+") if p.strip()]
    intercept = "0" not in parts
    covariates = [p for p in parts if p not in ("0", "1")]
    if not parts or (not covariates and not intercept):
        msg = (
            f"random-effect term '{shown}' has no coefficient before the '{bar}'; "
            f"write a random intercept '(1 | {grp or 'donor'})' or a slope '(0 + x | {grp or 'donor'})'."
        )
        raise InvalidValueError(msg, param="formula")
    for c in covariates:
        if not _NAME.match(c):
            msg = (
                f"random-effect term '{shown}': {c!r} is not supported before the '{bar}'; use obs columns "
                "joined by '+' (a factor stands for its contrast columns, a numeric column for a slope)."
            )
            raise InvalidValueError(msg, param="formula")
    if not _GROUP.match(grp):
        msg = (
            f"grouping factor {grp!r} in '{shown}' is not supported: use an obs column, an interaction "
            "of obs columns 'a:b', or a nesting 'a/b' (= 'a' + 'a:b')."
        )
        raise InvalidValueError(msg, param="formula")
    lhs_std = " + ".join((["1"] if intercept else ["0"]) + covariates)
    diagonal = bar == "||" and len(covariates) + intercept > 1
    levels = [g.strip() for g in grp.split("/")]
    out = []
    for k in range(len(levels)):
        cols = tuple(c.strip() for lev in levels[: k + 1] for c in lev.split(":"))
        if len(set(cols)) < len(cols):
            msg = (
                f"grouping factor {grp!r} in '{shown}' names an obs column twice ({list(cols)}); each column "
                "of an interaction 'a:b' or a nesting 'a/b' must be a different one."
            )
            raise InvalidValueError(msg, param="formula")
        out.append(RETermSpec(lhs=lhs_std, group=cols, diagonal=diagonal))
    return out


def check_re_agq(terms: tuple[RETermSpec, ...], n_agq: int) -> None:
    """Refuse adaptive Gauss-Hermite quadrature (``n_agq`` > 1) unless the structure is a single random intercept."""
    if n_agq != 1 and not (len(terms) == 1 and terms[0].scalar_intercept):
        shown = " + ".join(str(t) for t in terms)
        msg = (
            f"n_agq={n_agq!r} needs a single scalar random effect, e.g. '(1 | donor)'; the random effects "
            f"{shown} are fitted with the Laplace approximation only: use n_agq=1."
        )
        raise InvalidValueError(msg, param="n_agq")


def build_re_terms(terms: tuple[RETermSpec, ...], obs: pd.DataFrame) -> list[RETerm]:
    """Per-cell covariates and level codes of each term, from ``obs``.

    The coefficients of a term are the columns of the model matrix of its left-hand side (formulaic,
    treatment coding with the reference level of the fixed part, named like the fixed-effect
    columns, e.g. ``condition[T.stim]``; without an intercept a factor gets one column per level, as
    in lme4). The grouping factor is the interaction of its obs columns, restricted to the level
    combinations present: ``donor:sample`` separates sample ``S1`` of donor ``D1`` from ``S1`` of ``D2``.
    """
    built = [_build_term(t, obs) for t in terms]
    _check_distinct_levels(terms, built)
    return built


def _check_distinct_levels(specs: tuple[RETermSpec, ...], terms: list[RETerm]) -> None:
    """Refuse two intercept terms whose grouping factors split the cells alike (``(1 | donor/sample/condition)``
    when each sample is one donor and condition): their variances cannot be told apart."""
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            a, b = terms[i], terms[j]
            if not (specs[i].scalar_intercept and specs[j].scalar_intercept) or a.m != b.m:
                continue
            if np.unique(np.column_stack([a.codes, b.codes]), axis=0).shape[0] == a.m:
                msg = (
                    f"the random-effect terms {specs[i]} and {specs[j]} have the same levels (each level of "
                    f"{a.group!r} is one level of {b.group!r}): their variances cannot be told apart. Keep one "
                    "of them."
                )
                raise InvalidValueError(msg, param="formula")


def _build_term(t: RETermSpec, obs: pd.DataFrame) -> RETerm:
    missing = [c for c in t.group if c not in obs.columns]
    if missing:
        msg = (
            f"grouping column(s) {missing} of the random-effect term {t} are not in adata.obs; "
            f"available columns: {list(obs.columns)}."
        )
        raise MissingKeyError(msg, param="formula")
    labels = None
    for c in t.group:
        col = obs[c]
        if col.isna().any():
            msg = (
                f"obs column {c!r} has {int(col.isna().sum())} missing value(s) (NaN); "
                "fill them or subset the cells first (nothing is dropped silently)."
            )
            raise InvalidValueError(msg, param="adata")
        s = col.astype(str).to_numpy(dtype=object)
        labels = s if labels is None else labels + ":" + s
    codes, levels = pd.factorize(pd.Series(labels), sort=True)
    if len(levels) < 2:
        msg = (
            f"grouping factor {t.group_name!r} of the random-effect term {t} has a single level in these "
            "cells; a variance between its levels cannot be estimated. Remove the term."
        )
        raise InvalidValueError(msg, param="formula")
    if t.scalar_intercept:
        Z = np.ones((len(obs), 1))
        names = ["Intercept"]
    else:
        try:
            fd = build_design("~ " + t.lhs, obs)
        except InputError as err:  # name the random-effect term, not the fixed design
            what = str(err).replace("the fixed-effect design is", "its covariates are")
            msg = f"in the random-effect term {t}: {what}"
            raise type(err)(msg, param="formula") from None
        Z, names = fd.matrix, fd.columns
    return RETerm(
        group=t.group_name,
        Z=np.ascontiguousarray(Z, dtype=np.float64),
        codes=codes.astype(np.int64),
        levels=np.asarray(levels, dtype=object),
        coef_names=tuple(names),
        diagonal=t.diagonal,
    )


def random_terms(formula: str, obs: pd.DataFrame) -> tuple[RETerm, ...]:
    """The random-effect terms of ``formula`` built from a per-cell table, for the array API.

    Parameters
    ----------
    formula
        A formula, ``"~ condition + (1 + condition | donor)"``, or its random part alone,
        ``"(1 + condition | donor)"`` (the grammar of ``docs/random_effects.md``).
    obs
        One row per cell with the columns the terms name (e.g. ``adata.obs``).

    Returns
    -------
    The terms (:class:`scglmm.RETerm`: per-cell covariates, level codes and labels), to pass as
    ``groups`` to :func:`scglmm.fit_genes` or :func:`scglmm.fit_gene`. Their coefficients are named like
    the fixed-effect columns (``condition[T.stim]``), with the first level of a factor as reference.
    """
    if isinstance(formula, str) and formula.strip().startswith("("):
        formula = "~ 1 + " + formula.strip()
    return tuple(build_re_terms(parse_re_formula(formula).terms, obs))
