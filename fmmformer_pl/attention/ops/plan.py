"""The kernels' tuning as one frozen value: ``KernelPlan`` (plain Python, imports no triton).

Every op takes a plan (``DEFAULT_PLAN`` unless told otherwise) and passes it down; nothing in
``ops/`` reads a tunable module global. A test or a sweep builds the variant it wants,

    plan = replace(DEFAULT_PLAN, far=replace(DEFAULT_PLAN.far, single_segment_chunks=2))

and hands it to the op (or to ``FMMAttention(..., kernel_plan=plan)``). The defaults are the
settings tuned on an H200 (bf16, head_dim 64); ``docs/kernels.md`` says what each part steers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property


@dataclass(frozen=True)
class Launch:
    """Triton launch options of one kernel."""

    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int | None = None

    def options(self) -> dict:
        """The keyword arguments of a launch (built once: a step launches a dozen kernels)."""
        return self._options

    @cached_property
    def _options(self) -> dict:
        out = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None:
            out["maxnreg"] = self.maxnreg
        return out


@dataclass(frozen=True)
class ByMode:
    """One setting per attention mode; ``by_mode(causal)`` picks it."""

    causal: object
    bidirectional: object

    def __call__(self, causal: bool):
        return self.causal if causal else self.bidirectional


@dataclass(frozen=True)
class NearPlan:
    """Near field (banded softmax) tiles and launches.

    A program owns ``block_m`` queries and visits ``block_n``-key tiles across its band.
    ``narrow_tiles``: (widest band, tile) pairs, the first that fits the bandwidth wins: a
    narrow band reads 16- or 32-key tiles (and the dk/dv kernel 16 or 32 queries) instead of
    64. Empty: wide tiles only.
    """

    block_m: int = 64
    block_n: int = 64
    narrow_tiles: tuple[tuple[int, int], ...] = ((16, 16), (32, 32))
    fwd: Launch = Launch()
    dq: Launch = Launch()
    dkv: Launch = Launch()

    def tiles(self, bandwidth: int) -> tuple[dict, dict]:
        """Tile sizes ``dict(BM=queries, BN=keys)`` of the query-block kernels (forward, dq)
        and of the key-block kernel (dk, dv)."""
        for widest, tile in self.narrow_tiles:
            if bandwidth <= widest:
                return dict(BM=self.block_m, BN=tile), dict(BM=tile, BN=self.block_n)
        wide = dict(BM=self.block_m, BN=self.block_n)
        return wide, wide


_CAPPED = Launch(num_warps=8, num_stages=2, maxnreg=128)  # two programs per SM
_CAUSAL = Launch(num_warps=4, num_stages=3)


@dataclass(frozen=True)
class FarLaunch:
    """Launch options of the far-field kernels (``ops/far_field``): the bidirectional ones,
    the causal ones, and the causal walks that take both maps at once (``*_pair``)."""

    state_fwd: Launch = _CAPPED
    state_bwd: Launch = _CAPPED
    fwd_bidir: Launch = _CAPPED
    bwd_bidir: Launch = _CAPPED
    state_fwd_causal: Launch = _CAUSAL
    state_bwd_causal: Launch = _CAUSAL
    fwd: Launch = _CAUSAL
    dq: Launch = _CAUSAL
    dkv: Launch = _CAUSAL
    fwd_pair: Launch = _CAUSAL
    dq_pair: Launch = _CAUSAL
    dkv_pair: Launch = _CAUSAL

    def of(self, kernel: str) -> dict:
        return getattr(self, kernel).options()


@dataclass(frozen=True)
class FarPlan:
    """Far field (chunked linear attention) chunking, segments and launches.

    chunk: positions per chunk (causal chunks carry a chunk x chunk intra-chunk product).
    state_chunk: positions per step of the state kernels (a divisor of the chunk).
    main_chunks_bidir: chunks per program of the bidirectional main kernels.
    programs_per_sm, min_segment_chunks: segments aim for this many programs per SM, and no
        segment is shorter than this many chunks.
    single_segment_chunks: up to this many chunks a causal row is one segment (no forward
        state pass, no cumsums).
    maps_per_call: feature maps per kernel call (1 or ``MAPS_PER_CALL``).
    pair_maps_causal: the causal walks (of "fwd", "dq", "dkv") that take two maps in one walk.
    """

    chunk: ByMode = ByMode(causal=64, bidirectional=64)
    state_chunk: int = 64
    main_chunks_bidir: int = 1
    programs_per_sm: int = 2
    min_segment_chunks: int = 4
    single_segment_chunks: int = 4
    maps_per_call: ByMode = ByMode(causal=2, bidirectional=2)
    pair_maps_causal: tuple[str, ...] = ("fwd", "dq")
    launch: FarLaunch = FarLaunch()


@dataclass(frozen=True)
class BlendPlan:
    """The blend kernels: positions per tile, and tiles per backward program (its dcoeffs
    partial sums are added with one atomic add per program)."""

    block_t: int = 64
    bwd_tiles: int = 4
    fwd: Launch = Launch()
    bwd: Launch = Launch()


@dataclass(frozen=True)
class FusedPlan:
    """Where the one-node FMM layer (``ops/fmm``) forms the blend and its gradient, per mode.

    far_forms_blend: the far forward kernels write y (where every map fits one walk).
    near_forms_blend: else the near forward kernel writes y (the far fields run first).
    Neither: the blend kernel. dc_in_state_pass: the far fields' coefficient gradients are
    summed by their backward state pass (else by the blend backward).
    """

    far_forms_blend: ByMode = ByMode(causal=False, bidirectional=True)
    near_forms_blend: ByMode = ByMode(causal=True, bidirectional=True)
    dc_in_state_pass: ByMode = ByMode(causal=True, bidirectional=False)


@dataclass(frozen=True)
class ShortPlan:
    """The short path (``ops/short``): the bidirectional FMM layer in two launches each way.

    Taken for sequences up to ``max_seq`` (0: never) in grids of at most
    ``max_blocks_per_sm`` 64-position blocks per SM. ``programs_per_sm``: the forward grid's
    programs per SM (the backward's twice that). ``state_step``: positions per step of the
    state walks; ``state_segments``: segments summed by a state kernel before each main
    kernel (0: every main program walks its row itself). ``pdl``: the main kernels start
    under programmatic dependent launch (Hopper only).
    """

    max_seq: int = 2048
    max_blocks_per_sm: int = 4
    programs_per_sm: int = 2
    state_step: int = 64
    state_segments: int = 4
    pdl: bool = True
    fwd: Launch = Launch()
    bwd: Launch = Launch()
    state: Launch = Launch()
    rstate: Launch = Launch()


_PLANS: list[KernelPlan] = []  # every distinct plan made, at its key
_KEYS: dict[KernelPlan, int] = {}


def plan_of(key: int) -> KernelPlan:
    """The plan whose ``key`` this is."""
    return _PLANS[key]


@dataclass(frozen=True)
class KernelPlan:
    """Everything the GPU path's host code decides besides the shapes.

    sm_count: the SMs the grids are planned for (None: the device's; 8 on the CPU, where
        the Triton interpreter runs). inline_ptx: whether kernels use inline PTX (None: on
        NVIDIA CUDA devices only; a cross-compiling benchmark sets True).
    interpret: the kernels also take CPU tensors, run by Triton's interpreter
        (``TRITON_INTERPRET=1``): how the tests check the kernels' logic without a GPU.
    """

    near: NearPlan = field(default_factory=NearPlan)
    far: FarPlan = field(default_factory=FarPlan)
    blend: BlendPlan = field(default_factory=BlendPlan)
    fused: FusedPlan = field(default_factory=FusedPlan)
    short: ShortPlan = field(default_factory=ShortPlan)
    sm_count: int | None = None
    inline_ptx: bool | None = None
    interpret: bool = False
    # An int standing for this plan where only plain values may go (the custom ops'
    # arguments; ``plan_of`` maps it back); equal plans share it. Set at construction, so
    # that torch.compile reads it as a constant attribute.
    key: int = field(default=-1, init=False, compare=False, repr=False)

    def __post_init__(self):
        key = _KEYS.setdefault(self, len(_PLANS))
        if key == len(_PLANS):
            _PLANS.append(self)
        object.__setattr__(self, "key", key)

    def __setstate__(self, state):
        # Unpickled (a spawned worker, a saved model): the key it had in the process that
        # pickled it means nothing here; register it in this one.
        self.__dict__.update(state)
        self.__post_init__()

    def with_(self, **parts) -> KernelPlan:
        """This plan with some of its settings replaced: ``plan.with_(far=dict(state_chunk=16),
        sm_count=132)`` (a dict updates that part, anything else replaces it)."""
        updates = {}
        for name, value in parts.items():
            if isinstance(value, dict):
                value = replace(getattr(self, name), **value)
            updates[name] = value
        return replace(self, **updates)


DEFAULT_PLAN = KernelPlan()
