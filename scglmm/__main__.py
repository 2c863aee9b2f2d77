"""``python -m scglmm``."""

from .cli import main

main()
