"""LoRA version folders are stored relative to the data directory, so a bot started from any folder serves them.

The restart scenario runs the real CLI (`python -m bot chat --demo`) in a subprocess from another working folder, with
a relative and with an absolute data directory, on a database where a version of the demo model was promoted; the
migration is checked on rows written the old way; the trainer is run from another working folder too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from bot.learning.paths import from_stored, to_stored
from bot.learning.service import FinetuneService
from bot.settings import load_settings
from bot.store.conversations import ConversationStore
from bot.store.db import alembic_config, create_db_engine, migrate
from bot.store.learning_records import LearningRecords, RunOutcomeFields, RunStatus
from tests.learning.conftest import RecordingEngine
from tests.learning.helpers import TRAINER
from tests.learning.synthetic import FACTS, seed_facts

REPO = Path(__file__).resolve().parents[2]


def test_stored_form_is_relative_under_the_data_dir_and_absolute_elsewhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert to_stored(data / "lora" / "versions" / "v1", data) == "lora/versions/v1"
    assert from_stored("lora/versions/v1", data) == data.resolve() / "lora" / "versions" / "v1"
    elsewhere = tmp_path / "shared-loras" / "v1"
    assert to_stored(elsewhere, data) == str(elsewhere.resolve())
    assert from_stored(str(elsewhere), data) == elsewhere


def test_settings_hold_the_data_dir_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(data_dir="data", finetune={"output_dir": "loras"})
    assert settings.data_dir == tmp_path.resolve() / "data"
    assert settings.lora_dir == tmp_path.resolve() / "loras"
    assert settings.database_url.endswith(f"{(tmp_path.resolve() / 'data').as_posix()}/hanbot.db")


def promote(records: LearningRecords, name: str, path: str) -> None:
    """What a run's promotion records: the run, then the version as active."""
    run = records.create_run(trigger="manual", started_by="console:local", owner="test")
    records.finish_run(run.id, RunStatus.SUCCEEDED, RunOutcomeFields(eval_loss=1.0, lora_path=path))
    records.promote(name=name, path=path, run_id=run.id, eval_loss=1.0, actor="console:local")


def _promote_at_0003(store: ConversationStore, name: str, path: str, adapter_path: str | None = None) -> None:
    """What the old code's promotion wrote, as rows of the schema at 0003 (today's models have more columns)."""
    with store.engine.begin() as connection:
        runs, versions = (
            sa.Table(t, sa.MetaData(), autoload_with=connection) for t in ("finetune_runs", "lora_versions")
        )
        now = datetime.now(UTC).replace(tzinfo=None)
        run_id = connection.execute(
            runs.insert().values(
                status="succeeded",
                trigger="manual",
                started_by="console:local",
                started_at=now,
                train_examples=0,
                eval_examples=0,
                adapter_path=adapter_path,
            )
        ).inserted_primary_key[0]
        connection.execute(versions.update().values(is_active=False))
        connection.execute(
            versions.insert().values(
                name=name, path=path, run_id=run_id, eval_loss=1.0, is_active=True, created_at=now
            )
        )


def _store_at_0003(url: str) -> ConversationStore:
    engine = create_db_engine(url)
    migrate(engine, "0003")
    return ConversationStore(engine)


def test_migration_0004_rewrites_old_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Rows stored by the old code: absolute, relative to the old working folder, and a folder outside."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (data / "lora" / "versions" / "v2").mkdir(parents=True)
    store = _store_at_0003(db_url)  # paths stored as given, as before
    v1 = str(data / "lora" / "versions" / "v1")
    _promote_at_0003(store, "v1", v1, adapter_path=v1)
    _promote_at_0003(store, "v2", "data/lora/versions/v2")
    _promote_at_0003(store, "v3", "/srv/elsewhere/v3")

    migrate(store.engine, data_dir=data)

    with store.engine.connect() as connection:
        paths = dict(connection.exec_driver_sql("SELECT name, path FROM lora_versions").all())
        lora = connection.exec_driver_sql("SELECT lora_path FROM finetune_runs WHERE id = 1").scalar_one()
    assert paths == {"v1": "lora/versions/v1", "v2": "lora/versions/v2", "v3": "/srv/elsewhere/v3"}
    assert lora == "lora/versions/v1"
    versions = {v.name: v.path for v in LearningRecords(store, data_dir=data).versions()}
    assert versions["v2"] == str(data.resolve() / "lora" / "versions" / "v2")

    with store.engine.connect() as connection:  # and back
        config = alembic_config(store.engine)
        config.attributes.update(connection=connection, data_dir=data)
        command.downgrade(config, "0003")
        connection.commit()
        paths = dict(connection.exec_driver_sql("SELECT name, path FROM lora_versions").all())
    assert paths["v2"] == str(data.resolve() / "lora" / "versions" / "v2")


def test_migration_0004_from_another_folder_finds_the_default_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """The bot stored "data/lora/versions/v1" in /srv/bot and now starts in / with data_dir /srv/bot/data."""
    data = tmp_path / "bot" / "data"
    (data / "lora" / "versions" / "v1").mkdir(parents=True)
    store = _store_at_0003(db_url)
    _promote_at_0003(store, "v1", "data/lora/versions/v1")
    monkeypatch.chdir(tmp_path)
    migrate(store.engine, data_dir=data)
    active = LearningRecords(store, data_dir=data).active_version()
    assert active is not None and Path(active.path) == data.resolve() / "lora" / "versions" / "v1"


def test_migration_0004_without_a_data_dir_keeps_the_default_layout(tmp_path: Path, sqlite_url: str) -> None:
    """`alembic upgrade` by hand knows no data directory: relative rows keep the part from lora/versions/ on."""
    store = _store_at_0003(sqlite_url)
    records = LearningRecords(store)
    _promote_at_0003(store, "v1", "data/lora/versions/v1")
    _promote_at_0003(store, "v2", "/srv/hanbot/data/lora/versions/v2")
    migrate(store.engine)
    assert {v.name: v.path for v in records.versions()} == {
        "v1": "lora/versions/v1",
        "v2": "/srv/hanbot/data/lora/versions/v2",
    }


def test_migration_0009_renames_the_run_lora_column_and_keeps_its_values(tmp_path: Path, db_url: str) -> None:
    """finetune_runs.adapter_path becomes lora_path (SQLite and PostgreSQL), and back on downgrade."""
    data = tmp_path / "data"
    store = _store_at_0003(db_url)
    _promote_at_0003(store, "v1", str(data / "lora" / "versions" / "v1"), adapter_path="lora/versions/v1")
    migrate(store.engine, "0008", data_dir=data)
    assert "adapter_path" in _run_columns(store)

    migrate(store.engine, data_dir=data)
    assert "lora_path" in _run_columns(store) and "adapter_path" not in _run_columns(store)
    run = LearningRecords(store, data_dir=data).run(1)
    assert run is not None and run.lora_path == str(data.resolve() / "lora" / "versions" / "v1")

    with store.engine.connect() as connection:
        config = alembic_config(store.engine)
        config.attributes.update(connection=connection, data_dir=data)
        command.downgrade(config, "0008")
        connection.commit()
        assert (
            connection.exec_driver_sql("SELECT adapter_path FROM finetune_runs").scalar_one()
            == "lora/versions/v1"
        )
    assert "lora_path" not in _run_columns(store)


def _run_columns(store: ConversationStore) -> set[str]:
    return {column["name"] for column in sa.inspect(store.engine).get_columns("finetune_runs")}


def test_run_files_written_before_the_rename_are_read(tmp_path: Path) -> None:
    """job.json and result.json from before the LoRA fields were named lora (a run folder an upgrade finds)."""
    from bot.learning.job import TrainJob, TrainResult

    job = {"base_model": "m", "train_file": "t", "eval_file": "e", "output_dir": "o", "result_file": "r"}
    (tmp_path / "job.json").write_text(
        json.dumps({**job, "init_adapter": "lora/versions/v1"}), encoding="utf-8"
    )
    assert TrainJob.read(tmp_path / "job.json").init_lora == "lora/versions/v1"
    result = {
        "train_examples": 1,
        "eval_examples": 1,
        "steps": 1,
        "eval": {},
        "adapter_dir": "runs/1/adapter",
    }
    (tmp_path / "result.json").write_text(json.dumps(result), encoding="utf-8")
    assert TrainResult.read(tmp_path / "result.json").lora_dir == "runs/1/adapter"


# the restart scenario


def make_version(demo_model_dir: Path, out: Path) -> None:
    """A LoRA of the demo model whose weights change its replies (what a promotion leaves in versions/vN)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(out)


def run_chat(cwd: Path, data_dir: str, stdin: str, session: str) -> str:
    environment = {**os.environ, "HANBOT_DATA_DIR": data_dir, "HF_HUB_OFFLINE": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--demo", "--session", session],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def replies(out: str) -> list[str]:
    return [line.split("봇: ", 1)[1].strip() for line in out.splitlines() if "봇: " in line]


@pytest.mark.slow
def test_restart_from_another_folder_serves_the_active_version(
    tmp_path: Path, demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.demo_model import FAQ

    question = FAQ[0][0]
    first = tmp_path / "first"
    data = first / "data"
    data.mkdir(parents=True)
    (data / "demo-model").symlink_to(demo_model_dir, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # the first bot ran in `first` with the default relative data directory and promoted v1
    monkeypatch.chdir(first)
    settings = load_settings(data_dir="data")
    store = ConversationStore(create_db_engine(settings.database_url))
    migrate(store.engine, data_dir=settings.data_dir)
    version_dir = settings.lora_dir / "versions" / "v1"
    make_version(demo_model_dir, version_dir)
    records = LearningRecords(store, data_dir=settings.data_dir)
    promote(records, "v1", str(version_dir))
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT path FROM lora_versions").scalar_one() == "lora/versions/v1"
    store.engine.dispose()

    status_and_question = f"/finetune status\n{question}\n/finetune action:status\n종료\n"
    relative = run_chat(elsewhere, "../first/data", status_and_question, "relative")
    absolute = run_chat(elsewhere, str(data.resolve()), status_and_question, "absolute")
    assert re.search("[가-힣]", question)  # so the status typed after it is answered in Korean
    for out in (relative, absolute):
        assert "In service: LoRA v1 (held-out loss 1.0000" in out, out
        assert "사용 중: LoRA v1 (검증 loss 1.0000" in out, out
        assert "Warning" not in out and "주의" not in out
    lora_reply = replies(relative)[1]
    assert replies(absolute)[1] == lora_reply

    # the failure: the folder is not where the data directory says; the base serves and status says so
    version_dir.rename(version_dir.with_name("moved-away"))
    missing = run_chat(elsewhere, "../first/data", status_and_question, "missing")
    assert "In service: the base model (no LoRA)." in missing
    assert (
        "Warning: LoRA v1 is the active version on record, but this bot answers with the base model."
        in missing
    )
    assert "is missing: check the data directory" in missing
    assert (
        "주의: 기록상 사용 중인 버전은 LoRA v1이지만 이 봇은 지금 기본 모델(으)로 답하고 있어요." in missing
    )
    assert replies(missing)[1] != lora_reply  # the version changes what the demo model says


@pytest.mark.slow
async def test_the_trainer_runs_whatever_the_bots_working_folder(
    tmp_path: Path, demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data directory and a relative model folder, the bot in a folder that is not the project's."""
    from tests.learning.conftest import QUICK_FINETUNE

    monkeypatch.setattr("tests.learning.synthetic.FACTS", FACTS[:4])
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "demo").symlink_to(demo_model_dir, target_is_directory=True)
    monkeypatch.chdir(work)
    settings = load_settings(
        data_dir="data",
        model={"name_or_path": "models/demo", "dtype": "float32", "device_map": None, "is_demo": True},
        scheduler={"enabled": False},
        finetune=QUICK_FINETUNE,
    )
    store = ConversationStore(create_db_engine(settings.database_url))
    migrate(store.engine, data_dir=settings.data_dir)
    seed_facts(store)
    service = FinetuneService(settings, store, RecordingEngine(), trainer=TRAINER)
    run = await service.run(actor="console:local")
    assert run is not None and run.status in (RunStatus.SUCCEEDED, RunStatus.REJECTED), run
    job = json.loads(
        (settings.lora_dir / "runs" / f"run-{run.id:04d}" / "job.json").read_text(encoding="utf-8")
    )
    for key in ("base_model", "train_file", "eval_file", "output_dir", "result_file"):
        assert Path(job[key]).is_absolute(), (key, job[key])
    assert run.eval_loss is not None  # the trainer evaluated: it found its job, data and model
