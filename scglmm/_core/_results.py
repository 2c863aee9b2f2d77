"""Results of the array API: :class:`GeneFit`, :class:`GenesFit`, and their assembly from the kernels' outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import norm

from ._status import NOT_CONVERGED, POISSON_LIMIT, SIGMA2_BOUNDARY, UNUSABLE, status_names
from .kernels._bundles import BlockOut

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["GeneFit", "GenesFit", "assemble", "empty_outputs"]


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
    """Donor random-intercept variance (log scale); 0 at the boundary."""
    theta: float
    """NB size; ``inf`` in the Poisson limit."""
    dispersion: float
    """``1 / theta``; 0 in the Poisson limit."""
    loglik: float
    """Approximate marginal log-likelihood (Laplace or AGQ), all constants included."""
    modes: NDArray[np.float64]
    """Conditional modes of the donor effects, in the order of ``donors``."""
    donors: NDArray[np.object_]
    """Donor labels."""
    coef_names: list[str]
    n_iter: int
    status: int
    """Status bit flags; see :func:`scglmm.status_name`."""
    status_str: str
    converged: bool

    @property
    def p_value(self) -> NDArray[np.float64]:
        """Two-sided Wald p-values of ``coef``."""
        return 2.0 * norm.sf(np.abs(self.coef / self.se))


@dataclass(frozen=True)
class GenesFit:
    """Result of :func:`fit_genes` for G genes. Row g of every array belongs to gene g."""

    coef: NDArray[np.float64]
    """(G, p) fixed effects, natural-log scale."""
    se: NDArray[np.float64]
    """(G, p) standard errors."""
    cov: NDArray[np.float64]
    """(G, p, p) covariance of the fixed effects."""
    sigma2: NDArray[np.float64]
    theta: NDArray[np.float64]
    dispersion: NDArray[np.float64]
    loglik: NDArray[np.float64]
    modes: NDArray[np.float64]
    """(G, m) conditional modes of the donor effects."""
    n_iter: NDArray[np.int64]
    status: NDArray[np.int64]
    grad_max: NDArray[np.float64]
    """Largest absolute gradient entry at the returned estimate."""
    n_nonzero: NDArray[np.int64]
    coef_names: list[str]
    donors: NDArray[np.object_]
    log_sigma2_se: NDArray[np.float64] = field(repr=False)
    log_theta_se: NDArray[np.float64] = field(repr=False)

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
            theta=float(self.theta[g]),
            dispersion=float(self.dispersion[g]),
            loglik=float(self.loglik[g]),
            modes=self.modes[g],
            donors=self.donors,
            coef_names=self.coef_names,
            n_iter=int(self.n_iter[g]),
            status=code,
            status_str=str(self.status_str[g]),
            converged=bool(self.converged[g]),
        )


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
    out: BlockOut, n_nonzero: NDArray[np.int64], p: int, coef_names: Sequence[str], donors: NDArray[np.object_]
) -> GenesFit:
    """The :class:`GenesFit` of G genes from the raw outputs of the kernels.

    Parameters
    ----------
    out
        The kernels' outputs for all genes (see :func:`empty_outputs`).
    n_nonzero
        (G,) stored entries per gene.
    p
        Number of fixed effects.
    coef_names, donors
        Names of the fixed effects and the donor labels.
    """
    out_phi, out_b, out_cov, out_ll, out_iter, out_status, out_gmax = out
    nnz = n_nonzero
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
        sigma2=sigma2,
        theta=theta,
        dispersion=dispersion,
        loglik=out_ll,
        modes=modes,
        n_iter=out_iter,
        status=status,
        grad_max=out_gmax,
        n_nonzero=nnz,
        coef_names=list(coef_names),
        donors=donors,
        log_sigma2_se=log_sigma2_se,
        log_theta_se=log_theta_se,
    )
