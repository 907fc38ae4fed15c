"""The batch layouts: what a data module's loader yields and a task reads, defined once.

A batch is a plain ``dict`` of tensors (Lightning and DeepSpeed move dicts to the device as
they are); these ``TypedDict`` classes name its keys for the type checker, the constants name
them for the code, and :data:`LAYOUTS` states dtype and shape per key so a test can hold every
data module to its layout. Shapes use ``batch`` (rows), ``seq`` (the data module's
``max_length``) and ``window`` (a language-model window, at most ``tgt_len`` tokens).

Token ids are ``int64``; id 0 is padding where a layout has a padding mask. Masks are ``bool``.
"""

from __future__ import annotations

from typing import Final, TypedDict

import torch

__all__ = [
    "INPUT_IDS",
    "INPUT_IDS_1",
    "INPUT_IDS_2",
    "LABEL",
    "LAYOUTS",
    "LOSS_MASK",
    "PADDING_MASK",
    "PADDING_MASK_1",
    "PADDING_MASK_2",
    "TARGET_IDS",
    "TOKEN_KEYS",
    "ClassificationBatch",
    "LMBatch",
    "RetrievalBatch",
]

INPUT_IDS: Final = "input_ids"
PADDING_MASK: Final = "padding_mask"
LABEL: Final = "label"
INPUT_IDS_1: Final = "input_ids_1"
PADDING_MASK_1: Final = "padding_mask_1"
INPUT_IDS_2: Final = "input_ids_2"
PADDING_MASK_2: Final = "padding_mask_2"
TARGET_IDS: Final = "target_ids"
LOSS_MASK: Final = "loss_mask"

#: the keys that hold token ids, in every layout (what the model processes, padding included)
TOKEN_KEYS: Final = (INPUT_IDS, INPUT_IDS_1, INPUT_IDS_2)


class ClassificationBatch(TypedDict):
    """ListOps, Text, Image, Pathfinder: one sequence per row and its class."""

    input_ids: torch.Tensor  # (batch, seq) int64, 0 at padding
    padding_mask: torch.Tensor  # (batch, seq) bool, True at padding
    label: torch.Tensor  # (batch,) int64, in [0, num_classes)


class RetrievalBatch(TypedDict):
    """Retrieval: two documents per row (dual encoder) and whether they are linked."""

    input_ids_1: torch.Tensor  # (batch, seq) int64, 0 at padding
    padding_mask_1: torch.Tensor  # (batch, seq) bool, True at padding
    input_ids_2: torch.Tensor  # (batch, seq) int64
    padding_mask_2: torch.Tensor  # (batch, seq) bool
    label: torch.Tensor  # (batch,) int64, 0 or 1


class _LMRequired(TypedDict):
    input_ids: torch.Tensor  # (batch, window) int64
    target_ids: torch.Tensor  # (batch, window) int64, input_ids shifted by one token


class LMBatch(_LMRequired, total=False):
    """WikiText-103: windows of token streams and their next tokens."""

    # (batch, window) bool, True where the target counts; sliding-window and full-context
    # evaluation only (without it every target counts)
    loss_mask: torch.Tensor


#: layout -> key -> (dtype, dimension names); a key a layout marks optional may be absent
LAYOUTS: Final[dict[type, dict[str, tuple[torch.dtype, tuple[str, ...]]]]] = {
    ClassificationBatch: {
        INPUT_IDS: (torch.int64, ("batch", "seq")),
        PADDING_MASK: (torch.bool, ("batch", "seq")),
        LABEL: (torch.int64, ("batch",)),
    },
    RetrievalBatch: {
        INPUT_IDS_1: (torch.int64, ("batch", "seq")),
        PADDING_MASK_1: (torch.bool, ("batch", "seq")),
        INPUT_IDS_2: (torch.int64, ("batch", "seq")),
        PADDING_MASK_2: (torch.bool, ("batch", "seq")),
        LABEL: (torch.int64, ("batch",)),
    },
    LMBatch: {
        INPUT_IDS: (torch.int64, ("batch", "window")),
        TARGET_IDS: (torch.int64, ("batch", "window")),
        LOSS_MASK: (torch.bool, ("batch", "window")),
    },
}
