"""A decoder that keeps its own copy of the weights and cannot follow a LoRA switch is replaced by the hf decoder,
so a promoted LoRA is never silently left out (the GPU's static decoder is such a decoder today)."""

from __future__ import annotations

from pathlib import Path

from bot.settings import ModelSettings
from inference.demo_model import FAQ
from inference.hf_decoder import HFBatchDecoder
from tests.inference.conftest import EngineFactory
from tests.inference.engine_helpers import WrappedDecoder, collect, request
from tests.inference.test_lora import save_random_lora


class CopiedWeightsDecoder(WrappedDecoder):
    """Stands for a decoder with its own weight copy: it never sees a LoRA and has no weights_changed()."""


async def test_a_decoder_that_cannot_follow_is_replaced_and_the_lora_applies(
    make_engine: EngineFactory, demo_settings: ModelSettings, tmp_path: Path
) -> None:
    engine = make_engine(wrap=CopiedWeightsDecoder)
    question, answer = FAQ[17]
    assert isinstance(engine.decoder, CopiedWeightsDecoder)
    assert (await collect(engine, request(question, request_id="base"))).text == answer

    await engine.load_lora("v1", str(save_random_lora(demo_settings, tmp_path / "v1", seed=7)))
    await engine.use_lora("v1")
    assert isinstance(engine.decoder, HFBatchDecoder)
    tuned = await collect(engine, request(question, request_id="tuned"))
    assert tuned.error is None and tuned.text != answer

    await engine.use_lora(None)
    assert (await collect(engine, request(question, request_id="base-again"))).text == answer
