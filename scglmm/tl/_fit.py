"""The scanpy step: fit the NB GLMM for every gene of an AnnData and store the results.

:func:`fit` reads as its steps: :func:`_validate` the arguments, fit the runs (one for all cells,
or one per group with :mod:`._groupby`; each builds its design and fits in :mod:`._run`), the
calibrated Wald tests (:func:`._wald.wald_tests`), the ``rank_genes_groups`` block
(:mod:`._rank_genes_groups`), assemble every output (:mod:`._assemble`) and write it whole with
:func:`scglmm._layout.write_fit`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from .. import _inputs
from .._core._checks import check_counts
from .._core._errors import InputError
from .._core._inference import DEFAULT_CALIBRATION
from .._formula import FixedDesign, ParsedFormula, build_design, build_re_terms, parse_fit_formula
from .._layout import Normalisation, write_fit
from .._logging import info, logger, warn
from ._assemble import FitSettings, stored_fit, versions
from ._groupby import GroupRuns, fit_groups
from ._guard import warn_pseudo_replication
from ._rank_genes_groups import RankedRun, rank_genes_groups
from ._report import log_text, warning_text
from ._run import FitOptions, check_options, fit_run
from ._wald import wald_tests

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["fit"]

#: Default gene filter: a gene is fitted only if at least this many cells have a count ...
MIN_CELLS = 3
#: ... and at least this many donors have a count in at least one cell.
MIN_DONORS = 2
#: Groups of ``groupby`` with fewer cells or donors than these are skipped.
MIN_CELLS_GROUP = 20
MIN_DONORS_GROUP = 3


def fit(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None = None,
    size_factors: str | ArrayLike | None = None,
    offset: str | ArrayLike | None = None,
    norm_method: Literal["tmm", "tmm_mode", "ratio", "none"] = "tmm_mode",
    sample_key: str | None = None,
    key_added: str = "scglmm",
    groupby: str | None = None,
    min_cells: int | None = MIN_CELLS,
    min_donors: int | None = MIN_DONORS,
    min_cells_group: int | None = MIN_CELLS_GROUP,
    min_donors_group: int | None = MIN_DONORS_GROUP,
    calibration: str = DEFAULT_CALIBRATION,
    rank_coef: str | None = None,
    store_modes: bool | None = None,
    n_agq: int = 1,
    separation: str = "prior",
    n_jobs: int | None = None,
    block_size: int = 64,
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    r"""Fit a negative binomial GLMM with a donor random intercept (or other random effects) to every gene.

    For each gene, counts :math:`y_{ij}` of cell :math:`j` of donor :math:`i` follow
    :math:`y_{ij} \mid b_i \sim \mathrm{NB}(\mu_{ij}, \theta)` (variance :math:`\mu + \mu^2/\theta`),
    :math:`\log \mu_{ij} = x_{ij}^\top \beta + o_{ij} + b_i`, :math:`b_i \sim N(0, \sigma^2)`.
    The parameters maximise the Laplace approximation of the marginal likelihood (adaptive
    Gauss-Hermite with ``n_agq > 1``), as glmmTMB does. All effects are natural-log fold changes.

    Other random-effect structures (random slopes, nested, crossed; see ``formula``) replace
    :math:`b_i` by :math:`z_{ij}^\top b`, one normal vector per level of each grouping factor with an
    unstructured (``|``) or diagonal (``||``) covariance, fitted by the Laplace approximation with
    :func:`scglmm.fit_genes` (as every structure), the genes spread over ``n_jobs`` workers (processes by
    default).

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts in ``X`` or ``layers[layer]`` (dense, CSR or CSC).
    formula
        lme4-style formula, e.g. ``"~ condition + pct_mito + (1 | donor)"``. The fixed part is built
        by formulaic with treatment coding, giving columns such as ``Intercept``,
        ``condition[T.stim]``, ``pct_mito``. The random part is one donor random intercept
        ``(1 | donor)`` (the compiled path, all options) or any of: ``(1 + x | g)`` (correlated
        random intercept and slope), ``(0 + x | g)``, ``(1 + x || g)`` (independent), ``(1 | a/b)``
        (= ``(1 | a) + (1 | a:b)``), ``(1 | a:b)`` and several terms (crossed, e.g.
        ``(1 | donor) + (1 | batch)``); these need ``n_agq=1`` and ``calibration`` ``"eb"``, ``"t"``
        or ``"z"``. The first term's grouping factor plays the donor's part in the gene filter
        (``min_donors``), in ``groupby``'s ``min_donors_group`` and in the calibration rules below.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    size_factors
        Each cell's library size: an ``obs`` column name or an array, a **scale, not a log**.
        Default: an ``obs`` column ``total_counts`` or ``n_counts`` if it counts more genes than the
        matrix has, else each cell's total count over the matrix. ``norm_method`` multiplies it by
        a robust factor of the cell's sample; the offset is the log of the product.
    offset
        Alternative to ``size_factors``: a per-cell offset already on the natural-log scale, used
        exactly as given (no ``norm_method``).
    norm_method
        Normalisation of the library sizes against a shift of many genes at once (a stimulus that
        induces hundreds of genes raises the total count of every stimulated cell, so that every
        other gene looks lower): each cell's library size times a robust factor of its sample,
        computed on the samples' pseudobulks (within each group of ``groupby``). ``"tmm_mode"``
        (default): edgeR's ``calcNormFactors`` TMM with its defaults, then its window of kept log
        ratios re-centred on the estimate, which settles on the mode of the unchanged genes when the
        changed ones go one way (calibrated when a fifth of the genes is strongly induced, where TMM
        is not; within 0.09 log2 of TMM on every Kang cell type); ``"tmm"``: edgeR's TMM as is
        (what a pseudobulk edgeR analysis uses); ``"ratio"``: DESeq2's median of ratios; ``"none"``: the
        library size alone (glmmTMB's ``offset(log(libsize))``). The factors are in ``uns[key]['norm_factors']``;
        ``docs/model.md`` says how they are computed and what each choice leaves of a global shift.
    sample_key
        ``obs`` column naming each cell's sample, whose pseudobulk the normalisation factor is
        computed on. Default: the combinations of the levels of the random-effect terms' grouping
        columns and of the fixed formula's factors (non-numeric columns), e.g. donor x condition for
        ``~ condition + (1 | donor)``; numeric covariates do not split samples.
    key_added
        Prefix of the keys written to ``varm``, ``var`` and ``uns``.
    groupby
        An ``obs`` column (e.g. ``"cell_type"``): fit each group's cells separately. Groups with
        fewer than ``min_cells_group`` cells or ``min_donors_group`` donors, or whose design cannot
        be estimated (e.g. one condition missing), are skipped with one log message naming them
        and the reason. See Returns for where each group's results go.
    min_cells
        Gene filter: fit a gene only if at least this many cells (of the group) have a count.
        ``None`` or 0 disables it. Filtered genes keep their rows, NaN, status ``filtered``.
    min_donors
        Gene filter: fit a gene only if at least this many donors have a count in some cell.
        ``None`` or 0 disables it.
    min_cells_group
        With ``groupby``: skip groups with fewer cells. ``None`` or 0 disables it.
    min_donors_group
        With ``groupby``: skip groups with fewer donors. ``None`` or 0 disables it (a fit still
        needs two donors).
    calibration
        Reference distribution of the stored Wald p-values. ``"eb"`` (default): a coefficient
        that is constant within every donor (a donor-level condition) is tested with an
        empirical-Bayes estimate of its gene's donor variance, borrowing strength from all genes
        (needs 50 genes; fewer fall back to ``"t"``); coefficients that vary within donors keep the
        normal reference. ``"t"``: the ML Wald statistic on a t distribution with
        ``n_donors - r`` degrees of freedom, ``r`` the rank of the donor-level columns of the
        design. ``"z"``: the ML Wald z test (glmmTMB's ``summary``), anti-conservative with few
        donors. Also ``"t_reml"``, ``"t_floor"``, ``"satterthwaite"``,
        ``"satterthwaite_floor"``; the calibration study behind the default and what each option
        does are in ``docs/calibration.md``.

        With a general random-effect structure, a fixed effect that has a random slope (a
        design column that within every level is the term's covariates times the same weights,
        e.g. ``condition[T.stim]`` in ``(1 + condition | donor)`` or ``(0 + condition | donor)``),
        or that is such a column times a level-wide factor (``condition[T.stim]:sex[T.m]``), draws
        its information from the levels of that term's grouping factor (the fewest if several
        terms have the slope), like a paired t test on per-donor differences, with ``m - h``
        degrees of freedom: ``m`` the levels in which the slope varies, ``h`` the rank of the
        slope and its interactions with level-wide columns; ``n_donors - 1`` for a condition
        measured in every donor, with or without level-wide covariates
        (``uns[key]['params']['slope_df']``). ``"eb"`` tests it with an empirical-Bayes prior of
        the slope variance across genes (falling back to ``"t"`` below 50 genes), ``"t"`` refers
        ``coef / se`` to t with ``m - h`` degrees of freedom, ``"z"`` to the normal. Every other
        column is tested by the rules above on the levels of the random-intercept term within whose
        levels it is constant (the fewest levels if several), that term's intercept variance in the
        donor variance's part: a donor-level column on the donors; a condition that varies within
        donors but not within samples of ``(1 | donor/sample)`` on the samples, compared within donors
        (``n_donors - 1`` df for a paired design); a batch-level column of ``(1 | batch)`` on the
        batches (``uns[key]['params']['level_terms']``). A factor that varies within the levels of
        every term and has no random slope (a paired condition under ``(1 | donor)`` or
        ``(1 | donor) + (1 | batch)``: pseudo-replication) is named in a warning on the ``scglmm``
        logger before the fit, with the formula that fits the design.
    rank_coef
        Coefficient ranked in the ``rank_genes_groups``-style block (see Returns); ``None`` takes
        the first non-intercept column. Only written when that column is a level of a factor (or
        with ``groupby``).
    store_modes
        Store the conditional modes of the random effects (each donor's estimated effect, see
        Returns), which :func:`scglmm.pl.donor_effects` plots. ``None``: store them without
        ``groupby``, not with it. They are the one output that grows with the number of donors
        (one number per gene, group and level of each random coefficient: 16 per gene and group
        for 8 donors with a random slope, the largest table of such a fit), nothing else reads
        them, and a fit by group multiplies them by the number of groups; for one fit they cost
        little and the plots work at once. ``True`` with ``groupby`` stores them for every group.
    n_agq
        1 (default) for the Laplace approximation; K > 1 for adaptive Gauss-Hermite with K nodes
        (only with a single ``(1 | donor)``).
    separation
        Genes whose maximum-likelihood fit runs to infinity (one side of a comparison without counts: a
        gene switched on or off by the condition) or to an extreme (a log2 fold change beyond 10, a
        variance beyond 16, the random effects soaking up an (almost) empty side). ``"prior"`` (default):
        refitted with weak normal priors (fixed effects other than the intercept: sd 2.5 on the natural-log
        scale; covariance parameters: sd 3), so that every gene with counts gets a finite effect and a
        p-value; status ``penalised`` (see ``docs/separation.md``). ``"limit"``: the maximum-likelihood
        limits, NaN where they are infinite (``separation``, ``partial_separation``).
    n_jobs
        Workers over gene blocks (threads for ``(1 | donor)``, processes for other structures, whose
        optimiser loop is in Python); ``None`` uses ``scanpy.settings.n_jobs``. Results are identical
        for any value.
    block_size
        Genes per compiled call.
    progress
        Show a progress bar (``tqdm.auto``: a widget in notebooks). ``None`` shows it once a run
        has lasted 2 seconds, unless scanpy's verbosity is below its default
        (``sc.settings.verbosity = "error"``); ``True`` shows it at once, ``False`` never.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy if ``copy=True``. Writes (``key`` = ``key_added``):

    `adata.varm[f'{key}_coef']` : :class:`pandas.DataFrame`
        Fixed effects (natural log), genes x design columns.
    `adata.varm[f'{key}_se']` : :class:`pandas.DataFrame`
        Their standard errors (full Hessian of the marginal log-likelihood).
    `adata.varm[f'{key}_pval']` : :class:`pandas.DataFrame`
        Two-sided Wald p-values per coefficient, with the reference chosen by ``calibration``.
    `adata.varm[f'{key}_stat']` : :class:`pandas.DataFrame`
        The test statistic behind each p-value (``coef / se`` for ``"z"`` and ``"t"``; with the
        corrected standard error for the other options); its degrees of freedom per coefficient
        are in ``uns[key]['params']['df']`` (``inf``: normal reference; NaN: they differ by gene,
        as with the Satterthwaite calibrations, and ``uns[key]['params']['df_per_gene']`` holds
        them).
    `adata.varm[f'{key}_cov']` : :class:`numpy.ndarray`
        Genes x (p * p): the coefficient covariance, row-major, for contrasts without refitting.
    `adata.varm[f'{key}_fit']` : :class:`pandas.DataFrame`
        ``sigma2``, ``dispersion`` (= 1/theta), ``theta``, ``loglik``, ``n_iter``, ``converged``,
        ``status`` (``ok``, ``sigma2_boundary``, ``poisson_limit``, ``not_converged``,
        ``separation``, ``all_zero``, ``failed``, ``filtered``, joined with ``+``), ``status_code``,
        ``n_nonzero``, ``grad_max``; ``status`` is categorical.
    `adata.varm[f'{key}_donor_effects']` : :class:`pandas.DataFrame`
        Conditional modes of the donor effects, genes x donors (only with ``(1 | donor)``, and
        only with ``store_modes``).
    `adata.varm[f'{key}_varcomp']` : :class:`pandas.DataFrame`
        Only with another random-effect structure: its variance components, one column each,
        ``var(<coefficient>|<group>)`` and ``cor(<c1>,<c2>|<group>)``, e.g.
        ``var(Intercept|donor)``, ``var(condition[T.stim]|donor)``,
        ``cor(Intercept,condition[T.stim]|donor)``, ``var(Intercept|donor:sample)``
        (:func:`scglmm.get.varcomp` reads them for any fit). ``varm[f'{key}_fit']['sigma2']`` is
        then the first term's intercept variance (NaN if it has none).
    `adata.varm[f'{key}_modes']` : :class:`pandas.DataFrame`
        Only with another random-effect structure, and only with ``store_modes``: conditional
        modes of every level of every term, columns ``<group>[<level>]:<coefficient>``, e.g.
        ``donor[D01]:condition[T.stim]``.
    `adata.varm[f'{key}_expression']` : :class:`pandas.DataFrame`
        Computed from the counts at fit time (not recomputable later without them): ``base_mean``,
        the mean of ``count / s`` over the fitted cells, with size factors ``s`` = exp(log offset)
        scaled to geometric mean 1 over the run's cells (all, or the group's: as if the group
        were fitted alone; DESeq2's ``baseMean``); and for each
        level of each factor of the design (``uns[key]['params']['expression_levels']``)
        ``mean[variable=level]``, the same mean over the cells at that level, and
        ``pct[variable=level]``, the fraction of those cells with a count (0 to 1, as scanpy's
        ``pts``). :func:`scglmm.get.results` shows them as ``base_mean``, ``mean_<level>`` and
        ``pct_<level>`` next to each fold change between two levels.
    `adata.var[f'{key}_status']` : :class:`pandas.Series`
        The status string, for quick filtering.
    `adata.uns[key]['params']` : `dict`
        Every setting of the run (formula, design columns, reference levels, offset source,
        ``norm_method`` and ``norm_samples`` (the ``obs`` columns of the samples), n_agq, n_cells,
        n_donors, donors, calibration, df, the donor-level design, the gene filter, ``store_modes``, versions,
        seconds, status counts; with another random-effect structure also
        ``random_structure`` (the terms after expansion, e.g. ``(1 | donor) + (1 | donor:sample)``),
        ``random_effects`` (per term: ``group``, ``coefficients``, ``diagonal``, ``n_levels``,
        ``levels``), ``varcomp_names``, ``slope_columns`` (fixed effect -> the grouping factor of its
        random slope) and ``slope_df``); ``uns[key]['log_offset']`` holds the per-cell
        log offset so that :func:`scglmm.tl.test` can refit with identical settings.
    `adata.uns[key]['norm_factors']` : :class:`pandas.DataFrame`
        Unless ``norm_method="none"`` (or ``offset`` is given): one row per sample (index: its levels
        joined by ``:``, e.g. ``1015:stim``) with the sample's columns, ``n_cells``, ``total_counts``
        (of its pseudobulk over the matrix) and ``factor``, the factor that multiplies the library size
        of each of its cells (geometric mean 1 over the samples, of each group with ``groupby``).
    `adata.uns[f'{key}_rank_genes_groups']` : `dict`
        ``params``, ``names``, ``scores`` (the test statistic), ``logfoldchanges`` (log2),
        ``pvals``, ``pvals_adj`` as record arrays with one field per group, laid out as
        :func:`scanpy.tl.rank_genes_groups` writes them, so :func:`scanpy.get.rank_genes_groups_df`
        and ``sc.pl.rank_genes_groups_*`` work with ``key=f'{key}_rank_genes_groups'``. Without
        ``groupby`` the one field is the tested level (e.g. ``stim`` for ``condition[T.stim]``) and
        ``params['reference']`` its reference level, so scanpy titles the panel ``stim vs. ctrl``.
        With ``groupby`` the fields are the groups (e.g. ``Mono``), each ranking the same
        comparison within its cells, and ``params['reference']`` says so: scanpy titles the
        panels ``Mono vs. ctrl (stim vs. ctrl within each cell_type)``. ``params`` also holds
        ``coef``, ``variable``, ``tested_level``, ``reference_level`` and ``comparison``
        (``stim vs. ctrl``).

    With ``groupby``, each fitted group ``g`` gets all of the varm/var/uns outputs above under
    its own key ``f'{key}:{g}'`` (``/`` in a group name becomes ``_``), which survives
    ``write_h5ad``; ``uns[key]['params']`` then lists ``groups`` and their ``group_keys``, and
    ``skipped_groups`` with ``skipped_reasons``
    (group -> reason), and :func:`scglmm.get.results` takes ``group=``.

    Re-running with the same ``key_added`` replaces these keys whole; nothing is written if
    anything fails. The call ends with one summary in the log (logger ``scglmm``, INFO; with
    ``groupby`` a table with a row per group) counting the genes filtered, without an estimate
    and not converged, and one :class:`UserWarning` if some genes have no estimate; the valid
    boundary estimates ``sigma2_boundary`` and ``poisson_limit`` are not counted (``docs/status.md``).
    """
    t_start = time.perf_counter()
    settings, Y, design = _validate(
        adata, formula, layer=layer, size_factors=size_factors, offset=offset, norm_method=norm_method,
        sample_key=sample_key, key_added=key_added, groupby=groupby, min_cells=min_cells, min_donors=min_donors,
        min_cells_group=min_cells_group, min_donors_group=min_donors_group, calibration=calibration,
        store_modes=store_modes, n_agq=n_agq, n_jobs=n_jobs, block_size=block_size, progress=progress,
        separation=separation,
    )  # fmt: skip
    _guard(adata, settings.parsed, design)
    fitted = _fit_runs(adata, Y, design, settings, key=key_added)
    tests = {sub: wald_tests(run, settings.options.calibration) for sub, run in fitted.runs.items()}
    seconds = time.perf_counter() - t_start
    _report(fitted, settings, key=key_added)
    ranked = {sub: RankedRun(fitted.labels[sub], run, tests[sub]) for sub, run in fitted.runs.items()}
    block = rank_genes_groups(ranked, rank_coef, adata.var_names, groupby=groupby, layer=layer)
    stored = stored_fit(
        key_added, settings, fitted.runs, tests, adata.var_names, labels=fitted.labels, skipped=fitted.skipped,
        rank_block=block, seconds=seconds,
    )  # fmt: skip
    target = adata.copy() if copy else adata
    write_fit(target, key_added, stored)
    logger.info(
        "finished in %.1f s: added varm/var/uns under %s%s",
        seconds, list(fitted.runs), f" and uns['{key_added}_rank_genes_groups']" if block is not None else "",
    )  # fmt: skip
    return target if copy else None


def _validate(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None,
    size_factors: str | ArrayLike | None,
    offset: str | ArrayLike | None,
    norm_method: str,
    sample_key: str | None,
    key_added: str,
    groupby: str | None,
    min_cells: int | None,
    min_donors: int | None,
    min_cells_group: int | None,
    min_donors_group: int | None,
    calibration: str,
    store_modes: bool | None,
    n_agq: int,
    n_jobs: int | None,
    block_size: int,
    progress: bool | None,
    separation: str,
) -> tuple[FitSettings, object, FixedDesign | None]:
    """Check every argument before any work.

    Returns
    -------
    The settings of the fit, its count matrix and, without ``groupby``, its design (with
    ``groupby`` each group builds its own).
    """
    _inputs.key_added(key_added)
    options = FitOptions(
        min_cells=_inputs.min_count("min_cells", min_cells),
        min_donors=_inputs.min_count("min_donors", min_donors),
        calibration=_inputs.calibration(calibration),
        n_agq=_inputs.n_agq(n_agq),
        n_jobs=_inputs.n_jobs(n_jobs),
        block_size=_inputs.block_size(block_size),
        progress=progress,
        separation=_inputs.separation(separation),
    )
    store_modes = _inputs.flag("store_modes", store_modes, default=groupby is None)
    min_cells_group = _inputs.min_count("min_cells_group", min_cells_group)
    min_donors_group = _inputs.min_count("min_donors_group", min_donors_group)
    parsed = parse_fit_formula(formula)
    check_options(parsed, options)
    _inputs.not_empty(adata)
    if parsed.general:
        build_re_terms(parsed.terms, adata.obs)  # the grouping columns: present, no NaN, two levels
    else:
        _inputs.donor_labels(adata, parsed.donor)
    if groupby is not None:
        _inputs.groupby_labels(adata, groupby)
    norm = _inputs.normalisation(adata, norm_method, sample_key, parsed.specs, parsed.fixed, groupby)
    design = build_design(parsed.fixed, adata.obs) if groupby is None else None
    Y, what = _inputs.counts(adata, layer)
    try:
        check_counts(Y, what=what, param="layer")
    except InputError as err:
        hint = _inputs.raw_counts_hint(adata, layer)
        if not hint:
            raise
        msg = f"{err} {hint}"
        raise type(err)(msg, param="layer") from None
    log_off, source = _inputs.log_offset(adata, Y, size_factors, offset)
    if offset is not None:  # an offset is used as given
        norm = Normalisation("none", (), groupby)
    log_off, norm_factors = _inputs.normalised_offset(adata, Y, log_off, norm)
    inputs = {
        "layer": "X" if layer is None else str(layer),
        **source.to_params(),
        **norm.to_params(),
        "size_factors": size_factors if isinstance(size_factors, str) else None,
        "offset": offset if isinstance(offset, str) else None,
        "versions": versions(),
    }
    settings = FitSettings(
        parsed, options, inputs, log_off, groupby, min_cells_group, min_donors_group,
        store_modes=store_modes, norm_factors=norm_factors,
    )  # fmt: skip
    return settings, Y, design


def _guard(adata: AnnData, parsed: ParsedFormula, design: FixedDesign | None) -> None:
    """Warn once if a factor of the design varies within every random-effect level and no random effect
    carries it (:mod:`._guard`), before anything is fitted; on all cells with ``groupby``."""
    try:
        terms = tuple(build_re_terms(parsed.specs, adata.obs))
        design = design if design is not None else build_design(parsed.fixed, adata.obs)
    except InputError:  # a design that only some groups can estimate: their runs say so
        return
    warn_pseudo_replication(parsed, terms, design)


def _fit_runs(adata: AnnData, Y, design: FixedDesign | None, settings: FitSettings, *, key: str) -> GroupRuns:
    """The runs of a fit: one on all cells with ``design``, or one per group of ``groupby``."""
    parsed = settings.parsed
    if design is None:
        return fit_groups(
            adata, Y, settings.log_offset, parsed, settings.groupby, settings.options, key=key,
            min_cells_group=settings.min_cells_group, min_donors_group=settings.min_donors_group,
        )  # fmt: skip
    run = fit_run(
        adata.obs, Y, settings.log_offset, design, parsed, adata.var_names, settings.options, desc="scglmm fit"
    )
    return GroupRuns(runs={key: run}, labels={key: ""})


def _report(fitted: GroupRuns, settings: FitSettings, *, key: str) -> None:
    """One INFO summary per fit (a table per group with ``groupby``) and at most one warning."""
    summaries = {fitted.labels[sub]: run.summary for sub, run in fitted.runs.items()}
    options = settings.options
    info(
        log_text(
            summaries, key=key, groupby=settings.groupby, min_cells=options.min_cells, min_donors=options.min_donors
        )
    )
    message = warning_text(summaries, key=key, groupby=settings.groupby)
    if message is not None:
        warn(message)
