"""TensorBoard images of what one attention head computes, as the paper's Figure 1 draws it:
the near-field band, the far-field (low-rank) matrix, and their blend.

At each validation, the first validation batch's input to attention layer ``layer`` is kept
for example ``example``, cropped to its first ``crop`` positions, and for head ``head``:

    near  N_ij = softmax_j(q_i . k_j / sqrt(d)) over the keys visible in the band |i - j| < k
                 (causal: i - k < j <= i); 0 elsewhere
    far   F_ij = sum_l phi_l(q_i) . phi_l(k_j), divided by its row sum (far_normalize) or by
                 sqrt(seq) with seq the uncropped length (the paper's LRA variant)
    blend B = c_near N + sum_l c_l F_l, with c the layer's blend weights of that head
              (averaged over the head's channels for per-channel weights)

These are dense (crop x crop) matrices computed for this picture only, from the layer's own
projections; the model's forward never builds them. Attention restricted to the crop: keys
beyond it are left out. Padding keys are masked as in the model. Colours: white 0, red
positive, blue negative, each image scaled by its largest magnitude.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from fmmformer_pl.attention.layer import FMMAttention
from fmmformer_pl.attention.naive import visible_keys


def attention_layers(module: torch.nn.Module) -> list[FMMAttention]:
    return [m for m in module.modules() if isinstance(m, FMMAttention)]


@torch.no_grad()
def attention_matrices(
    attn: FMMAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor],
    head: int,
    seq: Optional[int] = None,
) -> dict[str, torch.Tensor]:
    """``{"near_field", "far_field", "blend"}`` (those the layer's kind has), each a float32
    ``(L, L)`` matrix, from one head's queries and keys ``q``, ``k`` of shape ``(L, d)``;
    ``key_padding_mask``: bool ``(L,)`` or None; ``seq``: the uncropped length (the scale of
    the unnormalised far field)."""
    cfg = attn.config
    q, k = q.float(), k.float()
    length, dim = q.shape
    mask = None if key_padding_mask is None else key_padding_mask[None, :length]
    out: dict[str, torch.Tensor] = {}
    near = None
    if attn.has_near:
        visible = visible_keys(length, cfg.bandwidth, attn.causal, mask, q.device)[0, 0]
        scores = (q @ k.T / math.sqrt(dim)).masked_fill(~visible, float("-inf"))
        near = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: 0
        out["near_field"] = near
    if attn.has_far:
        keep = visible_keys(length, None, attn.causal, mask, q.device)[0, 0]  # (L, L)
        fields = []
        for phi in attn.phis:
            field = (phi(q) @ phi(k).T) * keep  # (L, L)
            if cfg.far_normalize:
                field = field / field.sum(-1, keepdim=True).clamp_min(1e-12)
            else:
                field = field / math.sqrt(seq or length)
            fields.append(field)
        out["far_field"] = sum(fields)
        weights = [p for p in attn.blend.parameters()] + [b for b in attn.blend.buffers()]
        if all(w.numel() > 0 for w in weights):  # (ZeRO-3 leaves only shards outside forward)
            coeffs = attn.blend.coefficients().detach().float()[:, head].mean(-1).tolist()
            parts = ([near] if attn.blend.near is not None else []) + fields
            out["blend"] = sum(c * f for c, f in zip(coeffs, parts, strict=True))
    return out


def to_image(matrix: torch.Tensor) -> torch.Tensor:
    """(3, L, L) RGB in [0, 1]: white 0, red positive, blue negative."""
    scale = matrix.abs().max().clamp_min(1e-12)
    v = (matrix / scale).clamp(-1, 1)
    pos, neg = v.clamp_min(0), (-v).clamp_min(0)
    return torch.stack([1 - neg, 1 - pos - neg, 1 - pos]).cpu()


class AttentionMapLogger(Callback):
    """See the module docstring. Logged as ``attention/layer<i>_head<h>/{near_field,
    far_field,blend}`` images after each validation of a fit (TensorBoard only)."""

    def __init__(self, layer: int = 0, head: int = 0, crop: int = 128, example: int = 0) -> None:
        self.layer, self.head, self.crop, self.example = layer, head, crop, example
        self._hook: Any = None
        self._hooks: list[Any] = []
        self._captured: Optional[dict[str, Any]] = None

    def _target(self, pl_module: LightningModule) -> Optional[FMMAttention]:
        layers = attention_layers(pl_module)
        if not 0 <= self.layer < len(layers) or layers[self.layer].config.kind == "softmax":
            return None
        if self.head >= layers[self.layer].num_heads:
            return None
        return layers[self.layer]

    def _wanted(self, trainer: Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.state.fn == "fit"
            and any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        )

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or self._hook is not None:
            return
        if not self._wanted(trainer):
            return
        attn = self._target(pl_module)
        if attn is None or getattr(pl_module, "model", pl_module)._compiled_call_impl is not None:
            return  # (hooks added to a compiled model would make it recompile)

        # The projections' outputs, captured during the model's own forward (so this works
        # whatever shards or wraps the parameters), and the padding mask from the layer's input.
        rows: dict[str, Any] = {}

        def crop_row(t: torch.Tensor) -> torch.Tensor:
            row = min(self.example, t.shape[0] - 1)
            return t[row, : self.crop].detach()

        def take_mask(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            mask = args[1] if len(args) > 1 else kwargs.get("key_padding_mask")
            rows["mask"] = None if mask is None else crop_row(mask)
            rows["seq"] = args[0].shape[1]

        def take(name: str):
            def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
                rows[name] = crop_row(output)  # (L, dim)
                if "q" in rows and "k" in rows:
                    self._captured = rows
                    self._remove()

            return hook

        self._hooks = [
            attn.register_forward_pre_hook(take_mask, with_kwargs=True),
            attn.q_proj.register_forward_hook(take("q")),
            attn.k_proj.register_forward_hook(take("k")),
        ]
        self._hook = True

    def _remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._hook = [], None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove()
        captured, self._captured = self._captured, None
        if captured is None or not self._wanted(trainer):
            return
        attn = self._target(pl_module)
        if attn is None:
            return
        heads, head_dim = attn.num_heads, attn.head_dim
        q = captured["q"].view(-1, heads, head_dim)[:, self.head]  # (L, head_dim)
        k = captured["k"].view(-1, heads, head_dim)[:, self.head]
        try:
            matrices = attention_matrices(
                attn, q, k, captured.get("mask"), self.head, captured["seq"]
            )
        except Exception as error:  # noqa: BLE001 - a picture must never end a training run
            rank_zero_warn(f"AttentionMapLogger: no attention maps from now on ({error})")
            self.layer = -1  # _target finds no layer: off for the rest of the run
            return
        tag = f"attention/layer{self.layer}_head{self.head}"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, matrix in matrices.items():
                    logger.experiment.add_image(
                        f"{tag}/{name}", to_image(matrix), trainer.global_step, dataformats="CHW"
                    )
