"""/finetune and /forget-me through the CommandRegistry, as every adapter calls them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.commands import CommandContext, CommandRegistry
from bot.domain import Author, ConversationKey, Role
from bot.learning.commands import learning_commands
from bot.learning.service import RUN_LEASE, FinetuneService
from bot.permissions import AdminPolicy
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunOutcomeFields, RunStatus
from bot.store.leases import DbLease
from bot.store.models import PruneRecord
from tests.learning.conftest import RecordingEngine, SettingsFactory

ADMIN = Author(id="U-admin", display_name="Admin")
MEMBER = Author(id="U-member", display_name="Member")
CHANNEL = ConversationKey("slack", "T1", "C1")


def _registry(service: FinetuneService, settings_admins: list[str]) -> CommandRegistry:
    from bot.settings import load_settings

    policy = AdminPolicy(load_settings(slack={"admin_user_ids": settings_admins}))
    return CommandRegistry(policy, learning_commands(service))


def _ctx(author: Author, lang: str = "en", **args: str) -> CommandContext:
    return CommandContext(platform="slack", conversation=CHANNEL, invoker=author, args=args, lang=lang)  # type: ignore[arg-type]


async def test_specs_have_help_text_and_choices(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    specs = {
        s.name: s
        for s in learning_commands(FinetuneService(learning_settings(), sqlite_store, RecordingEngine()))
    }
    assert set(specs) == {"finetune", "forget-me"}
    assert specs["finetune"].admin_only and not specs["forget-me"].admin_only
    assert specs["finetune"].options[0].choices == ("run", "status", "try", "promote", "rollback")
    assert [o.name for o in specs["finetune"].options] == ["action", "channels"]
    assert [(o.name, o.choices) for o in specs["forget-me"].options] == [
        ("delete", ("no", "yes")),
        ("undo", ("no", "yes")),
    ]
    for spec in specs.values():
        assert spec.description and len(spec.description) <= 100 and spec.usage
        assert all(len(o.description) <= 100 for o in spec.options)  # Discord's limit


async def test_finetune_is_for_admins_only(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    engine = RecordingEngine()
    registry = _registry(FinetuneService(learning_settings(), sqlite_store, engine), ["U-admin"])
    for action in ("run", "status", "try", "promote", "rollback"):
        reply = await registry.run("finetune", _ctx(MEMBER, action=action))
        assert "Only admins" in reply.text
    assert engine.calls == []
    assert LearningRecords(sqlite_store).running_runs() == []


async def test_status_run_and_rollback_replies(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    settings = learning_settings(min_examples=1000)
    service = FinetuneService(settings, sqlite_store, RecordingEngine())
    registry = _registry(service, ["U-admin"])

    status = await registry.run("finetune", _ctx(ADMIN))
    assert status.text.splitlines() == ["No fine-tune is running.", "In service: the base model (no LoRA)."]
    nothing = await registry.run("finetune", _ctx(ADMIN, "ko", action="rollback"))
    assert "되돌릴 학습 결과가 없어요" in nothing.text

    started = await registry.run("finetune", _ctx(ADMIN, action="run"))
    assert started.text.startswith("Fine-tune run #1 started.")
    await service.wait()
    records = LearningRecords(sqlite_store)
    with sqlite_store.session() as session, session.begin():
        at = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)
        session.add_all(
            [
                PruneRecord(ran_at=at, conversation_id=1, conversation_label="slack:T1:C1", removed=7),
                PruneRecord(ran_at=at, conversation_id=None, conversation_label="(all)", removed=7),
            ]
        )
    lines = (await registry.run("finetune", _ctx(ADMIN, action="status"))).text.splitlines()
    assert lines[0] == "No fine-tune is running."
    assert lines[1].startswith("Last run #1 (") and lines[1].endswith(
        "not promoted (too few examples: 0 < 1000; left out: 0 replies to people who opted out, "
        "0 in excluded channels, 0 by feedback)."
    )
    assert lines[3] == "Last history prune (2026-11-28 03:30 KST): 7 messages removed from 1 conversations."

    # a version in service, and a run in progress, as another process would have recorded them
    version_dir = settings.lora_dir / "versions" / "v1"
    version_dir.mkdir(parents=True)
    run = records.create_run(trigger="manual", started_by="slack:U-admin", owner="elsewhere")
    records.finish_run(run.id, RunStatus.SUCCEEDED, RunOutcomeFields(eval_loss=0.5, baseline_loss=2.0))
    records.promote(name="v1", path=str(version_dir), run_id=run.id, eval_loss=0.5, actor="slack:U-admin")
    going = records.create_run(trigger="schedule", started_by="scheduler", owner="elsewhere")
    assert DbLease(sqlite_store, RUN_LEASE, holder="elsewhere", ttl=timedelta(minutes=5)).acquire()
    records.update_progress(
        going.id, {"phase": "training", "step": 12, "total": 40, "loss": 0.83, "eta_s": 95.0}
    )
    lines = (await registry.run("finetune", _ctx(ADMIN, action="status"))).text.splitlines()
    assert lines[0] == "Run #3: training, step 12/40, loss 0.8300, about 1m35s left (started by scheduler)."
    assert "promoted, held-out loss 0.5000 (was 2.0000)." in lines[1]
    # this process's engine has not switched yet: status says what it serves, and that it is not v1
    assert lines[2] == "In service: the base model (no LoRA)."
    assert lines[3].startswith(
        "Warning: LoRA v1 is the active version on record, but this bot answers with the "
    )
    assert "could not be loaded" in lines[3]
    await service.sync_active()
    lines = (await registry.run("finetune", _ctx(ADMIN, action="status"))).text.splitlines()
    assert lines[2].startswith("In service: LoRA v1 (held-out loss 0.5000, since ")
    assert not any(line.startswith("Warning") for line in lines)
    ko = (await registry.run("finetune", _ctx(ADMIN, "ko", action="status"))).text
    assert "학습 #3: 학습 중, 12/40 단계" in ko and "사용 중: LoRA v1" in ko

    busy = await registry.run("finetune", _ctx(ADMIN, action="run"))
    assert busy.text.startswith("A fine-tune is already running (run #3)")

    rolled = await registry.run("finetune", _ctx(ADMIN, action="rollback"))
    assert rolled.text == "Rolled back from v1 to the base model."
    assert records.active_version() is None

    unknown = await registry.run("finetune", _ctx(ADMIN, action="explode"))
    assert "run, status, try, promote or rollback" in unknown.text


async def test_forget_me_opts_out_and_deletes_on_request(
    sqlite_store: ConversationStore, learning_settings: SettingsFactory
) -> None:
    registry = _registry(FinetuneService(learning_settings(), sqlite_store, RecordingEngine()), [])
    for i in range(3):
        turn = sqlite_store.add_message(CHANNEL, Role.USER, f"member says {i}", author=MEMBER)
        assert turn is not None
        sqlite_store.add_message(CHANNEL, Role.ASSISTANT, f"reply {i}", reply_to=turn.id)
    admin_turn = sqlite_store.add_message(CHANNEL, Role.USER, "admin says", author=ADMIN)
    assert admin_turn is not None
    sqlite_store.add_message(CHANNEL, Role.ASSISTANT, "reply to admin", reply_to=admin_turn.id)

    first = await registry.run("forget-me", _ctx(MEMBER))
    assert first.text.startswith("Your messages will no longer be used for training.")
    assert LearningRecords(sqlite_store).opted_out_users() == {"slack:U-member"}
    assert len(sqlite_store.history(CHANNEL)) == 8

    second = await registry.run("forget-me", _ctx(MEMBER, "ko", delete="yes"))
    assert second.text.splitlines() == [
        "이미 학습에서 제외되어 있어요.",
        "저장된 당신의 메시지 3개와 그에 대한 봇의 답변 3개도 삭제했어요.",
    ]
    left = [m.content for m in sqlite_store.history(CHANNEL)]
    assert left == ["admin says", "reply to admin"]
    audit = LearningRecords(sqlite_store).audit_events()
    assert [a for a, _, _ in audit] == ["opt_out", "forget_me.delete"]
    assert audit[1][2] == {"platform": "slack", "removed": 3, "replies_removed": 3}
