"""The ListOps paper model end to end against the released LRA model, written out as plain
tensor algebra from ``model.py``, ``attention.py``, ``attention_sparselowrank.py`` and
``model_wrapper.py`` of the authors' release (Nystromformer's LRA pipeline):

    X = tok[ids] + pos[0:n]                                         embeddings
    per block: X = X + Wo(attn(LN1(X)));  X = X + W2(gelu(W1(LN2(X))))   pre-LN
    attn, per head (Q, K, V = Wq x, Wk x, Wv x split into heads):
        D  = softmax(Q K^T / sqrt(d) - 1e6 (1 - mask_k), keys with |i - j| < 5) V
        Lk = phi_k(Q) / n^(1/4) @ ((phi_k(K) mask / n^(1/4))^T (V mask)),   n = padded length
        code 13.5: w1 D + w2 (a L1 + b L2)    w1, w2 per head; a, b scalars
    h = LN(X) * mask;  pooled = h.mean over all n positions;  logits = M2(relu(M1(pooled)))

Our model, built from ``configs/lra/listops/fmm2_band5.yaml``, with its own weights copied
into this formula, must give the same logits (eval mode: no dropout) on padded batches of
odd length, with blend weights moved off their initial values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.models import EncoderConfig, SequenceClassifier

ROOT = Path(__file__).resolve().parents[2]


def _paper_model(max_length: int) -> SequenceClassifier:
    config = yaml.safe_load((ROOT / "configs/lra/listops/fmm2_band5.yaml").read_text())
    encoder = dict(config["model"]["init_args"]["encoder"])
    attention = dict(encoder.pop("attention"))
    for key in ("near_weight", "far_group_weight"):
        attention[key] = BlendWeight(**attention[key])
    attention["far_weights"] = [BlendWeight(**w) for w in attention["far_weights"]]
    encoder["attention"] = AttentionConfig(**attention)
    return SequenceClassifier(20, 10, max_length, EncoderConfig(**encoder))


def _released_attention(x, attn, mask, band: int, heads: int):
    """``Attention`` + ``SparseLowrankAttention`` (code 13.5, kernels elu, elu_flip)."""
    b, n, dim = x.shape
    d = dim // heads

    def split(t):  # (b, n, dim) -> (b, heads, n, d)
        return t.reshape(b, n, heads, d).transpose(1, 2)

    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    m = mask.to(x.dtype)  # (b, n): 1 = token, 0 = padding
    dot = q @ k.transpose(-2, -1) / math.sqrt(d) - 1e6 * (1 - m[:, None, None, :])
    i = torch.arange(n)
    dot = dot.masked_fill((i[:, None] - i[None, :]).abs() >= band, float("-inf"))
    near = torch.softmax(dot, dim=-1) @ v
    vm = v * m[:, None, :, None]
    fourth_root = math.sqrt(math.sqrt(n))

    def far(phi):
        q1 = phi(q) / fourth_root
        k1 = phi(k) * m[:, None, :, None] / fourth_root
        return q1 @ (k1.transpose(-2, -1) @ vm)

    l1 = far(lambda t: F.elu(t) + 1.0)
    l2 = far(lambda t: F.elu(-t) + 1.0)
    blend = attn.blend
    w1 = blend.near.weight.reshape(1, heads, 1, 1)  # per head
    w2 = blend.far_group.weight.reshape(1, heads, 1, 1)  # per head
    a, c = (w.weight.reshape(1) for w in blend.far)  # scalars
    y = w1 * near + w2 * (a * l1 + c * l2)  # (b, heads, n, d)
    return attn.out_proj(y.transpose(1, 2).reshape(b, n, dim))


def _released_logits(model: SequenceClassifier, ids, mask, band=5, heads=2):
    enc = model.encoder
    n = ids.shape[1]
    x = enc.embed.token_embedding(ids) + enc.embed.position_embedding(0, n, ids.device)
    for block in enc.blocks:
        x = x + _released_attention(block.ln_attn(x), block.attn, mask, band, heads)
        x = x + block.ffn(block.ln_ffn(x))
    h = enc.ln_final(x) * mask[:, :, None].to(x.dtype)
    return model.head(h.mean(dim=1))


@pytest.mark.parametrize("n", [37, 64])
def test_paper_listops_model_is_the_released_model(n):
    torch.manual_seed(0)
    model = _paper_model(max_length=64).double().eval()
    with torch.no_grad():  # blend weights off their initial 1 / 0 so every term counts
        for p in model.parameters():
            if p.numel() <= 2:
                p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(0, 20, (3, n))
    padding = torch.zeros(3, n, dtype=torch.bool)
    padding[1, n - 9 :] = True
    padding[2, 5:] = True
    ours = model(ids, padding)
    released = _released_logits(model, ids, ~padding)
    torch.testing.assert_close(ours, released, rtol=1e-9, atol=1e-9)
