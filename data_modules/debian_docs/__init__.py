"""A WikiText-103-shaped corpus of real English from Debian packages, for offline runs:
:mod:`~data_modules.debian_docs.corpus` converts, :mod:`~data_modules.debian_docs.cli` is
``python -m data_modules.debian_docs prepare``; ``WikiText103DataModule`` reads the result."""

from data_modules.debian_docs.cli import main
from data_modules.debian_docs.corpus import prepare, tokenize

__all__ = ["main", "prepare", "tokenize"]
