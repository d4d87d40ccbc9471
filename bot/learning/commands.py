"""/finetune (admins: run, status, try, promote, rollback) and /forget-me (anyone: leave training, optionally delete
my turns)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.commands import CommandContext, CommandOption, CommandSpec, is_yes
from bot.domain import CommandReply
from bot.learning.gate import GateReport, describe
from bot.learning.progress import LossHistory, RunOrigin, sparkline
from bot.learning.routing import BadChannelList, channel_scope, parse_channels
from bot.learning.service import FinetuneService, FinetuneStatus
from bot.learning.tenants import SHARED
from bot.store.learning_records import RunInfo, RunStatus, TrialInfo, VersionInfo
from bot.texts import TEXTS, Lang, say

_log = logging.getLogger(__name__)

FINETUNE_ACTIONS = ("run", "status", "try", "promote", "rollback")
FINETUNE_OPTIONS = (
    CommandOption(
        "action",
        "run, status, try, promote or rollback / 실행, 상태, 시험, 적용, 되돌리기",
        choices=FINETUNE_ACTIONS,
    ),
    CommandOption("channels", "for try: #channels (default: this one) / 시험할 채널 (기본: 이 채널)"),
)


def learning_commands(service: FinetuneService, *, timezone: str = "Asia/Seoul") -> list[CommandSpec]:
    """The learning loop's commands; ``timezone`` is how times are shown (the scheduler's zone)."""
    zone = ZoneInfo(timezone)
    return [_finetune_command(service, zone), _forget_me_command(service)]


def _actor(ctx: CommandContext) -> str:
    return f"{ctx.platform}:{ctx.invoker.id}"


def _tenant(service: FinetuneService, ctx: CommandContext) -> str | None:
    """The learning scope /finetune acts on: the caller's team's (its own version, or the shared one), None when
    the team is served the base model."""
    return service.scope_for(ctx.conversation, ctx.invoker.id)


def _finetune_command(service: FinetuneService, zone: ZoneInfo) -> CommandSpec:
    async def finetune(ctx: CommandContext) -> CommandReply:
        action = (ctx.args.get("action") or "status").strip().lower()
        if action not in FINETUNE_ACTIONS:
            return CommandReply(say("cmd.finetune.unknown_action", ctx.lang))
        tenant = _tenant(service, ctx)
        if tenant is None:
            return CommandReply(say("cmd.finetune.base_tenant", ctx.lang))
        if action == "run":
            return await _run(service, ctx, tenant)
        if action == "status":
            return CommandReply(render_status(await service.status(tenant), ctx.lang, zone))
        if action == "try":
            return await _try(service, ctx, tenant)
        if action == "promote":
            return await _promote(service, ctx, tenant)
        return await _rollback(service, ctx, tenant)

    return CommandSpec(
        name="finetune",
        description="Train the bot on this team's conversations / 대화로 모델 학습",
        handler=finetune,
        options=FINETUNE_OPTIONS,
        admin_only=True,
        shared_model=True,
        usage=(
            "/finetune action:run: train a LoRA on the collected conversations now (used only if it beats the "
            "current one); /finetune action:status: progress, last result, the LoRA in service and the one on trial; "
            "/finetune action:try [channels:#channel]: serve the newest candidate (trained, not promoted) only in "
            "this channel (or the channels listed) while everyone else keeps the current version; "
            "/finetune action:promote: make the candidate on trial everyone's default; /finetune action:rollback: end "
            "the trial if one is going, else back to the previous LoRA. (In the console and Slack, /finetune run works "
            "too.)"
        ),
    )


async def _run(service: FinetuneService, ctx: CommandContext, tenant: str) -> CommandReply:
    outcome = await service.start(
        actor=_actor(ctx), origin=RunOrigin(ctx.conversation, ctx.lang), tenant=tenant
    )
    run_id = outcome.run.id if outcome.run else "?"
    key = "cmd.finetune.started" if outcome.started else "cmd.finetune.already_running"
    return CommandReply(say(key, ctx.lang, run=run_id), ephemeral=False)


async def _try(service: FinetuneService, ctx: CommandContext, tenant: str) -> CommandReply:
    """The newest candidate in the listed channels, or in the channel the command was given in."""
    try:
        scopes = parse_channels(ctx.args.get("channels") or "", ctx.conversation)
    except BadChannelList as exc:
        return CommandReply(say("cmd.finetune.bad_channels", ctx.lang, word=str(exc)[:100]))
    outcome = await service.try_candidate(
        actor=_actor(ctx), scopes=scopes or (channel_scope(ctx.conversation),), tenant=tenant
    )
    if not outcome.started:
        return CommandReply(say("cmd.finetune.nothing_to_try", ctx.lang))
    active = outcome.active or say("finetune.base_model", ctx.lang)
    channels = ", ".join(outcome.scopes)
    return CommandReply(
        say("cmd.finetune.trying", ctx.lang, version=outcome.version, channels=channels, active=active),
        ephemeral=False,
    )


async def _promote(service: FinetuneService, ctx: CommandContext, tenant: str) -> CommandReply:
    outcome = await service.promote_candidate(actor=_actor(ctx), tenant=tenant)
    if not outcome.promoted:
        return CommandReply(say("cmd.finetune.nothing_to_promote", ctx.lang))
    previous = outcome.previous or say("finetune.base_model", ctx.lang)
    return CommandReply(
        say("cmd.finetune.promoted", ctx.lang, version=outcome.version, previous=previous), ephemeral=False
    )


async def _rollback(service: FinetuneService, ctx: CommandContext, tenant: str) -> CommandReply:
    outcome = await service.rollback(actor=_actor(ctx), tenant=tenant)
    if outcome.ended_trial is not None:
        active = (await service.status(tenant)).active
        current = active.name if active else say("finetune.base_model", ctx.lang)
        return CommandReply(
            say("cmd.finetune.trial_ended", ctx.lang, version=outcome.ended_trial, active=current),
            ephemeral=False,
        )
    if not outcome.rolled_back:
        return CommandReply(say("cmd.finetune.nothing_to_roll_back", ctx.lang))
    current = outcome.current or say("finetune.base_model", ctx.lang)
    return CommandReply(
        say("cmd.finetune.rolled_back", ctx.lang, previous=outcome.previous, current=current), ephemeral=False
    )


def render_status(status: FinetuneStatus, lang: Lang, zone: ZoneInfo) -> str:
    """Running run (or idle), last finished run, LoRA in service, the trial or the candidate, last prune: one line
    each."""
    lines = [] if status.tenant == SHARED else [say("finetune.status.tenant", lang, tenant=status.tenant)]
    lines.append(_running_line(status.running, lang) if status.running else say("finetune.status.idle", lang))
    if status.last is not None:
        lines.append(
            say(
                "finetune.status.last",
                lang,
                run=status.last.id,
                when=_when(status.last.finished_at or status.last.started_at, zone),
                result=_result_text(status.last, lang),
            )
            + _sharing(status.last, lang)
        )
        report = GateReport.from_json(status.last.gate)
        if report is not None:
            lines.extend(describe(report, lang))
    lines.extend(_service_lines(status, lang, zone))
    if status.trial is not None:
        lines.append(_trial_line(status.trial, lang, zone))
    if status.candidate is not None:
        lines.append(_candidate_line(status.candidate, lang, zone))
    if status.last_prune is not None:
        lines.append(
            say(
                "finetune.status.prune",
                lang,
                when=_when(status.last_prune.ran_at, zone),
                removed=status.last_prune.removed,
                conversations=status.last_prune.conversations,
            )
        )
    return "\n".join(lines)


def _service_lines(status: FinetuneStatus, lang: Lang, zone: ZoneInfo) -> list[str]:
    """What the engine serves, as the engine says; and a warning when that is not the active version on record."""
    active = status.active
    if active is not None and status.serving == active.name:
        return [
            say(
                "finetune.status.active",
                lang,
                version=active.name,
                loss=_loss(active.eval_loss),
                when=_when(active.created_at, zone),
            )
        ]
    if status.serving is None:
        lines = [say("finetune.status.base", lang)]
    else:
        lines = [say("finetune.status.serving", lang, version=status.serving)]
    if active is not None:
        why = (
            "finetune.status.folder_missing" if not Path(active.path).is_dir() else "finetune.status.see_log"
        )
        serving = status.serving or say("finetune.base_model", lang)
        lines.append(
            say("finetune.status.not_serving", lang, version=active.name, serving=serving)
            + " "
            + say(why, lang, path=active.path)
        )
    return lines


def _trial_line(trial: TrialInfo, lang: Lang, zone: ZoneInfo) -> str:
    return say(
        "finetune.status.trial",
        lang,
        version=trial.version.name,
        channels=", ".join(trial.scopes),
        when=_when(trial.started_at, zone),
        by=trial.started_by,
    )


def _candidate_line(candidate: VersionInfo, lang: Lang, zone: ZoneInfo) -> str:
    return say(
        "finetune.status.candidate",
        lang,
        version=candidate.name,
        loss=_loss(candidate.eval_loss),
        when=_when(candidate.created_at, zone),
    )


def _sharing(run: RunInfo, lang: Lang) -> str:
    """How the run shared the GPU with serving (runs recorded before that was stored say nothing)."""
    key = f"finetune.sharing.{run.gpu_sharing}"
    return say("finetune.sharing", lang, mode=say(key, lang)) if key in TEXTS else ""


def run_summary(run: RunInfo, lang: Lang) -> list[str]:
    """How a finished run ended (one line), then the gate's checks (one line each): the end-of-run post."""
    report = GateReport.from_json(run.gate)
    return [_result_text(run, lang), *(describe(report, lang) if report is not None else [])]


def _curve_line(run: RunInfo, lang: Lang) -> str:
    """The training loss so far as a sparkline with its latest value (and the latest held-out loss)."""
    history = LossHistory.of_run(run)
    if not history.train:
        return ""
    held_out = (
        say("finetune.status.curve_held_out", lang, loss=_loss(history.held_out[-1][1]))
        if history.held_out
        else ""
    )
    spark = sparkline([loss for _, loss in history.train])
    return "\n" + say(
        "finetune.status.curve", lang, spark=spark, loss=_loss(history.train[-1][1]), held_out=held_out
    )


def _running_line(run: RunInfo, lang: Lang) -> str:
    progress = run.progress
    eta = progress.get("eta_s")
    return (
        say(
            "finetune.status.running",
            lang,
            run=run.id,
            phase=_phase(str(progress.get("phase", "starting")), lang),
            step=progress.get("step", 0),
            total=progress.get("total", "?"),
            loss=_loss(progress.get("loss")),
            eta=_duration(float(eta)) if isinstance(eta, int | float) else "?",
            by=run.started_by,
        )
        + _sharing(run, lang)
        + _curve_line(run, lang)
    )


def _phase(phase: str, lang: Lang) -> str:
    key = f"finetune.phase.{phase}"
    return say(key, lang) if key in TEXTS else phase


def _result_text(run: RunInfo, lang: Lang) -> str:
    if run.status is RunStatus.SUCCEEDED:
        return say(
            "finetune.result.succeeded", lang, loss=_loss(run.eval_loss), baseline=_loss(run.baseline_loss)
        )
    if run.status is RunStatus.HELD:
        return say("finetune.result.held", lang, loss=_loss(run.eval_loss), baseline=_loss(run.baseline_loss))
    if run.status is RunStatus.REJECTED:
        return say("finetune.result.rejected", lang, reason=_reason(run, lang))
    if run.status is RunStatus.FAILED:
        return say("finetune.result.failed", lang, reason=_reason(run, lang)[:400])
    return say("finetune.result.cancelled", lang)


def _reason(run: RunInfo, lang: Lang) -> str:
    """Why a run ended as it did, in the reader's language when the run recorded it as a text key and fields."""
    recorded = run.progress.get("reason")
    if isinstance(recorded, dict):
        key = f"finetune.reason.{recorded.get('key')}"
        if key in TEXTS:
            return say(key, lang, **{k: v for k, v in recorded.items() if k != "key"})
    return run.error or "?"


def _loss(value: object) -> str:
    return f"{float(value):.4f}" if isinstance(value, int | float) else "?"


def _when(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _forget_me_command(service: FinetuneService) -> CommandSpec:
    async def forget_me(ctx: CommandContext) -> CommandReply:
        delete, undo = is_yes(ctx.args.get("delete")), is_yes(ctx.args.get("undo"))
        if delete and undo:
            return CommandReply(say("cmd.forget_me.undo_and_delete", ctx.lang))
        if undo:
            return await _opt_back_in(service, ctx)
        outcome = await service.forget_user(ctx.platform, ctx.invoker.id, delete=delete)
        lines = [say("cmd.forget_me.done" if outcome.newly_opted_out else "cmd.forget_me.already", ctx.lang)]
        if delete:
            lines.append(
                say(
                    "cmd.forget_me.deleted",
                    ctx.lang,
                    count=outcome.deleted_turns,
                    replies=outcome.deleted_replies,
                )
            )
        return CommandReply("\n".join(lines))

    return CommandSpec(
        name="forget-me",
        description="Leave my messages out of training / 내 메시지를 학습에서 제외",
        handler=forget_me,
        options=(
            CommandOption(
                "delete",
                "also delete my stored messages and the replies to them (yes/no) / 내 메시지와 답변도 삭제",
                choices=("no", "yes"),
            ),
            CommandOption(
                "undo",
                "yes: use my messages for training again / 다시 학습에 참여",
                choices=("no", "yes"),
            ),
        ),
        usage="/forget-me: your messages are never used for training again; /forget-me delete:yes also removes "
        "them, and the bot's replies to them, from the bot's history; /forget-me undo:yes opts you back in.",
    )


async def _opt_back_in(service: FinetuneService, ctx: CommandContext) -> CommandReply:
    outcome = await service.opt_in(ctx.platform, ctx.invoker.id)
    if outcome.by_settings:
        return CommandReply(say("cmd.forget_me.kept_out_by_settings", ctx.lang))
    return CommandReply(
        say("cmd.forget_me.undone" if outcome.opted_in else "cmd.forget_me.not_opted_out", ctx.lang)
    )
