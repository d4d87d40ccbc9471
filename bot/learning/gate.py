"""The quality gate: is a freshly trained LoRA good enough to replace the one in service?

Two conditions, both measured by the trainer in one process on one device, so the numbers compare:

1. On the new held-out split, the new LoRA's loss beats the reference (the active LoRA, or the base when none is
   active) by ``margin``, a fraction: ``new <= reference * (1 - margin)``.
2. When a version is active, on *its* held-out split (kept beside it, the "regression" set) the new LoRA is not worse
   than it by more than the same fraction: ``new <= current * (1 + margin)``. Data that teaches the model nothing
   true (shuffled answers) can still lower the loss on its own held-out split, by teaching which answers exist; it
   cannot do so without forgetting what the active version knew, and this condition catches that.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.learning.job import TrainResult


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # a short English phrase for the run record and the logs
    reference_loss: float | None
    candidate_loss: float | None


def judge(result: TrainResult, *, margin: float, has_active: bool) -> GateDecision:
    candidate = result.eval.new
    reference = result.eval.current if has_active else result.eval.base
    if candidate is None or reference is None:
        return GateDecision(False, "held-out losses missing from the result", reference, candidate)
    if candidate > reference * (1.0 - margin):
        return GateDecision(
            False,
            f"held-out loss {candidate:.4f} does not beat {reference:.4f} by {margin:.0%}",
            reference,
            candidate,
        )
    regression = result.regression
    if (
        has_active
        and regression is not None
        and regression.current is not None
        and regression.new is not None
    ):
        if regression.new > regression.current * (1.0 + margin):
            return GateDecision(
                False,
                f"worse on the active version's held-out set ({regression.new:.4f} > {regression.current:.4f})",
                reference,
                candidate,
            )
    return GateDecision(True, f"held-out loss {candidate:.4f} beats {reference:.4f}", reference, candidate)
