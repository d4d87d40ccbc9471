"""Platform-neutral types that flow through the core.

Adapters turn platform events into these; the chat service, the store and the engines speak only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from bot.texts import Lang, language_of


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # streaming stopped early (error, cancel, shutdown, a kill): kept, marked
    # being written: saved as it streams; a process killed mid-reply leaves it, and the next start settles it
    # to INCOMPLETE (bot.recovery). Not in prompts while it streams.
    STREAMING = "streaming"
    FAILED = "failed"  # never answered (rejected input, model failure before any text)


@dataclass(frozen=True)
class ConversationKey:
    """Which conversation a message belongs to.

    Discord: one per channel (a thread or a DM is a channel). Slack: a DM channel, or the thread a mention started.
    Console: one per session name. ``workspace`` is the guild / team id ("" when there is none).
    """

    platform: str
    workspace: str
    channel: str
    thread: str = ""

    def __str__(self) -> str:  # used as the fairness key and in logs (ids only, never content)
        parts = [self.platform, self.workspace or "-", self.channel]
        if self.thread:
            parts.append(self.thread)
        return ":".join(parts)


@dataclass(frozen=True)
class Author:
    id: str
    display_name: str
    is_bot: bool = False
    # What the platform says about this person (Discord: Manage Server; Slack: workspace admin or owner).
    # The core combines it with the admin ids from the settings; it never trusts a UI permission alone.
    platform_admin: bool = False
    role_ids: tuple[str, ...] = ()  # Discord role ids, matched against discord.admin_role_ids


@dataclass(frozen=True)
class QuotedMessage:
    """An earlier message that the incoming one replies to (Discord's *Reply*), as people read it."""

    message_id: str  # the platform's id
    author_name: str
    text: str
    from_bot: bool = False  # one of the bot's own messages


@dataclass(frozen=True)
class SharedFile:
    """A file shared with a message (a Discord attachment, a Slack file_share), as the adapter found it.

    ``text`` holds the file's contents when it was a UTF-8 text file within the size limit (``bot.files``), and
    None when it was not read; ``image`` says it was a picture (named to the model as not read).
    """

    name: str
    size: int
    text: str | None = None
    image: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    platform: str
    conversation: ConversationKey
    message_id: str  # the platform's id, unique per platform: a second delivery of the same id is a duplicate
    author: Author
    text: str  # with the bot's mention stripped
    is_direct: bool = False  # a DM: only one human speaks, so no speaker names are shown to the model
    reply_to: str | None = None
    # The reply chain above this message, nearest first (at most bot.quoting.QUOTE_DEPTH); the core shows the model
    # those that are not already in the conversation's stored history.
    quoted: tuple[QuotedMessage, ...] = ()
    files: tuple[SharedFile, ...] = ()  # files shared with the message (bot.files reads the text ones)

    @cached_property
    def lang(self) -> Lang:
        """The language the message is written in, detected once (the adapter's sink and the chat service ask)."""
        return language_of(self.text)


@dataclass(frozen=True)
class ChatTurn:
    """One turn as the model sees it (display names already folded into ``content`` where they matter)."""

    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    do_sample: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """What the chat service asks an engine for.

    ``channel`` is the fairness key: one active generation per channel, channels served round-robin.
    """

    request_id: str
    channel: str
    turns: tuple[ChatTurn, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    timeout_s: float | None = None
    # which LoRA version serves this request: None means the engine's default (set by Engine.use_lora),
    # BASE_MODEL the base model without any LoRA, any other name a LoRA loaded with Engine.load_lora
    lora: str | None = None
    # who asked ("platform:user_id"; "" for none): the engines cap each user's waiting requests
    user: str = ""


BASE_MODEL = ""
"""``GenerationRequest.lora`` value that asks for the base model whatever the engine's default is."""


@dataclass(frozen=True)
class QueuePosition:
    """Yielded by an engine's stream while the request waits: 1 means "next"."""

    position: int


# A generation stream yields text chunks, and QueuePosition updates while the request is still waiting.
StreamEvent = str | QueuePosition


@dataclass(frozen=True)
class CommandReply:
    text: str
    ephemeral: bool = True
