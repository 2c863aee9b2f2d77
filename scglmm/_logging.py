"""Logging, warnings and progress bars shared by the package."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from numba.core import event as numba_event

logger = logging.getLogger("scglmm")

_PKG_DIR = str(Path(__file__).parent)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the user's line as the location (frames inside scglmm are skipped)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, stacklevel=2, skip_file_prefixes=(_PKG_DIR,))
    else:  # pragma: no cover - Python 3.11
        warnings.warn(message, category, stacklevel=3)


def _interactive() -> bool:
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    # a Jupyter kernel: its stderr is not a tty, but tqdm.auto draws a widget there (needs ipywidgets)
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel") and importlib.util.find_spec("ipywidgets") is not None


class _CompilePostfix(numba_event.Listener):
    """A numba compile-event listener showing, in a progress bar's postfix, which of scglmm's
    kernels numba is compiling (the first run after installing), and how many so far. Numba
    compiles under one global lock, so the events come one at a time. (Cached runs send no event.)"""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.depth = 0
        self.count = 0

    @staticmethod
    def _ours(event) -> bool:
        return getattr(event.data["dispatcher"].py_func, "__module__", "").startswith("scglmm.")

    def on_start(self, event) -> None:
        if self._ours(event):
            self.depth += 1
            self.count += 1
            name = event.data["dispatcher"].py_func.__name__
            self.bar.set_postfix_str(f"compiling kernels (first run only): {self.count} {name}", refresh=True)

    def on_end(self, event) -> None:
        if self._ours(event):
            self.depth -= 1
            if self.depth == 0:
                self.bar.set_postfix_str("", refresh=True)


@contextmanager
def progress_bar(*, total: int, enabled: bool | None, desc: str) -> Iterator[object | None]:
    """A tqdm bar (``tqdm.auto``) or ``None``; ``enabled=None`` means only when interactive.

    While the bar is shown, numba compiling scglmm's kernels (the first run after installing) is
    shown in its postfix instead of a bar standing still at zero."""
    if enabled is None:
        enabled = _interactive()
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="gene", leave=False)
    try:
        with numba_event.install_listener("numba:compile", _CompilePostfix(bar)):
            yield bar
    finally:
        bar.close()
