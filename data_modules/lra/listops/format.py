"""The ListOps file format and vocabulary, shared by the generator and the parser.

A ListOps example is a nested list operation over the digits 0-9; the label is its value::

    Source                                  Target
    ( ( ( ( [MAX 3 ) 4 ) 3 ) ] )            4

Operators: ``[MIN`` min, ``[MAX`` max, ``[MED`` ``int(median)`` (mean of the middle two,
truncated, when the count is even), ``[SM`` sum mod 10. ``]`` closes an operator.

Two tokenisations (:func:`data_modules.lra.listops.parse.tokenize`):

* ``brackets``: replace ``]`` by ``X``, delete ``(`` and ``)``, split on white space. Every
  operator keeps its closing token, so the tree is recoverable from the sequence. A tree's
  ``length`` (tokens) equals its token count after this tokenisation.
* ``lra``: LRA's public input pipeline (``lra_benchmarks/listops/input_pipeline.py``), which the
  released LRA code used to make its data: ``tfds`` ``Tokenizer()`` keeps alphanumeric runs
  only, so ``[MAX`` becomes ``MAX`` and ``]``, ``(`` and ``)`` are dropped. Without the closing
  tokens the nesting is ambiguous; the paper's ListOps numbers were measured on this.

Vocabulary (both): ``<pad>`` 0, ``<unk>`` 1, then ``[MIN [MAX [MED [SM X 0 1 ... 9`` (ids 2-16),
17 in all (``lra`` never produces ``X``).
"""

from __future__ import annotations

__all__ = ["END", "HEADER", "OPERATORS", "SPLITS", "TASK_FOLDER", "TOKEN_IDS", "VOCAB"]

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
HEADER = "Source\tTarget"
SPLITS = ("train", "val", "test")
TASK_FOLDER = "listops-1000"

PAD_ID, UNK_ID = 0, 1
VOCAB = ("<pad>", "<unk>", *OPERATORS, "X", *(str(d) for d in range(10)))
TOKEN_IDS = {token: index for index, token in enumerate(VOCAB)}
