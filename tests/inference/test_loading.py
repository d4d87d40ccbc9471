"""Model loading: the demo model through the real path, and clear errors that name the model and what to try."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from bot.errors import ModelLoadError
from bot.settings import ModelSettings, load_settings
from inference.loading import load_model, model_kwargs
from inference.local_engine import LocalEngine


def test_loads_the_demo_model_from_a_local_folder(demo_settings: ModelSettings) -> None:
    loaded = load_model(demo_settings)
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.chat_template
    assert not loaded.model.training


def test_missing_folder_names_the_path_and_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(name_or_path=str(missing), dtype="float32", device_map=None))
    message = str(caught.value)
    assert str(missing) in message and "HANBOT_MODEL__NAME_OR_PATH" in message


def test_folder_without_a_model_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(name_or_path=str(tmp_path), dtype="float32", device_map=None))
    assert str(tmp_path) in str(caught.value)


def test_unknown_hub_id_without_network_says_what_to_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # this machine has no network
    name = "hanbot-tests/no-such-model"
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(name_or_path=name, dtype="float32", device_map=None))
    message = str(caught.value)
    assert name in message
    assert "Hub" in message and "name_or_path" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantization_without_a_gpu_is_refused(demo_settings: ModelSettings, quantization: str) -> None:
    settings = demo_settings.model_copy(update={"quantization": quantization})
    with pytest.raises(ModelLoadError) as caught:
        load_model(settings)
    assert quantization in str(caught.value) and "HANBOT_MODEL__QUANTIZATION" in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_device_map_without_a_gpu_is_refused(demo_settings: ModelSettings) -> None:
    with pytest.raises(ModelLoadError, match="device_map"):
        model_kwargs(demo_settings.model_copy(update={"device_map": "cuda:0"}))


def test_placement_settings_reach_from_pretrained() -> None:
    kwargs = model_kwargs(
        ModelSettings(name_or_path="x/y", dtype="bfloat16", device_map="auto", max_memory={"0": "130GiB"})
    )
    assert kwargs["dtype"] == torch.bfloat16
    assert kwargs["device_map"] == "auto"
    assert kwargs["max_memory"] == {0: "130GiB"}


async def test_engine_from_settings_raises_model_load_error(tmp_path: Path) -> None:
    settings = load_settings(model={"name_or_path": str(tmp_path / "absent"), "device_map": None})
    with pytest.raises(ModelLoadError):
        LocalEngine.from_settings(settings)
