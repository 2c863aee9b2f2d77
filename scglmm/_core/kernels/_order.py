"""The order of the cells (donor, design row, offset)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


@njit(**_JIT)
def distinct_row_ids(X, ro):
    """Number the distinct rows of ``X`` 0, 1, ... in lexicographic order, given ``ro``, the rows
    of ``X`` in lexicographic order (``np.lexsort``); returns each row's number."""
    n, p = X.shape
    ids = np.empty(n, dtype=np.int64)
    cur = 0
    for i in range(n):
        r = ro[i]
        if i > 0:
            q = ro[i - 1]
            for j in range(p):
                if X[r, j] != X[q, j]:
                    cur += 1
                    break
        ids[r] = cur
    return ids


@njit(**_JIT)
def stable_counting_sort(key, n_keys, seq):
    """The elements of ``seq`` (indices into ``key``, values 0 .. n_keys - 1) sorted by their key,
    keeping the order of ``seq`` among equal keys (a stable sort in O(n + n_keys))."""
    cnt = np.zeros(n_keys + 1, dtype=np.int64)
    for i in range(seq.shape[0]):
        cnt[key[seq[i]] + 1] += 1
    for k in range(n_keys):
        cnt[k + 1] += cnt[k]
    out = np.empty_like(seq)
    for i in range(seq.shape[0]):
        c = seq[i]
        k = key[c]
        out[cnt[k]] = c
        cnt[k] += 1
    return out
