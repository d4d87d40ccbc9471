"""A decoder that keeps its own copy of the weights and cannot follow a LoRA switch is replaced by the hf decoder,
so a promoted LoRA is never silently left out; the old decoder is closed (its KV memory freed) before the new one is
built. (The static decoder serves adapters from its own pool instead: test_lora_fast_engine.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.settings import ModelSettings
from inference.demo_model import FAQ
from inference.hf_decoder import HFBatchDecoder
from tests.inference.conftest import EngineFactory
from tests.inference.engine_helpers import WrappedDecoder, collect, request
from tests.inference.test_lora import save_random_lora

EVENTS: list[str] = []


class CopiedWeightsDecoder(WrappedDecoder):
    """Stands for a decoder with its own weight copy and no adapter pool: it never sees a LoRA and has no
    weights_changed(). Its close() (which frees a real decoder's KV memory) is recorded."""

    def close(self) -> None:
        EVENTS.append("old decoder closed")


class RecordedHFDecoder(HFBatchDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        EVENTS.append("new decoder built")
        super().__init__(*args, **kwargs)


async def test_a_decoder_that_cannot_follow_is_replaced_and_the_lora_applies(
    make_engine: EngineFactory, demo_settings: ModelSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference.local_engine.HFBatchDecoder", RecordedHFDecoder)
    EVENTS.clear()
    engine = make_engine(wrap=CopiedWeightsDecoder)
    question, answer = FAQ[17]
    assert isinstance(engine.decoder, CopiedWeightsDecoder)
    assert (await collect(engine, request(question, request_id="base"))).text == answer

    await engine.load_lora("v1", str(save_random_lora(demo_settings, tmp_path / "v1", seed=7)))
    await engine.use_lora("v1")
    assert isinstance(engine.decoder, HFBatchDecoder)
    assert EVENTS == ["old decoder closed", "new decoder built"]  # the old KV memory went back first
    tuned = await collect(engine, request(question, request_id="tuned"))
    assert tuned.error is None and tuned.text != answer

    await engine.use_lora(None)
    assert (await collect(engine, request(question, request_id="base-again"))).text == answer
