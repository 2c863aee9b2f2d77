"""Numerics: pure-array estimators (no AnnData); imports nothing of scglmm outside ``_core``.

Modules, each importing only the ones listed before it (checked by ``tests/test_dependencies.py``):

* ``_status``: the per-gene status bits and their names (numpy only);
* ``kernels``: the numba kernels (a package, see its docstring);
* ``_design``: design preparation (cell order, random-effect terms, the few-rows fast path's data,
  the quadrature rule);
* ``_checks``: input rules of the array API;
* ``_counts``: count access (CSC blocks from dense, CSC, CSR and on-disk counts);
* ``_results``: :class:`GeneFit`, :class:`GenesFit` and their assembly from the kernels' outputs;
* ``_schedule``: block bounds, threads, joblib / Dask dispatch;
* ``_api``: the public ``fit_gene`` and ``fit_genes``;
* ``_inference``: pure-array statistics on fitted results (Wald, LRT, contrasts, calibration);
* ``_re``: general random-effect structures (terms, layout, the fit of one gene; kernels
  ``kernels._re_laplace`` and ``kernels._re_linalg``); ``_re_api``: their array API ``fit_re_genes``.
"""
