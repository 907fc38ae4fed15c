"""ListOps: LRA's generator (seeded), the official tokeniser, and ``ListOpsDataModule``.

- :mod:`~data_modules.lra.listops.format`: the TSV layout and the 17-symbol vocabulary;
- :mod:`~data_modules.lra.listops.generate`: LRA's generator, writing that layout;
- :mod:`~data_modules.lra.listops.parse`: reading and tokenising the TSV files;
- :mod:`~data_modules.lra.listops.datamodule`: :class:`ListOpsDataModule`, the Lightning wiring;
- :mod:`~data_modules.lra.listops.cli` (``python -m data_modules.lra.listops generate``).
"""

from data_modules.lra.listops.cli import main
from data_modules.lra.listops.datamodule import ListOpsDataModule
from data_modules.lra.listops.format import END, OPERATORS, VOCAB
from data_modules.lra.listops.generate import (
    generate_example,
    generate_examples,
    iter_examples,
    write_dataset,
)
from data_modules.lra.listops.parse import TOKENIZERS, parse_row, read_listops_tsv, tokenize

__all__ = [
    "END",
    "OPERATORS",
    "TOKENIZERS",
    "VOCAB",
    "ListOpsDataModule",
    "generate_example",
    "generate_examples",
    "iter_examples",
    "main",
    "parse_row",
    "read_listops_tsv",
    "tokenize",
    "write_dataset",
]
