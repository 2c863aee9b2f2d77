"""Numerics: pure-array estimators (no AnnData); imports nothing of scglmm outside ``_core``.

Modules, each importing only the ones listed before it (no cycles: ``tests/test_dependencies.py``):

* ``_errors``: the exception family of bad input; ``_status``: the per-gene status bits and their names;
* ``kernels``: the numba kernels (a package, see its docstring);
* ``_design``: design preparation of a single random intercept (cell order, the few-rows fast path's
  data, the quadrature rule);
* ``_checks``: input rules of the array API;
* ``_counts``: count access (CSC blocks from dense, CSC, CSR and on-disk counts);
* ``_re``: random-effect terms (:class:`RETerm`) and the general engine (a structure's layout, the fit
  of one gene);
* ``_results``: the one result type, :class:`GenesFit` (:class:`GeneFit` for one gene), assembled from
  the compiled kernels' outputs or the general engine's fits;
* ``_separation``: genes whose design separates, refitted without their vanishing cells;
* ``_schedule``: block bounds, threads, joblib / Dask dispatch of both engines;
* ``_api``: the one entry, ``fit_genes`` / ``fit_gene``: donor labels or terms in, the engine chosen from
  the terms (the compiled kernels for a single ``(1 | g)``, the general engine otherwise), a
  :class:`GenesFit` out;
* ``_inference``: pure-array statistics on fitted results (Wald, LRT, contrasts, calibration).
"""
