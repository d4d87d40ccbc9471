"""FinetuneService around a real training subprocess (the demo model, a few steps) and a recording engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.domain import ConversationKey
from bot.learning.commands import render_status
from bot.learning.service import FinetuneService
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunStatus
from tests.learning.conftest import RecordingEngine, SettingsFactory
from tests.learning.helpers import TRAINER
from tests.learning.synthetic import FACTS, seed_facts

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _four_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.learning.synthetic.FACTS", FACTS[:4])


async def test_run_promotes_versions_and_rolls_back(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings()
    seed_facts(sqlite_store)
    engine = RecordingEngine()
    service = FinetuneService(settings, sqlite_store, engine, trainer=TRAINER)

    first = await service.run(actor="discord:admin-1")
    assert first is not None and first.status is RunStatus.SUCCEEDED, first
    assert first.eval_loss is not None and first.baseline_loss is not None
    assert first.eval_loss < first.baseline_loss * 0.98
    assert engine.calls == ["pause", "resume", "load_lora:v1", "use_lora:v1"]
    assert not engine.paused
    v1 = settings.lora_dir / "versions" / "v1"
    assert engine.loras == {"v1": str(v1)}
    assert {"adapter_config.json", "adapter_model.safetensors", "heldout.jsonl", "metrics.json"} <= {
        p.name for p in v1.iterdir()
    }
    run_dir = settings.lora_dir / "runs" / f"run-{first.id:04d}"
    assert not (run_dir / "train.jsonl").exists() and not (run_dir / "eval.jsonl").exists()
    assert (run_dir / "result.json").is_file() and (run_dir / "train.log").is_file()

    second = await service.run(actor="slack:admin-2", trigger="schedule")
    assert second is not None and second.status is RunStatus.SUCCEEDED, second
    assert engine.lora == "v2"
    records = LearningRecords(sqlite_store)
    assert [v.name for v in records.versions()] == ["v1", "v2"]

    outcome = await service.rollback(actor="console:local")
    assert (outcome.rolled_back, outcome.previous, outcome.current) == (True, "v2", "v1")
    assert engine.lora == "v1"
    active = records.active_version()
    assert active is not None and active.name == "v1"
    outcome = await service.rollback(actor="console:local")
    assert (outcome.previous, outcome.current) == ("v1", None)
    assert engine.lora is None
    assert records.active_version() is None
    assert not (await service.rollback(actor="console:local")).rolled_back

    audit = [(action, actor) for action, actor, _ in records.audit_events()]
    assert audit == [
        ("finetune.start", "discord:admin-1"),
        ("finetune.promote", "discord:admin-1"),
        ("finetune.succeeded", "discord:admin-1"),
        ("finetune.start", "slack:admin-2"),
        ("finetune.promote", "slack:admin-2"),
        ("finetune.succeeded", "slack:admin-2"),
        ("finetune.rollback", "console:local"),
        ("finetune.rollback", "console:local"),
    ]


async def test_a_second_start_is_told_a_run_is_going(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings(gpu_sharing="separate", train_device="cpu")
    seed_facts(sqlite_store)
    engine = RecordingEngine()
    service = FinetuneService(settings, sqlite_store, engine, holder="process-a", trainer=TRAINER)
    other_process = FinetuneService(
        settings, sqlite_store, RecordingEngine(), holder="process-b", trainer=TRAINER
    )

    started = await service.start(actor="discord:a")
    assert started.started and started.run is not None
    again = await service.start(actor="discord:b")
    elsewhere = await other_process.start(actor="slack:c")
    assert not again.started and not elsewhere.started
    assert again.run is not None and again.run.id == started.run.id
    assert elsewhere.run is not None and elsewhere.run.id == started.run.id
    status = await service.status()
    assert status.running is not None and status.running.id == started.run.id

    finished = await service.wait()
    assert finished is not None and finished.status is RunStatus.SUCCEEDED
    assert "pause" not in engine.calls  # separate device: the engine keeps serving
    assert (await other_process.start(actor="slack:c")).started
    await other_process.wait()


async def test_too_little_data_is_rejected_without_training(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    seed_facts(sqlite_store)
    engine = RecordingEngine()
    service = FinetuneService(learning_settings(min_examples=500), sqlite_store, engine, trainer=TRAINER)
    run = await service.run(actor="console:local")
    assert run is not None and run.status is RunStatus.REJECTED
    assert run.error is not None and "too few examples" in run.error
    assert engine.calls == []


async def test_a_crashing_trainer_fails_the_run_and_keeps_the_engine_as_it_was(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = learning_settings()
    settings.model.name_or_path = str(tmp_path / "no-such-model")
    seed_facts(sqlite_store)
    engine = RecordingEngine()
    run = await FinetuneService(settings, sqlite_store, engine, trainer=TRAINER).run(actor="console:local")
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error is not None and "exited with status 1" in run.error
    assert engine.calls == ["pause", "resume"]
    assert LearningRecords(sqlite_store).active_version() is None


async def test_restore_fails_abandoned_runs_and_serves_the_active_version(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings()
    records = LearningRecords(sqlite_store)
    abandoned = records.create_run(trigger="schedule", started_by="scheduler", owner="host:123:dead")
    version_dir = settings.lora_dir / "versions" / "v1"
    version_dir.mkdir(parents=True)
    records.promote(name="v1", path=str(version_dir), run_id=abandoned.id, eval_loss=1.0, actor="test")

    engine = RecordingEngine()
    service = FinetuneService(settings, sqlite_store, engine, trainer=TRAINER)
    await service.restore()

    run = records.run(abandoned.id)
    assert run is not None and run.status is RunStatus.FAILED
    assert engine.calls == ["load_lora:v1", "use_lora:v1"]
    await service.sync_active()  # nothing changed: nothing to do
    assert engine.calls == ["load_lora:v1", "use_lora:v1"]
    assert (await service.status()).serving == "v1"


async def test_restore_serves_the_base_when_the_active_folder_is_gone(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings()
    records = LearningRecords(sqlite_store)
    run = records.create_run(trigger="manual", started_by="t", owner="x")
    records.promote(
        name="v1", path=str(settings.lora_dir / "missing"), run_id=run.id, eval_loss=1.0, actor="t"
    )
    engine = RecordingEngine()
    await FinetuneService(settings, sqlite_store, engine, trainer=TRAINER).restore()
    assert engine.calls == []
    assert engine.lora is None


async def test_aclose_cancels_a_run_and_kills_its_trainer(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    seed_facts(sqlite_store)
    engine = RecordingEngine()
    service = FinetuneService(learning_settings(max_steps=100_000), sqlite_store, engine, trainer=TRAINER)
    started = await service.start(actor="console:local")
    assert started.run is not None
    for _ in range(600):
        if service.training_pid is not None:
            break
        await asyncio.sleep(0.05)
    pid = service.training_pid
    assert pid is not None
    await service.aclose()
    run = LearningRecords(sqlite_store).run(started.run.id)
    assert run is not None and run.status is RunStatus.CANCELLED
    assert engine.calls == ["pause", "resume"]
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


async def test_an_engine_that_refuses_the_new_lora_keeps_serving_the_old_one(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    from bot.errors import EngineError

    class RefusingEngine(RecordingEngine):
        async def load_lora(self, name: str, path: str) -> None:
            self.calls.append(f"load_lora:{name}")
            raise EngineError("out of memory")

    seed_facts(sqlite_store)
    engine = RefusingEngine()
    settings = learning_settings()
    run = await FinetuneService(settings, sqlite_store, engine, trainer=TRAINER).run(actor="console:local")
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error is not None and "out of memory" in run.error
    assert engine.calls == ["pause", "resume", "load_lora:v1", "use_lora:None"]
    assert LearningRecords(sqlite_store).active_version() is None
    assert not (settings.lora_dir / "versions" / "v1").exists()


async def test_a_bot_that_crashed_and_restarted_at_once_fails_its_old_run(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    """The dead process still holds the run lease (it has not expired yet), but it was on this host and is gone."""
    import socket
    from datetime import timedelta

    from bot.learning.service import RUN_LEASE
    from bot.store.leases import DbLease

    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    dead = f"{socket.gethostname()[:60]}:{gone.pid}:deadbeef"
    records = LearningRecords(sqlite_store)
    assert DbLease(sqlite_store, RUN_LEASE, holder=dead, ttl=timedelta(minutes=5)).acquire()
    orphan = records.create_run(trigger="schedule", started_by="scheduler", owner=dead)
    alive = records.create_run(trigger="manual", started_by="x", owner="other-host:1:cafe")

    settings = learning_settings(min_examples=10_000)
    service = FinetuneService(settings, sqlite_store, RecordingEngine(), trainer=TRAINER)
    await service.restore()
    assert records.run(orphan.id).status is RunStatus.FAILED  # type: ignore[union-attr]
    assert records.run(alive.id).status is RunStatus.FAILED  # its owner does not hold the lease either

    started = await service.start(actor="console:local")
    assert started.started
    await service.wait()


async def test_during_a_trial_a_run_that_passes_the_gate_is_held_and_a_refused_one_is_kept(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings()
    # training beside the serving engine on its device (here the CPU); at load this mode also needs
    # engine.reserve_training_gib, the engine's reservation (test_trial checks that validation)
    settings.finetune.gpu_sharing = "shared"
    seed_facts(sqlite_store)
    records = LearningRecords(sqlite_store)
    engine = RecordingEngine()
    service = FinetuneService(settings, sqlite_store, engine, trainer=TRAINER)
    tried = settings.lora_dir / "versions" / "v1"
    tried.mkdir(parents=True)
    earlier = records.create_run(trigger="manual", started_by="t", owner="x")
    records.add_candidate(name="v1", path=str(tried), run_id=earlier.id, eval_loss=None, actor="t")
    assert (await service.try_candidate(actor="slack:U1", scopes=("slack:T1:C1",))).started

    held = await service.run(actor="scheduler", trigger="schedule")

    assert held is not None and held.status is RunStatus.HELD, held
    assert held.gpu_sharing == "shared"
    assert held.eval_loss is not None and held.baseline_loss is not None
    assert held.eval_loss < held.baseline_loss * 0.98, "it passed the gate"
    assert engine.calls == ["load_lora:v1"], "no pause (shared), and the engine's default did not move"
    assert records.active_version() is None
    v2 = settings.lora_dir / "versions" / "v2"
    assert held.lora_path == str(v2)
    assert {"adapter_config.json", "adapter_model.safetensors", "heldout.jsonl"} <= {
        p.name for p in v2.iterdir()
    }
    status = await service.status()
    assert status.trial is not None and status.trial.version.name == "v1", "the trial goes on"
    assert status.candidate is not None and status.candidate.name == "v2"
    assert service.lora_for(ConversationKey("slack", "T1", "C1")) == "v1"
    lines = render_status(status, "en", ZoneInfo("Asia/Seoul")).splitlines()
    assert "passed the gate but kept as a candidate, as a trial was going" in lines[1]
    assert lines[1].endswith("(GPU: trained on the serving GPU while the bot kept answering)")

    # the admins end the trial and promote the newest candidate
    assert (await service.rollback(actor="slack:U1")).ended_trial == "v1"
    promoted = await service.promote_candidate(actor="slack:U1")
    assert (promoted.promoted, promoted.version, promoted.previous) == (True, "v2", None)
    assert engine.calls[-2:] == ["load_lora:v2", "use_lora:v2"]

    # no trial: a run the gate refuses is kept as the next candidate; the one not on trial before it is dropped
    settings.finetune.promote_margin = 0.99
    refused = await service.run(actor="scheduler", trigger="schedule")
    assert refused is not None and refused.status is RunStatus.REJECTED, refused
    assert refused.lora_path == str(settings.lora_dir / "versions" / "v3")
    candidate = records.newest_candidate()
    assert candidate is not None and candidate.name == "v3"
    assert not tried.exists(), "v1, the old candidate, was dropped with its folder"
    active = records.active_version()
    assert active is not None and active.name == "v2" and engine.lora == "v2"
