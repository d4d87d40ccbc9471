"""The console chat: the prototype's terminal loop on the same core as Discord and Slack.

``사용자: `` prompts for a line; the reply streams after ``봇: ``; ``종료``, ``exit``, ``quit`` or end of input quits.
At a terminal the line is read through ``readline`` (history with the arrow keys, editing, Hangul as whole
characters); piped input is read as it comes.
Lines starting with ``/`` are commands, written as Discord shows them (``/finetune action:status``,
``/forget-me delete:yes``) or bare (``/finetune status``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TextIO

from bot.commands import CommandContext, CommandRegistry, parse_arguments
from bot.domain import Author, ConversationKey, IncomingMessage, QueuePosition, StreamEvent
from bot.ports import MessageHandler, ReplySink
from bot.texts import Lang, language_of, say

_log = logging.getLogger(__name__)

PROMPT = "사용자: "
BOT_PREFIX = "봇: "
QUIT_WORDS = frozenset({"종료", "exit", "quit"})


class ConsoleReplySink:
    """Prints the reply as it streams; shows the queue position while waiting, in ``lang`` (the user's)."""

    def __init__(self, out: TextIO, lang: Lang = "en") -> None:
        self._out = out
        self.lang = lang

    @property
    def posted(self) -> tuple[str, ...]:
        return ()  # a terminal has no message ids (and no reactions)

    async def send(self, text: str) -> None:
        self._write(f"{BOT_PREFIX}{text}\n")

    async def stream(self, events: AsyncIterator[StreamEvent]) -> None:
        started = said = False  # any text yet; any text that is not blank
        self._write(BOT_PREFIX)
        try:
            async for event in events:
                if isinstance(event, QueuePosition):
                    if not started:
                        self._write(f"({say('chat.queued', self.lang, position=event.position)}) ")
                    continue
                started, said = True, said or bool(event.strip())
                self._write(event)
        except BaseException:
            self._write(f" {say('chat.incomplete', self.lang)}\n" if said else "\n")
            raise
        self._write("\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class ConsoleAdapter:
    name = "console"

    def __init__(
        self,
        *,
        session: str = "console",
        user: str = "local",
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self._session = session
        self._author = Author(id=user, display_name=user)
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self._task: asyncio.Task[None] | None = None
        self._lang: Lang | None = None  # the language the user last wrote in

    @property
    def conversation(self) -> ConversationKey:
        return ConversationKey(platform="console", workspace="", channel=self._session)

    async def start(self, on_message: MessageHandler, commands: CommandRegistry) -> None:
        self._task = asyncio.create_task(self._loop(on_message, commands), name="console-loop")

    async def connected(self) -> bool:
        """The terminal is read while the chat loop runs."""
        return self._task is not None and not self._task.done()

    async def wait_closed(self) -> None:
        """Until the user quits, the input ends, or ``stop`` (SIGTERM) ends the loop."""
        if self._task is not None:
            await asyncio.wait({self._task})
            if not self._task.cancelled() and self._task.exception() is not None:
                raise self._task.exception()  # type: ignore[misc]

    async def sink_for(
        self, conversation: ConversationKey, *, author_id: str, message_id: str | None, lang: Lang
    ) -> ReplySink | None:
        """Where a reply to an earlier message of this session goes (after a restart): this terminal."""
        return ConsoleReplySink(self._out, lang) if conversation == self.conversation else None

    async def post_file(self, conversation: ConversationKey, text: str, path: Path | None = None) -> bool:
        """A notice in this terminal (the end of a fine-tune run), with the file's path (a terminal shows no
        pictures). Any console conversation is this terminal."""
        if conversation.platform != "console":
            return False
        shown = f"{BOT_PREFIX}{text}\n" + (f"    {path}\n" if path is not None else "")
        self._out.write(shown)
        self._out.flush()
        return True

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self, on_message: MessageHandler, commands: CommandRegistry) -> None:
        sink = ConsoleReplySink(self._out)
        while True:
            line = await self._read_line()
            if line is None:
                break
            text = line.strip()
            if text in QUIT_WORDS:
                break
            if text.startswith("/"):
                sink.lang = self._language(text, language_of(text))
                await self._run_command(text, commands, sink)
                continue
            message = IncomingMessage(
                platform="console",
                conversation=self.conversation,
                message_id=f"{self._session}:{uuid.uuid4().hex}",
                author=self._author,
                text=text,
                is_direct=True,
            )
            sink.lang = self._language(text, message.lang)  # detected once: the chat service reads the same
            try:
                await on_message(message, sink)
            except Exception:  # the boundary: log, tell, keep the loop alive
                _log.exception("console message failed message=%s", message.message_id)
                await sink.send(say("error.generic", sink.lang))
        self._out.write("\n")
        self._out.flush()

    def _language(self, text: str, detected: Lang) -> Lang:
        """The language of what the user just wrote; for a command or a blank line without Hangul, the language
        they last wrote in (a Korean user's ``/finetune status`` is answered in Korean)."""
        if detected == "ko" or (text and not text.startswith("/")):
            self._lang = detected
        return self._lang or "en"

    async def _read_line(self) -> str | None:
        if _at_terminal(self._in, self._out):
            line = await _in_daemon_thread(lambda: _edited_line(PROMPT))
        else:
            self._out.write(PROMPT)
            self._out.flush()
            line = await _in_daemon_thread(self._in.readline)
        return line if line else None  # "" is end of input

    async def _run_command(self, text: str, commands: CommandRegistry, sink: ConsoleReplySink) -> None:
        if not text[1:].strip():  # "/" alone
            await sink.send(say("error.unknown_command", sink.lang))
            return
        name, *words = text[1:].split()
        spec = commands.get(name)
        args = parse_arguments(spec, " ".join(words)) if spec else {}
        ctx = CommandContext(
            platform="console",
            conversation=self.conversation,
            invoker=self._author,
            args=args,
            lang=sink.lang,
        )
        reply = await commands.run(name, ctx)
        await sink.send(reply.text)


def _at_terminal(stdin: TextIO, stdout: TextIO) -> bool:
    """Whether the console talks to a person at a terminal through the process's own streams (readline works on
    those only), and readline is there (not on Windows)."""
    if stdin is not sys.stdin or stdout is not sys.stdout or not (stdin.isatty() and stdout.isatty()):
        return False
    try:
        import readline  # noqa: F401  (importing it makes input() edit the line: history, arrows, Hangul)
    except ImportError:
        return False
    return True


def _edited_line(prompt: str) -> str:
    """One line through readline, newline kept like ``readline()``; "" at end of input (Ctrl-D). The prompt goes
    to ``input`` so that readline knows its width when it redraws the line."""
    try:
        return input(prompt) + "\n"
    except EOFError:
        return ""


async def _in_daemon_thread(read: Callable[[], str]) -> str:
    """``read()`` (one line) in a daemon thread: a process stopping (SIGTERM) never waits for the next line."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(line: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(line or "")

    def run() -> None:
        try:
            line, error = read(), None
        except Exception as exc:  # handed to the loop
            line, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, line, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="console-stdin", daemon=True).start()
    return await future
