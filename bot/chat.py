"""The chat service: one platform-neutral road from an incoming message to a stored, streamed reply.

check → store the user turn (before any model work: nothing is lost) → build the prompt → stream the reply →
store the reply (complete, or incomplete with what was said). Failures end in one polite sentence and a log line
with ids; the message bodies never reach the logs at INFO.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bot.domain import (
    ConversationKey,
    GenerationRequest,
    IncomingMessage,
    MessageStatus,
    Role,
    StreamEvent,
)
from bot.errors import BotError, EnginePaused, QueueFull
from bot.files import unread_notice, with_files
from bot.metrics import Metrics, NullMetrics, Outcome, ReplyClock
from bot.ops.logs import log_context
from bot.permissions import AdminPolicy
from bot.ports import Engine, ReplySink
from bot.prompt import BuiltPrompt, PromptTooLong, build_prompt, speaker_turn, turn_cost
from bot.quoting import quote_block
from bot.reply_saver import StreamingReply
from bot.settings import Settings
from bot.store.async_store import AsyncStore
from bot.store.conversations import ConversationStore, StoredMessage, storable
from bot.store.errors import StoreError
from bot.texts import Lang, language_of, say, say_both

_log = logging.getLogger(__name__)

EMPTY_HINT_LOOKBACK = 20  # turns searched for the language of someone who sent an empty mention


@dataclass
class _Reply:
    """What the model has said so far for one request, and when: the one copy of the reply's text (the sink only
    shows it)."""

    clock: ReplyClock
    text: str = ""


@dataclass
class _Tally:
    """How one message ended (``hanbot_messages_total``), and the clock of its reply."""

    clock: ReplyClock
    outcome: Outcome = field(
        default=Outcome.FAILED
    )  # until a step says otherwise (a store error stays failed)


LoraRouter = Callable[[ConversationKey, str], str | None]
"""Which LoRA version answers in a conversation (``GenerationRequest.lora``): the learning loop's routes, given the
conversation and who speaks (a Discord DM belongs to the team its user is mapped to)."""

BackAt = Callable[[], Awaitable[datetime | None]]
"""When a paused engine is expected to answer again (the learning loop's estimate), None when nothing says."""


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ConversationStore,
        engine: Engine,
        lora_for: LoraRouter | None = None,
        metrics: Metrics | None = None,
        back_at: BackAt | None = None,
    ) -> None:
        self._settings = settings
        self._back_at = back_at
        self._store = store  # synchronous: for work already on a worker thread (building a prompt)
        self._db = AsyncStore(store)  # everything the event loop asks of the store
        self._engine = engine
        self._lora_for = lora_for
        self._metrics = metrics or NullMetrics()
        self._active: dict[ConversationKey, set[asyncio.Task[None]]] = {}
        self._trim_noticed: set[ConversationKey] = set()
        self._policy = AdminPolicy(settings)
        # the reply is saved as often as the platforms show it (what people saw is stored)
        self._save_interval_s = min(settings.discord.edit_interval_s, settings.slack.update_interval_s)

    @property
    def store(self) -> ConversationStore:
        return self._store

    @property
    def db(self) -> AsyncStore:
        """The store's async API (one thread hop per operation)."""
        return self._db

    async def handle(self, msg: IncomingMessage, sink: ReplySink) -> None:
        """Answer one message. Never raises for expected failures: the user gets a sentence instead."""
        if msg.author.is_bot:
            return
        await self._counted(msg, lambda tally: self._handle(msg, sink, tally))

    async def answer_stored(self, msg: IncomingMessage, user_turn: StoredMessage, sink: ReplySink) -> None:
        """Answer a user turn stored earlier and left unanswered (a restart): the same road from the prompt on."""
        lang = language_of(user_turn.content)
        await self._counted(
            msg,
            lambda tally: self._guard_store(
                msg, sink, lang, self._answer_tracked(msg, user_turn, sink, lang, tally)
            ),
        )

    async def _counted(self, msg: IncomingMessage, work: Callable[[_Tally], Awaitable[None]]) -> None:
        """Run ``work`` with the message's ids on every log line, and count how the message ended."""
        tally = _Tally(ReplyClock(self._metrics))
        with log_context(request=f"{msg.platform}:{msg.message_id}", channel=str(msg.conversation)):
            try:
                await work(tally)
            except asyncio.CancelledError:
                tally.outcome = Outcome.CANCELLED
                raise
            finally:
                self._metrics.message(msg.platform, tally.outcome)

    async def _handle(self, msg: IncomingMessage, sink: ReplySink, tally: _Tally) -> None:
        lang = msg.lang
        if not self._policy.serves(msg.platform, msg.conversation.workspace):
            _log.warning(
                "refused message from a place the bot does not serve platform=%s workspace=%s channel=%s "
                "message=%s author=%s",
                msg.platform,
                msg.conversation.workspace,
                msg.conversation.channel,
                msg.message_id,
                msg.author.id,
            )
            tally.outcome = Outcome.REFUSED
            await sink.send(say("error.not_allowed_here", lang))
            return
        # NUL and lone surrogates: no database or tokenizer takes them
        text = storable(with_files(msg.text.strip(), msg.files)).strip()
        if not text:
            tally.outcome = Outcome.REFUSED
            await self._guard_store(msg, sink, lang, self._send_empty_message_hint(msg, sink))
            return
        await self._guard_store(msg, sink, lang, self._take(msg, text, sink, lang, tally))

    async def _take(
        self, msg: IncomingMessage, text: str, sink: ReplySink, lang: Lang, tally: _Tally
    ) -> None:
        user_turn = await self._store_user_turn(msg, text)
        if user_turn is None:
            tally.outcome = Outcome.DUPLICATE  # a second delivery of a message already taken
            return
        notice = unread_notice(msg.files, lang, limit=self._settings.chat.max_file_bytes)
        if notice:
            await sink.send(notice)
        tokens = await self._count_user_turn(msg, user_turn, sink, lang)
        if tokens is None:
            tally.outcome = Outcome.REFUSED
            return
        await self._answer_tracked(msg, dataclasses.replace(user_turn, token_count=tokens), sink, lang, tally)

    async def _answer_tracked(
        self, msg: IncomingMessage, user_turn: StoredMessage, sink: ReplySink, lang: Lang, tally: _Tally
    ) -> None:
        """Answer, known as this conversation's reply in progress (``forget`` cancels it)."""
        task = asyncio.current_task()
        if task is not None:
            self._active.setdefault(msg.conversation, set()).add(task)  # type: ignore[arg-type]
        try:
            await self._answer(msg, user_turn, sink, lang, tally)
        finally:
            if task is not None:
                self._active.get(msg.conversation, set()).discard(task)  # type: ignore[arg-type]

    async def _send_empty_message_hint(self, msg: IncomingMessage, sink: ReplySink) -> None:
        await sink.send(await self._empty_message_hint(msg))

    async def _empty_message_hint(self, msg: IncomingMessage) -> str:
        """A bare mention says nothing of its writer's language: take it from their last turns here, else both."""
        recent = await self._db.history(msg.conversation, limit=EMPTY_HINT_LOOKBACK)
        own = [m.content for m in recent if m.role is Role.USER and m.author_id == msg.author.id]
        return say("chat.empty", language_of(own[-1])) if own else say_both("chat.empty")

    async def _guard_store(
        self, msg: IncomingMessage, sink: ReplySink, lang: Lang, work: Awaitable[None]
    ) -> None:
        """Run ``work``; a database error ends in one sentence and a log line with ids (no SQL, no text)."""
        try:
            await work
        except StoreError as exc:
            _log.error(
                "store failed conversation=%s message=%s error=%s",
                msg.conversation,
                msg.message_id,
                type(exc).__name__,
            )
            try:
                await sink.send(say("error.store", lang))
            except Exception:
                _log.exception(
                    "could not tell the user conversation=%s message=%s", msg.conversation, msg.message_id
                )

    async def forget(self, key: ConversationKey, *, actor: str) -> int:
        """Stop any reply in progress in this conversation and delete its turns (the /reset command)."""
        await self.cancel(key)
        self._trim_noticed.discard(key)
        return await self._db.reset(key, actor=actor)

    async def cancel(self, key: ConversationKey) -> None:
        tasks = [t for t in self._active.get(key, set()) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # the steps

    async def _store_user_turn(self, msg: IncomingMessage, text: str) -> StoredMessage | None:
        """Store the turn first, before the tokenizer or the model sees it (``_count_user_turn`` follows)."""

        def store_turn(store: ConversationStore) -> StoredMessage | None:
            quote = self._quote_for(msg)  # the earlier messages it replies to, from the history
            return store.add_message(
                msg.conversation,
                Role.USER,
                text,
                author=msg.author,
                platform_message_id=msg.message_id,
                quoted=storable(quote) if quote else quote,
            )

        stored = await self._db.run(store_turn)  # one operation, one thread hop
        if stored is not None:
            _log.info(
                "message stored conversation=%s message=%s author=%s chars=%d quoted=%d",
                msg.conversation,
                msg.message_id,
                msg.author.id,
                len(text),
                len(stored.quoted or ""),
            )
        return stored

    async def _count_user_turn(
        self, msg: IncomingMessage, user_turn: StoredMessage, sink: ReplySink, lang: Lang
    ) -> int | None:
        """Count the stored turn's tokens once, as the model will see it (with the speaker's name in a shared
        channel, and the quote), and store the count: every later prompt reads it from the store. Text the
        tokenizer refuses gets a sentence (the turn stays, failed) and None."""
        turn = speaker_turn(user_turn, show_names=not msg.is_direct)
        try:
            tokens = turn_cost(turn, self._engine.tokenizer)
        except Exception as exc:
            _log.warning(
                "tokenizer refused message conversation=%s message=%s error=%s",
                msg.conversation,
                msg.message_id,
                type(exc).__name__,
            )
            await self._db.update_message(user_turn.id, status=MessageStatus.FAILED)
            await sink.send(say("chat.unreadable", lang))
            return None
        await self._db.update_message(user_turn.id, token_count=tokens)
        return tokens

    def _quote_for(self, msg: IncomingMessage) -> str | None:
        """The messages this one replies to that the stored conversation lacks (none without a reply chain)."""
        if not msg.quoted:
            return None
        return quote_block(msg.quoted, self._store.history(msg.conversation))

    async def _answer(
        self, msg: IncomingMessage, user_turn: StoredMessage, sink: ReplySink, lang: Lang, tally: _Tally
    ) -> None:
        try:
            prompt = await asyncio.to_thread(self._build_prompt, msg, user_turn)
        except PromptTooLong as exc:
            await self._db.update_message(user_turn.id, status=MessageStatus.FAILED)
            _log.info(
                "message too long conversation=%s message=%s tokens=%d",
                msg.conversation,
                msg.message_id,
                exc.tokens,
            )
            tally.outcome = Outcome.REFUSED
            await sink.send(say("chat.too_long", lang, tokens=exc.tokens, limit=exc.limit))
            return
        await self._notice_trimmed_history(msg.conversation, prompt, sink, lang)
        request = GenerationRequest(
            request_id=f"{msg.platform}:{msg.message_id}",
            channel=str(msg.conversation),
            turns=prompt.turns,
            params=self._settings.generation.params(),
            timeout_s=self._settings.generation.timeout_s,
            lora=self._lora_for(msg.conversation, msg.author.id) if self._lora_for else None,
            user=f"{msg.platform}:{msg.author.id}",
        )
        clock = tally.clock
        reply = _Reply(clock)
        saved = StreamingReply(
            self._db,
            msg.conversation,
            answers=user_turn.id,
            tokenizer=self._engine.tokenizer,
            interval_s=self._save_interval_s,
        )
        try:
            await sink.stream(self._collect(request, reply, saved))
        except asyncio.CancelledError:
            clock.finished(0)
            _log.info(
                "reply cancelled conversation=%s message=%s chars_sent=%d",
                msg.conversation,
                msg.message_id,
                len(reply.text),
            )
            await asyncio.shield(self._store_reply(msg, saved, reply.text, MessageStatus.INCOMPLETE, sink))
            raise
        except Exception as exc:
            clock.finished(0)
            refused = isinstance(exc, QueueFull | EnginePaused) and not reply.text
            tally.outcome = Outcome.REFUSED if refused else Outcome.FAILED
            await self._reply_failed(msg, user_turn, reply, saved, exc, sink, lang)
            return
        await self._store_reply(msg, saved, reply.text, MessageStatus.COMPLETE, sink)
        tally.outcome = Outcome.ANSWERED
        tokens = saved.token_count
        clock.finished(tokens)
        _log.info(
            "reply done conversation=%s message=%s request=%s first_token_s=%.3f total_s=%.3f tokens=%d",
            msg.conversation,
            msg.message_id,
            request.request_id,
            (clock.first_at or clock.arrived) - clock.arrived,
            time.monotonic() - clock.arrived,
            tokens,
        )

    def _build_prompt(self, msg: IncomingMessage, user_turn: StoredMessage) -> BuiltPrompt:
        history = [m for m in self._store.history(msg.conversation) if m.id != user_turn.id]
        show_names = not msg.is_direct
        system_prompt = (
            self._store.channel_system_prompt(msg.conversation) or self._settings.model.system_prompt
        )

        def build(*, quote: bool) -> BuiltPrompt:
            return build_prompt(
                system_prompt=system_prompt,
                history=history,
                current=speaker_turn(user_turn, show_names=show_names, quote=quote),
                tokenizer=self._engine.tokenizer,
                max_new_tokens=self._settings.generation.max_new_tokens,
                show_names=show_names,
                current_cost=(user_turn.token_count or None) if quote else None,  # counted as it was stored
            )

        try:
            return build(quote=True)
        except PromptTooLong:
            if not user_turn.quoted:
                raise
            return build(quote=False)  # the quoted messages are context; the user's own words must fit

    async def _notice_trimmed_history(
        self, key: ConversationKey, prompt: BuiltPrompt, sink: ReplySink, lang: Lang
    ) -> None:
        """Tell the conversation once that older turns no longer reach the model."""
        if prompt.history_dropped and key not in self._trim_noticed:
            self._trim_noticed.add(key)
            await sink.send(say("chat.history_trimmed", lang, kept=prompt.history_used))

    async def _collect(
        self, request: GenerationRequest, reply: _Reply, saved: StreamingReply
    ) -> AsyncIterator[StreamEvent]:
        """Pass the engine's events on, keeping the text and saving it as it grows (before it is shown)."""
        reply.clock.generation_started()
        stream = self._engine.generate(request)
        try:
            async for event in stream:
                if isinstance(event, str):
                    reply.text += event
                    reply.clock.token()
                    await self._save_partial(request, saved, reply.text)
                else:
                    reply.clock.queued()
                yield event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _save_partial(self, request: GenerationRequest, saved: StreamingReply, text: str) -> None:
        """A failed save does not stop the reply: the next one (or the final one) tries again."""
        try:
            await saved.grow(text)
        except StoreError as exc:
            _log.warning(
                "could not save the reply so far request=%s error=%s", request.request_id, type(exc).__name__
            )

    async def _reply_failed(
        self,
        msg: IncomingMessage,
        user_turn: StoredMessage,
        reply: _Reply,
        saved: StreamingReply,
        exc: Exception,
        sink: ReplySink,
        lang: Lang,
    ) -> None:
        self._metrics.generation_error(type(exc).__name__)
        if isinstance(exc, BotError):
            _log.warning(
                "reply failed conversation=%s message=%s error=%s chars_sent=%d",
                msg.conversation,
                msg.message_id,
                type(exc).__name__,
                len(reply.text),
            )
            key = exc.user_text_key
        else:
            _log.exception(
                "reply crashed conversation=%s message=%s chars_sent=%d",
                msg.conversation,
                msg.message_id,
                len(reply.text),
            )
            key = "error.generic"
        if reply.text:
            await self._store_reply(msg, saved, reply.text, MessageStatus.INCOMPLETE, sink)
        else:  # never answered: kept, but out of the prompts (and not answered again after a restart)
            await self._db.update_message(user_turn.id, status=MessageStatus.FAILED)
        text = await self._maintenance_text(lang) if isinstance(exc, EnginePaused) else say(key, lang)
        try:
            await sink.send(text)
        except Exception:
            _log.exception(
                "could not tell the user conversation=%s message=%s", msg.conversation, msg.message_id
            )

    async def _maintenance_text(self, lang: Lang) -> str:
        """The maintenance sentence, with when the bot expects to be back when the learning loop can tell."""
        back = None
        if self._back_at is not None:
            try:
                back = await self._back_at()
            except Exception as exc:  # an estimate is a courtesy: never let it cost the sentence
                _log.warning("no maintenance estimate: %s", type(exc).__name__)
        if back is None:
            return say("error.maintenance", lang)
        minutes = max(1, math.ceil((back - datetime.now(UTC)).total_seconds() / 60))
        shown = back.astimezone(ZoneInfo(self._settings.scheduler.timezone)).strftime("%H:%M")
        return say("error.maintenance_until", lang, time=shown, minutes=minutes)

    async def _store_reply(
        self, msg: IncomingMessage, saved: StreamingReply, text: str, status: MessageStatus, sink: ReplySink
    ) -> None:
        """Store the reply's final text and status, linked to the user turn it answers (``/forget-me``) and to the
        platform messages that show it (👍/👎 on them are feedback, ``bot.feedback``)."""
        await saved.finish(text, status)
        if saved.message_id is not None and sink.posted:
            await self._db.link_posts(saved.message_id, msg.platform, sink.posted)
        _log.info(
            "reply stored conversation=%s message=%s status=%s chars=%d",
            msg.conversation,
            msg.message_id,
            status.value,
            len(text),
        )
