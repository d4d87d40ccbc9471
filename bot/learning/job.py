"""What the bot hands the training subprocess (``job.json``) and what it hands back (progress lines, result.json).

Plain dataclasses and JSON, so ``inference.finetune.train`` and the bot agree on one definition and the bot never
imports torch. Progress lines on the trainer's stdout are JSON objects with an ``event`` field:

- ``{"event": "progress", "step": 3, "total": 40, "loss": 1.92, "eta_s": 51.0}`` after each optimiser step;
- ``{"event": "eval", "which": "base" | "current" | "new", "split": "eval" | "regression" | "pairs" | "general",
  "loss": 1.23}`` (for "pairs" the value is the share of pairs where the true answer is preferred);
- ``{"event": "heldout", "step": 0, "loss": 2.31}`` the held-out loss (on up to ``curve_examples`` held-out
  examples) before the first step, every ``total / curve_points`` steps and after the last: the loss curve;
- ``{"event": "phase", "phase": "loading" | "evaluating" | "training" | "saving"}``;
- ``{"event": "done", "result": "/path/result.json"}`` last.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_OLD_KEYS = {"init_adapter": "init_lora"}  # job.json written before the LoRA fields were named lora


@dataclass(frozen=True)
class TrainJob:
    base_model: str
    train_file: str
    eval_file: str
    output_dir: str  # the new LoRA is saved here
    result_file: str
    regression_file: str | None = (
        None  # the active version's held-out set: the new LoRA must not be worse on it
    )
    init_lora: str | None = (
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
    general_prompts_file: str | None = None  # the shipped bilingual prompts: how much the candidate drifts
    replay_prompts_file: str | None = (
        None  # other prompts whose base answers are trained on too (no forgetting)
    )
    system_prompt: str = ""  # the system prompt the general prompts are asked under
    curve_points: int = 10  # held-out evaluations during training, for the loss curve (0: none)
    curve_examples: int = (
        32  # held-out examples each of those evaluations scores (a fixed subset: cheap, comparable)
    )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> TrainJob:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        renamed = {_OLD_KEYS.get(k, k): v for k, v in data.items()}
        fields = {k: v for k, v in renamed.items() if k in known}
        fields["target_modules"] = tuple(fields.get("target_modules", ()))
        return cls(**fields)


@dataclass(frozen=True)
class SplitLosses:
    """Held-out loss (mean over assistant tokens) of the base, the active LoRA (if any) and the new LoRA.

    ``*_each``: each example's own mean loss per token, in file order (the gate's paired tests use them).
    """

    base: float | None = None
    current: float | None = None
    new: float | None = None
    base_each: list[float] | None = None
    current_each: list[float] | None = None
    new_each: list[float] | None = None


@dataclass(frozen=True)
class PairScores:
    """Does a model prefer each held-out question's own answer to other examples' answers?

    Per held-out example (those that have a different answer elsewhere in the split), the share of its pairs in
    which the true answer has the lower loss per token (a tie counts a half), for the base, the active LoRA (if any)
    and the new LoRA. ``pairs``: how many (question, foreign answer) pairs were scored per model.
    """

    pairs: int = 0
    base: list[float] = field(default_factory=list)
    current: list[float] | None = None
    new: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class GeneralScores:
    """The shipped general prompts: the base's own greedy answers, and each model's loss per token on them.

    ``base``/``new`` (and ``current``): per prompt, mean loss per token of the base's greedy answer. The new LoRA's
    drift from the base is ``new[i] - base[i]``. ``*_distinct``: how many different greedy answers the base and the
    new LoRA give to the prompts (one fixed sentence for everything collapses this).
    """

    prompts: int = 0
    base: list[float] = field(default_factory=list)
    current: list[float] | None = None
    new: list[float] = field(default_factory=list)
    base_distinct: int = 0
    new_distinct: int = 0


@dataclass(frozen=True)
class TrainResult:
    train_examples: int
    eval_examples: int
    steps: int
    eval: SplitLosses
    regression: SplitLosses | None = None
    lora_dir: str = ""
    duration_s: float = 0.0
    device: str = "cpu"
    quantized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    pairs: PairScores | None = None
    general: GeneralScores | None = None
    started_from: Literal["base", "current"] = "base"  # what the new LoRA was trained from

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
            lora_dir=str(data.get("lora_dir", data.get("adapter_dir", ""))),  # adapter_dir: before the rename
            duration_s=float(data.get("duration_s", 0.0)),
            device=str(data.get("device", "cpu")),
            quantized=bool(data.get("quantized", False)),
            extra=dict(data.get("extra", {})),
            pairs=PairScores(**data["pairs"]) if data.get("pairs") else None,
            general=GeneralScores(**data["general"]) if data.get("general") else None,
            started_from="current" if data.get("started_from") == "current" else "base",
        )
