"""A LoRA saved from the demo model changes the greedy reply when switched on and restores the base reply when
switched off, without reloading the base weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bot.errors import EngineError
from bot.settings import ModelSettings
from inference.demo_model import FAQ
from inference.loading import LoadedModel, load_model
from tests.inference.conftest import EngineFactory
from tests.inference.engine_helpers import collect, request


def save_random_lora(demo_settings: ModelSettings, folder: Path, seed: int) -> Path:
    """A LoRA on the attention and MLP projections with large random weights (a stand-in for a fine-tune)."""
    base = load_model(demo_settings).model
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random A and B: the adapter changes the output from the start
    )
    torch.manual_seed(seed)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


@pytest.fixture
def saved_lora(demo_settings: ModelSettings, tmp_path: Path) -> Path:
    return save_random_lora(demo_settings, tmp_path / "lora-v1", seed=7)


def q_proj_weight(loaded: LoadedModel) -> torch.Tensor:
    layer = loaded.model.model.layers[0].self_attn.q_proj
    return getattr(layer, "base_layer", layer).weight


async def test_lora_switch_changes_and_restores_the_reply_without_reloading(
    make_engine: EngineFactory, demo_loaded: LoadedModel, demo_settings: ModelSettings, saved_lora: Path
) -> None:
    engine = make_engine()
    model_before, weight_before = engine.model, q_proj_weight(demo_loaded)
    question, answer = FAQ[17]

    assert (await collect(engine, request(question, request_id="base"))).text == answer
    await engine.load_lora("v1", str(saved_lora))
    assert (await collect(engine, request(question, request_id="still-base"))).text == answer  # loading alone
    await engine.use_lora("v1")
    tuned = await collect(engine, request(question, request_id="tuned"))
    assert tuned.error is None and tuned.text != answer
    await engine.use_lora(None)
    assert (await collect(engine, request(question, request_id="base-again"))).text == answer
    await engine.use_lora("v1")
    assert (await collect(engine, request(question, request_id="tuned-again"))).text == tuned.text

    # loading a name again replaces its weights in place (the next fine-tune's version)
    await engine.load_lora("v1", str(save_random_lora(demo_settings, saved_lora.parent / "lora-v2", seed=8)))
    replaced = await collect(engine, request(question, request_id="tuned-v2"))
    assert replaced.text not in (tuned.text, answer)
    await engine.use_lora(None)
    assert (await collect(engine, request(question, request_id="base-last"))).text == answer

    assert engine.model is model_before and engine.loads == 1
    assert q_proj_weight(demo_loaded).data_ptr() == weight_before.data_ptr()
    assert engine.active_lora is None


async def test_unknown_lora_is_refused(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine()
    with pytest.raises(EngineError, match="not loaded"):
        await engine.use_lora("missing")
    with pytest.raises(EngineError, match="could not load"):
        await engine.load_lora("broken", str(tmp_path / "nothing-here"))
    question, answer = FAQ[0]
    assert (await collect(engine, request(question))).text == answer


async def test_the_hf_decoder_serves_each_request_its_version(
    make_engine: EngineFactory, demo_settings: ModelSettings, saved_lora: Path
) -> None:
    """PEFT's mixed batches: a request naming a version (or the base) gets it whatever the default, also together."""
    import asyncio

    from bot.domain import BASE_MODEL

    engine = make_engine(max_batch_size=4)
    question, answer = FAQ[17]
    await engine.load_lora("v1", str(saved_lora))
    await engine.load_lora("v2", str(save_random_lora(demo_settings, saved_lora.parent / "v2", seed=8)))
    alone = {}
    for name in ("v1", "v2"):
        await engine.use_lora(name)
        alone[name] = (await collect(engine, request(question, request_id=f"alone-{name}"))).text
    await engine.use_lora(None)
    assert len({answer, alone["v1"], alone["v2"]}) == 3
    await engine.use_lora("v1")
    together = await asyncio.gather(
        collect(engine, request(question, channel="a", request_id="default")),
        collect(engine, request(question, channel="b", request_id="v2", lora="v2")),
        collect(engine, request(question, channel="c", request_id="base", lora=BASE_MODEL)),
    )
    assert [r.text for r in together] == [alone["v1"], alone["v2"], answer]
    assert engine.stats.max_active >= 2
    missing = await collect(engine, request(question, channel="d", request_id="missing", lora="v9"))
    assert missing.error is not None and "v9" in str(missing.error.__cause__)
