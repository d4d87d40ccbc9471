"""The engine server's HTTP side in this process, over a scripted engine, with RemoteEngine as the client: what a
real model will not do on demand (a full queue, a pause, a failure mid-reply), the API key, the fairness headers,
and how the request body maps onto the engine's request. The demo model behind it: test_engine_server.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.domain import ChatTurn, GenerationParams, GenerationRequest, Role
from bot.errors import EnginePaused, GenerationFailed, GenerationTimeout, QueueFull
from inference.engine_server import EngineServer
from inference.remote_engine import EstimatingTokenizer, RemoteEngine
from inference.worker import WorkerStats
from tests.fakes import ScriptedEngine


@dataclasses.dataclass
class ServedScript(ScriptedEngine):
    """A scripted engine with the load figures the server reports."""

    stats: WorkerStats = dataclasses.field(default_factory=WorkerStats)

    def counts(self) -> tuple[int, int]:
        return (0, 0)


Start = Callable[..., Awaitable[tuple[EngineServer, RemoteEngine]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[EngineServer] = []
    clients: list[RemoteEngine] = []

    async def make(
        engine: ServedScript, *, api_key: str | None = None, client_key: str | None = None
    ) -> tuple[EngineServer, RemoteEngine]:
        server = await EngineServer(engine, model_name="base", port=0, api_key=api_key).start()
        client = RemoteEngine(
            base_url=f"http://127.0.0.1:{server.port}/v1",
            model="base",
            tokenizer=EstimatingTokenizer(4096),
            api_key=SecretStr(client_key) if client_key else None,
            max_retries=0,
        )
        servers.append(server)
        clients.append(client)
        return server, client

    yield make
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.stop()


def request(params: GenerationParams | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        channel="slack:T1:C9",
        user="slack:U7",
        turns=(ChatTurn(Role.SYSTEM, "be brief"), ChatTurn(Role.USER, "안녕?")),
        params=params or GenerationParams(),
    )


async def collect(client: RemoteEngine, req: GenerationRequest) -> str:
    return "".join([str(c) async for c in client.generate(req)])


async def test_the_reply_streams_and_the_request_arrives_as_the_bot_sent_it(start: Start) -> None:
    engine = ServedScript(reply="안녕하세요, 반가워요!", chunk_size=3, queue_positions=(2, 1))
    _, client = await start(engine)
    params = GenerationParams(max_new_tokens=77, temperature=0.7, top_p=0.8, repetition_penalty=1.2, seed=3)
    assert await collect(client, request(params)) == "안녕하세요, 반가워요!"
    assert (
        await collect(client, request(GenerationParams(max_new_tokens=5, do_sample=False)))
        == "안녕하세요, 반가워요!"
    )
    sampled, greedy = engine.requests
    assert sampled.turns == request().turns
    keys = (sampled.channel, sampled.user)
    assert keys == ("slack:T1:C9", "slack:U7")  # the fairness keys travel as headers
    assert sampled.params == params
    assert not greedy.params.do_sample and greedy.params.max_new_tokens == 5
    assert greedy.params.repetition_penalty == 1.1  # sent as vLLM's extra field
    assert sampled.lora == "" and greedy.lora == ""  # the served name is the base model


@pytest.mark.parametrize(
    ("error", "status", "raised"),
    [
        (QueueFull("the queue is full"), 429, QueueFull),
        (EnginePaused("paused for maintenance"), 503, GenerationFailed),
        (GenerationTimeout("too slow"), 504, GenerationFailed),
        (GenerationFailed("the prompt has 9000 tokens"), 400, GenerationFailed),
    ],
)
async def test_an_error_before_the_first_token_is_an_http_status_with_openai_error_json(
    start: Start, error: Exception, status: int, raised: type[Exception]
) -> None:
    server, client = await start(ServedScript(fail_after=0, error=error))
    with pytest.raises(raised):
        await collect(client, request())
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.base_url}/chat/completions",
            json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
    assert response.status_code == status
    assert response.json()["error"]["message"] == str(error)
    assert ("retry-after" in response.headers) == (status in (429, 503))


async def test_an_error_after_the_first_token_is_an_error_event(start: Start) -> None:
    _, client = await start(ServedScript(reply="abcdefgh", chunk_size=2, fail_after=2))
    received: list[str] = []
    with pytest.raises(GenerationFailed, match="scripted failure"):
        async for chunk in client.generate(request()):
            received.append(str(chunk))
    assert received == ["ab", "cd"]


async def test_an_engine_bug_is_a_500_with_error_json_and_the_server_goes_on(start: Start) -> None:
    engine = ServedScript(reply="fine", fail_after=0, error=RuntimeError("a bug"))
    server, client = await start(engine)
    async with httpx.AsyncClient() as http:
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
        streamed = await http.post(f"{server.base_url}/chat/completions", json={**body, "stream": True})
        whole = await http.post(f"{server.base_url}/chat/completions", json=body)
    assert streamed.status_code == whole.status_code == 500
    assert whole.json()["error"]["message"] == "the server failed (RuntimeError)"
    engine.fail_after = None
    assert await collect(client, request()) == "fine"


async def test_the_api_key_is_asked_for_when_set(start: Start) -> None:
    _, without = await start(ServedScript(), api_key="sk-engine")
    with pytest.raises(GenerationFailed, match="API key"):
        await collect(without, request())
    _, with_key = await start(ServedScript(reply="ok"), api_key="sk-engine", client_key="sk-engine")
    assert await collect(with_key, request()) == "ok"
    await with_key.health()


async def test_the_health_reports_the_load(start: Start) -> None:
    server, _ = await start(ServedScript())
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(f"http://127.0.0.1:{server.port}/health")).json()
    assert body == {"status": "ok", "model": "base", "loras": [], "waiting": 0, "running": 0, "cancelled": 0}
