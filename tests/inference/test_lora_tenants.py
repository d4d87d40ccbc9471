"""More teams with their own version than adapter slots (issue 19), on CPU with the fast decoder (the demo model,
float32): each request carries its team's version; the pool unloads the least recently used version to load another;
a request whose version is out of the pool waits for its load, and when every slot is held by running replies it
waits for one of them to end, not for the pool to empty. Every reply is the one its version gives alone."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from bot.domain import BASE_MODEL, GenerationParams
from bot.settings import ModelSettings
from inference.demo_model import FAQ
from inference.fast import StaticSlotDecoder
from inference.loading import load_model
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import Reply, collect, request
from tests.inference.test_lora import save_random_lora
from tests.inference.test_lora_fast_engine import static_engine

TENANTS = {"va": 7, "vb": 10, "vc": 11}  # one version per team (seeds whose replies to FAQ[17] are long)
LONG = GenerationParams(do_sample=False, max_new_tokens=96)
MEDIUM = GenerationParams(do_sample=False, max_new_tokens=24)
SHORT = GenerationParams(do_sample=False, max_new_tokens=6)


@pytest.fixture
def tenant_versions(demo_settings: ModelSettings, tmp_path: Path) -> dict[str, Path]:
    return {name: save_random_lora(demo_settings, tmp_path / name, seed) for name, seed in TENANTS.items()}


async def ask(engine: LocalEngine, rid: str, lora: str | None, params: GenerationParams = SHORT) -> Reply:
    return await collect(engine, request(FAQ[17][0], channel=rid, request_id=rid, lora=lora, params=params))


async def stream(
    engine: LocalEngine, rid: str, lora: str | None, params: GenerationParams, streaming: asyncio.Event
) -> Reply:
    """Like ``collect``; ``streaming`` is set at the first piece of text."""
    reply, parts = Reply(rid), []
    async for event in engine.generate(
        request(FAQ[17][0], channel=rid, request_id=rid, lora=lora, params=params)
    ):
        if isinstance(event, str):
            reply.first_text_at = reply.first_text_at or time.monotonic()
            parts.append(event)
            streaming.set()
    reply.text, reply.ended_at = "".join(parts), time.monotonic()
    return reply


async def replies_alone(demo_settings: ModelSettings, versions: dict[str, Path]) -> dict[str, Reply]:
    """What each version answers with a pool big enough for all of them, one request at a time."""
    engine = static_engine(load_model(demo_settings), lora_slots=len(versions))
    try:
        for name, path in versions.items():
            await engine.load_lora(name, str(path))
        out = {name: await ask(engine, f"alone-{name}", name, LONG) for name in versions}
        out |= {f"{name}-short": await ask(engine, f"alone-short-{name}", name) for name in versions}
        out |= {
            f"{name}-medium": await ask(engine, f"alone-medium-{name}", name, MEDIUM) for name in versions
        }
        out["base"] = await ask(engine, "alone-base", BASE_MODEL)
    finally:
        await engine.aclose()
    assert all(r.error is None for r in out.values())
    return out


async def test_a_pool_smaller_than_the_teams_serves_each_its_own_version(
    demo_settings: ModelSettings, tenant_versions: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inference.local_engine")
    alone = await replies_alone(demo_settings, tenant_versions)
    assert len({alone[name].text for name in TENANTS} | {alone["base"].text}) == 4  # each version differs
    engine = static_engine(load_model(demo_settings), lora_slots=2)
    try:
        decoder = engine.decoder
        assert isinstance(decoder, StaticSlotDecoder) and decoder.lora_slots == 2
        for name, path in tenant_versions.items():  # three versions, two slots: va is unloaded to load vc
            await engine.load_lora(name, str(path))
        assert len(decoder.adapters) == 2

        # one after the other: a version out of the pool is loaded for its request (vb, least recently used, goes)
        for name in ("va", "vb", "vc", "va"):
            reply = await ask(engine, f"seq-{name}", name, LONG)
            assert reply.error is None and reply.text == alone[name].text, name
            assert len(decoder.adapters) <= 2

        # va streams a long reply and vb a medium one; vc's request comes while both stream, so both slots are held
        # by running replies: it waits for vb's to end (one slot), not for va's (the whole pool), and gets its own
        # version's reply
        assert (
            alone["va"].chunks >= 3 * MEDIUM.max_new_tokens
        )  # the long reply is much longer than the others
        a_streams, b_streams = asyncio.Event(), asyncio.Event()
        long_a = asyncio.create_task(stream(engine, "mix-va", "va", LONG, a_streams))
        await a_streams.wait()
        medium_b = asyncio.create_task(stream(engine, "mix-vb", "vb", MEDIUM, b_streams))
        await b_streams.wait()
        short_c = asyncio.create_task(ask(engine, "mix-vc", "vc"))
        base = asyncio.create_task(ask(engine, "mix-base", BASE_MODEL))
        a, b, c, plain = await asyncio.gather(long_a, medium_b, short_c, base)
        assert [r.error for r in (a, b, c, plain)] == [None] * 4
        assert (a.text, b.text, c.text) == (alone["va"].text, alone["vb-medium"].text, alone["vc-short"].text)
        assert plain.text == alone["base"].text
        assert "request mix-vc: LoRA vc loaded after waiting for a free pool slot" in caplog.text
        assert c.first_text_at is not None and c.first_text_at > b.ended_at  # it waited for vb's reply to end
        assert c.ended_at < a.ended_at  # and not for va's: not for the pool to empty
        assert engine.stats.failed == 0 and isinstance(engine.decoder, StaticSlotDecoder)
    finally:
        await engine.aclose()
