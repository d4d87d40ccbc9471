"""The quality gate: is a freshly trained LoRA good enough to replace what is in service?

Everything is measured by the trainer in one process on one device (``inference.finetune.measures``), so the numbers
compare. Every check is recorded (``GateReport``, stored with the run) and shown by ``/finetune status``:

1. ``heldout_size``: the new held-out split has at least ``min_eval_examples`` examples (checked before training).
2. ``learned``: the new LoRA's held-out loss differs from the model it was trained from (the base, or the active
   LoRA it continued) by more than the noise: "nothing learned" otherwise.
3. ``beats_base`` / ``beats_active``: on the new held-out split it beats the base, and the active LoRA if there is one,
   by more than ``margin = max(z × standard error of the per-example differences, promote_margin × reference)``:
   a paired test on the same examples, so the margin comes from how much the examples disagree, not a fixed number.
4. ``pairs``: it learned which answer goes with which question. On held-out questions it prefers the true answer to
   other examples' answers more often than the base does, by more than ``max(min_pair_gain, z × standard error)``.
   Shuffled answers lower the loss (they teach which answers exist) but not this: it is what refuses them.
5. ``general``: on the shipped bilingual general prompts (``bot/data/general_prompts.json``), its loss on the base's
   own greedy answers rises by at most ``general_max_increase`` nats per token on average, and its own greedy answers
   stay varied (at least ``GENERAL_MIN_VARIETY`` of the base's number of different answers): it did not damage what
   the model did before, nor collapse onto one reply.
6. ``active_heldout``: when the active version passed this gate (``LoraVersion.gate_passed``), the new LoRA is not
   worse than it on that version's kept held-out split by more than the margin of 3. A version promoted before this
   gate, by hand, or rolled back is not a reference: the check is skipped and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.learning.job import TrainResult
from bot.texts import Lang, say

CheckName = Literal[
    "heldout_size", "learned", "beats_base", "beats_active", "pairs", "general", "active_heldout"
]
CheckStatus = Literal["passed", "failed", "skipped"]
ORDER: tuple[CheckName, ...] = (
    "heldout_size",
    "learned",
    "beats_base",
    "beats_active",
    "pairs",
    "general",
    "active_heldout",
)
GENERAL_MIN_VARIETY = (
    0.75  # the new LoRA gives at least three quarters as many different general answers as the base
)
NOTHING_CHANGED = 1e-4  # nats per token: below this a difference is no difference, whatever the noise


@dataclass(frozen=True)
class GateRules:
    min_eval_examples: int = 8
    z: float = 2.0
    min_relative_gain: float = 0.02
    min_pair_gain: float = 0.1
    general_max_increase: float = 1.0


@dataclass(frozen=True)
class Check:
    name: CheckName
    status: CheckStatus
    values: dict[str, Any] = field(default_factory=dict)  # numbers for the status line; "why" when skipped

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "values": dict(self.values)}


@dataclass(frozen=True)
class GateReport:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status != "failed" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def check(self, name: CheckName) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.as_json() for c in self.checks]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> GateReport | None:
        if not data or not isinstance(data.get("checks"), list):
            return None
        checks = tuple(
            Check(name=c["name"], status=c["status"], values=dict(c.get("values") or {}))
            for c in data["checks"]
            if c.get("name") in ORDER and c.get("status") in ("passed", "failed", "skipped")
        )
        return cls(checks)

    def reason(self) -> str:
        """A short English phrase for the run record and the logs: the first failing check, or what passed."""
        failed = self.failed
        if not failed:
            return "passed every check"
        return "; ".join(_reason(c) for c in failed)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # a short English phrase for the run record and the logs
    reference_loss: float | None  # held-out loss of the base (the number the candidate had to beat first)
    candidate_loss: float | None
    report: GateReport


@dataclass(frozen=True)
class ActiveVersion:
    """What the gate needs to know about the version in service."""

    name: str
    gate_passed: bool


def check_heldout_size(examples: int, rules: GateRules) -> Check:
    status: CheckStatus = "passed" if examples >= rules.min_eval_examples else "failed"
    return Check("heldout_size", status, {"examples": examples, "needed": rules.min_eval_examples})


def refuse_small(examples: int, rules: GateRules) -> GateDecision | None:
    """Before training: a held-out split too small to decide anything refuses the run."""
    check = check_heldout_size(examples, rules)
    if check.status == "passed":
        return None
    report = GateReport((check,))
    return GateDecision(False, report.reason(), None, None, report)


def judge(result: TrainResult, rules: GateRules, active: ActiveVersion | None) -> GateDecision:
    checks = (
        check_heldout_size(result.eval_examples, rules),
        _learned(result, rules),
        _beats("beats_base", result.eval.base_each, result.eval.new_each, rules),
        _beats("beats_active", result.eval.current_each, result.eval.new_each, rules)
        if active is not None
        else Check("beats_active", "skipped", {"why": "no_active"}),
        _pairs(result, rules),
        _general(result, rules),
        _active_heldout(result, rules, active),
    )
    report = GateReport(checks)
    return GateDecision(report.passed, report.reason(), result.eval.base, result.eval.new, report)


# the checks


def paired_difference(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """(mean of first[i] - second[i], its standard error); the error is infinite with fewer than two pairs."""
    differences = [a - b for a, b in zip(first, second, strict=True)]
    n = len(differences)
    if n == 0:
        return 0.0, math.inf
    mean = sum(differences) / n
    if n < 2:
        return mean, math.inf
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean, math.sqrt(variance / n)


def _learned(result: TrainResult, rules: GateRules) -> Check:
    start = result.eval.current_each if result.started_from == "current" else result.eval.base_each
    new = result.eval.new_each
    if not start or not new or len(start) != len(new):
        return Check("learned", "failed", {"why": "missing"})
    change, error = paired_difference(start, new)
    noise = rules.z * error
    changed = abs(change) > noise and abs(change) > NOTHING_CHANGED
    return Check(
        "learned",
        "passed" if changed else "failed",
        {"change": change, "noise": _finite(noise), "from": result.started_from},
    )


def _beats(
    name: CheckName, reference: Sequence[float] | None, new: Sequence[float] | None, rules: GateRules
) -> Check:
    if not reference or not new or len(reference) != len(new):
        return Check(name, "failed", {"why": "missing"})
    gain, error = paired_difference(reference, new)
    reference_mean = sum(reference) / len(reference)
    margin = max(rules.z * error, rules.min_relative_gain * reference_mean)
    return Check(
        name,
        "passed" if gain > margin else "failed",
        {
            "reference": reference_mean,
            "new": sum(new) / len(new),
            "gain": gain,
            "margin": _finite(margin),
        },
    )


def _pairs(result: TrainResult, rules: GateRules) -> Check:
    pairs = result.pairs
    if pairs is None or not pairs.new or len(pairs.base) != len(pairs.new):
        return Check("pairs", "failed", {"why": "no_pairs", "pairs": 0})
    gain, error = paired_difference(pairs.new, pairs.base)
    margin = max(rules.min_pair_gain, rules.z * error)
    return Check(
        "pairs",
        "passed" if gain > margin else "failed",
        {
            "base": sum(pairs.base) / len(pairs.base),
            "new": sum(pairs.new) / len(pairs.new),
            "gain": gain,
            "margin": _finite(margin),
            "pairs": pairs.pairs,
        },
    )


def _general(result: TrainResult, rules: GateRules) -> Check:
    general = result.general
    if general is None or not general.new or len(general.base) != len(general.new):
        return Check("general", "skipped", {"why": "no_prompts"})
    increase, _ = paired_difference(general.new, general.base)
    varied = general.new_distinct >= GENERAL_MIN_VARIETY * general.base_distinct
    return Check(
        "general",
        "passed" if increase <= rules.general_max_increase and varied else "failed",
        {
            "increase": increase,
            "bound": rules.general_max_increase,
            "prompts": general.prompts,
            "distinct": general.new_distinct,
            "base_distinct": general.base_distinct,
        },
    )


def _active_heldout(result: TrainResult, rules: GateRules, active: ActiveVersion | None) -> Check:
    if active is None:
        return Check("active_heldout", "skipped", {"why": "no_active"})
    if not active.gate_passed:
        return Check("active_heldout", "skipped", {"why": "not_gated", "version": active.name})
    regression = result.regression
    current, new = (regression.current_each, regression.new_each) if regression else (None, None)
    if not current or not new or len(current) != len(new):
        return Check("active_heldout", "skipped", {"why": "missing", "version": active.name})
    if len(current) < rules.min_eval_examples:
        return Check(
            "active_heldout",
            "skipped",
            {
                "why": "too_small",
                "version": active.name,
                "examples": len(current),
                "needed": rules.min_eval_examples,
            },
        )
    worse, error = paired_difference(new, current)
    current_mean = sum(current) / len(current)
    margin = max(rules.z * error, rules.min_relative_gain * current_mean)
    return Check(
        "active_heldout",
        "passed" if worse <= margin else "failed",
        {
            "version": active.name,
            "current": current_mean,
            "new": sum(new) / len(new),
            "worse": worse,
            "margin": _finite(margin),
            "examples": len(current),
        },
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _reason(check: Check) -> str:
    v = check.values
    if v.get("why") == "missing":
        return f"{check.name}: measurements missing from the result"
    if check.name == "heldout_size":
        return f"held-out split too small: {v['examples']} examples, at least {v['needed']} needed"
    if check.name == "learned":
        return (
            f"nothing learned: held-out loss changed {v['change']:+.4f}, within the noise {_num(v['noise'])}"
        )
    if check.name in ("beats_base", "beats_active"):
        versus = "the base" if check.name == "beats_base" else "the active version"
        return (
            f"does not beat {versus} on the held-out split: {v['new']:.4f} vs {v['reference']:.4f} "
            f"(gain {v['gain']:+.4f}, needed > {_num(v['margin'])})"
        )
    if check.name == "pairs":
        if v.get("why") == "no_pairs":
            return "no two different answers in the held-out split to tell questions apart"
        return (
            f"did not learn which answer goes with which question: true answer preferred in "
            f"{v['new']:.0%} of pairs vs {v['base']:.0%} for the base (needed > {_num(v['margin'])} more)"
        )
    if check.name == "general":
        return (
            f"general prompts changed too much: loss {v['increase']:+.3f} per token (bound {v['bound']:.3f}), "
            f"{v.get('distinct')} different answers (the base gave {v.get('base_distinct')})"
        )
    return (
        f"worse on {v.get('version')}'s held-out split: {v.get('new', 0):.4f} vs {v.get('current', 0):.4f} "
        f"(needed ≤ {_num(v.get('margin'))} worse)"
    )


def _num(value: object) -> str:
    return f"{float(value):.4f}" if isinstance(value, int | float) else "∞"


# /finetune status


MARKS: dict[CheckStatus, str] = {"passed": "✓", "failed": "✗", "skipped": "–"}


def describe(report: GateReport, lang: Lang) -> list[str]:
    """The verdict and one line per check, in the admin's language."""
    learned = report.check("learned")
    if report.passed:
        verdict = "gate.verdict.passed"
    elif learned is not None and learned.status == "failed" and learned.values.get("why") != "missing":
        verdict = "gate.verdict.nothing_learned"
    else:
        verdict = "gate.verdict.failed"
    return [say(verdict, lang), *(f"  {MARKS[c.status]} {_check_line(c, lang)}" for c in report.checks)]


def _check_line(check: Check, lang: Lang) -> str:
    v = check.values
    why = v.get("why")
    if why == "no_pairs":
        return say("gate.failed.no_pairs", lang)
    if why is not None:
        detail = say(f"gate.skipped.{why}", lang, **{k: _show(x) for k, x in v.items()})
        return f"{say(f'gate.name.{check.name}', lang)}: {detail}"
    shown = {k: _show(x) for k, x in v.items()}
    if check.name == "pairs":
        shown.update(new=_share(v.get("new")), base=_share(v.get("base")), margin=_share(v.get("margin")))
    if check.name in ("learned", "beats_base", "beats_active"):
        shown.update(change=_signed(v.get("change")), gain=_signed(v.get("gain")))
    if check.name == "general":
        shown.update(increase=_signed(v.get("increase")))
    if check.name == "active_heldout":
        shown.update(worse=_signed(v.get("worse")))
    return say(f"gate.check.{check.name}", lang, **shown)


def _show(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "∞" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _signed(value: object) -> str:
    return f"{value:+.3f}" if isinstance(value, int | float) else "?"


def _share(value: object) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "?"
