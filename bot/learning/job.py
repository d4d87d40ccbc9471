"""What the bot hands the training subprocess (``job.json``) and what it hands back (progress lines, result.json).

Plain dataclasses and JSON, so ``inference.finetune.train`` and the bot agree on one definition and the bot never
imports torch. Progress lines on the trainer's stdout are JSON objects with an ``event`` field:

- ``{"event": "progress", "step": 3, "total": 40, "loss": 1.92, "eta_s": 51.0}`` after each optimiser step;
- ``{"event": "eval", "which": "base" | "current" | "new", "split": "eval" | "regression", "loss": 1.23}``;
- ``{"event": "phase", "phase": "loading" | "evaluating" | "training" | "saving"}``;
- ``{"event": "done", "result": "/path/result.json"}`` last.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class TrainJob:
    base_model: str
    train_file: str
    eval_file: str
    output_dir: str  # the new adapter is saved here
    result_file: str
    regression_file: str | None = (
        None  # the active version's held-out set: the new LoRA must not be worse on it
    )
    init_adapter: str | None = (
        None  # the active LoRA: evaluated as "current", and the starting point if continuing
    )
    continue_from_init: bool = True
    epochs: float = 3.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()  # empty: every linear layer, the output head included
    max_seq_len: int = 2048
    batch_size: int = 8
    micro_batch_size: int = 1
    seed: int = 0
    device: str = "auto"  # "auto": cuda:0 when CUDA is there, else cpu; or "cpu", "cuda:1", ...
    quantization: Literal["auto", "4bit", "none"] = "auto"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> TrainJob:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["target_modules"] = tuple(fields.get("target_modules", ()))
        return cls(**fields)


@dataclass(frozen=True)
class SplitLosses:
    """Held-out loss (mean over assistant tokens) of the base, the active LoRA (if any) and the new LoRA."""

    base: float | None = None
    current: float | None = None
    new: float | None = None


@dataclass(frozen=True)
class TrainResult:
    train_examples: int
    eval_examples: int
    steps: int
    eval: SplitLosses
    regression: SplitLosses | None = None
    adapter_dir: str = ""
    duration_s: float = 0.0
    device: str = "cpu"
    quantized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> TrainResult:
        data = json.loads(path.read_text(encoding="utf-8"))
        regression = data.get("regression")
        return cls(
            train_examples=int(data["train_examples"]),
            eval_examples=int(data["eval_examples"]),
            steps=int(data["steps"]),
            eval=SplitLosses(**data["eval"]),
            regression=SplitLosses(**regression) if regression else None,
            adapter_dir=str(data.get("adapter_dir", "")),
            duration_s=float(data.get("duration_s", 0.0)),
            device=str(data.get("device", "cpu")),
            quantized=bool(data.get("quantized", False)),
            extra=dict(data.get("extra", {})),
        )
