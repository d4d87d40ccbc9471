"""Fixtures for the local engine's tests: the demo model loaded through the real loading code, engines built on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.settings import EngineSettings, GenerationSettings, ModelSettings
from inference.decoder import BatchDecoder
from inference.decoders import make_decoder
from inference.loading import LoadedModel, load_model
from inference.local_engine import LocalEngine


@pytest.fixture
def demo_settings(demo_model_dir: Path) -> ModelSettings:
    return ModelSettings(name_or_path=str(demo_model_dir), dtype="float32", device_map=None, is_demo=True)


@pytest.fixture
def demo_loaded(demo_settings: ModelSettings) -> LoadedModel:
    """A fresh copy of the demo model per test (LoRA tests change the model object)."""
    return load_model(demo_settings)


EngineFactory = Callable[..., LocalEngine]


@pytest.fixture
async def make_engine(demo_loaded: LoadedModel) -> AsyncIterator[EngineFactory]:
    """Build LocalEngines on the demo model; ``wrap`` wraps the real decoder (fault injection, counters)."""
    engines: list[LocalEngine] = []

    def build(
        wrap: Callable[[BatchDecoder], BatchDecoder] | None = None,
        timeout_s: float = 60.0,
        **engine: Any,
    ) -> LocalEngine:
        settings = EngineSettings(decoder="hf", **engine)

        def factory(model: Any, engine_settings: EngineSettings) -> BatchDecoder:
            decoder = make_decoder(model, engine_settings)
            return wrap(decoder) if wrap else decoder

        built = LocalEngine(
            demo_loaded.model,
            demo_loaded.tokenizer,
            engine=settings,
            generation=GenerationSettings(timeout_s=timeout_s),
            decoder_factory=factory,
        )
        engines.append(built)
        return built

    yield build
    for built in engines:
        await built.aclose()
