"""The WikiText-103 decoders the long-context benchmarks run (``long_context.py``,
``generate_throughput.py``): the paper's model and a wider one, with the attention of the
configs in configs/wikitext103 (the same tables scripts/make_configs.py writes them from).

    paper  16 layers, dim 128, 8 heads x 16, FFN 2,048 (~44M parameters, 34M of them the
           tied 267,735 x 128 embedding)
    wide   16 layers, dim 256, 8 heads x 32, FFN 4,096 (~106M parameters)
    tiny   2 layers, dim 16, 2 heads x 8, FFN 32 (CPU tests)

Every model has the released layout (post-LN, Transformer-XL positions, adaptive softmax with
cutoffs 20k/40k/200k, tied; scripts/make_configs.py's WT103_DECODER). Kinds: ``softmax``
(SDPA: FlashAttention on the GPU), ``linear``, ``fmm2_band20`` as in their configs, and
``fmm2_band20_fused``: fmm2_band20 without the released feature normalisation of the far
field (phi(x) / sum phi(x), denominator + 1e-5). Both run the fused GPU kernels (which
compute the normalisation too), so the two differ by what the normalisation costs.

Synthetic token ids follow Zipf's law, p(id) ~ 1 / (id + 1): ids are ranked by frequency as
in the real vocabulary, so the adaptive softmax's clusters see real-like traffic (about 80% of
tokens in the 20k shortlist; uniform ids would put 60% in the 160k-word cluster).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from make_configs import WT103_DECODER, WT103_VARIANTS  # noqa: E402

from fmmformer_pl.models import DecoderConfig, FMMDecoderLM  # noqa: E402

VOCAB = 267_735
MODELS = {
    "paper": dict(dim=128, depth=16, num_heads=8, ffn_dim=2048),
    "wide": dict(dim=256, depth=16, num_heads=8, ffn_dim=4096),
    "tiny": dict(dim=16, depth=2, num_heads=2, ffn_dim=32),
}
KINDS = ("softmax", "linear", "fmm2_band20", "fmm2_band20_fused")


def decoder_config(model: str, kind: str, cutoffs=None, **memory) -> DecoderConfig:
    """The config of ``model`` with attention ``kind``; ``memory``: checkpoint_blocks,
    loss_chunk_size."""
    layout = dict(WT103_DECODER, **MODELS[model])
    if cutoffs is not None:
        layout["adaptive_softmax_cutoffs"] = list(cutoffs)
    if kind == "fmm2_band20_fused":
        layout.update(far_feature_normalize=False, far_eps=0.0)
        attention = WT103_VARIANTS["fmm2_band20"]()
    else:
        attention = WT103_VARIANTS[kind]()
    return DecoderConfig(**layout, attention=attention, **memory)


def build(model: str, kind: str, max_length: int, vocab: int = VOCAB, cutoffs=None, **memory):
    return FMMDecoderLM(vocab, max_length, decoder_config(model, kind, cutoffs, **memory))


def zipf_weights(vocab: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Unnormalised p(id) ~ 1 / (id + 1), ``(vocab,)``."""
    return 1.0 / torch.arange(1, vocab + 1, device=device, dtype=dtype)


def zipf_entropy(vocab: int) -> float:
    """The entropy (nats) of ``zipf_ids``'s distribution: the loss of a model that predicts
    each token's frequency and nothing from its context."""
    p = zipf_weights(vocab, dtype=torch.float64)
    p /= p.sum()
    return float(-(p * p.log()).sum())


def zipf_ids(shape, vocab: int, device, generator: torch.Generator) -> torch.Tensor:
    """Token ids ``shape`` with p(id) ~ 1 / (id + 1) (module docstring)."""
    weights = zipf_weights(vocab, device)
    n = 1
    for s in shape:
        n *= s
    ids = torch.multinomial(weights, n, replacement=True, generator=generator)
    return ids.view(*shape)


def describe(config: DecoderConfig) -> dict:
    """A few fields for a table row."""
    keep = ("dim", "depth", "num_heads", "ffn_dim", "checkpoint_blocks", "loss_chunk_size")
    return {k: v for k, v in dataclasses.asdict(config).items() if k in keep}


# ------------------------------------------------------------------ measuring and writing
def sync(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU), before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(row: dict, device: torch.device) -> Iterator[None]:
    """One point of a sweep: an out-of-memory error or any other failure becomes the row's
    ``note`` (and the sweep goes on to the next point); memory is released afterwards."""
    try:
        yield
    except torch.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as err:  # noqa: BLE001 - reported in the table (e.g. a compile failure)
        row["note"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        traceback.print_exc()
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def write_csv(rows: Sequence[dict], fields: Sequence[str], path: Path) -> None:
    """``rows`` as CSV with the columns ``fields`` (a missing value is empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields})
