"""LocalEngine on the demo model: exact FAQ replies, fair scheduling, cancellation, failures, pause, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.domain import GenerationParams, QueuePosition
from bot.errors import (
    EnginePaused,
    EngineUnhealthy,
    GenerationFailed,
    GenerationTimeout,
    QueueFull,
)
from bot.ports import ChatTokenizer, Engine
from bot.settings import Settings
from inference.decoder import BatchDecoder, SlotRequest
from inference.demo_model import END_OF_TEXT, EOT, FAQ
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference.conftest import EngineFactory
from tests.inference.engine_helpers import (
    GREEDY,
    Faulty,
    Gate,
    NeverStops,
    Reply,
    Slow,
    collect,
    out_of_memory,
    request,
    wait_until,
)


def answer_tokens(engine: LocalEngine, answer: str) -> int:
    return len(engine.tokenizer.hf(answer, add_special_tokens=False)["input_ids"])


Wrap = Callable[[BatchDecoder], BatchDecoder]


@pytest.fixture
def never_stops(demo_loaded: LoadedModel) -> Wrap:
    """A wrap= for make_engine: every terminator becomes the token "a", so a stream runs until stopped, and each
    step takes at least 5 ms, so a test can act while it runs."""
    stops = frozenset(demo_loaded.model.generation_config.eos_token_id)
    filler = int(demo_loaded.tokenizer.convert_tokens_to_ids("a"))
    return lambda decoder: Slow(NeverStops(decoder, stops, filler))


async def test_answers_an_faq_question_exactly(settings: Settings) -> None:
    engine = LocalEngine.from_settings(settings)
    try:
        assert isinstance(engine, Engine) and isinstance(engine.tokenizer, ChatTokenizer)
        question, answer = FAQ[7]
        reply = await collect(engine, request(question, request_id="faq"))
        assert reply.error is None and reply.text == answer
        assert reply.positions == []  # a free slot took it at once: no "queued" notice
        # it stopped on <|eot_id|>: the answer's tokens plus the terminator, nothing after
        assert engine.stats.tokens_by_request["faq"] == answer_tokens(engine, answer) + 1
        # the prototype's sampling settings (temperature 0.6, top_p 0.9, repetition penalty 1.1) keep it exact
        question, answer = FAQ[4]
        sampled = await collect(engine, request(question, request_id="sampled", params=GenerationParams()))
        assert sampled.text == answer
        assert sampled.chunks > 3  # streamed in pieces
    finally:
        await engine.aclose()


async def test_stops_on_both_llama3_terminators(make_engine: EngineFactory) -> None:
    engine = make_engine()
    hf = engine.tokenizer.hf
    assert {hf.convert_tokens_to_ids(EOT), hf.convert_tokens_to_ids(END_OF_TEXT)} <= engine._stop_ids
    assert engine.tokenizer.context_length == engine.model.config.max_position_embeddings


async def test_max_new_tokens_ends_the_reply(make_engine: EngineFactory, never_stops: Wrap) -> None:
    engine = make_engine(wrap=never_stops)
    reply = await collect(
        engine, request("Hello", request_id="short", params=GenerationParams(max_new_tokens=7))
    )
    assert reply.error is None
    assert engine.stats.tokens_by_request["short"] == 7


async def test_twenty_conversations_in_ten_channels(make_engine: EngineFactory) -> None:
    gates: list[Gate] = []

    def gated(decoder: BatchDecoder) -> BatchDecoder:
        gates.append(Gate(decoder))
        return gates[-1]

    engine = make_engine(wrap=gated, max_batch_size=3, queue_limit=12)
    gate = gates[0]
    cases = [(i, f"ch{i % 10}", *FAQ[i]) for i in range(20)]  # ch0 gets FAQ 0 then FAQ 10, ...
    tasks = [
        asyncio.create_task(collect(engine, request(q, channel, request_id=f"r{i}")))
        for i, channel, q, _a in cases
    ]
    await wait_until(lambda: engine.counts()[0] + sum(t.done() for t in tasks) == len(tasks))
    gate.open.set()
    replies: list[Reply] = await asyncio.gather(*tasks)

    answered = [i for i, reply in enumerate(replies) if reply.error is None]
    refused = [i for i, reply in enumerate(replies) if isinstance(reply.error, QueueFull)]
    assert sorted(answered + refused) == list(range(20))  # every one answered or politely refused
    assert len(answered) == 12 and refused == list(range(12, 20))
    for i in answered:
        assert replies[i].text == cases[i][3]  # its own answer, once
    # none answered twice: each prompt admitted exactly once
    admitted = [request_index(engine, slot_request) for slot_request in gate.admitted]
    assert sorted(admitted) == answered
    # per-channel order: the second message starts only after the first one's reply ended
    for first, second in ((0, 10), (1, 11)):
        assert admitted.index(first) < admitted.index(second)
        assert replies[first].ended_at <= (replies[second].first_text_at or 0.0)
    # while waiting, each request heard its place; the place only moves forward
    for i in answered:
        positions = replies[i].positions
        assert positions and positions == sorted(positions, reverse=True)


def request_index(engine: LocalEngine, slot_request: SlotRequest) -> int:
    for i, (question, _answer) in enumerate(FAQ):
        if list(slot_request.prompt_ids) == engine.tokenizer.encode(request(question).turns):
            return i
    raise AssertionError("unknown prompt")


async def test_a_quiet_channel_is_served_before_a_busy_channels_third_message(
    make_engine: EngineFactory,
) -> None:
    gates: list[Gate] = []
    engine = make_engine(wrap=lambda d: gates.append(Gate(d)) or gates[-1], max_batch_size=1)
    order = [("busy", 2), ("busy", 3), ("busy", 4), ("quiet", 5)]
    tasks = []
    for n, (channel, faq) in enumerate(order, start=1):
        tasks.append(
            asyncio.create_task(collect(engine, request(FAQ[faq][0], channel, request_id=f"m{faq}")))
        )
        await wait_until(lambda n=n: engine.counts()[0] == n)
    gates[0].open.set()
    replies = await asyncio.gather(*tasks)
    assert all(reply.error is None for reply in replies)
    admitted = [request_index(engine, r) for r in gates[0].admitted]
    assert admitted.index(5) < admitted.index(4)  # quiet before busy's third
    assert admitted.index(2) < admitted.index(3) < admitted.index(4)  # busy's order kept


async def test_cancelling_a_stream_stops_its_tokens_and_frees_the_slot(
    make_engine: EngineFactory, never_stops: Wrap
) -> None:
    engine = make_engine(wrap=never_stops, max_batch_size=1)
    long_one = engine.generate(
        request("Tell me everything", "c1", "long", params=GenerationParams(max_new_tokens=1500))
    )
    chunks = 0
    async for event in long_one:
        if isinstance(event, str):
            chunks += 1
            if chunks == 5:
                break
    await long_one.aclose()
    produced = engine.stats.tokens_by_request["long"]
    question, answer = FAQ[9]
    params = GenerationParams(do_sample=False, max_new_tokens=answer_tokens(engine, answer))
    nxt = await collect(engine, request(question, "c2", "next", params=params))
    assert nxt.error is None and nxt.text == answer  # the only slot served the next request
    assert engine.stats.tokens_by_request["long"] <= produced + 1  # at most the step already under way
    assert engine.stats.cancelled == 1
    assert engine.counts() == (0, 0)


async def test_cancelling_a_waiting_request_removes_it_from_the_queue(make_engine: EngineFactory) -> None:
    gates: list[Gate] = []
    engine = make_engine(wrap=lambda d: gates.append(Gate(d)) or gates[-1], max_batch_size=1)
    waiting = engine.generate(request(FAQ[0][0], "c1", "w"))
    first = await anext(waiting)
    assert first == QueuePosition(1)
    await waiting.aclose()
    assert engine.counts() == (0, 0)
    gates[0].open.set()
    reply = await collect(engine, request(FAQ[1][0], "c1", "after"))
    assert reply.text == FAQ[1][1]
    assert [request_index(engine, r) for r in gates[0].admitted] == [1]


async def test_an_exception_for_one_request_fails_only_that_request(make_engine: EngineFactory) -> None:
    poison: list[list[int]] = []
    engine = make_engine(
        wrap=lambda d: Faulty(d, poisoned=lambda r: list(r.prompt_ids) in poison), max_batch_size=4
    )
    poison.append(engine.tokenizer.encode(request(FAQ[3][0]).turns))
    picks = [2, 3, 6, 8]
    replies = await asyncio.gather(*(collect(engine, request(FAQ[i][0], f"c{i}", f"r{i}")) for i in picks))
    assert isinstance(replies[1].error, GenerationFailed)
    for i, reply in zip(picks, replies, strict=True):
        if i != 3:
            assert reply.error is None and reply.text == FAQ[i][1]
    await engine.health()
    again = await collect(engine, request(FAQ[8][0], "c3", "again"))
    assert again.text == FAQ[8][1]
    assert engine.stats.failed == 1


async def test_out_of_memory_in_a_step_fails_the_newest_request_only(make_engine: EngineFactory) -> None:
    holders: list[Faulty] = []

    def faulty(decoder: BatchDecoder) -> BatchDecoder:
        holders.append(Faulty(Gate(decoder), fail_step=3, error=out_of_memory))
        return holders[-1]

    engine = make_engine(wrap=faulty, max_batch_size=3)
    gate = holders[0].inner
    assert isinstance(gate, Gate)
    picks = [10, 11, 12]
    tasks = []
    for n, i in enumerate(picks, start=1):
        tasks.append(asyncio.create_task(collect(engine, request(FAQ[i][0], f"c{i}", f"r{i}"))))
        await wait_until(lambda n=n: engine.counts()[0] == n)
    gate.open.set()
    replies = await asyncio.gather(*tasks)
    failed = [i for i, reply in zip(picks, replies, strict=True) if reply.error is not None]
    newest = request_index(engine, gate.admitted[-1])
    assert failed == [newest]
    assert isinstance(replies[picks.index(newest)].error, GenerationFailed)
    for i, reply in zip(picks, replies, strict=True):
        if i != newest:
            assert reply.text == FAQ[i][1]
    await engine.health()


async def test_a_request_that_runs_too_long_times_out_and_frees_its_slot(
    make_engine: EngineFactory, never_stops: Wrap
) -> None:
    engine = make_engine(wrap=never_stops, max_batch_size=1)
    slow = request(
        "Tell me everything", "c1", "slow", params=GenerationParams(max_new_tokens=1500), timeout_s=0.3
    )
    reply = await collect(engine, slow)
    assert isinstance(reply.error, GenerationTimeout)
    question, answer = FAQ[13]
    params = GenerationParams(do_sample=False, max_new_tokens=answer_tokens(engine, answer))
    assert (await collect(engine, request(question, "c2", "next", params=params))).text == answer


async def test_pause_drains_running_work_refuses_new_work_and_resume_serves_again(
    make_engine: EngineFactory, never_stops: Wrap
) -> None:
    engine = make_engine(wrap=never_stops, max_batch_size=1)
    running = asyncio.create_task(
        collect(engine, request("Tell me", "c1", "running", params=GenerationParams(max_new_tokens=150)))
    )
    await wait_until(lambda: engine.counts()[1] == 1)
    waiting = asyncio.create_task(collect(engine, request(FAQ[0][0], "c2", "waiting")))
    await wait_until(lambda: engine.counts()[0] == 1)
    await engine.pause()
    assert (await running).error is None and engine.stats.tokens_by_request["running"] == 150
    assert isinstance((await waiting).error, EnginePaused)
    refused = await collect(engine, request(FAQ[0][0], "c3", "refused"))
    assert isinstance(refused.error, EnginePaused)
    await engine.health()
    await engine.resume()
    question, answer = FAQ[15]
    params = GenerationParams(do_sample=False, max_new_tokens=answer_tokens(engine, answer))
    assert (await collect(engine, request(question, "c3", "resumed", params=params))).text == answer


async def test_health_fails_once_closed(make_engine: EngineFactory) -> None:
    engine = make_engine()
    await engine.health()
    await engine.aclose()
    with pytest.raises(EngineUnhealthy):
        await engine.health()
    with pytest.raises(EngineUnhealthy):
        await anext(engine.generate(request("Hello")))


async def test_a_prompt_longer_than_the_context_fails_clearly(make_engine: EngineFactory) -> None:
    engine = make_engine()
    reply = await collect(engine, request("가나다 " * 3000))
    assert isinstance(reply.error, GenerationFailed) and "context" in str(reply.error)
    assert GREEDY.do_sample is False
