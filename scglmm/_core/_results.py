"""Results of the array API: :class:`GeneFit`, :class:`GenesFit` (one type for every random-effect structure),
and their assembly from the compiled kernels' outputs (:func:`assemble`) or the general engine's (:func:`collect`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import norm

from ._re import T_MAX, REFitOne, REStructure, varcomp
from ._status import NOT_CONVERGED, POISSON_LIMIT, SIGMA2_BOUNDARY, UNUSABLE, status_names
from .kernels._bundles import BlockOut

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["RUN_FIELDS", "GeneFit", "GenesFit", "assemble", "collect", "empty_outputs", "mode_names", "stack"]


@dataclass(frozen=True)
class GeneFit:
    """Result of :func:`fit_gene` (one gene). All effects are on the natural-log scale."""

    coef: NDArray[np.float64]
    """Fixed effects ``beta`` (p,)."""
    se: NDArray[np.float64]
    """Standard errors of ``coef`` (p,), from the full Hessian of the marginal log-likelihood."""
    cov: NDArray[np.float64]
    """Covariance of ``coef`` (p, p)."""
    sigma2: float
    """Random-intercept variance of the first term (the donor's; log scale); 0 at the boundary, NaN if
    the first term has no intercept."""
    varcomp: NDArray[np.float64]
    """Variances and correlations of every term (V,), named by ``varcomp_names``."""
    theta: float
    """NB size; ``inf`` in the Poisson limit."""
    dispersion: float
    """``1 / theta``; 0 in the Poisson limit."""
    loglik: float
    """Approximate marginal log-likelihood (Laplace or AGQ), all constants included."""
    modes: NDArray[np.float64]
    """Conditional modes of the random effects (Q,), named by ``mode_names``; for a donor intercept one
    per donor, in the order of ``donors``."""
    donors: NDArray[np.object_]
    """Levels of the first term's grouping factor (the donors)."""
    coef_names: list[str]
    varcomp_names: list[str]
    mode_names: list[str]
    n_iter: int
    status: int
    """Status bit flags; see :func:`scglmm.status_name`."""
    status_str: str
    converged: bool

    @property
    def p_value(self) -> NDArray[np.float64]:
        """Two-sided Wald p-values of ``coef``."""
        return 2.0 * norm.sf(np.abs(self.coef / self.se))


#: Per-gene fields of :class:`GenesFit` that a refit of some genes replaces (the separation and
#: penalised refits), besides the modes (placed by name).
REFIT_FIELDS = (
    "coef", "se", "cov", "varcomp", "theta", "dispersion", "loglik", "n_iter", "n_eval", "status",
    "grad_max", "log_sigma2_se", "log_theta_se",
)  # fmt: skip


@dataclass(frozen=True)
class GenesFit:
    """Result of :func:`fit_genes` for G genes, for every random-effect structure. Row g of every array
    belongs to gene g."""

    coef: NDArray[np.float64]
    """(G, p) fixed effects, natural-log scale."""
    se: NDArray[np.float64]
    """(G, p) standard errors from the full Hessian (the modes' dependence included)."""
    cov: NDArray[np.float64]
    """(G, p, p) covariance of the fixed effects."""
    varcomp: NDArray[np.float64]
    """(G, V) variances and correlations of every term (``VarCorr``), named by ``varcomp_names``; a
    variance at its boundary is 0."""
    theta: NDArray[np.float64]
    """NB size; ``inf`` in the Poisson limit."""
    dispersion: NDArray[np.float64]
    loglik: NDArray[np.float64]
    """Laplace (or AGQ) log-likelihood, all constants included (comparable to glmmTMB's ``logLik``)."""
    modes: NDArray[np.float64]
    """(G, Q) conditional modes of the random effects, named by ``mode_names``
    (``group[level]:coefficient``); for a donor intercept one per donor, in the order of ``donors``."""
    n_iter: NDArray[np.int64]
    n_eval: NDArray[np.int64]
    """Objective-and-gradient evaluations (each a converged inner Newton); -1 where not counted (the
    compiled kernels of a single random intercept)."""
    status: NDArray[np.int64]
    grad_max: NDArray[np.float64]
    """Largest absolute gradient entry at the returned estimate."""
    n_nonzero: NDArray[np.int64]
    """Cells with a non-zero count, per gene."""
    coef_names: list[str]
    varcomp_names: list[str]
    mode_names: list[str]
    donors: NDArray[np.object_]
    """Levels of the first term's grouping factor (the donors)."""
    log_sigma2_se: NDArray[np.float64] = field(repr=False)
    """Standard error of ``log sigma2`` (a single random intercept; NaN otherwise)."""
    log_theta_se: NDArray[np.float64] = field(repr=False)
    """Standard error of ``log theta`` (a single random intercept; NaN otherwise)."""

    @property
    def sigma2(self) -> NDArray[np.float64]:
        """(G,) random-intercept variance of the first term (the donor variance); NaN if it has none."""
        if self.varcomp_names and self.varcomp_names[0].startswith("var(Intercept|"):
            return self.varcomp[:, 0]
        return np.full(self.coef.shape[0], np.nan)

    @property
    def status_str(self) -> NDArray[np.object_]:
        """Readable status per gene (``"ok"``, ``"poisson_limit"``, ...)."""
        return status_names(self.status)

    @property
    def converged(self) -> NDArray[np.bool_]:
        """True where the optimiser converged and the estimates are usable."""
        return (self.status & (UNUSABLE | NOT_CONVERGED)) == 0

    @property
    def p_value(self) -> NDArray[np.float64]:
        """(G, p) two-sided Wald p-values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2.0 * norm.sf(np.abs(self.coef / self.se))

    def gene(self, g: int) -> GeneFit:
        """The result of gene ``g`` as a :class:`GeneFit`."""
        code = int(self.status[g])
        return GeneFit(
            coef=self.coef[g],
            se=self.se[g],
            cov=self.cov[g],
            sigma2=float(self.sigma2[g]),
            varcomp=self.varcomp[g],
            theta=float(self.theta[g]),
            dispersion=float(self.dispersion[g]),
            loglik=float(self.loglik[g]),
            modes=self.modes[g],
            donors=self.donors,
            coef_names=self.coef_names,
            varcomp_names=self.varcomp_names,
            mode_names=self.mode_names,
            n_iter=int(self.n_iter[g]),
            status=code,
            status_str=str(self.status_str[g]),
            converged=bool(self.converged[g]),
        )


#: Fields of :class:`GenesFit` that describe the structure, not one gene each.
RUN_FIELDS = ("coef_names", "varcomp_names", "mode_names", "donors")


def stack(parts: Sequence[GenesFit]) -> GenesFit:
    """The fits of consecutive blocks of genes (same structure) as one."""
    if len(parts) == 1:
        return parts[0]
    arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(GenesFit)}
    return replace(parts[0], **{k: v for k, v in arrays.items() if k not in RUN_FIELDS})


def mode_names(group: str, levels: Sequence, coefs: Sequence[str] = ("Intercept",)) -> list[str]:
    """``group[level]:coefficient`` for every level and coefficient of one term, level by level."""
    return [f"{group}[{label}]:{c}" for label in levels for c in coefs]


def empty_outputs(G: int, p: int, m: int) -> BlockOut:
    """Output arrays for G genes with p fixed effects and m donors, before the kernels fill them."""
    q = p + 2
    return BlockOut(
        phi=np.full((G, q), np.nan),
        modes=np.full((G, m), np.nan),
        cov=np.full((G, q, q), np.nan),
        loglik=np.full(G, np.nan),
        n_iter=np.zeros(G, dtype=np.int64),
        status=np.zeros(G, dtype=np.int64),
        grad_max=np.full(G, np.nan),
    )


def assemble(
    out: BlockOut,
    n_nonzero: NDArray[np.int64],
    p: int,
    coef_names: Sequence[str],
    donors: NDArray[np.object_],
    group: str,
) -> GenesFit:
    """The :class:`GenesFit` of G genes from the raw outputs of the compiled kernels of a single random
    intercept ``(1 | group)``.

    Parameters
    ----------
    out
        The kernels' outputs for all genes (see :func:`empty_outputs`).
    n_nonzero
        (G,) stored entries per gene.
    p
        Number of fixed effects.
    coef_names, donors, group
        Names of the fixed effects, the levels of the grouping factor and its name.
    """
    out_phi, out_b, out_cov, out_ll, out_iter, out_status, out_gmax = out
    status = out_status.copy()
    bad = (status & UNUSABLE) != 0
    coef = out_phi[:, :p].copy()
    cov = out_cov[:, :p, :p].copy()
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).copy()
    s_bound = (status & SIGMA2_BOUNDARY) != 0
    t_bound = (status & POISSON_LIMIT) != 0
    sigma2 = np.where(s_bound, 0.0, np.exp(out_phi[:, p]))
    theta = np.where(t_bound, np.inf, np.exp(out_phi[:, p + 1]))
    dispersion = np.where(t_bound, 0.0, np.exp(-out_phi[:, p + 1]))
    with np.errstate(invalid="ignore"):
        log_sigma2_se = np.sqrt(out_cov[:, p, p])
        log_theta_se = np.sqrt(out_cov[:, p + 1, p + 1])
    for arr in (coef, se, sigma2, theta, dispersion, out_ll, log_sigma2_se, log_theta_se):
        arr[bad] = np.nan
    cov[bad] = np.nan
    modes = out_b.copy()
    modes[bad] = np.nan
    return GenesFit(
        coef=coef,
        se=se,
        cov=cov,
        varcomp=sigma2[:, None],
        theta=theta,
        dispersion=dispersion,
        loglik=out_ll,
        modes=modes,
        n_iter=out_iter,
        n_eval=np.full(out_iter.shape, -1, dtype=np.int64),
        status=status,
        grad_max=out_gmax,
        n_nonzero=n_nonzero,
        coef_names=list(coef_names),
        varcomp_names=[f"var(Intercept|{group})"],
        mode_names=mode_names(group, donors),
        donors=donors,
        log_sigma2_se=log_sigma2_se,
        log_theta_se=log_theta_se,
    )


def collect(s: REStructure, fits: Sequence[REFitOne], coef_names: Sequence[str], n_nonzero: NDArray) -> GenesFit:
    """The :class:`GenesFit` of G genes from the per-gene fits of the general engine (:func:`fit_re_one`)."""
    p, G = s.p, len(fits)
    phi = np.array([f.phi for f in fits]).reshape(G, s.n_params)
    cov = np.array([f.cov_phi[:p, :p] for f in fits]).reshape(G, p, p)
    status = np.array([f.status for f in fits], dtype=np.int64)
    theta = np.where((status & POISSON_LIMIT) != 0, np.inf, np.exp(np.minimum(phi[:, -1], T_MAX)))
    return GenesFit(
        coef=phi[:, :p],
        se=np.sqrt(np.diagonal(cov, axis1=1, axis2=2)),
        cov=cov,
        varcomp=np.array([varcomp(s, f.phi) for f in fits]).reshape(G, -1),
        theta=theta,
        dispersion=1.0 / theta,
        loglik=np.array([f.loglik for f in fits]),
        modes=np.array([f.modes for f in fits]).reshape(G, s.data.Q),
        n_iter=np.array([f.n_iter for f in fits], dtype=np.int64),
        n_eval=np.array([f.n_eval for f in fits], dtype=np.int64),
        status=status,
        grad_max=np.array([f.grad_max for f in fits]),
        n_nonzero=np.asarray(n_nonzero, dtype=np.int64),
        coef_names=list(coef_names),
        varcomp_names=s.varcomp_names(),
        mode_names=_structure_mode_names(s),
        donors=np.asarray(s.terms[0].levels, dtype=object),
        log_sigma2_se=np.full(G, np.nan),
        log_theta_se=np.full(G, np.nan),
    )


def _structure_mode_names(s: REStructure) -> list[str]:
    """``group[level]:coefficient`` of every random effect, in the order of the modes
    (:meth:`.REStructure.effect_order`)."""
    names = [""] * s.data.Q
    for it, term in enumerate(s.terms):
        for lev, label in enumerate(term.levels):
            for c, cname in enumerate(term.coef_names):
                names[int(s.gpos[it][lev]) + c] = f"{term.group}[{label}]:{cname}"
    return [names[i] for i in s.effect_order()]
