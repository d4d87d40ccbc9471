"""The small interfaces between the core and the outside: engines, reply sinks, adapters, and the few parts of the
store an adapter uses (a delivery log, whether the bot is in a conversation, where reactions go).

Each is a Protocol of a few methods, so a fake satisfies it without inheritance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.domain import (
    ChatTurn,
    ConversationKey,
    GenerationRequest,
    IncomingMessage,
    QuotedMessage,
    StreamEvent,
)

if TYPE_CHECKING:
    from bot.feedback import Reaction
    from bot.texts import Lang


@runtime_checkable
class ChatTokenizer(Protocol):
    """Counts tokens the way the model will see them (its own tokenizer and chat template)."""

    @property
    def context_length(self) -> int: ...

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        """Tokens of ``turns`` rendered with the chat template (plus the assistant header when asked)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Generates replies. Local (transformers in this process) or remote (an OpenAI-compatible server)."""

    @property
    def tokenizer(self) -> ChatTokenizer: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Stream text chunks (and QueuePosition while waiting). Closing the iterator cancels the request.

        Raises bot.errors.EngineError subclasses: QueueFull, EnginePaused, GenerationTimeout, GenerationFailed.
        """
        ...

    async def health(self) -> None:
        """Return when healthy; raise EngineUnhealthy otherwise."""
        ...

    async def pause(self) -> None:
        """Drain running work, refuse new work with EnginePaused, and free the accelerator."""
        ...

    async def resume(self) -> None: ...

    async def load_lora(self, name: str, path: str) -> None:
        """Load a LoRA adapter saved at ``path`` under ``name`` without reloading the base weights."""
        ...

    async def use_lora(self, name: str | None) -> None:
        """Serve with the LoRA ``name``, or with the base model when ``None``."""
        ...

    @property
    def active_lora(self) -> str | None:
        """The LoRA this engine serves now (what ``use_lora`` last made it serve), None for the base model."""
        ...

    async def aclose(self) -> None: ...


class ReplySink(Protocol):
    """Where one reply goes. The adapter owns edits, throttling and splitting at platform limits."""

    async def send(self, text: str) -> None:
        """Post a short, complete message (a hint, a notice, an error sentence)."""
        ...

    async def stream(self, events: AsyncIterator[StreamEvent]) -> None:
        """Show a "thinking" state, the queue position while waiting, then the text as it grows.

        The caller keeps the reply's text (it saves it as it grows); the sink only shows it. If ``events`` raises, the shown reply is finished with an "incomplete" marker and
        the exception propagates, so the caller can store the partial reply and tell the user.
        """
        ...

    @property
    def posted(self) -> tuple[str, ...]:
        """The platform ids of the messages that show the streamed reply (reactions on them are feedback on it);
        empty where the platform has no message ids (the console)."""
        ...


class HistoryError(Exception):
    """The platform would not give a conversation's history (no access, not a member, a network error)."""


class ConversationHistory(Protocol):
    """A platform's view of a conversation, for commands that read it (/summarize): its messages and a reply sink."""

    async def recent_messages(self, conversation: ConversationKey, limit: int) -> Sequence[QuotedMessage]:
        """The conversation's last ``limit`` messages, oldest first, read from the platform (a Slack thread: its
        replies, else the channel's history). Raises HistoryError when the platform refuses."""
        ...

    async def sink_for(
        self, conversation: ConversationKey, *, author_id: str, message_id: str | None, lang: Lang
    ) -> ReplySink | None: ...


@runtime_checkable
class ChannelPoster(Protocol):
    """Posts a message, with a file when one is given, into a conversation outside any reply (the end of a fine-tune
    run): Discord as an attachment, Slack as an uploaded file, the console as the file's path."""

    name: str

    async def post_file(self, conversation: ConversationKey, text: str, path: Path | None = None) -> bool:
        """True when posted; False when the conversation cannot be reached (the adapter logs why)."""
        ...


class DeliveryLog(Protocol):
    """Which platform deliveries were taken already (a platform that redelivers: Slack's retries). Durable and shared
    by every process (``bot.store.async_store.AsyncStore``)."""

    async def first_delivery(self, platform: str, delivery_id: str) -> bool:
        """Record ``delivery_id``: True the first time, False for a repeat."""
        ...


class ConversationPresence(Protocol):
    """Whether the bot takes part in a conversation already (it has stored turns there)."""

    async def has_turns(self, key: ConversationKey) -> bool: ...


class FeedbackRecorder(Protocol):
    """Where 👍/👎 reactions on the bot's replies go (``bot.feedback.FeedbackBook``)."""

    async def take(self, reaction: Reaction) -> bool:
        """Record (or withdraw) the vote; whether a vote changed."""
        ...


MessageHandler = Callable[[IncomingMessage, ReplySink], Awaitable[None]]
