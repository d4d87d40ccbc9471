"""StaticSlotDecoder: the BatchDecoder over static KV slots, with one CUDA graph per bucketed batch size.

Per step the host does: pick the bucket, copy the row→slot map when the set of active slots changed, replay the
graph, read the sampled ids (the one synchronisation). Everything else (token ids, positions, KV slot mapping,
sampling state) lives on the device and is advanced inside the graph. So the next step can be launched before this
one's ids are read: with ``pipeline_steps`` (on with CUDA graphs) ``step`` replays the next graph first and returns
the previous one's ids, and the engine's work between two steps overlaps the GPU's (``pipeline.py``).
Prefill runs eagerly (it is large enough not to be launch-bound), several prompts in one pass, at most
``prefill_chunk`` tokens per pass.

Admission: ``admit`` (the BatchDecoder contract) prefills at once and returns the first token. ``submit`` queues a
prompt instead; each ``step`` then runs one prefill pass of at most ``prefill_chunk`` tokens before the decode step,
so running streams keep going while a long prompt is prefilled, and a finished prefill's first token comes back in
that step's result.

Prefix reuse (``prefix_cache``, on by default): when a request ends, the full KV blocks of its prompt and reply stay
cached in the block pool (``kv.BlockPool``), keyed by content and adapter; a later request that starts with the same
tokens (the next turn of a conversation, another channel's same system prompt) shares them and is prefilled from the
first token they do not cover. Unused cached blocks count as free memory and are evicted least recently used.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot.domain import GenerationParams
from inference.decoder import AdapterSlotsFull, DecoderDefaults, SlotRequest
from inference.fast.gemm import LinearPlan
from inference.fast.kv import GIB, BlockPool, KVBudget, kv_bytes_per_token, plan_kv_budget
from inference.fast.lora import LoraBatch, LoraPool, read_peft_adapter
from inference.fast.model import FastLlama, Segment
from inference.fast.parallel import Parallel, SingleProcess
from inference.fast.pipeline import Launch, RowUpload, TokenReadback, resolve_pipeline
from inference.fast.sampler import SlotSampler
from inference.fast.weights import (
    LlamaWeights,
    build_weights,
    extract_weights,
    fetch_from_model,
    release_layer_weights,
)

_log = logging.getLogger(__name__)

LOG_REUSE_EVERY = 100  # requests between two INFO lines on prefix reuse


@dataclass
class _Pending:
    slot: int
    ids: torch.Tensor  # prompt ids on the device
    blocks: torch.Tensor  # the slot's block ids (long, device)
    block_list: list[int]
    done: int = 0  # prompt tokens whose KV is written (a reused prefix included)
    adapter: int = -1  # LoRA pool index (-1: the base model)


def default_buckets(capacity: int) -> tuple[int, ...]:
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < capacity]
    return (*sizes, capacity)


def use_cache_dir(cache_dir: str | Path) -> None:
    """Keep Triton's compiled kernels (and inductor's, should anything compile) on disk for warm restarts."""
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))


def decoder_weights(model: Any, *, fp8: bool, parallel: Parallel) -> LlamaWeights:
    """The weights to serve: the model's own (fused in place), or new FP8 / tensor-parallel ones built from it.

    An FP8 build releases the model's bf16 matrices layer by layer as it goes (so it fits beside them on one GPU):
    the transformers model cannot run a forward afterwards."""
    if isinstance(model, LlamaWeights):
        return model
    if not fp8 and parallel.world == 1:
        return extract_weights(model)
    embed = model.get_input_embeddings().weight
    return build_weights(
        model.config,
        fetch_from_model(model),
        device=embed.device,
        dtype=embed.dtype,
        rank=parallel.rank,
        world=parallel.world,
        fp8=fp8,
        release=release_layer_weights(model) if fp8 else None,
    )


class StaticSlotDecoder(DecoderDefaults):
    """Batch decoder for Llama-architecture transformers models; CUDA graphs on a GPU, the same code eagerly on CPU.

    ``model`` is a loaded transformers Llama model, or LlamaWeights already built (``weights.build_weights``: a
    tensor-parallel rank's slice, FP8 matrices). ``fp8`` quantises the model's weights to FP8 (weight-only).
    ``parallel`` is this process's tensor-parallel group (``parallel.py``); rank 0's decoder is then wrapped in a
    ``mirror.MirroredDecoder`` and the others run ``mirror.follow``.
    ``lora_slots`` adapters of rank ≤ ``lora_max_rank`` can be loaded (``load_lora``) and named per request
    (``SlotRequest.lora``); their pool is allocated here, before the KV cache. ``keep_free_bytes`` of GPU memory are
    left out of the KV cache (for a fine-tune beside the engine).
    ``pipeline_steps``: ``step`` launches its decode step before it reads the previous one's tokens, which it returns
    (so the host's work between two steps overlaps the GPU's); None: ``HANBOT_PIPELINE_STEPS`` (0/1) when set, else
    on with CUDA graphs. The attribute ``pipeline_steps`` may be changed between steps (A/B in one process)."""

    def __init__(
        self,
        model: Any,
        *,
        fp8: bool = False,
        parallel: Parallel | None = None,
        capacity: int = 8,
        max_context: int | None = None,
        block_size: int = 64,
        kv_budget_bytes: int | None = None,
        reserve_bytes: int | None = None,
        prefill_chunk: int = 2048,
        buckets: Sequence[int] | None = None,
        cuda_graphs: bool | None = None,
        top_k: int = 0,
        cache_dir: str | Path | None = None,
        gemm: str = "auto",
        prefix_cache: bool = True,
        warm_burst: bool | None = None,
        kv_fp8: bool = False,
        lora_slots: int = 0,
        lora_max_rank: int = 16,
        keep_free_bytes: int = 0,
        pipeline_steps: bool | None = None,
    ) -> None:
        if cache_dir is not None:
            use_cache_dir(cache_dir)
        self.parallel = parallel or SingleProcess()
        self._take_weights(model, fp8=fp8, kv_fp8=kv_fp8)
        spec = self._weights.spec
        self._capacity = capacity
        self.max_context = min(max_context or spec.max_positions, spec.max_positions)
        self.prefill_chunk = prefill_chunk
        if reserve_bytes is None:  # graph pool, prefill activations, sampler scratch, allocator churn
            reserve_bytes = (
                int(1.5 * GIB) + prefill_chunk * (6 * spec.hidden_size + 8 * spec.intermediate_size) // 2
            )
        self.lora_pool = self._make_lora_pool(lora_slots, lora_max_rank)
        self._init_adapter_state()
        self._init_slot_state(capacity, buckets, top_k)
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        plan_file = Path(cache_dir) / "gemm-plan.json" if cache_dir is not None else None
        # 1. warm up on a scratch KV cache, so that the free memory measured next is what the KV cache can have
        self._warm_up(block_size, LinearPlan(self.device, gemm, plan_file), kv_fp8)
        # 2. the real KV cache, then the graphs, then one full prefill pass: all must fit, else shrink the cache
        budget = self._plan_kv(block_size, kv_budget_bytes, reserve_bytes + keep_free_bytes, kv_fp8)
        budget = self._allocate(budget, prefix_cache=prefix_cache, cuda_graphs=cuda_graphs)
        self.pipeline_steps = resolve_pipeline(pipeline_steps, bool(self._graphs))
        self.row_slot.fill_(self._pad)
        self.slot_len.zero_()
        self.kv_tokens = budget.usable_tokens
        # 3. a burst like the first real one, so the first conversations after a start pay nothing extra
        if warm_burst if warm_burst is not None else self.device.type == "cuda":
            self._warm_burst_or_go_on(prefix_cache)
        self._log_ready(budget, prefix_cache)

    # ---- construction, step by step --------------------------------------------------------------------------------

    def _take_weights(self, model: Any, *, fp8: bool, kv_fp8: bool) -> None:
        """The weights to serve (``decoder_weights``) and what they say about the model left behind."""
        self._weights = decoder_weights(model, fp8=fp8, parallel=self.parallel)
        # whether the transformers model still computes what this decoder serves (so the hf decoder can take over
        # for a LoRA): not after an FP8 build released its weights, nor for a tensor-parallel slice
        self.model_intact = not fp8 and self.parallel.world == 1 and not isinstance(model, LlamaWeights)
        self.fp8 = fp8
        self.kv_fp8 = kv_fp8
        if self._weights.device.type == "cuda":
            torch.cuda.empty_cache()  # the fusion's freed blocks go back, so free memory is measured right
        self.device = self._weights.device

    def _make_lora_pool(self, slots: int, max_rank: int) -> LoraPool | None:
        """The adapter pool (before the KV cache, which takes the memory left); None without adapter slots."""
        if slots <= 0:
            return None
        return LoraPool(
            self._weights.spec,
            _rows(self._weights.lm_head),
            slots=slots,
            max_rank=max_rank,
            device=self.device,
            dtype=self._weights.dtype,
            rank=self.parallel.rank,
            world=self.parallel.world,
        )

    def _init_adapter_state(self) -> None:
        self._adapters: dict[str, int] = {}  # adapter id (SlotRequest.lora) -> pool index
        self._adapter_loads: dict[str, int] = {}  # adapter id -> times loaded (part of the prefix-reuse key)
        self._retired: set[str] = set()  # ids dropped as soon as no request uses them
        self._slot_adapter: dict[int, int] = {}  # slot -> pool index, for slots decoding with an adapter
        self.graph_captures = (
            0  # CUDA graphs captured over this decoder's life (loading an adapter adds none)
        )

    def _init_slot_state(self, capacity: int, buckets: Sequence[int] | None, top_k: int) -> None:
        """The per-slot device tensors the graphs read (one padding slot more), the buckets, the bookkeeping."""
        spec = self._weights.spec
        self.sampler = SlotSampler(capacity + 1, spec.vocab_size, self.device, top_k=top_k)
        self._pad = capacity  # the padding rows' slot
        self.slot_len = torch.zeros(capacity + 1, dtype=torch.int64, device=self.device)
        self.last_tok = torch.zeros(capacity + 1, dtype=torch.int64, device=self.device)
        self.buckets = tuple(sorted(set(buckets or default_buckets(capacity))))
        if self.buckets[-1] < capacity:
            raise ValueError(f"the largest bucket {self.buckets[-1]} is below the capacity {capacity}")
        bmax = self.buckets[-1]
        self.row_slot = torch.full((bmax,), self._pad, dtype=torch.int64, device=self.device)
        self.out_tok = torch.zeros(bmax, dtype=torch.int64, device=self.device)
        self.slot_lora = torch.full((capacity + 1,), -1, dtype=torch.int32, device=self.device)
        self._rows: list[int] = []
        self._rows_dirty = True
        # pipelined steps (pipeline.py): host copies that do not synchronise, the launch whose ids are unread, and
        # per slot a generation that release bumps (ids of a slot released since their launch are dropped)
        self.pipeline_steps = False  # resolved once the graphs are captured
        self._row_upload = RowUpload(self.row_slot, self._pad)
        self._readback = TokenReadback(bmax, self.device)
        self._in_flight: Launch | None = None
        self._generation = [0] * capacity
        self._active: set[int] = set()
        self._pending: deque[_Pending] = deque()
        self._ready: dict[int, int] = {}
        self._prefill_failures: dict[int, BaseException] = {}
        # prefix reuse (kv.BlockPool): each slot's tokens so far (prompt, then sampled), its adapter, and counters
        self._seq: dict[int, list[int]] = {}
        self._slot_lora: dict[int, str | None] = {}
        self.prefix_hit_tokens = 0  # prompt tokens whose KV was reused instead of computed, since start
        self.prompt_tokens = 0  # prompt tokens submitted, since start
        self.last_prefix_hit: dict[int, int] = {}  # slot -> reused tokens of its latest request
        self.warm_burst_reused = 0
        self.requests = 0  # requests submitted, since start
        self._sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 0
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._lora_graphs: dict[int, torch.cuda.CUDAGraph] = {}  # the same steps with the adapters' products
        self._step_logits: dict[int, torch.Tensor] = {}  # per bucket: the raw logits of the last step (tests)
        self._lora_step_logits: dict[int, torch.Tensor] = {}
        self._last_lora = False
        self._prefill_logits: dict[int, torch.Tensor] = {}
        self._last_rows: list[int] = []
        self._last_bucket = 0

    def _max_blocks(self, block_size: int) -> int:
        return -(-self.max_context // block_size)

    def _warm_up(self, block_size: int, plan: LinearPlan, kv_fp8: bool) -> None:
        """The model on a scratch KV cache of two blocks: kernels compiled and loaded, the matrix-product plan
        chosen, workspaces made (on a GPU: a full prefill pass and a decode step of every bucket), then the scratch
        freed."""
        scratch = KVBudget(num_blocks=2, block_size=block_size)
        self.pool = BlockPool(scratch, self._capacity, self._max_blocks(block_size), self.device)
        self.model = FastLlama(
            self._weights, 2, block_size, self.max_context, plan, self.parallel, kv_fp8=kv_fp8
        )
        self.model.lora = self.lora_pool
        self.model.tune()
        if self.device.type == "cuda":
            self._dry_run_prefill()
            with torch.inference_mode():
                for b in self.buckets:
                    self._decode_body(b)
                    if self.lora_pool is not None:
                        self._decode_body(b, with_lora=True)
            torch.cuda.synchronize(self.device)
            self.model.free_kv()
            torch.cuda.empty_cache()

    def _plan_kv(
        self, block_size: int, budget_bytes: int | None, reserve_bytes: int, kv_fp8: bool
    ) -> KVBudget:
        """The KV blocks the free memory allows, the same number on every rank (so every rank admits the same
        requests)."""
        budget = plan_kv_budget(
            self._weights.spec,
            self.device,
            block_size=block_size,
            slots=self._capacity,
            max_context=self.max_context,
            budget_bytes=budget_bytes,
            reserve_bytes=reserve_bytes,
            kv_fp8=kv_fp8,
        )
        return KVBudget(num_blocks=self.parallel.agree_min(budget.num_blocks), block_size=block_size)

    def _allocate(self, budget: KVBudget, *, prefix_cache: bool, cuda_graphs: bool) -> KVBudget:
        """Allocate the KV cache, capture the graphs (which read its tables) and run a full prefill pass; out of
        memory, try again with a tenth fewer blocks (alone only: with several ranks the error is raised). Returns
        the budget that fitted."""
        max_blocks = self._max_blocks(budget.block_size)
        for attempt in range(8):
            try:
                self.model.allocate_kv(budget.num_blocks)
                self.pool = BlockPool(budget, self._capacity, max_blocks, self.device, reuse=prefix_cache)
                if cuda_graphs:
                    self._capture_graphs()
                if self.device.type == "cuda":
                    self._dry_run_prefill()
                return budget
            except (torch.OutOfMemoryError, torch.AcceleratorError) as exc:
                if (
                    "out of memory" not in str(exc)
                    or attempt == 7
                    or budget.num_blocks < 4
                    or self.parallel.world > 1  # the other ranks are inside collectives: no retry alone
                ):
                    raise
                self._free_allocation()
                budget = KVBudget(num_blocks=int(budget.num_blocks * 0.9), block_size=budget.block_size)
                _log.warning(
                    "KV cache, graphs and a prefill pass did not fit; retrying with %d blocks",
                    budget.num_blocks,
                )
        raise AssertionError("unreachable: the last attempt raises")

    def _free_allocation(self) -> None:
        """Undo a failed ``_allocate`` attempt: graphs and KV cache dropped, their memory back to the driver."""
        self._graphs.clear()
        self._lora_graphs.clear()
        self.model.free_kv()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _warm_burst_or_go_on(self, prefix_cache: bool) -> None:
        """``_warm_burst``; alone, a failure is logged and the decoder serves without it (the first burst pays)."""
        try:
            self._warm_burst()
        except Exception as exc:
            if self.parallel.world > 1:  # the other ranks are inside the same calls: no going on alone
                raise
            _log.warning("the warm-up burst failed (%s): serving without it", exc)
            for slot in range(self._capacity):
                self.release(slot)
            self.set_prefix_cache(prefix_cache)

    def _log_ready(self, budget: KVBudget, prefix_cache: bool) -> None:
        _log.info(
            "fast decoder: %d slots, %d KV blocks of %d tokens (%d tokens, %.2f GiB), buckets %s, graphs %s, "
            "prefix reuse %s, pipelined steps %s, KV %s",
            self._capacity,
            budget.num_blocks,
            budget.block_size,
            budget.usable_tokens,
            budget.num_blocks * budget.block_size * kv_bytes_per_token(self._weights.spec, self.kv_fp8) / GIB,
            self.buckets,
            bool(self._graphs),
            prefix_cache,
            self.pipeline_steps,
            "FP8 e4m3 with per-token scales"
            if self.kv_fp8
            else str(self._weights.dtype).removeprefix("torch."),
        )

    # ---- BatchDecoder ----------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def prefills_in_steps(self) -> bool:
        return True

    @property
    def max_request_tokens(self) -> int:
        """Prompt + new tokens one request may hold; larger requests are refused by ``admit`` (ValueError)."""
        return min(
            self.max_context,
            self.pool.max_blocks_per_slot * self.pool.block_size,
            (self.pool.num_blocks - 1) * self.pool.block_size,
        )

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        tokens = prompt_len + max_new_tokens
        if tokens > self.max_request_tokens:
            return True  # never fits: admit raises, so the request fails instead of waiting forever
        return self.pool.can_reserve(tokens)

    def can_admit_together(self, sizes: Sequence[tuple[int, int]]) -> bool:
        """Whether requests of these (prompt_len, max_new_tokens) all fit in the KV memory free now (requests that
        can never fit are left out: ``admit`` refuses them)."""
        blocks = sum(self.pool.blocks_for(p + n) for p, n in sizes if p + n <= self.max_request_tokens)
        return blocks <= self.pool.free_blocks

    def admit(self, request: SlotRequest) -> int:
        self.submit(request)
        try:
            while request.slot not in self._ready:
                self._ready.update(self._prefill_round())
        except BaseException:
            self.release(request.slot)
            raise
        return self._ready.pop(request.slot)

    def admit_many(self, requests: Iterable[SlotRequest]) -> dict[int, int]:
        """Prefill several prompts together (fewer, larger passes); {slot: first token}."""
        slots: list[int] = []
        try:
            for r in requests:
                self.submit(r)
                slots.append(r.slot)
        except BaseException:
            for s in slots:
                self.release(s)
            raise
        return self.complete(slots)

    def complete(self, slots: Sequence[int]) -> dict[int, int]:
        """Run prefill passes until these submitted slots have their first token; {slot: first token}."""
        try:
            while any(s not in self._ready for s in slots):
                self._ready.update(self._prefill_round())
        except BaseException:
            for s in slots:
                self.release(s)
            raise
        return {s: self._ready.pop(s) for s in slots}

    def submit(self, request: SlotRequest) -> None:
        """Queue a prompt for prefill; its first token comes back from a later ``step``."""
        slot = request.slot
        if not 0 <= slot < self._capacity:
            raise ValueError(f"slot {slot} is outside 0..{self._capacity - 1}")
        if slot in self._active or any(p.slot == slot for p in self._pending):
            raise ValueError(f"slot {slot} is busy")
        n = len(request.prompt_ids)
        tokens = n + request.params.max_new_tokens
        if n == 0:
            raise ValueError("empty prompt")
        if tokens > self.max_request_tokens:
            raise ValueError(
                f"prompt ({n}) + max_new_tokens exceeds the {self.max_request_tokens} tokens a slot holds"
            )
        adapter = self._adapter_index(request.lora)
        reuse_key = self._reuse_key(request.lora)
        blocks, reused_blocks = self.pool.reserve(slot, tokens, request.prompt_ids, reuse_key)
        reused = reused_blocks * self.pool.block_size  # at least one prompt token is left to compute
        ids = torch.tensor(request.prompt_ids, dtype=torch.int64, device=self.device)
        self.sampler.configure(slot, request.params, ids)
        self._set_slot_adapter(slot, adapter)
        self._seq[slot] = list(request.prompt_ids)
        self._slot_lora[slot] = reuse_key
        self.last_prefix_hit[slot] = reused
        self.prefix_hit_tokens += reused
        self.prompt_tokens += n
        self.requests += 1
        _log.debug("slot %d: %d prompt tokens, KV of the first %d reused", slot, n, reused)
        if self.requests % LOG_REUSE_EVERY == 0:
            self._log_reuse()
        self._pending.append(
            _Pending(
                slot,
                ids,
                torch.tensor(blocks, dtype=torch.int64, device=self.device),
                blocks,
                reused,
                adapter=adapter,
            )
        )

    def step(self) -> dict[int, int]:
        """One prefill pass of queued prompts (if any), then one decode step for the running slots.

        Pipelined (``pipeline_steps``): the decode step is launched and the tokens returned are the previous
        launch's, read once this one is queued behind it, so the caller's work until the next ``step`` overlaps
        the device's; a slot's token then comes one call after its step, and none comes for a slot released since
        its step was launched. Off: this step's own tokens (and, once after the pipeline was turned off, the
        launch still unread instead of a new step).

        A failed prefill pass ends only its own requests: their slots are released and the errors are kept for
        ``take_prefill_failures``; the running slots still decode."""
        out, self._ready = self._ready, {}
        decoding = sorted(self._active)
        if self._pending:
            self._prefill_in_step(out)
        previous = self._in_flight  # if the launch below fails, it stays for the next call
        launch = None
        if decoding and (self.pipeline_steps or previous is None):
            launch = self._launch(decoding)
        self._in_flight = launch if self.pipeline_steps else None
        for done in (previous, None if self.pipeline_steps else launch):
            if done is not None:
                out.update(self._collect(done))
        return out

    def _prefill_in_step(self, out: dict[int, int]) -> None:
        """One prefill pass inside ``step``: first tokens into ``out``; a failure kept for its own requests."""
        slots = [p.slot for p in self._pending]
        try:
            out.update(self._prefill_round())
        except Exception as exc:
            _log.warning("prefill pass failed (%s): its requests end, the running ones go on", exc)
            self._prefill_failures.update(
                {s: exc for s in slots if s not in self._active and not self._is_pending(s)}
            )

    def take_prefill_failures(self) -> dict[int, BaseException]:
        """{slot: error} of the prompts whose prefill failed inside ``step`` since the last call."""
        failures, self._prefill_failures = self._prefill_failures, {}
        return failures

    def _is_pending(self, slot: int) -> bool:
        return any(p.slot == slot for p in self._pending)

    def release(self, slot: int) -> None:
        """Free the slot; the full blocks of what its KV holds (prompt and reply) stay cached for a later request
        that starts the same way."""
        written = self._written_tokens(slot)
        if 0 <= slot < self._capacity:
            self._generation[slot] += 1  # ids of a launch still unread are not this slot's next request's
            self._drop_stale_launch()
        if slot in self._active:
            self._active.discard(slot)
            self._rows_dirty = True
        self._pending = deque(p for p in self._pending if p.slot != slot)
        self._ready.pop(slot, None)
        if written:
            self.pool.remember(slot, written, self._slot_lora.get(slot))
        self._seq.pop(slot, None)
        self._slot_lora.pop(slot, None)
        self.pool.release(slot)
        if self._slot_adapter.pop(slot, None) is not None:
            self._drop_retired()

    def _drop_stale_launch(self) -> None:
        """Forget the unread launch once every slot it covered was released (its ids would all be dropped; the
        device finishes it before anything queued later, so nothing waits for it)."""
        launch = self._in_flight
        if launch is not None and all(
            self._generation[s] != g for s, g in zip(launch.slots, launch.generations, strict=True)
        ):
            self._in_flight = None

    # ---- adapters --------------------------------------------------------------------------------------------------

    @property
    def lora_slots(self) -> int:
        """How many adapters the pool holds at once (0: this decoder serves the base model only)."""
        return self.lora_pool.slots if self.lora_pool is not None else 0

    @property
    def adapters(self) -> list[str]:
        """The ids of the adapters loaded (retired ones still in use included)."""
        return list(self._adapters)

    def load_lora(self, key: str, path: str) -> None:
        """Copy the PEFT LoRA in folder ``path`` into a free pool slot under the id ``key`` (``SlotRequest.lora``).

        No graph is recaptured and nothing recompiles: the decode graphs read the pool. Raises ValueError
        (``lora.UnsupportedAdapter``, ``AdapterSlotsFull``) when it cannot."""
        if self.lora_pool is None:
            raise ValueError("this decoder has no adapter slots (engine.lora_slots is 0)")
        if key in self._adapters:
            raise ValueError(f"adapter id {key!r} is already loaded")
        adapter = read_peft_adapter(path)
        self.lora_pool.check(adapter)
        index = self._free_adapter_index()
        self.lora_pool.load(index, adapter)
        self._adapters[key] = index
        self._adapter_loads[key] = self._adapter_loads.get(key, 0) + 1
        _log.info("adapter %s loaded into pool slot %d (rank %d)", key, index, adapter.rank)

    def retire_lora(self, key: str) -> None:
        """No new request may name ``key``; its slot is freed once the requests that use it are released."""
        if key in self._adapters:
            self._retired.add(key)
            self._drop_retired()

    def _reuse_key(self, key: str | None) -> str | None:
        """The adapter part of the prefix-reuse key: the id and how many times weights were loaded under it, so KV
        cached under an id whose adapter was unloaded is never found by another adapter loaded under that id."""
        return None if key is None else f"{key}#{self._adapter_loads.get(key, 0)}"

    def _adapter_index(self, key: str | None) -> int:
        if key is None:
            return -1
        index = self._adapters.get(key)
        if index is None or key in self._retired:
            raise ValueError(f"adapter {key!r} is not loaded in this decoder")
        return index

    def _set_slot_adapter(self, slot: int, index: int) -> None:
        if index >= 0:
            self._slot_adapter[slot] = index
        else:
            self._slot_adapter.pop(slot, None)
        if self.lora_pool is not None:
            self.slot_lora[slot] = index

    def _free_adapter_index(self) -> int:
        assert self.lora_pool is not None
        taken = set(self._adapters.values())
        for index in range(self.lora_pool.slots):
            if index not in taken:
                return index
        raise AdapterSlotsFull(
            f"all {self.lora_pool.slots} adapter slots are taken (engine.lora_slots); unload one first"
        )

    def _drop_retired(self) -> None:
        busy = set(self._slot_adapter.values())
        for key in [k for k in self._retired if self._adapters[k] not in busy]:
            self._retired.discard(key)
            del self._adapters[key]
            _log.info("adapter %s unloaded", key)

    def set_prefix_cache(self, on: bool) -> None:
        """Turn prefix reuse on or off from the next request on (off: the cached prefixes are dropped)."""
        if not on:
            self.pool.forget_cached()
        self.pool.reuse = on

    def _log_reuse(self) -> None:
        _log.info(
            "prefix reuse: %d of %d prompt tokens reused over %d requests (%.0f%%); %d blocks cached, %d evicted",
            self.prefix_hit_tokens,
            self.prompt_tokens,
            self.requests,
            100.0 * self.prefix_hit_tokens / max(1, self.prompt_tokens),
            self.pool.cached_blocks,
            self.pool.evictions,
        )

    def _written_tokens(self, slot: int) -> list[int]:
        """The tokens whose KV the slot holds: the prompt prefilled so far, or (decoding) every token but the last
        sampled one, which has not been run yet.

        Pipelined, the device is one step ahead of ``_seq``: the launch in flight writes the last token's KV and
        samples one more, which this leaves out (at most one position past these tokens is written, inside the
        blocks reserved for prompt + max_new_tokens, never in a block remembered as full)."""
        seq = self._seq.get(slot)
        if seq is None:
            return []
        pending = next((p for p in self._pending if p.slot == slot), None)
        if pending is not None:
            return seq[: pending.done]
        return seq[:-1] if slot in self._active else []

    # ---- start-up --------------------------------------------------------------------------------------------------

    def _warm_burst(self) -> None:
        """Serve a synthetic burst through the real paths, then forget it: ``capacity`` prompts (at most 16) that fill
        one prefill pass and spill into a second (several sequences per pass, one split over two passes), sampled
        with the bot's settings, two decode steps; then the same prompts plus a token, reusing their cached KV (the
        prefill of a sequence from the middle). The first burst after a start paid for these on the GPU: kernels
        loaded on first launch (the causal and the masked attention, the sampler's sort at several rows), and the
        allocator's growth to a full pass of many sequences."""
        t = time.perf_counter()
        rows = min(self._capacity, 16)
        per = max(2, min(self.prefill_chunk // rows + 2, self.max_request_tokens - 4))
        while rows > 1 and rows * self.pool.blocks_for(per + 4) > self.pool.free_blocks:
            rows -= 1
        if self.pool.blocks_for(per + 4) > self.pool.free_blocks:
            return
        params = GenerationParams(max_new_tokens=3, seed=0)  # sampled with the default settings
        g = torch.Generator().manual_seed(0)
        vocab = self._weights.spec.vocab_size
        batch = [torch.randint(0, vocab, (per,), generator=g).tolist() for _ in range(rows)]
        reuse = self.pool.reuse
        self.pool.reuse = True
        try:
            for extra in (0, 1):  # the second round starts after the first round's cached blocks
                for slot, ids in enumerate(batch):
                    self.submit(SlotRequest(slot, tuple(ids[: per - 1 + extra]), params))
                for _ in range(3):
                    self.step()
                for slot in range(rows):
                    self.release(slot)
        finally:
            self.set_prefix_cache(False)
            self.pool.reuse = reuse
            # the tokens the second round took from the first (tests)
            self.warm_burst_reused = self.prefix_hit_tokens
            self.prefix_hit_tokens = self.prompt_tokens = self.requests = 0
            self.last_prefix_hit.clear()
            self._prefill_logits = {}
            for slot, exc in self.take_prefill_failures().items():
                _log.warning("warm-up burst: the prefill of slot %d failed (%s)", slot, exc)
            self.row_slot.fill_(self._pad)
            self.slot_len.zero_()
            self._rows_dirty = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        _log.info(
            "warm-up burst: %d prompts of about %d tokens, twice (%d tokens reused the second time), in %.2f s",
            rows,
            per,
            self.warm_burst_reused,
            time.perf_counter() - t,
        )

    # ---- prefill ---------------------------------------------------------------------------------------------------

    def _prefill_round(self) -> dict[int, int]:
        """One prefill pass over at most ``prefill_chunk`` queued prompt tokens; first tokens of finished prompts.

        If the pass fails, the slots in it are released and the error propagates (their requests fail).
        """
        slots, budget = [], self.prefill_chunk
        for p in self._pending:  # the prompts this pass takes, as _prefill_pass chooses them
            if budget <= 0:
                break
            slots.append(p.slot)
            budget -= len(p.ids) - p.done
        try:
            try:
                return self._prefill_pass()
            except torch.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                # cached blocks too fragmented for this pass: hand them back to the driver and try once more
                _log.warning("prefill pass ran out of memory; emptying the allocator cache and retrying")
                torch.cuda.empty_cache()
                return self._prefill_pass()
        except BaseException:
            for slot in slots:
                self.release(slot)
            raise

    def _dry_run_prefill(self) -> None:
        """One full prefill pass at the end of the context, writing only into the scratch block."""
        tokens = min(self.prefill_chunk, self.max_context)
        start = self.max_context - tokens
        bs = self.model.block_size
        positions = torch.arange(start, start + tokens, device=self.device)
        blocks = torch.zeros(-(-self.max_context // bs), dtype=torch.int64, device=self.device)
        ids = torch.zeros(tokens, dtype=torch.int64, device=self.device)
        lora = self._prefill_lora(
            [(0, tokens, 0)]
        )  # the adapters' products too (pool slot 0), if there is a pool
        with torch.inference_mode():
            hidden = self.model.prefill(
                ids, positions, positions % bs, [Segment(-1, 0, tokens, start, blocks)], lora
            )
            self.model.logits(hidden[-1:], self._prefill_lora([(0, 1, 0)]))
        del hidden
        torch.cuda.synchronize(self.device)

    def _prefill_pass(self) -> dict[int, int]:
        budget = self.prefill_chunk
        segments: list[Segment] = []
        parts: list[tuple[_Pending, int]] = []
        offset = 0
        for p in self._pending:
            if budget <= 0:
                break
            take = min(budget, len(p.ids) - p.done)
            segments.append(Segment(p.slot, offset, take, p.done, p.blocks))
            parts.append((p, take))
            offset += take
            budget -= take
        bs = self.pool.block_size
        positions = torch.cat([torch.arange(p.done, p.done + take) for p, take in parts])
        block_of = torch.cat(
            [
                torch.tensor(p.block_list, dtype=torch.int64)[torch.arange(p.done, p.done + take) // bs]
                for p, take in parts
            ]
        )
        slot_mapping = block_of * bs + positions % bs
        ids = torch.cat([p.ids[p.done : p.done + take] for p, take in parts])
        lora = self._prefill_lora(
            [(s.offset, s.length, p.adapter) for s, (p, _) in zip(segments, parts, strict=True)]
        )
        with torch.inference_mode():
            hidden = self.model.prefill(
                ids, positions.to(self.device), slot_mapping.to(self.device), segments, lora
            )
            finished = [(i, p) for i, (p, take) in enumerate(parts) if p.done + take == len(p.ids)]
            for p, take in parts:
                p.done += take
                self.pool.remember(p.slot, self._seq[p.slot][: p.done], self._slot_lora[p.slot])
            if not finished:
                return {}
            last = torch.tensor(
                [segments[i].offset + segments[i].length - 1 for i, _ in finished], device=self.device
            )
            rows = torch.tensor([p.slot for _, p in finished], dtype=torch.int64, device=self.device)
            logits = self.model.logits(
                hidden[last], self._prefill_lora([(j, 1, p.adapter) for j, (_, p) in enumerate(finished)])
            )
            self._prefill_logits = {p.slot: logits[j] for j, (_, p) in enumerate(finished)}
            tokens = self.sampler.sample(logits, rows)
            self.last_tok[rows] = tokens
            self.slot_len[rows] = torch.tensor([len(p.ids) for _, p in finished], device=self.device)
            result = dict(zip([p.slot for _, p in finished], tokens.tolist(), strict=True))
        for slot, token in result.items():
            self._seq[slot].append(token)
        done_slots = set(result)
        self._pending = deque(p for p in self._pending if p.slot not in done_slots)
        self._active.update(done_slots)
        self._rows_dirty = True
        return result

    def _prefill_lora(self, segments: list[tuple[int, int, int]]) -> LoraBatch | None:
        """The adapters of a prefill pass's (offset, length, pool index) pieces; None when all use the base."""
        if self.lora_pool is None or all(index < 0 for _, _, index in segments):
            return None
        return LoraBatch(self.lora_pool, segments=segments)

    # ---- decode ----------------------------------------------------------------------------------------------------

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _n_split(self, rows: int) -> int:
        if self.device.type != "cuda":
            return 1
        want = -(-2 * self._sms // (rows * self._weights.spec.num_kv_heads))
        split = 1
        while split < want and split < 32:
            split *= 2
        return split

    def _decode_body(self, b: int, with_lora: bool = False) -> None:
        """One decode step of bucket ``b``; ``with_lora``: the rows' adapters too (their indices read on the device)."""
        bs = self.pool.block_size
        rows = self.row_slot[:b]
        ids = self.last_tok[rows]
        pos = self.slot_len[rows]
        tables = self.pool.tables[rows]
        blk = tables.gather(1, (pos // bs)[:, None]).squeeze(1).to(torch.int64)
        slot_mapping = blk * bs + pos % bs
        seq_lens = (pos + 1).to(torch.int32)
        lora = (
            LoraBatch(self.lora_pool, index=self.slot_lora[rows])
            if with_lora and self.lora_pool is not None
            else None
        )
        logits = self.model.decode(ids, pos, slot_mapping, tables, seq_lens, self._n_split(b), lora)
        (self._lora_step_logits if lora is not None else self._step_logits)[b] = logits
        tok = self.sampler.sample(logits, rows)
        self.last_tok[rows] = tok
        self.slot_len[rows] = pos + 1
        self.slot_len[self._pad :].zero_()
        self.out_tok[:b].copy_(tok)

    def _launch(self, slots: list[int]) -> Launch:
        """Queue one decode step of these slots and the copy of its sampled ids to the host; nothing waits."""
        n = len(slots)
        b = self._bucket(n)
        if self._rows_dirty or self._rows != slots:
            self._row_upload.write(slots)  # stream-ordered after the launch still running
            self._rows = list(slots)
            self._rows_dirty = False
        with_lora = any(s in self._slot_adapter for s in slots)  # no adapter in the batch: the base step
        graph = (self._lora_graphs if with_lora else self._graphs).get(b)
        if graph is not None:
            graph.replay()
        else:
            with torch.inference_mode():
                self._decode_body(b, with_lora)
        self._last_rows = list(slots)
        self._last_bucket = b
        self._last_lora = with_lora
        generations = [self._generation[s] for s in slots]
        return Launch(list(slots), generations, self._readback.start(self.out_tok[:n]))

    def _collect(self, launch: Launch) -> dict[int, int]:
        """Wait for a launch's ids; {slot: token} for its slots not released since (each appended to ``_seq``)."""
        ids = launch.ids.wait()
        result: dict[int, int] = {}
        for slot, generation, token in zip(launch.slots, launch.generations, ids, strict=True):
            if self._generation[slot] == generation:
                result[slot] = token
                self._seq[slot].append(token)
        return result

    # ---- inspection (tests) ----------------------------------------------------------------------------------------

    def last_step_logits(self) -> dict[int, torch.Tensor]:
        """{slot: raw next-token logits (before penalty and sampling)} of the last decode step launched: with
        ``pipeline_steps`` off, the step whose tokens the last ``step`` returned; on, the step whose tokens the next
        ``step`` returns (its slots as launched, released ones included). Valid until the next launch."""
        logits = (self._lora_step_logits if self._last_lora else self._step_logits)[self._last_bucket]
        return {slot: logits[row] for row, slot in enumerate(self._last_rows)}

    def last_prefill_logits(self, slot: int) -> torch.Tensor:
        """The raw logits the slot's first token was sampled from (valid until the next prefill pass)."""
        return self._prefill_logits[slot]

    def _capture_graphs(self) -> None:
        self.row_slot.fill_(self._pad)
        self._rows_dirty = True
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for b in sorted(self.buckets, reverse=True):  # largest first: the shared pool is sized by it
            for with_lora in (False, True) if self.lora_pool is not None else (False,):
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(2):
                        self._decode_body(b, with_lora)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = self._capture(b, with_lora, pool)
                (self._lora_graphs if with_lora else self._graphs)[b] = graph
        torch.cuda.synchronize(self.device)
        _log.info("captured %d decode graphs", len(self._graphs) + len(self._lora_graphs))

    def _capture(self, b: int, with_lora: bool, pool: Any) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                self._decode_body(b, with_lora)
        except RuntimeError as exc:
            # the adapters' side stream is the one part a capture could refuse: capture again without it
            if (
                not with_lora
                or self.lora_pool is None
                or self.lora_pool.side is None
                or "out of memory" in str(exc)
            ):
                raise
            _log.warning("capture with the adapters' side stream failed (%s): one stream from now on", exc)
            self.lora_pool.side = None
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                self._decode_body(b, with_lora)
        self.graph_captures += 1
        return graph

    def close(self) -> None:
        """Drop the graphs and the KV cache (the model's weights stay). Idempotent."""
        if not hasattr(self, "model"):
            return
        if self.requests:
            self._log_reuse()
        self._in_flight = None  # its ids are not wanted any more
        if self.device.type == "cuda":
            # no graph is destroyed while it runs (a launch may still be in flight)
            torch.cuda.synchronize(self.device)
        self._graphs.clear()
        self._lora_graphs.clear()
        self.lora_pool = None
        self._active.clear()
        self._pending.clear()
        for slot in range(self._capacity):
            self.pool.release(slot)
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _rows(m: object) -> int:
    """Rows of a weight matrix (a tensor or an Fp8Weight)."""
    return int(m.shape[0])  # type: ignore[attr-defined]
