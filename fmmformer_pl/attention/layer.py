"""FMMAttention: multi-head attention whose heads compute the fields chosen by a config.

    softmax: y = softmax(q k^T / sqrt(d)) v                  (the dense baseline, via SDPA)
    band:    y = D(q, k, v)                                   (near field only)
    linear:  y = w_group * sum_l w_l * L_l(q, k, v)           (far field only)
    fmm:     y = w_near * D + w_group * sum_l w_l * L_l      (see blend.py)

Shapes: x ``(batch, seq, dim)``; per head ``(batch, heads, seq, head_dim)``,
dim = heads * head_dim. key_padding_mask bool ``(batch, seq)``, True = padding.

Decoding (causal layers): ``init_state`` / ``prefill`` / ``step``. For the FMM kinds the state
has a fixed size whatever the context length: the last ``bandwidth`` keys and values (a
rolling window) and, per far-field kernel l, the running sums S_l = sum_j phi_l(k_j) v_j^T and
z_l = sum_j phi_l(k_j) in float32. The ``softmax`` kind keeps a growing KV cache instead.
``static_state`` / ``step_``: the same step on buffers of fixed shape and address, updated in
place (a ring for the window, a preallocated cache for softmax, the token count on the device),
so a decoding step can be captured once as a CUDA graph and replayed.

far_normalize=False: ``far_field`` divides by sqrt(seq) with seq the length of the whole input,
so a causal output depends on how long the input is, not only on the tokens before it.
Decoding therefore needs that length: ``far_length`` (the decoder passes its ``max_length``,
the length of its training windows); steps and prefill then compute exactly the forward of a
``far_length``-token input, whatever the number of tokens fed so far. Without it, a step
divides by sqrt(tokens so far): the forward of the context so far, for one layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import dispatch
from .blend import Blend
from .config import AttentionConfig
from .far_field import far_fields
from .feature_maps import get_feature_map, kernel_codes
from .inputs import check_inputs
from .near_field import near_field
from .ops.plan import DEFAULT_PLAN, KernelPlan

_KINDS = ("softmax", "linear", "band", "fmm")


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulation precision: at least float32 (bf16/fp16 sums need the range)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class AttentionState:
    """Decoding state of one causal attention layer after ``seen`` tokens.

    keys, values: ``(batch, heads, W, head_dim)``, the last W = bandwidth keys/values, oldest
        first (slots before the first token are zeros and masked); for ``softmax`` every key
        so far ``(batch, heads, seen, head_dim)``; None for ``linear``.
    kv: ``(r, batch, heads, head_dim, head_dim)``, S_l = sum_j phi_l(k_j) v_j^T.
    k_sum: ``(r, batch, heads, head_dim)``, z_l = sum_j phi_l(k_j). Both None when the kind
        has no far field; both float32 (float64 for a float64 model) whatever the model dtype.
    """

    keys: torch.Tensor | None
    values: torch.Tensor | None
    kv: torch.Tensor | None
    k_sum: torch.Tensor | None
    seen: int | torch.Tensor = 0  # a 0-dim long tensor in a static state (``static_state``)
    far_length: int | None = None  # see the module docstring (far_normalize=False only)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.keys, self.values, self.kv, self.k_sum) if t is not None]


class FMMAttention(nn.Module):
    """Multi-head attention computing the fields of ``config`` (module docstring).

    bias: the q/k/v and output projections have biases (the released LM code has none).
    far_feature_normalize, far_eps: the released LM code's far field, phi(x) / sum_d phi(x)_d
        and a denominator + eps (``far_field``); the GPU kernels compute both.
    kernel_plan: the GPU kernels' tuning (``ops/plan.py``); the default suits every model.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        config: AttentionConfig,
        causal: bool,
        bias: bool = True,
        far_feature_normalize: bool = False,
        far_eps: float = 0.0,
        kernel_plan: KernelPlan = DEFAULT_PLAN,
    ):
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if config.kind not in _KINDS:
            raise ValueError(f"attention kind must be one of {_KINDS}, got {config.kind!r}")
        if config.kind in ("band", "fmm") and config.bandwidth < 1:
            raise ValueError(f"bandwidth must be >= 1, got {config.bandwidth}")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {config.dropout}")
        self.config, self.causal = config, causal
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        if far_eps < 0:
            raise ValueError(f"far_eps must be >= 0, got {far_eps}")
        self.far_feature_normalize, self.far_eps = far_feature_normalize, far_eps
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.has_near = config.kind in ("band", "fmm")
        self.has_far = config.kind in ("linear", "fmm")
        self.blend = Blend(config, num_heads, self.head_dim) if self.has_far else None
        # Resolved once so an unknown feature-map name fails at construction.
        self.phis = [get_feature_map(n) for n in config.feature_maps] if self.has_far else []
        self.kernel_plan = kernel_plan
        dispatch.prepare(kernel_plan)

    # ------------------------------------------------------------------ full sequence

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape  # (batch, seq, dim)
        q, k, v = self._heads(x)  # each (batch, heads, seq, head_dim)
        y = self._attend(q, k, v, key_padding_mask)  # (batch, heads, seq, head_dim)
        return self.out_proj(y.transpose(1, 2).reshape(batch, seq, self.dim))

    def _heads(self, x: torch.Tensor):
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (batch, seq, {self.dim}), got {tuple(x.shape)}")
        batch, seq, _ = x.shape
        shape = (batch, seq, self.num_heads, self.head_dim)
        q, k, v = (
            p(x).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        return q, k, v  # each (batch, heads, seq, head_dim)

    def _attend(self, q, k, v, key_padding_mask, far_length=None):
        cfg = self.config
        dropout_p = cfg.dropout if self.training else 0.0
        if cfg.kind == "softmax":
            return self._softmax(q, k, v, key_padding_mask, dropout_p)
        route = dispatch.route(cfg.backend, q, self._fusable(), self.kernel_plan)
        if route == "fused":
            fused = self._fused(q, k, v, key_padding_mask, far_length, dropout_p)
            if fused is not None:
                return fused
        # Field by field: on their kernels where they cover the case ("fields"; also where
        # the fused node declined it), else on the PyTorch references.
        backend = "reference" if route == "reference" else cfg.backend
        plan = self.kernel_plan
        near = None
        if self.has_near:
            near = near_field(
                q, k, v, cfg.bandwidth, causal=self.causal, key_padding_mask=key_padding_mask,
                dropout_p=dropout_p, backend=backend, plan=plan,
            )  # fmt: skip
            if not self.has_far:
                return near
        kw = dict(causal=self.causal, normalize=cfg.far_normalize, backend=backend,
                  feature_normalize=self.far_feature_normalize, eps=self.far_eps, plan=plan)  # fmt: skip
        far = far_fields(q, k, v, cfg.feature_maps, key_padding_mask=key_padding_mask, **kw)
        if far_length is not None and not cfg.far_normalize:
            # far_field divided by sqrt(seq); the unnormalised field is linear in that scale.
            far = [f * math.sqrt(q.shape[-2] / far_length) for f in far]
        return self.blend(near, far, plan=plan)

    def _fusable(self) -> bool:
        """Whether the fused node computes this layer's fields: a far field and feature maps
        the kernels compute."""
        if not self.has_far:
            return False
        return kernel_codes(self.config.feature_maps) is not None

    def _fused(self, q, k, v, key_padding_mask, far_length, dropout_p):
        """Near + far + blend as one GPU autograd node (``dispatch.fused``), or None where
        the kernels do not cover the case."""
        cfg = self.config
        check_inputs(q, k, v, key_padding_mask)  # as near_field / far_fields would
        far_scale = 1.0
        if far_length is not None and not cfg.far_normalize:
            far_scale = math.sqrt(q.shape[-2] / far_length)  # see _attend's field branch
        return dispatch.fused(
            q, k, v, self.blend.coefficients(far_scale),
            cfg.bandwidth if self.has_near else None, cfg.feature_maps, self.causal,
            cfg.far_normalize, key_padding_mask, dropout_p, cfg.backend, self.kernel_plan,
            self.far_feature_normalize, self.far_eps,
        )  # fmt: skip

    def _softmax(self, q, k, v, key_padding_mask, dropout_p):
        """Dense attention (the baseline: quadratic by design). Empty rows give zeros."""
        if key_padding_mask is None:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=self.causal
            )
        seq = q.shape[-2]
        visible = ~key_padding_mask[:, None, None, :]  # (batch, 1, 1, seq)
        if self.causal:
            tril = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
            visible = visible & tril  # (batch, 1, seq, seq)
        has_key = visible.any(dim=-1, keepdim=True)  # (batch, 1, seq or 1, 1)
        # A row with no visible key would softmax over nothing (NaN): let it see every key,
        # then zero its output.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible | ~has_key, dropout_p=dropout_p
        )
        return out * has_key.to(out.dtype)

    # ------------------------------------------------------------------ decoding

    def init_state(
        self,
        batch_size: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        far_length: int | None = None,
    ) -> AttentionState:
        """The state before any token: zeros of a fixed size (softmax: an empty cache)."""
        if not self.causal:
            raise ValueError("decoding needs a causal attention layer (causal=True)")
        if far_length is not None and far_length < 1:
            raise ValueError(f"far_length must be >= 1, got {far_length}")
        device = device if device is not None else self.q_proj.weight.device
        dtype = dtype if dtype is not None else self.q_proj.weight.dtype
        heads, hd = self.num_heads, self.head_dim
        keys = values = kv = k_sum = None
        if self.config.kind == "softmax":
            keys = torch.zeros(batch_size, heads, 0, hd, device=device, dtype=dtype)
            values = keys.clone()
        if self.has_near:
            keys = torch.zeros(
                batch_size, heads, self.config.bandwidth, hd, device=device, dtype=dtype
            )
            values = keys.clone()
        if self.has_far:
            r = len(self.phis)
            acc = torch.promote_types(dtype, torch.float32)
            kv = torch.zeros(r, batch_size, heads, hd, hd, device=device, dtype=acc)
            k_sum = torch.zeros(r, batch_size, heads, hd, device=device, dtype=acc)
        return AttentionState(keys, values, kv, k_sum, seen=0, far_length=far_length)

    def prefill(
        self, x: torch.Tensor, far_length: int | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        """``forward(x)`` of a whole context (no padding) and the state after it."""
        state = self.init_state(x.shape[0], x.device, x.dtype, far_length)
        batch, seq, _ = x.shape  # (batch, seq, dim)
        q, k, v = self._heads(x)  # (batch, heads, seq, head_dim)
        y = self._attend(q, k, v, None, far_length)
        if self.config.kind == "softmax":
            state.keys, state.values = k, v
        if self.has_near:
            width = self.config.bandwidth
            # Left-pad with zeros so a short context fills the newest slots.
            state.keys = F.pad(k, (0, 0, max(width - seq, 0), 0))[:, :, -width:]
            state.values = F.pad(v, (0, 0, max(width - seq, 0), 0))[:, :, -width:]
        if self.has_far:
            phi_k = self._features(k)  # (r, b, h, seq, hd)
            state.kv = phi_k.transpose(-1, -2) @ _acc(v)  # (r, b, h, hd, hd)
            state.k_sum = phi_k.sum(dim=-2)  # (r, b, h, hd)
        state.seen = seq
        return self.out_proj(y.transpose(1, 2).reshape(batch, seq, self.dim)), state

    def step(self, x_t: torch.Tensor, state: AttentionState) -> tuple[torch.Tensor, AttentionState]:
        """One token: ``x_t (batch, 1, dim) -> (y_t (batch, 1, dim), new state)``.

        Equals position ``state.seen`` of ``forward`` over the context so far (with
        far_normalize=False: of a ``state.far_length``-token input, see the module docstring).
        Inference only (no dropout); the input state is not modified.
        """
        if not self.causal:
            raise ValueError("decoding needs a causal attention layer (causal=True)")
        if x_t.dim() != 3 or x_t.shape[1] != 1:
            raise ValueError(f"step expects x_t of shape (batch, 1, dim), got {tuple(x_t.shape)}")
        batch = x_t.shape[0]
        q, k, v = self._heads(x_t)  # (batch, heads, 1, head_dim)
        seen = state.seen + 1
        new = AttentionState(None, None, None, None, seen, state.far_length)
        cfg = self.config
        if cfg.kind == "softmax":
            new.keys = torch.cat([state.keys, k], dim=2)  # (batch, heads, seen, head_dim)
            new.values = torch.cat([state.values, v], dim=2)
            y = F.scaled_dot_product_attention(q, new.keys, new.values)
        else:
            near = None
            if self.has_near:
                new.keys = torch.cat([state.keys[:, :, 1:], k], dim=2)  # (batch, heads, W, hd)
                new.values = torch.cat([state.values[:, :, 1:], v], dim=2)
                width = self.config.bandwidth
                # The first W - seen slots hold no token yet.
                filled = torch.arange(width, device=q.device) >= width - seen  # (W,)
                near = self._near_step(q, new.keys, new.values, filled)
            if not self.has_far:
                y = near
            else:
                length = state.far_length if state.far_length is not None else seen
                far, new.kv, new.k_sum = self._far_step(q, k, v, state.kv, state.k_sum, length)
                y = self.blend(near, far)
        return self.out_proj(y.transpose(1, 2).reshape(batch, 1, self.dim)), new

    def _near_step(self, q, keys, values, filled):
        """Softmax of q over the window slots where ``filled (W,)`` is True (a slot holds a
        token; the order of the slots does not matter)."""
        qf, kf, vf = _acc(q), _acc(keys), _acc(values)
        scores = (qf / math.sqrt(self.head_dim)) @ kf.transpose(-1, -2)  # (batch, heads, 1, W)
        scores = scores.masked_fill(~filled, float("-inf"))
        return (torch.softmax(scores, dim=-1) @ vf).to(q.dtype)  # (batch, heads, 1, hd)

    # ------------------------------------------------------------------ static decoding

    def static_state(self, state: AttentionState, capacity: int | None = None) -> AttentionState:
        """A copy of ``state`` laid out for ``step_``, whose buffers never change shape or
        address (so a step can be captured as a CUDA graph):

        - ``seen`` is a 0-dim long tensor on the state's device;
        - band/fmm: the window is a ring, token j in slot j % W (``step`` keeps it oldest
          first);
        - softmax: a cache of ``capacity`` slots, token j in slot j (the first ``seen`` filled).
        """
        if isinstance(state.seen, torch.Tensor):
            raise ValueError("the state is static already")
        seen = state.seen
        keys = values = None
        if self.config.kind == "softmax":
            if capacity is None or capacity < max(seen, 1):
                raise ValueError(
                    f"a softmax layer's static cache needs a capacity >= {max(seen, 1)} tokens, "
                    f"got {capacity}"
                )
            batch, heads, _, hd = state.keys.shape
            keys = state.keys.new_zeros(batch, heads, capacity, hd)
            values = keys.clone()
            keys[:, :, :seen], values[:, :, :seen] = state.keys, state.values
        elif self.has_near:
            # Oldest first, slot i holds token seen - W + i: move it to (seen - W + i) % W.
            shift = seen % self.config.bandwidth
            keys = state.keys.roll(shift, dims=2).contiguous()
            values = state.values.roll(shift, dims=2).contiguous()
        kv = state.kv.clone() if state.kv is not None else None
        k_sum = state.k_sum.clone() if state.k_sum is not None else None
        device = next(t.device for t in state.tensors())
        seen_t = torch.tensor(seen, dtype=torch.long, device=device)
        return AttentionState(keys, values, kv, k_sum, seen_t, state.far_length)

    def step_(self, x_t: torch.Tensor, state: AttentionState) -> torch.Tensor:
        """``step`` on a ``static_state``, updated in place: ``x_t (batch, 1, dim) -> y_t``.

        Every shape is fixed and ``seen`` stays on the device (no host synchronisation), so
        the call can be captured in a CUDA graph and replayed. The caller keeps ``seen`` below
        a softmax cache's capacity (an index past it is not checked on the device).
        """
        if not isinstance(state.seen, torch.Tensor):
            raise ValueError("step_ needs a static state (see static_state)")
        batch = x_t.shape[0]
        q, k, v = self._heads(x_t)  # (batch, heads, 1, head_dim)
        seen = state.seen  # tokens before this one, 0-dim long
        if self.config.kind == "softmax":
            state.keys.index_copy_(2, seen.view(1), k)
            state.values.index_copy_(2, seen.view(1), v)
            slots = torch.arange(state.keys.shape[2], device=q.device)
            visible = (slots <= seen)[None, None, None, :]  # (1, 1, 1, capacity)
            y = F.scaled_dot_product_attention(q, state.keys, state.values, attn_mask=visible)
        else:
            near = None
            if self.has_near:
                width = self.config.bandwidth
                slot = (seen % width).view(1)
                state.keys.index_copy_(2, slot, k)
                state.values.index_copy_(2, slot, v)
                filled = torch.arange(width, device=q.device) <= seen  # (W,)
                near = self._near_step(q, state.keys, state.values, filled)
            if not self.has_far:
                y = near
            else:
                length = state.far_length if state.far_length is not None else seen + 1
                far, kv, k_sum = self._far_step(q, k, v, state.kv, state.k_sum, length)
                state.kv.copy_(kv)
                state.k_sum.copy_(k_sum)
                y = self.blend(near, far)
        state.seen.add_(1)
        return self.out_proj(y.transpose(1, 2).reshape(batch, 1, self.dim))

    def _far_step(self, q, k, v, kv, k_sum, length):
        """Add phi_l(k) v^T to S_l and phi_l(k) to z_l; read them with phi_l(q)."""
        phi_q = self._features(q)  # (r, batch, heads, 1, hd)
        phi_k = self._features(k)  # (r, batch, heads, 1, hd)
        kv = kv + phi_k.transpose(-1, -2) @ _acc(v)  # (r, batch, heads, hd, hd)
        k_sum = k_sum + phi_k[..., 0, :]  # (r, batch, heads, hd)
        numer = phi_q @ kv  # (r, batch, heads, 1, hd)
        if self.config.far_normalize:
            denom = phi_q @ k_sum.unsqueeze(-1) + self.far_eps  # (r, batch, heads, 1, 1)
            positive = denom > 0
            out = torch.where(positive, numer / torch.where(positive, denom, 1.0), 0.0)
        elif isinstance(length, torch.Tensor):  # a static state's token count
            out = numer * length.to(numer.dtype).rsqrt()
        else:
            out = numer / math.sqrt(length)  # far_field's 1/sqrt(seq), seq = length
        return list(out.to(q.dtype).unbind(0)), kv, k_sum

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """phi_l(x) for every kernel l, ``(..., hd) -> (r, ..., hd)`` in accumulation precision;
        divided by their sum over features with ``far_feature_normalize``."""
        phi = torch.stack([phi(_acc(x)) for phi in self.phis])
        if self.far_feature_normalize:
            phi = phi / phi.sum(dim=-1, keepdim=True)
        return phi
