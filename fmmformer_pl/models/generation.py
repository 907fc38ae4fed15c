"""Sampling from a decoder LM with a static decoding state, one CUDA graph per token.

    prompt --prefill (the fused, linear-time forward)--> state --step_--> log p(. | context)

``StaticDecoder`` allocates the decoding state once (``FMMDecoderLM.static_state``: fixed
buffers, the position on the device) and, on CUDA, captures one decoding step as a
``torch.cuda.CUDAGraph``: each new token then costs one graph replay instead of hundreds of
Python-launched kernels. On the CPU the same ``step_`` runs eagerly. ``compile=True``
compiles the step first (``torch.compile``, one graph, no break): the compiler fuses its
small element-wise operations, so the graph (or the eager step) runs fewer kernels.

Sampling: log p / temperature, then the ``top_k`` most likely words, then the smallest set
of words whose probability adds up to ``top_p`` (nucleus sampling); temperature 0 is greedy.

Shapes: prompt_ids ``(batch, T0)`` long; token_ids ``(batch,)``; log_probs ``(batch, vocab)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .decoder import DecoderState, FMMDecoderLM


def sample(
    log_probs: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``log_probs (batch, vocab)`` (module docstring): ``(batch,)``."""
    if temperature == 0:
        return log_probs.argmax(dim=-1)
    logits = log_probs.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (batch, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a word when the words before it already hold top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError for settings ``sample`` cannot use."""
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


class StaticDecoder:
    """Prefill a prompt, then decode token by token on fixed buffers (module docstring).

    Args:
        model: the decoder (put in eval mode; its dtype is the state's).
        batch_size: sequences decoded together.
        capacity: the most tokens (prompt + generated) a sequence may reach; sizes a softmax
            model's KV cache, and bounds the position for learned positions.
        cuda_graph: capture the step as a CUDA graph (default: when the model is on CUDA).
        compile: run the step through ``torch.compile`` (fullgraph, static shapes); the first
            step then takes the compile's time. A string names the compiler backend.
    """

    def __init__(
        self,
        model: FMMDecoderLM,
        batch_size: int,
        capacity: int,
        cuda_graph: bool | None = None,
        compile: bool | str = False,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if model.embed.learned is not None and capacity > model.max_length:
            raise ValueError(
                f"{capacity} tokens need positions beyond the model's {model.max_length} "
                "learned positions"
            )
        self.model, self.batch_size, self.capacity = model.eval(), batch_size, capacity
        self.device = model.embed.tokens.weight.device
        self._step = model.step_
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            self._step = torch.compile(model.step_, backend=backend, fullgraph=True, dynamic=False)
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        with torch.no_grad():
            self.state = model.static_state(model.init_state(batch_size, self.device), capacity)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.position = 0  # tokens fed so far (host copy of state.position)
        self.graph = None
        if cuda_graph:
            self._capture()

    def _capture(self) -> None:
        # Warm-up on a side stream (cuBLAS handles, allocator), as torch.cuda.graphs advises;
        # the steps write garbage into the state, which ``prefill`` overwrites.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self._step(self.tokens, self.state)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.log_probs = self._step(self.tokens, self.state)

    @torch.no_grad()
    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Run a prompt ``(batch, T0)`` through the model's forward path: the next token's
        log-probabilities ``(batch, vocab)``; the state then holds the prompt."""
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
            raise ValueError(f"prompt_ids must be (batch, T0), got {tuple(prompt_ids.shape)}")
        log_probs, state = self.model.prefill(prompt_ids.to(self.device))
        self.load(state)
        return log_probs

    @torch.no_grad()
    def load(self, state: DecoderState) -> None:
        """Copy a ``prefill`` state into the static buffers; a batch-1 state fills every row."""
        if state.position > self.capacity:
            raise ValueError(f"a {state.position}-token state exceeds capacity {self.capacity}")
        blocks = self.model.blocks
        for block, mine, layer in zip(blocks, self.state.layers, state.layers, strict=True):
            # One layer at a time: a long softmax cache is held twice only for one layer.
            theirs = block.attn.static_state(layer, self.capacity)
            for dst, src in zip(mine.tensors(), theirs.tensors(), strict=True):
                dst.copy_(src)  # broadcasts a batch of 1
            mine.seen.copy_(theirs.seen)
            del theirs
        self.state.position.fill_(state.position)
        self.position = state.position

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``token_ids (batch,)``: log-probabilities of the next ones ``(batch, vocab)``.

        The result is a static buffer when a graph runs: the next step overwrites it.
        """
        if self.position >= self.capacity:
            raise ValueError(f"the context is full ({self.capacity} tokens, see capacity)")
        self.tokens.copy_(token_ids)
        self.position += 1
        if self.graph is not None:
            self.graph.replay()
            return self.log_probs
        return self._step(self.tokens, self.state)

    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``max_new_tokens`` sampled tokens ``(batch,)`` one at a time after a prompt."""
        check_sampling(temperature, top_k, top_p)
        needed = prompt_ids.shape[1] + max_new_tokens - 1
        if needed > self.capacity:
            raise ValueError(
                f"a {prompt_ids.shape[1]}-token prompt plus {max_new_tokens} new tokens needs "
                f"{needed} positions, above the capacity {self.capacity}"
            )
        if max_new_tokens < 1:
            return
        log_probs = self.prefill(prompt_ids)
        for i in range(max_new_tokens):
            token = sample(log_probs, temperature, top_k, top_p, generator)
            yield token
            if i + 1 < max_new_tokens:
                log_probs = self.step(token)
