"""``python -m scglmm``: the same program as ``scglmm``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
