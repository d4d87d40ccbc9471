"""Prefix reuse in the fast decoder (kv.BlockPool): replies with reuse equal those without, token for token.

CPU, float32, the tiny Llama of test_fast_decoder: conversations of several turns (each prompt is the previous
prompt, the reply and a new message), several channels at once, prompts prefilled in small chunks, FP8 weights, a
pool so small that cached blocks are evicted, two LoRA adapters served at once (SlotRequest.lora: part of the
key), and (test_tensor_parallel) two gloo ranks. The reused token counts are checked against what the previous turn left in
full blocks.
GPU (skipped on CPU): the reused path's logits against recomputing the whole prompt, at the 70B's widths in bf16.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from bot.domain import ChatTurn, GenerationParams, GenerationRequest, Role
from bot.settings import EngineSettings, GenerationSettings
from inference.decoder import BatchDecoder, SlotRequest
from inference.demo_model import SYSTEM_PROMPT
from inference.fast import StaticSlotDecoder
from inference.fast.kv import BlockPool, KVBudget
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference import engine_helpers
from tests.inference.test_fast_decoder import _rel, config_70b_widths, prompts, sharp_tiny_llama, tiny_config

GREEDY = GenerationParams(max_new_tokens=10, do_sample=False, repetition_penalty=1.0)
PENALTY = GenerationParams(max_new_tokens=10, do_sample=False, repetition_penalty=1.3)
BS = 16


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    """test_fast_decoder's tiny Llama: sharp logits, so greedy choices are not near-ties."""
    return sharp_tiny_llama()


@dataclass
class Conversation:
    system: list[int]
    messages: list[list[int]]  # one user message per turn
    lora: str | None = None
    history: list[int] = field(default_factory=list)  # the last prompt and its reply
    replies: list[list[int]] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)

    def prompt(self, turn: int) -> list[int]:
        return (self.history or self.system) + self.messages[turn]


def run_turn(dec: StaticSlotDecoder, convs: list[Conversation], turn: int, params: GenerationParams) -> None:
    """Every conversation sends its ``turn``-th message at once; admitted while slots and KV memory allow
    (``can_admit_together``), prefilled through ``submit`` inside the steps; released as each reply ends."""
    waiting = list(range(len(convs)))
    slot_of: dict[int, int] = {}
    got: dict[int, list[int]] = {}
    while waiting or slot_of:
        free = [s for s in range(dec.capacity) if s not in slot_of]
        while waiting and free:
            prompt = convs[waiting[0]].prompt(turn)
            sizes = [(len(convs[i].prompt(turn)), params.max_new_tokens) for i in slot_of.values()]
            if slot_of and not dec.can_admit_together([*sizes, (len(prompt), params.max_new_tokens)]):
                break
            i, slot = waiting.pop(0), free.pop(0)
            dec.submit(SlotRequest(slot, tuple(prompt), params, lora=convs[i].lora))
            slot_of[slot] = i
            got[i] = []
            convs[i].hits.append(dec.last_prefix_hit[slot])
            convs[i].prompt_lens.append(len(prompt))
        for slot, token in dec.step().items():
            got[slot_of[slot]].append(token)
        for slot, i in list(slot_of.items()):
            if len(got[i]) >= params.max_new_tokens:
                dec.release(slot)
                del slot_of[slot]
                conv = convs[i]
                conv.history = conv.prompt(turn) + got[i]
                conv.replies.append(got[i])


def make_conversations(
    channels: int, turns: int, first: int, follow: int, system: int = 0, seed: int = 11
) -> list[Conversation]:
    vocab = tiny_config().vocab_size
    shared = prompts(1, (system,), vocab, seed=seed)[0] if system else []
    convs = []
    for c in range(channels):
        lengths = (first, *([follow] * (turns - 1)))
        msgs = prompts(turns, lengths, vocab, seed=seed + 1 + c)
        convs.append(Conversation(shared, msgs))
    return convs


def converse(dec: StaticSlotDecoder, convs: list[Conversation], params: GenerationParams = GREEDY) -> None:
    for turn in range(len(convs[0].messages)):
        run_turn(dec, convs, turn, params)


def expected_hit(previous_written: int, prompt_len: int) -> int:
    """Full blocks the previous turn left, never the whole prompt: one token is always computed."""
    return min(previous_written // BS, (prompt_len - 1) // BS) * BS


def decoders(model: LlamaForCausalLM, **kw: object) -> tuple[StaticSlotDecoder, StaticSlotDecoder]:
    common: dict[str, object] = dict(capacity=4, block_size=BS, max_context=512, **kw)
    return (
        StaticSlotDecoder(model, prefix_cache=True, **common),  # type: ignore[arg-type]
        StaticSlotDecoder(model, prefix_cache=False, **common),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("params", [GREEDY, PENALTY], ids=["greedy", "repetition-penalty"])
def test_turns_with_reuse_equal_turns_without(tiny_model: LlamaForCausalLM, params: GenerationParams) -> None:
    with_reuse, without = decoders(tiny_model)
    a = make_conversations(channels=3, turns=4, first=40, follow=9)
    b = make_conversations(channels=3, turns=4, first=40, follow=9)
    converse(with_reuse, a, params)
    converse(without, b, params)
    assert [c.replies for c in a] == [c.replies for c in b]
    for conv in a:
        assert conv.hits[0] == 0
        for turn in range(1, 4):
            written = conv.prompt_lens[turn - 1] + params.max_new_tokens - 1  # the last token was never run
            assert conv.hits[turn] == expected_hit(written, conv.prompt_lens[turn]) > 0
    assert all(h == 0 for c in b for h in c.hits)
    assert with_reuse.prefix_hit_tokens == sum(sum(c.hits) for c in a)
    assert without.prefix_hit_tokens == 0


def test_chunked_prefill_starts_after_the_reused_tokens(tiny_model: LlamaForCausalLM) -> None:
    # 8-token prefill passes: a prompt is prefilled over several steps, beside running replies, from the middle of
    # a block on (the reused length is whole blocks, the chunks are not aligned to them)
    with_reuse, without = decoders(tiny_model, prefill_chunk=8)
    a = make_conversations(channels=3, turns=3, first=37, follow=21, seed=21)
    b = make_conversations(channels=3, turns=3, first=37, follow=21, seed=21)
    converse(with_reuse, a)
    converse(without, b)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert all(h > 0 for c in a for h in c.hits[1:])


def test_fp8_weights_with_reuse_equal_fp8_weights_without(tiny_model: LlamaForCausalLM) -> None:
    common: dict[str, object] = dict(capacity=4, block_size=BS, max_context=512, prefill_chunk=24)
    with_reuse = StaticSlotDecoder(copy.deepcopy(tiny_model), fp8=True, **common)  # type: ignore[arg-type]
    assert with_reuse.fp8
    # the same FP8 weights (the build released the copy's own matrices), served without reuse
    without = StaticSlotDecoder(with_reuse._weights, prefix_cache=False, **common)  # type: ignore[arg-type]
    a = make_conversations(channels=3, turns=3, first=40, follow=9, seed=91)
    b = make_conversations(channels=3, turns=3, first=40, follow=9, seed=91)
    converse(with_reuse, a, PENALTY)
    converse(without, b, PENALTY)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert all(h > 0 for c in a for h in c.hits[1:])


def test_system_prompt_is_shared_across_channels(tiny_model: LlamaForCausalLM) -> None:
    with_reuse, without = decoders(tiny_model)
    a = make_conversations(channels=3, turns=1, first=12, follow=5, system=40, seed=31)
    b = make_conversations(channels=3, turns=1, first=12, follow=5, system=40, seed=31)
    run_turn(with_reuse, a[:1], 0, GREEDY)  # the first channel alone: its blocks are cached when it ends
    run_turn(with_reuse, a[1:], 0, GREEDY)
    run_turn(without, b, 0, GREEDY)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert [c.hits[0] for c in a] == [0, 32, 32]  # the system prompt's two full blocks
    # all released: the whole pool is free again (cached blocks count as free)
    assert with_reuse.pool.free_blocks == with_reuse.pool.num_blocks - 1


def test_eviction_under_a_small_pool(tiny_model: LlamaForCausalLM) -> None:
    spec_bytes = 3 * 2 * 2 * 8 * 2  # layers * (k, v) * kv_heads * head_dim * 2 (the budget counts 16-bit KV)
    # 15 usable blocks (240 tokens): two running requests fit, three conversations' caches do not
    budget = spec_bytes * BS * 16
    with_reuse, without = decoders(tiny_model, kv_budget_bytes=budget)
    assert with_reuse.pool.num_blocks == 16
    a = make_conversations(channels=3, turns=4, first=30, follow=9, system=20, seed=41)
    b = make_conversations(channels=3, turns=4, first=30, follow=9, system=20, seed=41)
    converse(with_reuse, a)
    converse(without, b)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert with_reuse.pool.evictions > 0  # cached blocks were handed out again...
    assert sum(h for c in a for h in c.hits) > 0  # ...and some were still there to reuse
    # nobody ever waited for a cached block: when everything is released, all of the pool is free
    assert with_reuse.pool.free_blocks == with_reuse.pool.num_blocks - 1
    assert with_reuse.can_admit(100, 100) and with_reuse.can_admit_together([(100, 50), (60, 20)])


@pytest.mark.parametrize("kv_fp8", [False, True], ids=["kv-f32", "kv-fp8"])
def test_two_adapters_with_reuse_equal_two_adapters_without(
    tiny_model: LlamaForCausalLM, tmp_path: Path, kv_fp8: bool
) -> None:
    """Conversations served with two LoRA adapters and the base model at once: the same replies with reuse as
    without, and the same tokens under another adapter (or the base) find nothing: an adapter changes the KV."""
    from tests.inference.test_fast_lora import save_adapter

    for name, seed in (("a", 1), ("b", 2)):
        save_adapter(tiny_model, tmp_path / name, seed=seed)
    with_reuse, without = decoders(tiny_model, lora_slots=2, kv_fp8=kv_fp8)
    runs: dict[bool, list[Conversation]] = {}
    for reuse, dec in ((True, with_reuse), (False, without)):
        dec.load_lora("a", str(tmp_path / "a"))
        dec.load_lora("b", str(tmp_path / "b"))
        base = make_conversations(channels=1, turns=3, first=40, follow=9, seed=51)[0]
        runs[reuse] = [Conversation(base.system, base.messages, lora=lora) for lora in (None, "a", "b")]
        for conv in runs[reuse]:  # one after the other: each finds the blocks the earlier ones left, if any
            converse(dec, [conv])
    assert [c.replies for c in runs[True]] == [c.replies for c in runs[False]]
    assert len({tuple(c.replies[0]) for c in runs[True]}) == 3  # each adapter really changes the replies
    for conv in runs[True]:
        assert conv.hits[0] == 0, conv.lora  # the same first prompt under another adapter: nothing found
        assert all(h > 0 for h in conv.hits[1:]), conv.lora  # its own earlier turns are
    # an adapter unloaded and another loaded under the same id: the old KV is never found
    with_reuse.retire_lora("a")
    with_reuse.load_lora("a", str(tmp_path / "b"))
    again = Conversation(runs[True][1].system, runs[True][1].messages, lora="a")
    converse(with_reuse, [again])
    assert again.hits[0] == 0
    assert again.replies == runs[True][2].replies  # adapter b's weights under the id "a"


def test_pool_keys_blocks_by_position_and_parent() -> None:
    pool = BlockPool(
        KVBudget(num_blocks=9, block_size=4), slots=2, max_blocks_per_slot=8, device=torch.device("cpu")
    )
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    blocks, reused = pool.reserve(0, 12, a)
    assert reused == 0
    pool.remember(0, a[:8], None)
    pool.release(0)
    assert pool.free_blocks == 8 and pool.cached_blocks == 2
    assert len(pool.match(a, None)) == 2
    assert pool.match([5, 6, 7, 8, 1, 2, 3, 4, 0], None) == []  # the same block content at another position
    assert len(pool.match([1, 2, 3, 4, 0, 0, 0, 0, 0], None)) == 1  # a shared first block only
    assert pool.match(a[:8], None) == blocks[:1]  # never the whole prompt: one token is left to compute
    assert pool.match(a, "lora#1") == []
    # eviction: least recently released first, and a conversation's tail before its beginning
    _, reused = pool.reserve(1, 28, [9] * 28)
    assert reused == 0 and pool.evictions == 1 and len(pool.match(a, None)) == 1


def test_warm_burst_leaves_nothing_behind(tiny_model: LlamaForCausalLM) -> None:
    """The start-up burst (on by default on a GPU) runs the real paths and then forgets them: the pool is all free
    with nothing cached, the counters are zero, and replies are the same as from a decoder that skipped it."""
    warmed = StaticSlotDecoder(
        tiny_model, capacity=4, block_size=BS, max_context=512, prefill_chunk=64, warm_burst=True
    )
    assert warmed.pool.free_blocks == warmed.pool.num_blocks - 1 and warmed.pool.cached_blocks == 0
    assert warmed.warm_burst_reused == 4 * 16  # its second round started from the first round's blocks
    assert warmed.prefix_hit_tokens == warmed.prompt_tokens == 0 and not warmed.last_prefix_hit
    assert not warmed._seq and not warmed._active and not warmed._pending
    cold, _ = decoders(tiny_model, prefill_chunk=64)
    a = make_conversations(channels=3, turns=2, first=40, follow=9, seed=61)
    b = make_conversations(channels=3, turns=2, first=40, follow=9, seed=61)
    converse(warmed, a, PENALTY)
    converse(cold, b, PENALTY)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert [c.hits for c in a] == [c.hits for c in b]


async def test_engine_conversation_with_reuse_answers_like_without(demo_loaded: LoadedModel) -> None:
    """Through LocalEngine.generate with the demo model and its chat template: each turn's prompt is the whole
    conversation (the replies as the engine streamed them); the replies are the same with and without reuse, and
    from the second turn on the KV of the earlier turns is reused."""
    questions = ["What is hanbot?", "What does /reset do?", "안녕하세요", "Hello"]
    replies: dict[bool, list[str]] = {}
    hits: dict[bool, list[int]] = {}
    for reuse in (True, False):
        built: list[StaticSlotDecoder] = []

        def factory(
            model: Any, settings: EngineSettings, reuse: bool = reuse, built: list[StaticSlotDecoder] = built
        ) -> BatchDecoder:
            built.append(
                StaticSlotDecoder(model, capacity=2, block_size=16, max_context=1024, prefix_cache=reuse)
            )
            return built[-1]

        engine = LocalEngine(
            demo_loaded.model,
            demo_loaded.tokenizer,
            engine=EngineSettings(decoder="static", max_batch_size=2),
            generation=GenerationSettings(timeout_s=120),
            decoder_factory=factory,
        )
        turns: list[ChatTurn] = [ChatTurn(Role.SYSTEM, SYSTEM_PROMPT)]
        replies[reuse], hits[reuse] = [], []
        try:
            for i, question in enumerate(questions):
                turns.append(ChatTurn(Role.USER, question))
                before = built[0].prefix_hit_tokens
                req = GenerationRequest(f"r{i}", "c", tuple(turns), engine_helpers.GREEDY)
                reply = await engine_helpers.collect(engine, req)
                assert reply.error is None
                turns.append(ChatTurn(Role.ASSISTANT, reply.text))
                replies[reuse].append(reply.text)
                hits[reuse].append(built[0].prefix_hit_tokens - before)
        finally:
            await engine.aclose()
    assert replies[True] == replies[False]
    assert hits[False] == [0, 0, 0, 0]
    assert hits[True][0] == 0 and all(h > 0 for h in hits[True][1:]), hits[True]


# ---- GPU --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the 70B-width bf16 check runs there)"
)
def test_gpu_reused_prefix_logits_match_recomputing_it() -> None:
    """A second turn served from the first turn's cached KV (prompt and reply) against the same prompt computed
    from scratch: next-token logits over 16 steps within bf16 tolerance (the relative error is printed), and the
    distance of both from the float32 eager forward."""
    cfg = config_70b_widths()
    torch.manual_seed(0)
    with torch.device("cuda"):
        ref32 = LlamaForCausalLM(cfg).eval()
    try:
        ref32.set_attn_implementation("eager")
    except AttributeError:
        ref32.config._attn_implementation = "eager"
    model = copy.deepcopy(ref32).to(torch.bfloat16)
    # one token per step, in step with last_step_logits: the plain steps (test_pipelined_steps covers the pipeline)
    dec = StaticSlotDecoder(
        model, capacity=2, max_context=4096, kv_budget_bytes=2 << 30, pipeline_steps=False
    )
    steps = 16
    params = GenerationParams(max_new_tokens=steps, do_sample=False, repetition_penalty=1.0)
    first, follow = prompts(2, (1100, 70), cfg.vocab_size, seed=9)

    def serve(prompt: list[int]) -> tuple[list[int], torch.Tensor]:
        tokens = [dec.admit(SlotRequest(0, tuple(prompt), params))]
        logits = [dec.last_prefill_logits(0).clone()]
        for _ in range(steps - 1):
            tokens.append(dec.step()[0])
            logits.append(dec.last_step_logits()[0].clone())
        dec.release(0)
        return tokens, torch.stack(logits)

    reply, _ = serve(first)
    second = first + reply + follow
    tokens_reused, reused = serve(second)
    hit = dec.last_prefix_hit[0]
    assert hit == (len(first) + steps - 1) // 64 * 64 > 1000
    dec.pool.forget_cached()
    tokens_fresh, fresh = serve(second)
    assert dec.last_prefix_hit[0] == 0
    # rows computed from the same inputs: up to the first step where the two greedy paths part (if they do)
    agree = next(
        (i for i, (a, b) in enumerate(zip(tokens_reused, tokens_fresh, strict=True)) if a != b), steps
    )
    rows = min(steps, agree + 1)
    full = torch.tensor([second + tokens_fresh[: rows - 1]], device="cuda")
    with torch.no_grad():
        want32 = ref32(full).logits[0, len(second) - 1 :].float()
    reused, fresh = reused[:rows], fresh[:rows]
    e_reuse, e_fresh, e_ref = _rel(reused, fresh), _rel(reused, want32), _rel(fresh, want32)
    print(
        f"GPU_PREFIX_REUSE_REL_ERR reused_vs_recomputed={e_reuse:.3e} reused_vs_eager_fp32={e_fresh:.3e} "
        f"recomputed_vs_eager_fp32={e_ref:.3e} reused_tokens={hit} greedy_steps_equal={agree}/{steps}"
    )
    # bf16 tolerance: reusing the KV moves the logits no more than bf16 rounding moves the recomputed ones
    assert e_fresh <= 1.25 * e_ref + 1e-2
    assert e_reuse <= 2 * e_ref + 1e-2
