"""Causal decoder language model (WikiText-103) with constant-state generation.

    h = LN(Block_L(... Block_1(E[x] + P)))       (causal FMM attention in every block)

(the released LM's layout, ``final_norm=False`` and ``final_dropout=True``: h = Dropout(Block_L(...)),
with post-LN blocks and scaled embeddings; see DecoderConfig)
    log p(. | x_<=t) = log_softmax(h_t E^T)       (tied), or the adaptive softmax below

Shapes: input_ids / target_ids ``(batch, seq)`` long; hidden ``(batch, seq, dim)``;
log-probabilities ``(..., vocab)``.

Decoding: ``init_state``/``prefill`` then ``step`` one token at a time (``static_state`` and
``step_``: the same on fixed buffers updated in place, for CUDA graphs; see generation.py).
With the FMM kinds (band, linear, fmm) every layer's state has a fixed size (the last
``bandwidth`` keys/values and the far-field sums), so generating token t costs the same for
every t. The ``softmax``
kind keeps a growing KV cache. Positions: learned positions stop at ``max_length`` (going
past raises ValueError); sinusoidal positions are defined everywhere, so such a model can
generate past ``max_length`` (quality beyond the trained length is another matter).
With ``far_normalize=False`` the far field is scaled 1/sqrt(max_length) while decoding, as in
a forward over a full ``max_length`` window (see fmmformer_pl/attention/layer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fmmformer_pl.attention.layer import AttentionState

from .blocks import block_stack, init_layer_norms, init_weights
from .config import DecoderConfig
from .embeddings import TokenPositionEmbedding


class _Cluster(nn.Module):
    """Logits of one slice of the output layer: ``h -> [proj] -> h W^T + b``.

    ``weight`` is None when the slice's rows are read from the tied embedding at call time.
    """

    def __init__(self, dim: int, size: int, proj_dim: int | None, tied: bool):
        super().__init__()
        in_dim = proj_dim if proj_dim is not None else dim
        self.proj = nn.Linear(dim, proj_dim, bias=False) if proj_dim is not None else None
        self.weight = None if tied else nn.Parameter(torch.randn(size, in_dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, h: torch.Tensor, tied_rows: torch.Tensor | None) -> torch.Tensor:
        if self.proj is not None:
            h = self.proj(h)
        weight = self.weight if self.weight is not None else tied_rows
        return F.linear(h, weight, self.bias)  # (..., size)


class AdaptiveLogSoftmax(nn.Module):
    """Adaptive softmax (Grave et al., 2017) over ids split by cutoffs c_1 < ... < c_n.

    The head scores the shortlist [0, c_1) and one logit per tail cluster i = [c_i, c_{i+1});
        log p(w) = log p_head(w)                              for w < c_1
        log p(w) = log p_head(cluster i) + log p_i(w)         for w in cluster i.
    div_value = 1: every cluster reads ``h`` directly, so with ``tied`` all the word rows are
    rows of the input embedding: the released WikiText-103 setup (Transformer-XL's
    ProjectedAdaptiveLogSoftmax with div_val 1, weights tied). div_value > 1: tail i first
    projects ``h`` to ``dim / div_value^i`` (Grave et al.; torch's AdaptiveLogSoftmaxWithLoss),
    so its rows cannot be embedding rows: only the head's shortlist is tied.
    """

    def __init__(
        self, dim: int, vocab_size: int, cutoffs: Sequence[int], div_value: float, tied: bool
    ):
        super().__init__()
        cutoffs = list(cutoffs)
        if (
            not cutoffs
            or any(not isinstance(c, int) for c in cutoffs)
            or cutoffs != sorted(set(cutoffs))
            or cutoffs[0] <= 0
            or cutoffs[-1] >= vocab_size
        ):
            raise ValueError(
                f"adaptive softmax cutoffs must be increasing ints in (0, {vocab_size}), "
                f"got {cutoffs}"
            )
        if div_value < 1:
            raise ValueError(f"adaptive softmax div_value must be >= 1, got {div_value}")
        self.vocab_size, self.tied = vocab_size, tied
        self.bounds = [0, *cutoffs, vocab_size]
        self.shortlist = _Cluster(dim, cutoffs[0], None, tied)
        self.cluster_logits = nn.Linear(dim, len(cutoffs))
        tails = []
        for i in range(1, len(self.bounds) - 1):
            size = self.bounds[i + 1] - self.bounds[i]
            proj = None if div_value == 1 else max(1, int(dim // div_value**i))
            tails.append(_Cluster(dim, size, proj, tied and proj is None))
        self.tails = nn.ModuleList(tails)

    def _rows(self, tied_weight, i):
        return None if tied_weight is None else tied_weight[self.bounds[i] : self.bounds[i + 1]]

    def _head_log_probs(self, h, tied_weight):
        head = torch.cat(
            [self.shortlist(h, self._rows(tied_weight, 0)), self.cluster_logits(h)], -1
        )
        return torch.log_softmax(head.float(), dim=-1)  # (..., c_1 + n_clusters)

    def log_prob(self, h: torch.Tensor, tied_weight: torch.Tensor | None) -> torch.Tensor:
        """Every word's log-probability: ``(..., dim) -> (..., vocab)`` (float32)."""
        head = self._head_log_probs(h, tied_weight)
        c1 = self.bounds[1]
        parts = [head[..., :c1]]
        for i, tail in enumerate(self.tails):
            tail_lp = torch.log_softmax(tail(h, self._rows(tied_weight, i + 1)).float(), dim=-1)
            parts.append(head[..., c1 + i : c1 + i + 1] + tail_lp)
        return torch.cat(parts, dim=-1)

    def nll(self, h: torch.Tensor, target: torch.Tensor, tied_weight: torch.Tensor | None):
        """``-log p(target)``: ``h (n, dim)``, ``target (n,)`` -> ``(n,)`` (float32).

        Each tail is evaluated only on the rows whose target falls in it.
        """
        head = self._head_log_probs(h, tied_weight)  # (n, c_1 + n_clusters)
        c1 = self.bounds[1]
        in_head = target < c1
        nll = -head.gather(1, torch.where(in_head, target, 0)[:, None])[:, 0] * in_head
        for i, tail in enumerate(self.tails):
            lo, hi = self.bounds[i + 1], self.bounds[i + 2]
            rows = ((target >= lo) & (target < hi)).nonzero()[:, 0]  # (m,)
            if rows.numel() == 0:
                continue
            tail_lp = torch.log_softmax(tail(h[rows], self._rows(tied_weight, i + 1)).float(), -1)
            word = tail_lp.gather(1, (target[rows] - lo)[:, None])[:, 0]
            nll = nll.index_put((rows,), -(head[rows, c1 + i] + word))
        return nll


@dataclass
class DecoderState:
    """Decoding state after ``position`` tokens: one ``AttentionState`` per block."""

    layers: list[AttentionState]
    position: int | torch.Tensor = 0  # a 0-dim long tensor in a static state

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer.tensors()]


class FMMDecoderLM(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, config: DecoderConfig):
        super().__init__()
        if config.depth < 1:
            raise ValueError(f"depth must be >= 1, got {config.depth}")
        self.config, self.vocab_size, self.max_length = config, vocab_size, max_length
        self.embed = TokenPositionEmbedding(
            vocab_size, config.dim, max_length, config.positions, config.dropout,
            scale=config.embedding_scale,
        )  # fmt: skip
        self.blocks = block_stack(config, causal=True)
        self.checkpointed = config.checkpointed_blocks()
        self.ln_final = nn.LayerNorm(config.dim) if config.final_norm else nn.Identity()
        self.final_drop = nn.Dropout(config.dropout if config.final_dropout else 0.0)
        self.adaptive = None
        self.lm_head = None
        if config.adaptive_softmax_cutoffs:
            self.adaptive = AdaptiveLogSoftmax(
                config.dim,
                vocab_size,
                config.adaptive_softmax_cutoffs,
                config.adaptive_softmax_div_value,
                tied=config.tie_embeddings,
            )
        elif not config.tie_embeddings:
            self.lm_head = nn.Linear(config.dim, vocab_size, bias=False)
        self.apply(init_weights)
        init_layer_norms(self, config.layer_norm_init_std)

    # ------------------------------------------------------------------ training / scoring

    def _tied_weight(self) -> torch.Tensor | None:
        return self.embed.tokens.weight if self.config.tie_embeddings else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        x = self.embed(input_ids)  # (batch, seq, dim)
        for i, block in enumerate(self.blocks):
            if i in self.checkpointed and torch.is_grad_enabled():
                # Keeps only x; the block runs again in backward (same dropout masks).
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.final_drop(self.ln_final(x))  # (batch, seq, dim)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., vocab)`` log-probabilities (float32)."""
        if self.adaptive is not None:
            return self.adaptive.log_prob(hidden, self._tied_weight())
        if self.lm_head is not None:
            return torch.log_softmax(self.lm_head(hidden).float(), dim=-1)
        return torch.log_softmax(F.linear(hidden, self._tied_weight()).float(), dim=-1)

    def nll(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood ``(batch, seq)`` (float32) of target_ids."""
        if target_ids.shape != input_ids.shape:
            raise ValueError(
                f"target_ids shape {tuple(target_ids.shape)} != input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        if target_ids.numel() and (target_ids.min() < 0 or target_ids.max() >= self.vocab_size):
            raise ValueError(f"target ids must lie in [0, {self.vocab_size})")
        hidden = self(input_ids)  # (batch, seq, dim)
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), target_ids.reshape(-1)
        return self._token_nll(flat_h, flat_t).view(target_ids.shape)

    def nll_at(
        self, input_ids: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``-log p(target)`` at the positions where ``mask (batch, seq)`` is True: ``(n,)``,
        in row-major order. The output layer runs on those positions only (a sliding-window
        evaluation scores one position of each window)."""
        if target_ids.shape != input_ids.shape or mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)}, target_ids {tuple(target_ids.shape)} and "
                f"mask {tuple(mask.shape)} must have one shape"
            )
        hidden = self(input_ids)[mask]  # (n, dim)
        return self._token_nll(hidden, target_ids[mask])

    def _token_nll(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # hidden (n, dim), target (n,) -> (n,) float32
        if target.numel() and (target.min() < 0 or target.max() >= self.vocab_size):
            raise ValueError(f"target ids must lie in [0, {self.vocab_size})")
        size = self.config.loss_chunk_size
        if size is None or hidden.shape[0] <= size:
            return self._chunk_nll(hidden, target)
        parts = []
        for h, t in zip(hidden.split(size), target.split(size), strict=True):
            if torch.is_grad_enabled():
                # Keeps only the chunk's (n,) result; its logits are recomputed in backward,
                # so the peak is one chunk's logits, not every token's.
                parts.append(checkpoint(self._chunk_nll, h, t, use_reentrant=False))
            else:
                parts.append(self._chunk_nll(h, t))
        return torch.cat(parts)

    def _chunk_nll(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # hidden (n, dim), target (n,) -> (n,) float32
        if self.adaptive is not None:
            return self.adaptive.nll(hidden, target, self._tied_weight())
        if self.lm_head is not None:
            logits = self.lm_head(hidden)
        else:
            logits = F.linear(hidden, self._tied_weight())  # (n, vocab)
        # = -log_softmax(logits)[target] without a second (n, vocab) float32 tensor
        return F.cross_entropy(logits.float(), target, reduction="none")

    # ------------------------------------------------------------------ decoding

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DecoderState:
        """The state before any token (see ``step``)."""
        return DecoderState(
            [b.attn.init_state(batch_size, device, dtype, self.max_length) for b in self.blocks]
        )

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, DecoderState]:
        """Run a prompt ``(batch, seq)``: log-probs of the next token ``(batch, vocab)``, state."""
        x = self.embed(input_ids)  # (batch, seq, dim)
        states = []
        for block in self.blocks:
            x, state = block.prefill(x, self.max_length)
            states.append(state)
        hidden = self.final_drop(self.ln_final(x[:, -1]))  # (batch, dim)
        return self.log_probs(hidden), DecoderState(states, input_ids.shape[1])

    def step(
        self, token_ids: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Feed one token per sequence ``(batch,)``: next-token log-probs ``(batch, vocab)``.

        Equals ``log_probs(forward(context))[:, -1]`` for the context fed so far. With
        ``far_normalize=False`` the far field's 1/sqrt(seq) scale uses seq = ``max_length``
        (the training window): steps equal the forward of ``max_length``-token inputs.
        """
        if token_ids.dim() != 1:
            raise ValueError(f"token_ids must be (batch,), got shape {tuple(token_ids.shape)}")
        x = self.embed(token_ids[:, None], start=state.position)  # (batch, 1, dim)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            x, layer_state = block.step(x, layer_state)
            layers.append(layer_state)
        hidden = self.final_drop(self.ln_final(x[:, 0]))  # (batch, dim)
        return self.log_probs(hidden), DecoderState(layers, state.position + 1)

    def static_state(self, state: DecoderState, capacity: int | None = None) -> DecoderState:
        """A copy of ``state`` for ``step_``: fixed buffers, the position on the device;
        ``capacity``: the tokens a softmax model's KV cache holds (FMMAttention.static_state)."""
        layers = [
            block.attn.static_state(layer, capacity)
            for block, layer in zip(self.blocks, state.layers, strict=True)
        ]
        device = self.embed.tokens.weight.device
        return DecoderState(layers, torch.tensor(state.position, dtype=torch.long, device=device))

    def step_(self, token_ids: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """``step`` on a ``static_state``, updated in place: ``(batch,)`` -> ``(batch, vocab)``.

        Nothing depends on a host value, so the call can be captured as a CUDA graph
        (``fmmformer_pl.models.generation.StaticDecoder``). The caller keeps the position
        within the learned positions and a softmax cache's capacity (not checked here).
        """
        x = self.embed(token_ids[:, None], start=state.position)  # (batch, 1, dim)
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            x = block.step_(x, layer_state)
        state.position.add_(1)
        return self.log_probs(self.final_drop(self.ln_final(x[:, 0])))  # (batch, vocab)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after a prompt ``(batch, T0)``: returns ``(batch, T0 + new)``.

        Each token is drawn from softmax(log p / temperature), restricted to the ``top_k`` most
        likely words when given (top_k=1 is greedy decoding). Runs in eval mode (no dropout).
        """
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
            raise ValueError(
                f"prompt_ids must be (batch, T0) with T0 >= 1, got shape {tuple(prompt_ids.shape)}"
            )
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        # Every token but the last generated one is fed at positions 0 .. T0 + new - 2.
        last_position = prompt_ids.shape[1] + max_new_tokens - 2
        if self.embed.learned is not None and last_position >= self.max_length:
            raise ValueError(
                f"a {prompt_ids.shape[1]}-token prompt plus {max_new_tokens} new tokens needs "
                f"position {last_position}, beyond the {self.max_length} learned positions "
                "(use sinusoidal or transformer_xl positions to generate past max_length)"
            )
        was_training = self.training
        self.eval()
        try:
            tokens = [prompt_ids]
            if max_new_tokens > 0:
                log_probs, state = self.prefill(prompt_ids)
                for i in range(max_new_tokens):
                    token = _sample(log_probs, temperature, top_k, generator)  # (batch,)
                    tokens.append(token[:, None])
                    if i + 1 < max_new_tokens:
                        log_probs, state = self.step(token, state)
            return torch.cat(tokens, dim=1)
        finally:
            self.train(was_training)


def _sample(log_probs, temperature, top_k, generator):
    """One token per row of ``log_probs (batch, vocab)``."""
    logits = log_probs / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (batch, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
