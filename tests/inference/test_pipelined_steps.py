"""Pipelined decode steps (``StaticSlotDecoder(pipeline_steps=True)``): ``step`` launches its decode step and returns
the previous launch's tokens, so the engine's host work overlaps the GPU's.

CPU, float32, the tiny Llama of test_fast_decoder with the pipeline forced on (torch is synchronous here, but the
bookkeeping is the GPU's): served like the engine's worker serves (admit or submit into the lowest free slot, step,
stop on a stop token, max_new_tokens or a cancel, release at once), every request gets the tokens of transformers'
greedy ``generate``, exactly as with the pipeline off: requests of different lengths joining and leaving, chunked
prefill inside steps, a slot released mid-reply and given to the next request before the step computed ahead for it
is read (its token never reaches the newcomer), conversations over prefix reuse (the same blocks reused), a batch
mixing a LoRA and the base. The extra step computed for an ended request stays inside its reserved KV.
The engine end to end (``HANBOT_PIPELINE_STEPS=1``) streams the replies it streams with the pipeline off.
GPU (skipped on CPU): pipelined and plain steps give the same tokens with CUDA graphs, where the pipeline is the default.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from bot.domain import GenerationParams
from bot.settings import EngineSettings, GenerationSettings
from inference.decoder import BatchDecoder, SlotRequest
from inference.fast import StaticSlotDecoder
from inference.fast.pipeline import PIPELINE_ENV, resolve_pipeline
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import collect, request
from tests.inference.test_fast_decoder import config_70b_widths, hf_greedy, prompts, sharp_tiny_llama
from tests.inference.test_fast_lora import save_adapter


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    return sharp_tiny_llama()


def greedy(n: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=n, do_sample=False, repetition_penalty=1.0)


@dataclass
class Job:
    prompt: list[int]
    max_new: int
    arrives: int = 0  # the step count from which it waits for a slot
    stop: frozenset[int] = frozenset()
    cancel_after: int | None = None  # released after this many tokens, as a cancel is
    lora: str | None = None

    def expected(self, reference: list[int]) -> list[int]:
        """The reply the engine delivers, given the model's greedy continuation (at least max_new tokens)."""
        out = reference[: self.max_new]
        ends = [i + 1 for i, t in enumerate(out) if t in self.stop]
        if ends:
            out = out[: ends[0]]
        return out[: self.cancel_after] if self.cancel_after is not None else out


@dataclass
class Served:
    replies: list[list[int]]
    slots: list[list[int]] = field(default_factory=list)  # the slots each job ran in
    steps: int = 0


def serve(
    dec: StaticSlotDecoder,
    jobs: list[Job],
    *,
    interleave: bool,
    before_step: Callable[[int], None] | None = None,
) -> Served:
    """Serve ``jobs`` as the engine's worker does: arrivals take the lowest free slot (submit, or admit with its first
    token at once), one ``step`` while any slot is busy, each token delivered to its slot's job, a job released as soon
    as it ends. Fails on a token for a slot no job holds, and when an ended job's KV went past its reservation."""
    served = Served([[] for _ in jobs], [[] for _ in jobs])
    running: dict[int, int] = {}  # slot -> job
    waiting = list(range(len(jobs)))

    def deliver(slot: int, token: int) -> None:
        i = running[slot]  # KeyError: a token for a slot that no job holds
        job, reply = jobs[i], served.replies[i]
        reply.append(token)
        if token in job.stop or len(reply) >= job.max_new or len(reply) == job.cancel_after:
            # the step computed ahead wrote one position more at most: still inside prompt + max_new_tokens
            assert int(dec.slot_len[slot]) <= len(job.prompt) + job.max_new
            dec.release(slot)
            del running[slot]

    while waiting or running:
        for i in [w for w in waiting if jobs[w].arrives <= served.steps]:
            slot = next((s for s in range(dec.capacity) if s not in running), None)
            if slot is None:
                break
            waiting.remove(i)
            running[slot] = i
            served.slots[i].append(slot)
            job = jobs[i]
            req = SlotRequest(slot, tuple(job.prompt), greedy(job.max_new), lora=job.lora)
            if interleave:
                dec.submit(req)
            else:
                deliver(slot, dec.admit(req))
        if before_step is not None:
            before_step(served.steps)
        if running:
            for slot, token in dec.step().items():
                deliver(slot, token)
        served.steps += 1
        assert served.steps < 2000
    assert dec._in_flight is None  # every slot it covered was released: nothing is left to read
    return served


def mixed_jobs(model: LlamaForCausalLM) -> tuple[list[Job], list[list[int]]]:
    """Requests of different lengths arriving over time, two with a stop token met mid-reply, one cancelled, one
    of a single token; one whose prompt + max_new_tokens ends on a block boundary. With the model's references."""
    ps = prompts(7, (7, 45, 130, 1, 64, 20, 33), model.config.vocab_size, seed=21)
    refs = [hf_greedy(model, p, 24) for p in ps]
    jobs = [
        Job(ps[0], 24, arrives=0),
        Job(ps[1], 20, arrives=0, stop=frozenset({refs[1][6]})),
        Job(ps[2], 16, arrives=2, cancel_after=5),
        Job(ps[3], 1, arrives=3),
        Job(ps[4], 12, arrives=4, stop=frozenset({refs[4][3]})),
        Job(ps[5], 12, arrives=5),  # 20 + 12 = two 16-token blocks exactly
        Job(ps[6], 24, arrives=6),
    ]
    return jobs, refs


def tiny_decoder(model: LlamaForCausalLM, pipeline: bool, **kw: Any) -> StaticSlotDecoder:
    options: dict[str, Any] = dict(capacity=3, block_size=16, prefill_chunk=48, max_context=512)
    options.update(kw)
    return StaticSlotDecoder(model, pipeline_steps=pipeline, **options)


def test_the_switch() -> None:
    assert resolve_pipeline(True, False) and not resolve_pipeline(False, True)
    assert not resolve_pipeline(None, True) and not resolve_pipeline(None, False)  # opt-in (round 5 GPU test)


def test_the_switch_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIPELINE_ENV, "0")
    assert not resolve_pipeline(None, True)
    assert resolve_pipeline(True, True)  # an explicit choice wins
    monkeypatch.setenv(PIPELINE_ENV, "1")
    assert resolve_pipeline(None, False)
    monkeypatch.setenv(PIPELINE_ENV, "yes")
    assert not resolve_pipeline(None, False)  # not 0/1: the default


@pytest.mark.parametrize("interleave", [True, False])
def test_pipelined_replies_equal_generate_and_plain_steps(
    tiny_model: LlamaForCausalLM, interleave: bool
) -> None:
    jobs, refs = mixed_jobs(tiny_model)
    want = [job.expected(ref) for job, ref in zip(jobs, refs, strict=True)]
    assert len(want[1]) < 20 and len(want[2]) == 5 and len(want[4]) < 12  # stops and a cancel happen
    plain = serve(tiny_decoder(tiny_model, False), jobs, interleave=interleave)
    dec = tiny_decoder(tiny_model, True)
    assert dec.pipeline_steps
    piped = serve(dec, jobs, interleave=interleave)
    assert plain.replies == want
    assert piped.replies == want
    assert (
        piped.slots == plain.slots
    )  # the same schedule: each job ran in the slot it ran in without the pipeline
    assert piped.steps >= plain.steps  # a slot's tokens come a step later


def test_a_slot_given_to_the_next_request_gets_none_of_the_step_computed_ahead(
    tiny_model: LlamaForCausalLM,
) -> None:
    """A reply cancelled mid-way: its slot goes at once to a waiting request, before the step already launched
    for the cancelled reply is read. The newcomer's tokens are its own (slot 0 both times, both ways of admission)."""
    ps = prompts(3, (30, 50, 12), tiny_model.config.vocab_size, seed=22)
    for interleave in (True, False):
        jobs = [Job(ps[0], 20, cancel_after=4), Job(ps[1], 20), Job(ps[2], 10)]
        dec = tiny_decoder(tiny_model, True, capacity=2)
        served = serve(dec, jobs, interleave=interleave)
        assert served.slots == [[0], [1], [0]]
        assert served.replies == [job.expected(hf_greedy(tiny_model, job.prompt, 20)) for job in jobs]


def test_a_released_slot_is_never_returned(tiny_model: LlamaForCausalLM) -> None:
    """Driven by hand: the launch still unread when its only slot is released is forgotten; with two slots, the
    released one's token is dropped and the other's comes back."""
    ps = prompts(2, (10, 20), tiny_model.config.vocab_size, seed=23)
    dec = tiny_decoder(tiny_model, True, capacity=2)
    ref = [hf_greedy(tiny_model, p, 6) for p in ps]
    assert dec.admit(SlotRequest(0, tuple(ps[0]), greedy(6))) == ref[0][0]
    assert dec.step() == {}  # launched; its token comes with the next call
    dec.release(0)
    assert dec._in_flight is None
    assert dec.admit(SlotRequest(0, tuple(ps[1]), greedy(6))) == ref[1][0]
    assert dec.admit(SlotRequest(1, tuple(ps[0]), greedy(6))) == ref[0][0]
    assert dec.step() == {}
    assert dec.step() == {0: ref[1][1], 1: ref[0][1]}
    dec.release(1)
    assert dec._in_flight is not None  # slot 0's token is still wanted
    assert dec.step() == {0: ref[1][2]}
    dec.release(0)
    dec.release(0)  # idempotent
    assert dec.step() == {}


def test_a_failed_launch_leaves_the_previous_one_to_the_next_step(
    tiny_model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(1, (12,), tiny_model.config.vocab_size, seed=26)[0]
    ref = hf_greedy(tiny_model, p, 6)
    dec = tiny_decoder(tiny_model, True, capacity=1)
    assert dec.admit(SlotRequest(0, tuple(p), greedy(6))) == ref[0]
    assert dec.step() == {}

    def failing(slots: list[int]) -> None:
        raise RuntimeError("injected launch failure")

    with monkeypatch.context() as patch:
        patch.setattr(dec, "_launch", failing)
        with pytest.raises(RuntimeError, match="injected"):
            dec.step()
    assert dec.step() == {0: ref[1]}
    assert dec.step() == {0: ref[2]}


def test_close_with_a_launch_in_flight(tiny_model: LlamaForCausalLM) -> None:
    dec = tiny_decoder(tiny_model, True, capacity=2)
    dec.submit(SlotRequest(0, (5, 6, 7), greedy(8)))
    assert list(dec.step()) == [0]  # the first token, from the prefill
    assert dec.step() == {}
    assert dec._in_flight is not None
    dec.close()
    assert dec._in_flight is None
    dec.release(0)
    dec.close()  # idempotent


def test_turning_the_pipeline_off_and_on_between_steps(tiny_model: LlamaForCausalLM) -> None:
    jobs, refs = mixed_jobs(tiny_model)
    dec = tiny_decoder(tiny_model, True)

    def toggle(step: int) -> None:
        if step % 3 == 0:
            dec.pipeline_steps = not dec.pipeline_steps

    served = serve(dec, jobs, interleave=True, before_step=toggle)
    assert served.replies == [job.expected(ref) for job, ref in zip(jobs, refs, strict=True)]


def test_last_step_logits_are_those_of_the_tokens_the_next_step_returns(tiny_model: LlamaForCausalLM) -> None:
    ps = prompts(2, (15, 40), tiny_model.config.vocab_size, seed=24)
    dec = tiny_decoder(tiny_model, True, capacity=2)
    dec.admit_many([SlotRequest(i, tuple(p), greedy(10)) for i, p in enumerate(ps)])
    assert dec.step() == {}
    predicted = {slot: int(row.argmax()) for slot, row in dec.last_step_logits().items()}
    for _ in range(6):
        got = dec.step()
        assert got == predicted
        predicted = {slot: int(row.argmax()) for slot, row in dec.last_step_logits().items()}


def conversation_jobs(model: LlamaForCausalLM, dec: StaticSlotDecoder) -> tuple[list[list[int]], int]:
    """Two channels, three turns each (every prompt the previous one, its reply and a new message), served one
    turn at a time; returns the replies and the prompt tokens whose KV was reused."""
    history = {0: list(range(100, 170)), 1: list(range(200, 245))}
    replies: list[list[int]] = []
    for turn in range(3):
        if turn:
            for ch in (0, 1):
                history[ch] += [5 + turn, 9 + ch, 11, 13, 17, 19, 23]
        jobs = [Job(list(history[ch]), 13 + 2 * ch) for ch in (0, 1)]
        served = serve(dec, jobs, interleave=True)
        for ch in (0, 1):
            history[ch] += served.replies[ch]
        replies += served.replies
    return replies, dec.prefix_hit_tokens


def test_prefix_reuse_across_turns_is_the_same_with_the_pipeline(tiny_model: LlamaForCausalLM) -> None:
    """The blocks a turn leaves cached are exactly those it leaves without the pipeline (the step computed ahead
    writes past them), and reusing them gives the replies of a decoder that reuses nothing."""
    fresh, none = conversation_jobs(tiny_model, tiny_decoder(tiny_model, False, prefix_cache=False))
    assert none == 0
    plain, hits = conversation_jobs(tiny_model, tiny_decoder(tiny_model, False))
    piped, piped_hits = conversation_jobs(tiny_model, tiny_decoder(tiny_model, True))
    assert hits > 0
    assert piped == plain == fresh
    assert piped_hits == hits


def test_a_batch_mixing_an_adapter_and_the_base(tiny_model: LlamaForCausalLM, tmp_path: Path) -> None:
    peft: PeftModel = save_adapter(tiny_model, tmp_path / "a", seed=1)
    dec = tiny_decoder(copy.deepcopy(tiny_model), True, lora_slots=1, lora_max_rank=8)
    dec.load_lora("a", str(tmp_path / "a"))
    ps = prompts(4, (9, 70, 33, 20), tiny_model.config.vocab_size, seed=25)
    jobs = [
        Job(ps[0], 16, lora="a"),
        Job(ps[1], 12),
        Job(ps[2], 16, arrives=2, lora="a"),
        Job(ps[3], 10, arrives=3),  # takes slot 1 or 0 after a base or an adapter request
    ]
    want = [
        hf_greedy(peft if job.lora else tiny_model, job.prompt, job.max_new)  # type: ignore[arg-type]
        for job in jobs
    ]
    assert want[0] != hf_greedy(tiny_model, ps[0], 16)  # the adapter really changes the reply
    assert serve(dec, jobs, interleave=True).replies == want


# ---- the engine --------------------------------------------------------------------------------------------------

QUESTIONS = ["What is hanbot?", "What does /reset do?", "안녕하세요", "Hello", "What is hanbot?"]


async def engine_replies(loaded: LoadedModel, decoders: list[StaticSlotDecoder]) -> list[str]:
    def factory(model: Any, settings: EngineSettings) -> BatchDecoder:
        decoder = StaticSlotDecoder(model, capacity=3, block_size=16, prefill_chunk=32, max_context=512)
        decoders.append(decoder)
        return decoder

    engine = LocalEngine(
        loaded.model,
        loaded.tokenizer,
        engine=EngineSettings(decoder="static", max_batch_size=3),
        generation=GenerationSettings(timeout_s=120),
        decoder_factory=factory,
    )
    try:
        got = await asyncio.gather(
            *(
                collect(engine, request(q, channel=f"c{i}", request_id=f"r{i}"))
                for i, q in enumerate(QUESTIONS)
            )
        )
    finally:
        await engine.aclose()
    assert [r.error for r in got] == [None] * len(QUESTIONS)
    return [r.text for r in got]


async def test_the_engine_streams_the_same_replies(
    demo_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five requests for three slots (two wait, then take slots freed at once), prompts prefilled inside steps:
    with ``HANBOT_PIPELINE_STEPS=1`` the replies are those of ``=0``."""
    replies = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(PIPELINE_ENV, flag)
        decoders: list[StaticSlotDecoder] = []
        replies[flag] = await engine_replies(demo_loaded, decoders)
        assert decoders[0].pipeline_steps == (flag == "1")
    assert replies["1"] == replies["0"]
    assert all(replies["0"])


# ---- GPU ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
def test_gpu_pipelined_graph_steps_give_the_plain_steps_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two layers at the 70B's widths in bf16, CUDA graphs: the pipeline is the default, and its tokens (read back
    through pinned buffers and events, rows uploaded from pinned staging) are the plain steps'. Every schedule here
    decodes the same rows at every step in both modes (all requests start together and run to the same length), so
    the bf16 arithmetic is the same and the tokens must be equal, not merely close."""
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    cfg = config_70b_widths()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    common: dict[str, Any] = dict(capacity=4, max_context=2048, kv_budget_bytes=2 << 30)
    plain = StaticSlotDecoder(model, pipeline_steps=False, **common)
    piped = StaticSlotDecoder(model, **common)
    assert piped._graphs and piped.pipeline_steps and not plain.pipeline_steps
    ps = prompts(3, (100, 517, 1100), cfg.vocab_size, seed=6)
    for interleave in (False, True):  # admitted one by one; or submitted, all three prefilled in one pass
        jobs = [Job(p, 32) for p in ps]
        want = serve(plain, jobs, interleave=interleave)
        got = serve(piped, jobs, interleave=interleave)
        assert got.replies == want.replies
        assert got.steps == want.steps + 1  # the one step computed ahead, read by nobody
    assert piped._row_upload.uploads >= 2
    for dec in (plain, piped):
        dec.close()
