"""Independent log-priors on the outer parameters of a random-effect structure (pure numpy).

The general engine maximises ``loglik(phi) + log prior(phi)`` when a structure carries a :class:`Prior`
(``REStructure.prior``), with ``phi = (beta, Cholesky entries, log theta)``. Two kinds of terms:

- normal priors centred at 0, ``-0.5 precision_i phi_i^2`` (the weak prior of genes that separate,
  :mod:`._penalised`);
- blme's boundary-avoiding covariance prior, ``logdet * sum_k log |L_kk|`` over the diagonal entries of the
  Cholesky factors: ``logdet * 0.5 * log det Sigma_t`` summed over terms. A Wishart prior with ``nu``
  degrees of freedom and infinite scale on a ``q x q`` covariance has ``(nu - q - 1) / 2 log det Sigma``;
  blme's default (``nu = q + 2.5``) is ``logdet = 1.5``, for a scalar term a gamma(2.5, rate 0) prior on
  the standard deviation (Chung et al. 2013).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Prior"]


@dataclass(frozen=True)
class Prior:
    """Log-prior on ``phi``: normal terms with ``precision`` and ``logdet * sum log |phi_d|`` over ``diagonal``."""

    precision: NDArray[np.float64]
    """Per parameter, the precision of a normal prior centred at 0 (0: none)."""
    logdet: float = 0.0
    diagonal: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Positions in ``phi`` of the Cholesky factors' diagonal entries."""

    def value_grad(self, phi: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        """The log-prior and its gradient at ``phi`` (``-inf`` where a diagonal entry is 0 and ``logdet > 0``)."""
        val = -0.5 * float(self.precision @ (phi * phi))
        grad = -self.precision * phi
        if self.logdet:
            d = phi[self.diagonal]
            with np.errstate(divide="ignore"):
                val += self.logdet * float(np.log(np.abs(d)).sum())
                grad[self.diagonal] += self.logdet / d
        return val, grad

    def curvature(self, phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """The diagonal of the log-prior's negative Hessian at ``phi`` (the prior has no cross terms)."""
        out = self.precision.astype(np.float64, copy=True)
        if self.logdet:
            out[self.diagonal] += self.logdet / phi[self.diagonal] ** 2
        return out
