"""Fairness (issue 14, fault 3): one person or one channel cannot fill the queue for everybody.

The acceptance runs the real chat service on the demo model's local engine; a gate holds admission so every request
is queued before any is answered, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.chat import ChatService
from bot.domain import Author, ConversationKey, IncomingMessage
from bot.errors import ChannelQueueFull, QueueFull, UserQueueFull
from bot.settings import load_settings
from bot.store.conversations import ConversationStore
from bot.texts import say
from inference.request_queue import FairQueue
from tests.fakes import RecordingSink
from tests.inference.conftest import EngineFactory
from tests.inference.engine_helpers import Gate, wait_until

BUSY = ConversationKey("discord", "g1", "busy")
QUIET = ConversationKey("discord", "g1", "quiet")


def message(key: ConversationKey, user: str, mid: str) -> IncomingMessage:
    return IncomingMessage("discord", key, mid, Author(user, user.title()), "What is hanbot?")


async def test_fault_03_eighty_messages_from_one_user_do_not_stop_another_channel(
    make_engine: EngineFactory, tmp_path: Path, sqlite_store: ConversationStore
) -> None:
    gates: list[Gate] = []
    engine = make_engine(wrap=lambda d: gates.append(Gate(d)) or gates[-1])  # the default queue settings
    settings = load_settings(
        data_dir=tmp_path, scheduler={"enabled": False}, generation={"max_new_tokens": 8}
    )
    chat = ChatService(settings=settings, store=sqlite_store, engine=engine)
    flood = [RecordingSink() for _ in range(80)]
    tasks = [
        asyncio.create_task(chat.handle(message(BUSY, "spammer", f"f{i}"), sink))
        for i, sink in enumerate(flood)
    ]
    await wait_until(lambda: sum(bool(s.sent) for s in flood) + engine.counts()[0] == 80)

    other = RecordingSink()
    answer = asyncio.create_task(chat.handle(message(QUIET, "someone", "q1"), other))
    await wait_until(lambda: engine.counts()[0] == 5 or bool(other.sent))
    assert other.sent == [], "another person's message in another channel is taken"
    gates[0].open.set()
    await asyncio.wait_for(answer, 60)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    assert other.sent == [] and other.streamed and other.streamed[0].strip()
    refused = [s.sent for s in flood if s.sent]
    cap = settings.engine.queue_limit_per_user
    assert len(refused) == 80 - cap
    assert all(sent == [say("error.queue_user_full", "en")] for sent in refused), (
        "the refusal says why and when"
    )
    assert sum(bool(s.streamed and s.streamed[0]) for s in flood) == cap


def test_fault_03_per_channel_and_per_user_caps_refuse_with_their_reason() -> None:
    queue: FairQueue[str] = FairQueue(limit=10, per_user=2, per_channel=3)
    queue.push("busy", "a1", user="alice")
    queue.push("busy", "a2", user="alice")
    with pytest.raises(UserQueueFull):
        queue.push("other", "a3", user="alice")  # a person's cap holds across channels
    queue.push("busy", "b1", user="bob")
    with pytest.raises(ChannelQueueFull):
        queue.push("busy", "c1", user="carol")
    queue.push("quiet", "c1", user="carol")  # another channel is still open
    assert queue.pop(lambda _c: False) == "a1"  # a started request no longer counts
    queue.push("busy", "a3", user="alice")
    assert len(queue) == 4
    assert queue.remove("busy", "a3")
    queue.push("busy", "d1", user="dan")
    small: FairQueue[str] = FairQueue(limit=2, per_user=5, per_channel=5)
    small.push("x", "x1", user="xena")
    small.push("y", "y1", user="yuri")
    with pytest.raises(QueueFull) as refused:
        small.push("z", "z1", user="zoe")
    assert type(refused.value) is QueueFull, "past the total limit: the general sentence"


async def test_fault_03_the_remote_engine_caps_each_users_and_channels_requests_at_the_server() -> None:
    from bot.domain import ChatTurn, GenerationRequest, Role
    from inference.remote_engine import EstimatingTokenizer, RemoteEngine
    from tests.inference.remote_server import FakeOpenAI, Reply

    server = await FakeOpenAI([Reply(stall_s=30)]).start()  # the server holds every request
    engine = RemoteEngine(
        base_url=server.base_url,
        model="test-model",
        tokenizer=EstimatingTokenizer(2048),
        per_user=1,
        per_channel=2,
    )

    def ask(user: str, channel: str, n: int) -> GenerationRequest:
        return GenerationRequest(f"r{n}", channel, (ChatTurn(Role.USER, "hi"),), user=user)

    async def consume(request: GenerationRequest) -> BaseException | None:
        try:
            async for _ in engine.generate(request):
                pass
        except QueueFull as exc:
            return exc
        except Exception:  # the server going away at the end of the test
            return None
        return None

    tasks: list[asyncio.Task[BaseException | None]] = []
    try:
        tasks.append(asyncio.create_task(consume(ask("alice", "c1", 1))))
        await wait_until(lambda: len(server.chat_requests) == 1)
        assert isinstance(await consume(ask("alice", "c2", 2)), UserQueueFull)  # at once, before any HTTP
        tasks.append(asyncio.create_task(consume(ask("bob", "c1", 3))))
        await wait_until(lambda: len(server.chat_requests) == 2)
        assert isinstance(await consume(ask("carol", "c1", 4)), ChannelQueueFull)
        tasks.append(asyncio.create_task(consume(ask("carol", "c3", 5))))
        await wait_until(lambda: len(server.chat_requests) == 3)  # another channel is still open
        assert not any(t.done() for t in tasks)
    finally:
        await server.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await engine.aclose()
