"""The gate's rules on hand-made trainer results (fast); the runs on the demo model are in test_gate_acceptance.py."""

from __future__ import annotations

from bot.learning.gate import ActiveVersion, GateReport, GateRules, describe, judge, paired_difference
from bot.learning.job import GeneralScores, PairScores, SplitLosses, TrainResult

RULES = GateRules(
    min_eval_examples=8, z=2.0, min_relative_gain=0.02, min_pair_gain=0.1, general_max_increase=0.5
)


def result(
    base: list[float],
    new: list[float],
    *,
    current: list[float] | None = None,
    pairs: tuple[list[float], list[float]] | None = None,
    general: tuple[list[float], list[float]] = ([0.1] * 4, [0.2] * 4),
    regression: tuple[list[float], list[float]] | None = None,
    started_from: str = "base",
    distinct: tuple[int, int] = (20, 18),
) -> TrainResult:
    pair_base, pair_new = pairs or ([0.5] * len(base), [1.0] * len(base))
    return TrainResult(
        train_examples=20,
        eval_examples=len(base),
        steps=10,
        eval=SplitLosses(
            base=sum(base) / len(base),
            new=sum(new) / len(new),
            current=sum(current) / len(current) if current else None,
            base_each=base,
            current_each=current,
            new_each=new,
        ),
        regression=SplitLosses(current_each=regression[0], new_each=regression[1]) if regression else None,
        pairs=PairScores(pairs=len(base) * 4, base=pair_base, new=pair_new),
        general=GeneralScores(
            prompts=len(general[0]),
            base=general[0],
            new=general[1],
            base_distinct=distinct[0],
            new_distinct=distinct[1],
        ),
        started_from="current" if started_from == "current" else "base",
    )


def statuses(report: GateReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_paired_difference_is_the_mean_and_its_standard_error() -> None:
    mean, error = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert mean == 3.0
    assert abs(error - (1.0 / 3**0.5)) < 1e-12  # differences 2, 3, 4: sd 1, n 3


def test_a_clear_gain_on_every_check_promotes() -> None:
    decision = judge(result([5.0, 6.0, 5.5, 6.5] * 2, [0.5, 0.7, 0.4, 0.6] * 2), RULES, None)
    assert decision.promote, decision.reason
    assert statuses(decision.report) == {
        "heldout_size": "passed",
        "learned": "passed",
        "beats_base": "passed",
        "beats_active": "skipped",
        "pairs": "passed",
        "general": "passed",
        "active_heldout": "skipped",
    }


def test_a_gain_within_the_noise_is_nothing_learned() -> None:
    base = [2.0, 3.0, 1.0, 4.0, 2.5, 3.5, 1.5, 2.0]
    new = [1.5, 3.4, 0.6, 4.3, 2.0, 3.9, 1.2, 2.1]  # mean 0.1 better, spread far wider
    decision = judge(result(base, new, pairs=([0.5] * 8, [0.5] * 8)), RULES, None)
    assert not decision.promote
    assert statuses(decision.report)["learned"] == "failed"
    assert describe(decision.report, "en")[0] == "Gate: nothing learned (no measurable change, not promoted)"
    assert "nothing learned" in decision.reason


def test_a_lower_loss_without_telling_answers_apart_is_refused() -> None:
    decision = judge(result([9.0] * 8, [1.0, 1.2] * 4, pairs=([0.5, 0.4] * 4, [0.5, 0.5] * 4)), RULES, None)
    assert not decision.promote
    assert statuses(decision.report)["beats_base"] == "passed"
    assert statuses(decision.report)["pairs"] == "failed"


def test_drift_on_the_general_prompts_beyond_the_bound_is_refused() -> None:
    decision = judge(result([9.0] * 8, [1.0, 1.2] * 4, general=([0.1] * 4, [2.0] * 4)), RULES, None)
    assert not decision.promote
    assert statuses(decision.report)["general"] == "failed"
    assert "general prompts changed too much: loss +1.900 per token (bound 0.500)" in decision.reason


def test_one_answer_to_every_general_prompt_is_refused() -> None:
    decision = judge(result([9.0] * 8, [1.0, 1.2] * 4, distinct=(20, 2)), RULES, None)
    assert not decision.promote
    assert statuses(decision.report)["general"] == "failed"
    assert "2 different answers (the base gave 20)" in decision.reason


def test_the_active_versions_held_out_set_counts_only_when_it_passed_the_gate() -> None:
    worse = ([0.1] * 8, [3.0] * 8)
    trained = result([9.0] * 8, [1.0, 1.2] * 4, current=[5.0] * 8, regression=worse)
    assert not judge(trained, RULES, ActiveVersion("v1", gate_passed=True)).promote
    by_hand = judge(trained, RULES, ActiveVersion("v1", gate_passed=False))
    assert by_hand.promote, by_hand.reason
    check = by_hand.report.check("active_heldout")
    assert check is not None and check.values == {"why": "not_gated", "version": "v1"}
    assert "skipped: v1 was not promoted by this gate" in "\n".join(describe(by_hand.report, "en"))


def test_a_kept_held_out_set_emptied_by_opt_outs_is_reported_too_small() -> None:
    trained = result([9.0] * 8, [1.0, 1.2] * 4, current=[5.0] * 8, regression=([0.1] * 3, [3.0] * 3))
    decision = judge(trained, RULES, ActiveVersion("v1", gate_passed=True))
    check = decision.report.check("active_heldout")
    assert check is not None and check.status == "skipped" and check.values["why"] == "too_small"
    ko = "\n".join(describe(decision.report, "ko"))
    assert "v1의 검증 세트가 3개뿐이에요 (최소 8개)" in ko


def test_the_report_survives_its_json_round_trip() -> None:
    report = judge(result([9.0] * 8, [1.0] * 8), RULES, None).report
    again = GateReport.from_json(report.as_json())
    assert again == report
