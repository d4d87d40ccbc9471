"""The end of a fine-tune run, posted where people see it: the verdict (result line and the gate's checks) with the
loss-curve PNG attached.

``/finetune run`` posts in the conversation it was typed in, in the admin's language; a run with no origin (the
nightly job) posts in ``finetune.announce_channel``, in Korean and English, or nowhere when that is not set. A run
the bot stopped (cancelled) is not announced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from bot.domain import ConversationKey
from bot.learning.commands import run_summary
from bot.learning.progress import LossHistory, RunOrigin
from bot.lossplot import loss_curve_png
from bot.ports import ChannelPoster
from bot.store.learning_records import RunInfo, RunStatus
from bot.texts import Lang, say

_log = logging.getLogger(__name__)

CURVE_FILE = "loss-curve.png"


def parse_conversation_key(key: str) -> ConversationKey:
    """``platform:workspace:channel[:thread]`` as the bot writes keys (``-``: no workspace)."""
    platform, workspace, channel, *thread = key.split(":")
    return ConversationKey(
        platform, "" if workspace == "-" else workspace, channel, thread[0] if thread else ""
    )


def announcement(run: RunInfo, lang: Lang, *, curve: bool) -> str:
    """The post: who started the run and how it ended, then the gate's lines, then a word about the picture."""
    result, *checks = run_summary(run, lang)
    trigger = f"finetune.trigger.{run.trigger}"
    head = say(
        "finetune.announce",
        lang,
        run=run.id,
        trigger=say(trigger, lang) if trigger in _TRIGGERS else run.trigger,
        by=run.started_by,
        result=result,
    )
    lines = [head, *checks]
    if curve:
        lines.append(say("finetune.announce.curve", lang))
    return "\n".join(lines)


_TRIGGERS = {"finetune.trigger.manual", "finetune.trigger.schedule"}


def write_curve(run: RunInfo, folder: Path) -> Path | None:
    """The run's loss curve as ``loss-curve.png`` in its folder; None when it never trained (no losses)."""
    history = LossHistory.of_run(run)
    if not history.train:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CURVE_FILE
    path.write_bytes(loss_curve_png(history.train, history.held_out))
    return path


class RunAnnouncer:
    """A ``FinetuneService.on_run_end`` listener that posts through the platform adapters."""

    def __init__(self, posters: Sequence[ChannelPoster], *, admin_channel: str | None = None) -> None:
        self._posters = {poster.name: poster for poster in posters}
        self._admin_channel = parse_conversation_key(admin_channel) if admin_channel else None

    async def __call__(self, run: RunInfo, origin: RunOrigin | None, run_dir: Path) -> None:
        if run.status is RunStatus.CANCELLED:
            return
        conversation = origin.conversation if origin else self._admin_channel
        if conversation is None:
            _log.info("fine-tune run=%d ended: no channel to post in (finetune.announce_channel)", run.id)
            return
        poster = self._posters.get(conversation.platform)
        if poster is None:
            _log.warning("fine-tune run=%d: no %s adapter to post its end", run.id, conversation.platform)
            return
        curve = await asyncio.to_thread(write_curve, run, run_dir)
        langs: tuple[Lang, ...] = (origin.lang,) if origin else ("ko", "en")
        text = "\n\n".join(announcement(run, lang, curve=curve is not None) for lang in langs)
        posted = await poster.post_file(conversation, text, curve)
        _log.info(
            "fine-tune run=%d end posted=%s conversation=%s picture=%s",
            run.id,
            posted,
            conversation,
            curve is not None,
        )
