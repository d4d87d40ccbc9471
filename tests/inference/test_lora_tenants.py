"""More teams with their own version than adapter slots (issue 19), on CPU with the fast decoder (the demo model,
float32): each request carries its team's version; the pool unloads the least recently used version to load another;
a request whose version is out of the pool waits for its load, and when every slot is held by running replies it
waits for one of them to end, not for the pool to empty. Every reply is the one its version gives alone."""

from __future__ import annotations

import asyncio
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

TENANTS = {"va": 7, "vb": 8, "vc": 9}  # one version per team
LONG = GenerationParams(do_sample=False, max_new_tokens=96)
SHORT = GenerationParams(do_sample=False, max_new_tokens=6)


@pytest.fixture
def tenant_versions(demo_settings: ModelSettings, tmp_path: Path) -> dict[str, Path]:
    return {name: save_random_lora(demo_settings, tmp_path / name, seed) for name, seed in TENANTS.items()}


async def ask(engine: LocalEngine, rid: str, lora: str | None, params: GenerationParams = SHORT) -> Reply:
    return await collect(engine, request(FAQ[17][0], channel=rid, request_id=rid, lora=lora, params=params))


async def replies_alone(demo_settings: ModelSettings, versions: dict[str, Path]) -> dict[str, Reply]:
    """What each version answers with a pool big enough for all of them, one request at a time."""
    engine = static_engine(load_model(demo_settings), lora_slots=len(versions))
    try:
        for name, path in versions.items():
            await engine.load_lora(name, str(path))
        out = {name: await ask(engine, f"alone-{name}", name, LONG) for name in versions}
        out |= {f"{name}-short": await ask(engine, f"alone-short-{name}", name) for name in versions}
        out["base"] = await ask(engine, "alone-base", BASE_MODEL)
    finally:
        await engine.aclose()
    assert all(r.error is None for r in out.values())
    return out


async def test_a_pool_smaller_than_the_teams_serves_each_its_own_version(
    demo_settings: ModelSettings, tenant_versions: dict[str, Path]
) -> None:
    alone = await replies_alone(demo_settings, tenant_versions)
    assert len({alone[name].text for name in TENANTS} | {alone["base"].text}) == 4  # each version differs
    engine = static_engine(load_model(demo_settings), lora_slots=2)
    try:
        decoder = engine.decoder
        assert isinstance(decoder, StaticSlotDecoder) and decoder.adapter_slots == 2
        for name, path in tenant_versions.items():  # three versions, two slots: va is unloaded to load vc
            await engine.load_lora(name, str(path))
        assert len(decoder.adapters) == 2

        # one after the other: a version out of the pool is loaded for its request (vb, least recently used, goes)
        for name in ("va", "vb", "vc", "va"):
            reply = await ask(engine, f"seq-{name}", name, LONG)
            assert reply.error is None and reply.text == alone[name].text, name
            assert len(decoder.adapters) <= 2

        # va streams a long reply and vb a short one; vc's request finds both slots held by running replies: it
        # waits for vb's to end (one slot), not for va's (the whole pool), and gets its own version's reply
        assert alone["va"].chunks >= 3 * SHORT.max_new_tokens  # the long reply is much longer than the others
        long_a = asyncio.create_task(ask(engine, "mix-va", "va", LONG))
        await asyncio.sleep(0)
        short_b = asyncio.create_task(ask(engine, "mix-vb", "vb"))
        await asyncio.sleep(0.05)
        short_c = asyncio.create_task(ask(engine, "mix-vc", "vc"))
        base = asyncio.create_task(ask(engine, "mix-base", BASE_MODEL))
        a, b, c, plain = await asyncio.gather(long_a, short_b, short_c, base)
        assert [r.error for r in (a, b, c, plain)] == [None] * 4
        assert (a.text, b.text, c.text) == (alone["va"].text, alone["vb-short"].text, alone["vc-short"].text)
        assert plain.text.startswith(alone["base"].text[: len(plain.text)])
        assert c.ended_at < a.ended_at  # vc did not wait for the pool to empty
        assert engine.stats.failed == 0 and isinstance(engine.decoder, StaticSlotDecoder)
    finally:
        await engine.aclose()
