"""engine.interleave_prefill: a newcomer's prompt is prefilled in chunks between decode steps, so a running reply
keeps streaming, and the replies are the same as with the whole prompt prefilled at admission. A prefill that fails
inside a step ends only its own request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.domain import GenerationParams, QueuePosition
from bot.errors import GenerationFailed
from bot.settings import EngineSettings, GenerationSettings
from inference.decoder import BatchDecoder, SlotRequest
from inference.fast import StaticSlotDecoder
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import collect, request

QUESTIONS = ["What is hanbot?", "What does /reset do?", "안녕하세요", "Hello"]


class Recording(StaticSlotDecoder):
    """The static decoder, logging when a prompt is queued, when a first token comes from admission, and which
    slots each step returned a token for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, Any]] = []

    def submit(self, request: SlotRequest) -> None:
        self.log.append(("queued", request.slot))
        super().submit(request)

    def admit(self, request: SlotRequest) -> int:
        token = super().admit(request)  # queues through submit, then prefills the whole prompt
        self.log.append(("admitted", request.slot))
        return token

    def step(self) -> dict[int, int]:
        out = super().step()
        self.log.append(("step", sorted(out)))
        return out


def engine_with(loaded: LoadedModel, interleave: bool, decoders: list[Recording]) -> LocalEngine:
    def factory(model: Any, settings: EngineSettings) -> BatchDecoder:
        # 16-token prefill passes: a ~90-token prompt takes six steps (without prefix reuse: the prompts share the
        # system prompt, whose KV a newcomer would otherwise reuse; test_prefix_reuse covers both together)
        decoder = Recording(
            model, capacity=4, block_size=16, prefill_chunk=16, max_context=512, prefix_cache=False
        )
        decoders.append(decoder)
        return decoder

    return LocalEngine(
        loaded.model,
        loaded.tokenizer,
        engine=EngineSettings(decoder="static", max_batch_size=4, interleave_prefill=interleave),
        generation=GenerationSettings(timeout_s=120),
        decoder_factory=factory,
    )


async def test_interleaved_replies_equal_whole_prompt_replies(demo_loaded: LoadedModel) -> None:
    replies = {}
    for interleave in (False, True):
        engine = engine_with(demo_loaded, interleave, [])
        try:
            got = await asyncio.gather(
                *(
                    collect(engine, request(q, channel=f"c{i}", request_id=f"r{i}"))
                    for i, q in enumerate(QUESTIONS)
                )
            )
        finally:
            await engine.aclose()
        assert [r.error for r in got] == [None] * 4
        replies[interleave] = [r.text for r in got]
    assert replies[True] == replies[False]


@pytest.mark.parametrize("interleave", [True, False])
async def test_a_running_reply_streams_while_a_newcomer_is_prefilled(
    demo_loaded: LoadedModel, interleave: bool
) -> None:
    decoders: list[Recording] = []
    engine = engine_with(demo_loaded, interleave, decoders)
    started = asyncio.Event()
    # near-uniform sampling over 2048 tokens: the running reply goes on for all its 64 tokens
    long_reply = GenerationParams(max_new_tokens=64, temperature=5.0, top_p=1.0, do_sample=True, seed=1)

    async def follow(req_id: str, question: str, channel: str, **kw: Any) -> None:
        async for event in engine.generate(request(question, channel=channel, request_id=req_id, **kw)):
            if not isinstance(event, QueuePosition):
                started.set()

    try:
        first = asyncio.create_task(follow("running", "What is hanbot?", "a", params=long_reply))
        await started.wait()
        await asyncio.gather(first, follow("newcomer", "What does /reset do?", "b"))
    finally:
        await engine.aclose()
    log = decoders[0].log
    queued = [i for i, (kind, _) in enumerate(log) if kind == "queued"]
    running, newcomer = log[queued[0]][1], log[queued[1]][1]
    first_token = next(
        i
        for i, (kind, value) in enumerate(log)
        if i > queued[1]
        and (value == newcomer if kind == "admitted" else kind == "step" and newcomer in value)
    )
    steps_meanwhile = [value for kind, value in log[queued[1] : first_token] if kind == "step"]
    assert all(running in slots for slots in steps_meanwhile)
    if (
        interleave
    ):  # ~90 prompt tokens in 16-token passes: five steps pass before the one that ends the prefill
        assert len(steps_meanwhile) >= 5, log
    else:  # the whole prompt at admission: the running reply waits for it
        assert steps_meanwhile == [], log


async def test_a_failed_prefill_ends_only_its_request(demo_loaded: LoadedModel) -> None:
    decoders: list[Recording] = []
    engine = engine_with(demo_loaded, True, decoders)
    decoder = decoders[0]
    good = request("What is hanbot?", channel="a", request_id="ok")
    bad = request("What does /reset do?", channel="b", request_id="bad")
    bad_ids = engine.tokenizer.encode(bad.turns)
    real_pass = decoder._prefill_pass
    failed: list[bool] = []

    def failing_pass() -> dict[int, int]:
        if decoder._pending and decoder._pending[0].ids.tolist() == list(bad_ids) and not failed:
            failed.append(bool(decoder._active))  # was another reply running meanwhile?
            raise RuntimeError("injected prefill failure")
        return real_pass()

    decoder._prefill_pass = failing_pass  # type: ignore[method-assign]
    try:
        healthy, broken = await asyncio.gather(collect(engine, good), collect(engine, bad))
        after = await collect(engine, request("Hello", channel="c", request_id="later"))
    finally:
        await engine.aclose()
    assert failed == [True]  # it failed while the other reply was decoding
    assert isinstance(broken.error, GenerationFailed)
    assert healthy.error is None and healthy.text
    assert after.error is None and after.text  # the slot came back
    assert engine.stats.failed == 1
