"""The acceptance scenario on CPU: the demo model served by LocalEngine, fine-tuned by real training subprocesses.

good data → promoted, the engine now gives the trained answers → shuffled answers → not promoted, replies unchanged →
a run killed halfway → failed, the LoRA in service unchanged → rollback → the base model's replies again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from bot.domain import ChatTurn, GenerationParams, GenerationRequest, Role
from bot.learning.dataset import DatasetOptions, build_dataset, read_examples
from bot.learning.service import FinetuneService
from bot.ports import Engine
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunStatus
from tests.learning.conftest import SettingsFactory
from tests.learning.helpers import TRAINER
from tests.learning.synthetic import FACTS, clear_messages, seed_facts

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.0, temperature=0.0)


async def ask(engine: Engine, settings: Settings, question: str) -> str:
    request = GenerationRequest(
        request_id=uuid.uuid4().hex,
        channel="learning-test",
        turns=(ChatTurn(Role.SYSTEM, settings.model.system_prompt), ChatTurn(Role.USER, question)),
        params=GREEDY,
    )
    return "".join([event async for event in engine.generate(request) if isinstance(event, str)]).strip()


async def ask_all(engine: Engine, settings: Settings, questions: list[str]) -> dict[str, str]:
    return {q: await ask(engine, settings, q) for q in questions}


def trained_pairs(store: ConversationStore, settings: Settings, out: Path) -> list[tuple[str, str]]:
    """The (question, answer) pairs a run on this store trains on: the same builder, the same stable split."""
    files = build_dataset(store, DatasetOptions.from_settings(settings), out)
    pairs = [(e.messages[-2].content, e.messages[-1].content) for e in read_examples(files.train_path)]
    assert len(pairs) >= 6
    return pairs


async def wait_for_training_step(records: LearningRecords, run_id: int, timeout_s: float = 240.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        run = records.run(run_id)
        assert run is not None
        if run.status is not RunStatus.RUNNING:
            pytest.fail(f"run ended before it could be killed: {run}")
        if int(run.progress.get("step", 0)) >= 1:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the trainer never reported a step")


async def test_learning_loop_end_to_end(
    sqlite_store: ConversationStore,
    learning_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inference.local_engine import LocalEngine

    monkeypatch.setattr("tests.learning.synthetic.FACTS", FACTS[:4])
    settings = learning_settings(max_steps=80, gpu_sharing="pause")
    # the fast decoder, as on a GPU (it runs eagerly on CPU): a promoted version must be served by it, not by a
    # replacement (before adapters lived in the fast decoder, a promotion swapped in the hf decoder)
    settings.engine.decoder = "static"
    records = LearningRecords(sqlite_store)
    seed_facts(sqlite_store)
    pairs = trained_pairs(sqlite_store, settings, tmp_path / "preview")
    questions = [q for q, _ in pairs]

    engine = LocalEngine.from_settings(settings)
    service = FinetuneService(settings, sqlite_store, engine, trainer=TRAINER)

    def serving_decoder() -> str:
        return type(engine.decoder).__name__

    try:
        await service.restore()
        base_replies = await ask_all(engine, settings, questions)
        assert serving_decoder() == "StaticSlotDecoder"
        assert all(base_replies[q] != a for q, a in pairs)  # the base model does not know these facts

        # 1. good data: held-out loss beats the base, the LoRA is promoted, the engine answers as trained
        first = await service.run(actor="console:local")
        assert first is not None and first.status is RunStatus.SUCCEEDED, first
        assert first.eval_loss is not None and first.baseline_loss is not None
        assert first.eval_loss < first.baseline_loss
        trained_replies = await ask_all(engine, settings, questions)
        assert trained_replies == dict(pairs)
        assert serving_decoder() == "StaticSlotDecoder"  # the promoted version is served by the fast decoder

        # 2. the same questions with shuffled answers cannot improve the model: not promoted
        clear_messages(sqlite_store)
        seed_facts(sqlite_store, shuffled=True)
        second = await service.run(actor="console:local")
        assert second is not None and second.status is RunStatus.REJECTED, second
        active = records.active_version()
        assert active is not None and active.name == "v1"
        assert await ask_all(engine, settings, questions) == trained_replies

        # 3. a training subprocess killed halfway: the run fails, v1 stays in service
        settings.finetune.max_steps = 100_000
        started = await service.start(actor="console:local")
        assert started.started and started.run is not None
        await wait_for_training_step(records, started.run.id)
        pid = service.training_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = await service.wait()
        assert killed is not None and killed.status is RunStatus.FAILED, killed
        assert killed.error is not None and "SIGKILL" in killed.error
        active = records.active_version()
        assert active is not None and active.name == "v1"
        assert await ask_all(engine, settings, questions) == trained_replies

        # 4. rollback: back to the base model and its replies
        outcome = await service.rollback(actor="console:local")
        assert (outcome.previous, outcome.current) == ("v1", None)
        assert await ask_all(engine, settings, questions) == base_replies
        assert records.active_version() is None
        assert serving_decoder() == "StaticSlotDecoder"
    finally:
        await service.aclose()
        await engine.aclose()
