"""The engine serves LoRA versions from the fast decoder's adapter pool: ``load_lora`` + ``use_lora`` keep the static
decoder (checked by class), and requests naming different versions, the base, or the default, each get the reply that
version gives (the same as the hf decoder running PEFT on the model), also all at once. FP8 weights, whose bf16
matrices are gone after the build, serve adapters too (no refusal)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.domain import BASE_MODEL, GenerationRequest
from bot.errors import EngineError
from bot.settings import EngineSettings, GenerationSettings, ModelSettings
from inference.decoders import make_decoder
from inference.demo_model import FAQ
from inference.fast import StaticSlotDecoder
from inference.loading import LoadedModel, load_model
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import collect, request
from tests.inference.test_lora import save_random_lora


def static_engine(loaded: LoadedModel, **settings: object) -> LocalEngine:
    return LocalEngine(
        loaded.model,
        loaded.tokenizer,
        engine=EngineSettings(decoder="static", max_batch_size=4, **settings),  # type: ignore[arg-type]
        generation=GenerationSettings(timeout_s=120),
        decoder_factory=make_decoder,
    )


def ask(question: str, rid: str, lora: str | None = None, channel: str | None = None) -> GenerationRequest:
    return request(question, channel=channel or rid, request_id=rid, lora=lora)


@pytest.fixture
def versions(demo_settings: ModelSettings, tmp_path: Path) -> dict[str, Path]:
    return {
        "v1": save_random_lora(demo_settings, tmp_path / "v1", seed=7),
        "v2": save_random_lora(demo_settings, tmp_path / "v2", seed=8),
    }


async def hf_replies(
    demo_settings: ModelSettings, versions: dict[str, Path], question: str
) -> dict[str, str]:
    """What the hf decoder (PEFT on the model, one version at a time) answers with each version."""
    engine = LocalEngine(
        load_model(demo_settings).model,
        load_model(demo_settings).tokenizer,
        engine=EngineSettings(decoder="hf"),
        generation=GenerationSettings(timeout_s=120),
    )
    out = {}
    try:
        for name, path in versions.items():
            await engine.load_lora(name, str(path))
            await engine.use_lora(name)
            reply = await collect(engine, ask(question, f"hf-{name}"))
            assert reply.error is None
            out[name] = reply.text
    finally:
        await engine.aclose()
    return out


async def test_versions_per_request_on_the_static_decoder(
    demo_loaded: LoadedModel, demo_settings: ModelSettings, versions: dict[str, Path]
) -> None:
    question, answer = FAQ[17]
    want = await hf_replies(demo_settings, versions, question)
    assert len({answer, want["v1"], want["v2"]}) == 3  # each version answers differently
    engine = static_engine(demo_loaded)
    try:
        assert isinstance(engine.decoder, StaticSlotDecoder)
        for name, path in versions.items():
            await engine.load_lora(name, str(path))
        await engine.use_lora("v1")
        assert isinstance(engine.decoder, StaticSlotDecoder)  # kept: no hf decoder replacement
        assert engine.active_lora == "v1"
        alone = {
            "default": await collect(engine, ask(question, "default")),
            "v2": await collect(engine, ask(question, "v2", lora="v2")),
            "base": await collect(engine, ask(question, "base", lora=BASE_MODEL)),
        }
        assert alone["default"].text == want["v1"]
        assert alone["v2"].text == want["v2"]
        assert alone["base"].text == answer
        # all at once, in one batch: each request still gets its own version
        together = await asyncio.gather(
            collect(engine, ask(question, "t-default")),
            collect(engine, ask(question, "t-v2", lora="v2")),
            collect(engine, ask(question, "t-base", lora=BASE_MODEL)),
            collect(engine, ask(question, "t-v1", lora="v1")),
        )
        assert [r.text for r in together] == [want["v1"], want["v2"], answer, want["v1"]]
        assert engine.stats.max_active >= 3
        # an unknown version fails that request only, politely
        missing = await collect(engine, ask(question, "missing", lora="v9"))
        assert missing.error is not None and missing.text == ""
        # a reload of a name serves the new weights; the default switches back to the base
        await engine.load_lora("v1", str(versions["v2"]))
        assert (await collect(engine, ask(question, "reloaded"))).text == want["v2"]
        await engine.use_lora(None)
        assert (await collect(engine, ask(question, "base-default"))).text == answer
        with pytest.raises(EngineError, match="not loaded"):
            await engine.use_lora("v9")
        assert isinstance(engine.decoder, StaticSlotDecoder) and engine.loads == 1
    finally:
        await engine.aclose()


async def test_fp8_weights_serve_a_version(demo_settings: ModelSettings, versions: dict[str, Path]) -> None:
    question = FAQ[17][0]
    loaded = load_model(demo_settings)
    engine = static_engine(loaded, fp8_weights=True)
    try:
        decoder = engine.decoder
        assert isinstance(decoder, StaticSlotDecoder) and not decoder.model_intact
        base = await collect(engine, ask(question, "fp8-base"))
        await engine.load_lora("v1", str(versions["v1"]))
        await engine.use_lora("v1")
        tuned = await collect(engine, ask(question, "fp8-v1"))
        assert tuned.error is None and tuned.text not in ("", base.text)
        assert engine.decoder is decoder
        assert (await collect(engine, ask(question, "fp8-base-again", lora=BASE_MODEL))).text == base.text
    finally:
        await engine.aclose()


async def test_without_adapter_slots_fp8_refuses_politely(
    demo_settings: ModelSettings, versions: dict[str, Path]
) -> None:
    engine = static_engine(load_model(demo_settings), fp8_weights=True, lora_slots=0)
    try:
        with pytest.raises(EngineError, match="lora_slots"):
            await engine.load_lora("v1", str(versions["v1"]))
    finally:
        await engine.aclose()


def test_settings_size_the_pool_and_the_training_reserve() -> None:
    from inference.decoders import static_options

    options = static_options(EngineSettings(lora_slots=3, lora_max_rank=32, reserve_training_gib=45.5))
    assert options["lora_slots"] == 3 and options["lora_max_rank"] == 32
    assert options["keep_free_bytes"] == int(45.5 * (1 << 30))
    assert static_options(EngineSettings())["keep_free_bytes"] == 0


def test_versions_loaded_while_paused_are_loaded_into_the_next_decoder(
    demo_loaded: LoadedModel, versions: dict[str, Path], tmp_path: Path
) -> None:
    """With no decoder (the engine paused, the GPU given back) a load is recorded; the decoder built at resume gets
    every version again, under new ids; a folder that is no adapter is refused at once."""
    from inference.lora import PoolLoras

    pool = PoolLoras()
    pool.load(None, "v1", str(versions["v1"]))
    pool.use("v1")
    with pytest.raises(EngineError, match="adapter_config"):
        pool.load(None, "broken", str(tmp_path))
    decoder = StaticSlotDecoder(demo_loaded.model, capacity=2, max_context=256, lora_slots=2)
    pool.attach(decoder)
    key = pool.resolve(None)
    assert key is not None and decoder.adapters == [key] and pool.resolve(BASE_MODEL) is None
    pool.attach(decoder2 := StaticSlotDecoder(demo_loaded.model, capacity=2, max_context=256, lora_slots=2))
    assert pool.resolve("v1") != key and decoder2.adapters == [pool.resolve("v1")]


def test_a_full_pool_unloads_the_version_least_recently_used(
    demo_loaded: LoadedModel, versions: dict[str, Path]
) -> None:
    """Pool of 3: the default stays; of the others, the one requests asked for last stays."""
    from inference.lora import PoolLoras

    decoder = StaticSlotDecoder(demo_loaded.model, capacity=2, max_context=256, lora_slots=3)
    pool = PoolLoras()
    for name in ("default", "trial", "old"):
        pool.load(decoder, name, str(versions["v1"]))
    pool.use("default")
    pool.resolve("trial")  # a request for the trial version
    pool.load(decoder, "candidate", str(versions["v2"]))  # full: "old" goes, not the trial loaded before it
    assert set(pool.loaded) == {"default", "trial", "candidate"}
    with pytest.raises(EngineError, match="not loaded"):
        pool.resolve("old")
    assert len(decoder.adapters) == 3
