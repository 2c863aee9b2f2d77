"""Logging, warnings and progress bars shared by the package."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def progress_bar(*, total: int, enabled: bool | None, desc: str) -> Iterator[object | None]:
    """A tqdm bar (``tqdm.auto``) or ``None``; ``enabled=None`` means only when interactive."""
    if enabled is None:
        enabled = _interactive()
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="gene", leave=False)
    try:
        yield bar
    finally:
        bar.close()
