"""The released LM layout (configs/wikitext103) against a hand-written reference of the
released layer (lmtool-fwms ``MultiHeadAttnSparseLowrank`` with ``sparse_ratio 2.5``, two
kernels, band 20; ``PositionwiseFF``; post-LN), written here from a reading of that code."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fmmformer_pl.attention.blend import paper_scheme
from fmmformer_pl.attention.far_field import far_field
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM
from fmmformer_pl.models.blocks import block_stack
from fmmformer_pl.models.embeddings import TokenPositionEmbedding

HEADS, HEAD_DIM, BAND = 2, 16, 5  # head_dim 16: the scheme's far scale is 1/sqrt(16)
DIM = HEADS * HEAD_DIM


def _released_decoder(**attention):
    scheme = paper_scheme("wt103_fmm_2kernel_band20")
    for key, value in attention.items():
        setattr(scheme, key, value)
    return DecoderConfig(
        dim=DIM, depth=1, num_heads=HEADS, ffn_dim=24, dropout=0.0, activation="relu",
        positions="transformer_xl", norm="post", final_norm=False, final_dropout=True,
        embedding_scale=True, attention_bias=False, far_feature_normalize=True, far_eps=1e-5,
        layer_norm_init_std=0.02, attention=scheme,
    )  # fmt: skip


def _reference_layer(block, h):
    """The released DecoderLayer(attn_type 201, sparse_ratio 2.5, kernels elu, elu_flip) on
    h (seq, batch, dim), as that code computes it, with the block's weights."""
    attn = block.attn
    seq, batch, _ = h.shape
    w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)
    # qkv_net (bias-free) with its rows taken from our q/k/v projections.
    qkv = F.linear(h, w_qkv).view(seq, batch, 3, HEADS, HEAD_DIM).permute(0, 1, 3, 2, 4)
    q, k, v = qkv.unbind(3)  # (seq, batch, heads, head_dim)
    scale = 1 / math.sqrt(HEAD_DIM)
    # _forward_sparse: causal mask, then tril(diagonal=-diag_size) masked too.
    score = torch.einsum("ibnd,jbnd->ijbn", q, k) * scale
    causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    far_back = torch.tril(torch.ones(seq, seq, dtype=torch.bool), diagonal=-BAND)
    score = score.masked_fill((causal | far_back)[:, :, None, None], float("-inf"))
    sparse = torch.einsum("ijbn,jbnd->ibnd", score.softmax(dim=1), v).reshape(seq, batch, DIM)
    # _forward_lowrank: (batch, heads, seq, head_dim); per kernel phi, phi / sum phi, a causal
    # sum of (q.k_j) v_j over j <= i divided by (q . cumsum k + eps), times scale.
    qh, kh, vh = (x.permute(1, 2, 0, 3) for x in (q, k, v))
    outs = []
    for phi in (lambda x: F.elu(x) + 1.0, lambda x: F.elu(-x) + 1.0):
        q1, k1 = phi(qh), phi(kh)
        k1, q1 = k1 / k1.sum(-1, keepdim=True), q1 / q1.sum(-1, keepdim=True)
        denom = torch.einsum("bhld,bhld->bhl", k1.cumsum(dim=2), q1).unsqueeze(-1)
        weights = (q1 @ k1.transpose(-1, -2)).tril()  # (batch, heads, seq, seq), j <= i
        out = scale * (weights @ vh) / (denom + 1e-5)
        outs.append(out.transpose(1, 2).reshape(batch, seq, DIM).transpose(0, 1))
    lowrank = 0.5 * outs[0] + 0.5 * outs[1]
    sparse_ratio = attn.blend.near.weight.view(1, 1, DIM)  # (1, 1, heads * head_dim)
    attn_vec = sparse_ratio * sparse + lowrank
    h = block.ln_attn(h + F.linear(attn_vec, attn.out_proj.weight))  # post-LN
    # PositionwiseFF: Linear, ReLU, Dropout, Linear, Dropout; LN(inp + core).
    core = block.ffn.net[3](F.relu(block.ffn.net[0](h)))
    return block.ln_ffn(h + core)


def test_block_equals_the_released_layer():
    torch.manual_seed(0)
    config = _released_decoder(bandwidth=BAND)
    block = block_stack(config, causal=True)[0].eval()
    assert block.attn.q_proj.bias is None and block.attn.out_proj.bias is None
    with torch.no_grad():
        block.attn.blend.near.weight.uniform_(0.5, 1.5)  # the zeros init would hide the band
    h = torch.randn(23, 3, DIM)  # (seq, batch, dim), the released layout
    expected = _reference_layer(block, h)
    ours = block(h.transpose(0, 1)).transpose(0, 1)  # (batch, seq, dim) inside
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_embedding_is_transformer_xl_scaled_words_plus_positions_counted_down():
    torch.manual_seed(0)
    embed = TokenPositionEmbedding(50, DIM, 12, "transformer_xl", scale=True).eval()
    ids = torch.randint(0, 50, (2, 12))
    # PositionalEmbedding(pos_seq = arange(klen - 1, -1, -1)): cat([sin, cos]) of pos * inv_freq.
    inv_freq = 1 / (10000 ** (torch.arange(0.0, DIM, 2.0) / DIM))
    angles = torch.outer(torch.arange(11, -1, -1.0), inv_freq)
    pos = torch.cat([angles.sin(), angles.cos()], dim=-1)
    expected = embed.tokens(ids) * math.sqrt(DIM) + pos
    torch.testing.assert_close(embed(ids), expected)


def test_released_decoder_has_no_final_norm_and_layer_norms_start_near_one():
    torch.manual_seed(0)
    model = FMMDecoderLM(30, 16, _released_decoder())
    assert isinstance(model.ln_final, torch.nn.Identity)
    weights = model.blocks[0].ln_attn.weight
    assert not torch.equal(weights, torch.ones_like(weights))
    assert (weights - 1).abs().max() < 0.2


@pytest.mark.parametrize("causal", [True, False])
def test_feature_normalised_far_field_equals_dense_formula(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 70, 4) for _ in range(3))
    out = far_field(q, k, v, "elu", causal=causal, feature_normalize=True, eps=1e-2)
    pq, pk = F.elu(q) + 1, F.elu(k) + 1
    pq, pk = pq / pq.sum(-1, keepdim=True), pk / pk.sum(-1, keepdim=True)
    weights = pq @ pk.transpose(-1, -2)
    if causal:
        weights = weights.tril()
    expected = (weights @ v) / (weights.sum(-1, keepdim=True) + 1e-2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_released_block_on_cuda_equals_the_cpu_block():
    # On CUDA the released block (feature-normalised far field, eps) runs the fused Triton
    # kernels: forward and backward as the PyTorch reference on the CPU.
    torch.manual_seed(0)
    block = block_stack(_released_decoder(bandwidth=BAND), causal=True)[0].eval()
    with torch.no_grad():
        block.attn.blend.near.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 300, DIM, requires_grad=True)
    x_cuda = x.detach().cuda().requires_grad_()
    block_cuda = copy.deepcopy(block).cuda()
    out, out_cuda = block(x), block_cuda(x_cuda)
    torch.testing.assert_close(out_cuda.cpu(), out, atol=1e-3, rtol=1e-3)
    out.square().sum().backward()
    out_cuda.square().sum().backward()
    torch.testing.assert_close(x_cuda.grad.cpu(), x.grad, atol=5e-3, rtol=5e-3)
