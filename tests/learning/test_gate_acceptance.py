"""The quality gate's acceptance runs on the demo model (CPU): real training subprocesses, LocalEngine, SQLite.

One chain of runs on one store, shared by the tests below (each run is slow on CPU; every test asserts on one step):

1. too little data → refused before training, with the reason and the counts (too few examples; held-out too small);
2. shuffled answers, nothing active → refused (pairs);
3. one fixed sentence to everything → refused by the general-prompt check;
4. default settings on a facts dataset → promoted, the trained answers come back;
5. shuffled answers with that version active → refused;
6. a bad version made active by hand, then a good facts dataset → promoted (the bad version blocks nothing).

Run with ``-s`` to print every check's numbers (docs/learning.md quotes them).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.domain import Author, ChatTurn, ConversationKey, GenerationParams, GenerationRequest, Role
from bot.learning.commands import render_status
from bot.learning.dataset import DatasetOptions, build_dataset, read_examples
from bot.learning.gate import GateReport
from bot.learning.job import TrainJob
from bot.learning.service import HELD_OUT_NAME, PROJECT_ROOT, FinetuneService
from bot.ports import Engine
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate
from bot.store.learning_records import LearningRecords, RunInfo, RunStatus
from tests.learning.helpers import TRAINER
from tests.learning.synthetic import FACTS, clear_messages, seed_facts

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.0, temperature=0.0)
FIXED_SENTENCE = "I cannot help with that right now, please ask again later."
EVERYDAY = [  # greetings and everyday chat (the first four are general prompts too: everyone types them)
    "안녕하세요",
    "Hello",
    "감사합니다",
    "Thank you",
    "안녕",
    "Hi",
    "좋은 저녁이에요.",
    "Good evening.",
    "오늘 점심 뭐 먹을까요?",
    "What should we eat for lunch?",
    "주말 잘 보냈어요?",
    "How was your weekend?",
    "날씨가 좋네요.",
    "The weather is nice today.",
    "커피 한잔 할래요?",
    "Do you want some coffee?",
    "요즘 어떻게 지내요?",
    "How are you doing these days?",
    "재미있는 이야기 해 줘요.",
    "Tell me something fun.",
    "이 문장을 영어로 번역해 줘요.",
    "Translate this sentence into Korean.",
    "추천할 만한 책이 있어요?",
    "Can you recommend a book?",
    "오늘 기분이 어때요?",
    "How do you feel today?",
    "도와줘서 고마워요.",
    "Thanks for your help.",
    "내일 봐요.",
    "See you tomorrow.",
    "생일 축하해요!",
    "Happy birthday!",
    "다음에 또 물어볼게요.",
    "I will ask again next time.",
    "무슨 뜻인지 설명해 줄래요?",
    "Can you explain what that means?",
]


@dataclass
class Step:
    run: RunInfo
    seconds: float
    status_en: str
    status_ko: str
    replies: dict[str, str] = field(default_factory=dict)  # trained question -> greedy reply after the run
    expected: dict[str, str] = field(default_factory=dict)

    @property
    def report(self) -> GateReport:
        report = GateReport.from_json(self.run.gate)
        assert report is not None, self.run
        return report

    def status_of(self, check: str) -> str:
        found = self.report.check(check)  # type: ignore[arg-type]
        assert found is not None, self.run.gate
        return found.status


def make_settings(data_dir: Path, model_dir: Path, **finetune: object) -> Settings:
    """The defaults, on the demo model (so its training defaults apply); nothing tuned for the test."""
    return load_settings(
        data_dir=data_dir,
        model={"name_or_path": str(model_dir), "dtype": "float32", "device_map": None, "is_demo": True},
        scheduler={"enabled": False, "lease_ttl_s": 30},
        finetune=dict(finetune),
    )


def seed_pairs(store: ConversationStore, pairs: Sequence[tuple[str, str]]) -> None:
    for index, (question, answer) in enumerate(pairs):
        key = ConversationKey("slack", "T1", f"D-{uuid.uuid4().hex[:8]}")
        store.add_message(key, Role.USER, question, author=Author(id=f"U{index}", display_name="member"))
        store.add_message(key, Role.ASSISTANT, answer)


def seed_fixed_sentence(store: ConversationStore) -> None:
    questions = [q for qs, _ in FACTS for q in qs] + EVERYDAY
    seed_pairs(store, [(q, FIXED_SENTENCE) for q in questions])


async def ask(engine: Engine, settings: Settings, question: str) -> str:
    request = GenerationRequest(
        request_id=uuid.uuid4().hex,
        channel="gate-test",
        turns=(ChatTurn(Role.SYSTEM, settings.model.system_prompt), ChatTurn(Role.USER, question)),
        params=GREEDY,
    )
    return "".join([e async for e in engine.generate(request) if isinstance(e, str)]).strip()


def trained_pairs(store: ConversationStore, settings: Settings, out: Path) -> dict[str, str]:
    files = build_dataset(store, DatasetOptions.from_settings(settings), out)
    return {e.messages[-2].content: e.messages[-1].content for e in read_examples(files.train_path)}


def train_by_hand(store: ConversationStore, settings: Settings, out: Path) -> Path:
    """What an admin could do outside the gate: train a LoRA with the trainer and keep it, whatever it learned."""
    files = build_dataset(store, DatasetOptions.from_settings(settings), out)
    job = TrainJob(
        base_model=settings.model.name_or_path,
        train_file=str(files.train_path),
        eval_file=str(files.eval_path),
        output_dir=str(out / "lora"),
        result_file=str(out / "result.json"),
        learning_rate=1e-2,
        max_steps=80,
        micro_batch_size=8,
        max_seq_len=512,
        quantization="none",
    )
    job.write(out / "job.json")
    subprocess.run(
        [sys.executable, "-m", "inference.finetune.train", str(out / "job.json")],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.copyfile(files.eval_path, out / "lora" / HELD_OUT_NAME)
    return out / "lora"


async def one_run(service: FinetuneService, engine: Engine | None, expected: dict[str, str]) -> Step:
    started = time.monotonic()
    run = await service.run(actor="console:admin")
    seconds = time.monotonic() - started
    assert run is not None
    zone = ZoneInfo("Asia/Seoul")
    status = await service.status()
    settings = service._settings  # the same settings the run used
    replies = {}
    if engine is not None:
        replies = {q: await ask(engine, settings, q) for q in expected}
    return Step(
        run, seconds, render_status(status, "en", zone), render_status(status, "ko", zone), replies, expected
    )


async def chain(root: Path, model_dir: Path) -> dict[str, Step]:
    from inference.local_engine import LocalEngine

    db = create_db_engine(f"sqlite:///{root / 'hanbot.db'}")
    migrate(db)
    store = ConversationStore(db)
    settings = make_settings(root / "data", model_dir)
    engine = LocalEngine.from_settings(settings)
    service = FinetuneService(settings, store, engine, trainer=TRAINER)
    steps: dict[str, Step] = {}
    try:
        await service.restore()
        seed_pairs(store, [(qs[0], a) for qs, a in FACTS[:6]] + [(qs[1], a) for qs, a in FACTS[:6]])
        steps["too_few_examples"] = await one_run(service, None, {})
        small = FinetuneService(
            make_settings(root / "data", model_dir, min_examples=8), store, engine, trainer=TRAINER
        )
        steps["held_out_too_small"] = await one_run(small, None, {})

        clear_messages(store)
        seed_facts(store, shuffled=True)
        steps["shuffled_nothing_active"] = await one_run(service, None, {})

        clear_messages(store)
        seed_fixed_sentence(store)
        steps["fixed_sentence"] = await one_run(service, None, {})

        clear_messages(store)
        seed_facts(store)
        facts = trained_pairs(store, settings, root / "preview")
        steps["facts_default"] = await one_run(service, engine, facts)

        clear_messages(store)
        seed_facts(store, shuffled=True)
        steps["shuffled_with_active"] = await one_run(service, engine, facts)

        bad = train_by_hand(store, settings, root / "by-hand")
        LearningRecords(store).promote(
            name="by-hand", path=str(bad), run_id=None, eval_loss=None, actor="admin"
        )
        await service.sync_active()
        clear_messages(store)
        seed_facts(store)
        steps["good_after_bad_by_hand"] = await one_run(service, engine, facts)
    finally:
        await service.aclose()
        await engine.aclose()
    return steps


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> dict[str, Step]:
    started = time.monotonic()
    result = asyncio.run(chain(tmp_path_factory.mktemp("gate"), demo_model_dir))
    print(f"\n== gate acceptance chain: {time.monotonic() - started:.0f} s")
    for name, step in result.items():
        print(f"-- {name}: {step.run.status.value} in {step.seconds:.0f} s, {step.run.error}")
        print(json.dumps(step.run.gate, ensure_ascii=False))
        print(step.status_en)
    return result


def test_too_little_data_is_refused_with_the_reason_and_counts(steps: dict[str, Step]) -> None:
    few = steps["too_few_examples"]
    assert few.run.status is RunStatus.REJECTED
    assert few.run.error is not None and "12" in few.run.error and "20" in few.run.error
    small = steps["held_out_too_small"]
    assert small.run.status is RunStatus.REJECTED
    assert small.status_of("heldout_size") == "failed"
    assert small.report.check("heldout_size").values == {"examples": 6, "needed": 8}  # type: ignore[union-attr]
    assert "6 examples (at least 8 needed)" in small.status_en
    assert "검증 세트: 6개 (최소 8개 필요)" in small.status_ko
    assert small.run.progress.get("step") is None  # refused before any training


def test_shuffled_answers_with_nothing_active_are_refused(steps: dict[str, Step]) -> None:
    step = steps["shuffled_nothing_active"]
    assert step.run.status is RunStatus.REJECTED, step.run
    assert (
        step.status_of("beats_base") == "passed"
    )  # the loss alone would have promoted it (the case)
    assert step.status_of("pairs") == "failed"
    assert "✗ picks each question's own answer" in step.status_en
    assert "✗ 질문에 맞는 답 고르기" in step.status_ko


def test_a_fixed_sentence_for_everything_is_refused_by_the_general_prompts(steps: dict[str, Step]) -> None:
    step = steps["fixed_sentence"]
    assert step.run.status is RunStatus.REJECTED, step.run
    assert step.status_of("beats_base") == "passed"
    assert step.status_of("general") == "failed"
    general = step.report.check("general")
    assert general is not None and general.values["distinct"] < 0.75 * general.values["base_distinct"]
    assert "✗ general prompts kept" in step.status_en


def test_default_settings_on_a_facts_dataset_are_promoted_and_answer_as_trained(
    steps: dict[str, Step],
) -> None:
    step = steps["facts_default"]
    assert step.run.status is RunStatus.SUCCEEDED, step.run
    assert step.report.passed and step.status_of("general") == "passed"
    assert step.replies == step.expected
    assert "Gate: every check passed" in step.status_en and "평가: 모든 항목 통과" in step.status_ko


def test_shuffled_answers_with_a_version_active_are_refused(steps: dict[str, Step]) -> None:
    step = steps["shuffled_with_active"]
    assert step.run.status is RunStatus.REJECTED, step.run
    assert step.status_of("pairs") == "failed"
    assert step.status_of("active_heldout") == "failed"
    assert step.replies == steps["facts_default"].expected  # the version in service still answers as trained


def test_a_bad_version_made_active_by_hand_blocks_nothing(steps: dict[str, Step]) -> None:
    step = steps["good_after_bad_by_hand"]
    assert step.run.status is RunStatus.SUCCEEDED, step.run
    check = step.report.check("active_heldout")
    assert check is not None and check.status == "skipped" and check.values["why"] == "not_gated"
    assert step.status_of("beats_active") == "passed"
    assert step.replies == step.expected
