"""Fixtures for the learning loop: settings for quick fine-tunes of the demo model on CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings, load_settings
from tests.fakes import ScriptedEngine

QUICK_FINETUNE: dict[str, Any] = {
    "min_examples": 8,
    "eval_fraction": 0.25,
    "learning_rate": 1e-2,
    "max_steps": 30,
    "batch_size": 8,
    "micro_batch_size": 8,
    "max_seq_len": 256,
    "lora_r": 16,
    "lora_alpha": 32,
    "quantization": "none",
    # the gate loosened to "better at all": these tests are about the service around the trainer; the gate's own
    # acceptance runs (default settings) are in test_gate_acceptance.py
    "min_eval_examples": 2,
    "gate_z": 0.0,
    "promote_margin": 0.0,
    "min_pair_gain": 0.0,
    "general_max_increase": 100.0,
}

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def learning_settings(tmp_path: Path, demo_model_dir: Path) -> SettingsFactory:
    """Settings for a bot on the demo model whose fine-tunes take seconds; keyword arguments override finetune."""

    def make(**finetune: Any) -> Settings:
        return load_settings(
            data_dir=tmp_path / "data",
            model={
                "name_or_path": str(demo_model_dir),
                "dtype": "float32",
                "device_map": None,
                "is_demo": True,
            },
            scheduler={"enabled": False, "lease_ttl_s": 30},
            finetune={**QUICK_FINETUNE, **finetune},
        )

    return make


@dataclass
class RecordingEngine(ScriptedEngine):
    """A ScriptedEngine that also records the order of pause/resume/load_lora/use_lora calls."""

    calls: list[str] = field(default_factory=list)

    async def pause(self) -> None:
        self.calls.append("pause")
        await super().pause()

    async def resume(self) -> None:
        self.calls.append("resume")
        await super().resume()

    async def load_lora(self, name: str, path: str) -> None:
        self.calls.append(f"load_lora:{name}")
        await super().load_lora(name, path)

    async def use_lora(self, name: str | None) -> None:
        self.calls.append(f"use_lora:{name}")
        await super().use_lora(name)
