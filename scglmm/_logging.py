"""Logging, warnings and progress bars shared by the package."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from numba.core import event as numba_event

logger = logging.getLogger("scglmm")

_PKG_DIR = str(Path(__file__).parent)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the user's line as the location: the first frame outside scglmm, however deep inside it
    the warning was raised (Python 3.11 has no ``skip_file_prefixes``: the frames are counted)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def info(message: str) -> None:
    """An INFO message of scglmm: on the ``scglmm`` logger when it takes INFO (the command line, or a user's
    ``logging`` setup), else where scanpy shows its own messages when ``sc.settings.verbosity`` is ``"info"``
    or more (a notebook or script; scanpy's verbosity does not reach the ``scglmm`` logger)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", message)
    elif _scanpy_verbosity_allows("info"):
        import scanpy as sc

        sc.logging.info(message)


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


#: With ``progress=None`` the bar appears only once a run has lasted this long (seconds).
PROGRESS_DELAY = 2.0


def _scanpy_verbosity_allows(level: str = "warning") -> bool:
    """Whether scanpy's verbosity is at least ``level`` (its default, ``warning``: lowered to ``error``, no bar)."""
    try:
        import scanpy as sc
        from scanpy import Verbosity
    except ImportError:  # pragma: no cover - scanpy is a dependency
        return True
    return int(sc.settings.verbosity) >= int(Verbosity[level])


def progress_settings(enabled: bool | None) -> tuple[bool, float]:
    """Whether to draw a progress bar and after how many seconds of a run.

    ``True``: at once; ``False``: never; ``None``: after :data:`PROGRESS_DELAY` seconds (so short
    runs stay quiet), unless scanpy's verbosity is below its default (``sc.settings.verbosity =
    "error"`` hides it), in scripts, terminals and notebooks alike.
    """
    if enabled is None:
        return _scanpy_verbosity_allows(), PROGRESS_DELAY
    return bool(enabled), 0.0


def _tqdm() -> type:
    """``tqdm.auto.tqdm``: a widget in a notebook with ipywidgets, else text; tqdm's own warning about a
    notebook without ipywidgets is not passed on (the text bar works there too)."""
    with warnings.catch_warnings():
        from tqdm import TqdmWarning

        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


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


#: In a log file or a pipe, at most one progress line per this many seconds.
PIPE_INTERVAL = 10.0


class LineProgress:
    """Progress for a log file or a pipe: one plain line per update at most every :data:`PIPE_INTERVAL`
    seconds, once the run has lasted ``delay`` seconds (no carriage returns piling up on one line). The
    time left is estimated from the genes done after the first update, so a first block slowed by
    compiling the kernels does not inflate it."""

    def __init__(self, *, total: int, desc: str, delay: float, stream=None) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.next = self.start + max(delay, PIPE_INTERVAL)
        self.first: tuple[float, int] | None = None

    def update(self, n: int = 1) -> None:
        """Count ``n`` more genes; write a line if it is time."""
        self.n += n
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.n)
        if now >= self.next and self.n < self.total:
            self.next = now + PIPE_INTERVAL
            self.stream.write(f"{self.desc}: {self.line(now)}\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """``"320/1000 genes (32 %), 41 s, about 87 s left"`` (no estimate before two updates)."""
        pct = 100.0 * self.n / self.total if self.total else 100.0
        out = f"{self.n}/{self.total} genes ({pct:.0f} %), {now - self.start:.0f} s"
        t1, n1 = self.first if self.first is not None else (now, self.n)
        if self.n > n1 and now > t1:
            out += f", about {(now - t1) / (self.n - n1) * (self.total - self.n):.0f} s left"
        return out

    def close(self) -> None:
        """Nothing to clear: the lines stay in the log."""


@contextmanager
def progress_bar(*, total: int, enabled: bool | None, desc: str) -> Iterator[object | None]:
    """A tqdm bar (``tqdm.auto``) in a terminal or notebook, plain lines (:class:`LineProgress`) in a log
    file or a pipe, or ``None``; see :func:`progress_settings` for ``enabled``.

    While the bar is shown, numba compiling scglmm's kernels (the first run after installing) is
    shown in its postfix instead of a bar standing still at zero."""
    show, delay = progress_settings(enabled)
    if not show:
        yield None
        return
    if not _interactive():  # a log file or a pipe: the compile lines of the log say what compiles
        yield LineProgress(total=total, desc=desc, delay=delay)
        return
    bar = _tqdm()(total=total, desc=desc, unit="gene", leave=False, delay=delay, mininterval=0.1)
    try:
        with numba_event.install_listener("numba:compile", _CompilePostfix(bar)):
            yield bar
    finally:
        bar.close()
