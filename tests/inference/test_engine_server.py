"""The project's own engine server (``python -m inference serve``) on loopback with the demo model, and the bot's
RemoteEngine as its client: streaming, cancellation when the client goes away, errors as OpenAI error JSON, LoRA
adapters loaded at run time and chosen by ``model``, and two bot processes sharing one engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.domain import BASE_MODEL, ChatTurn, GenerationParams, GenerationRequest, Role
from bot.errors import EngineUnhealthy, GenerationFailed, ModelLoadError
from bot.settings import DEFAULT_SYSTEM_PROMPT, Settings, load_settings
from bot.store.conversations import ConversationStore
from inference.remote_engine import RemoteEngine, load_chat_tokenizer
from tests.inference.remote_server import REPO, EngineServe, demo_engine_env

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(max_new_tokens=64, do_sample=False, repetition_penalty=1.0)
LONG = GenerationParams(max_new_tokens=4000, temperature=1.5, top_p=1.0, repetition_penalty=1.0, seed=7)


def request(text: str, *, params: GenerationParams = GREEDY, channel: str = "test:-:c1") -> GenerationRequest:
    turns = (ChatTurn(Role.SYSTEM, DEFAULT_SYSTEM_PROMPT), ChatTurn(Role.USER, text))
    return GenerationRequest(request_id="req-1", channel=channel, turns=turns, params=params, user="test:u1")


async def collect(engine: RemoteEngine, req: GenerationRequest) -> list[str]:
    return [str(chunk) async for chunk in engine.generate(req)]


async def health(server: EngineServe) -> dict[str, Any]:
    """The server's /health: its load (waiting, running) and how many requests were cancelled."""
    async with httpx.AsyncClient(timeout=10) as http:
        return dict((await http.get(f"http://127.0.0.1:{server.port}/health")).json())


async def model_ids(server: EngineServe) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as http:
        return [m["id"] for m in (await http.get(f"{server.base_url}/models")).json()["data"]]


@pytest.fixture(scope="module")
def server(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineServe]:
    folder = tmp_path_factory.mktemp("engine-server")
    serve = EngineServe(demo_engine_env(demo_model_dir, folder / "data"), folder / "serve.log").start()
    try:
        yield serve
    finally:
        assert serve.stop() == 0, serve.log_tail()  # SIGTERM is a clean stop


@pytest.fixture
async def client(server: EngineServe, demo_model_dir: Path) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(
        base_url=server.base_url,
        model=server.model_name,
        tokenizer=load_chat_tokenizer(str(demo_model_dir)),
        max_retries=1,
    )
    yield engine
    await engine.aclose()


async def test_streams_the_local_engines_greedy_replies(
    client: RemoteEngine, server: EngineServe, settings: Settings
) -> None:
    from inference.demo_model import FAQ
    from tests.inference.test_remote_engine import local_engine_replies

    pairs = FAQ[:4]  # Korean and English
    requests = [request(question, params=GREEDY) for question, _ in pairs]
    expected = await local_engine_replies(settings, requests)
    for req, reply, (_, answer) in zip(requests, expected, pairs, strict=True):
        chunks = await collect(client, req)
        assert "".join(chunks) == reply
        assert reply.strip() == answer.strip()
        assert len(chunks) > 1  # streamed, token by token
    together = await asyncio.gather(
        *(collect(client, dataclasses.replace(r, channel=f"test:-:c{i}")) for i, r in enumerate(requests))
    )
    assert ["".join(chunks) for chunks in together] == expected
    await client.health()


async def test_non_streaming_completion_and_the_model_list(server: EngineServe) -> None:
    from inference.demo_model import FAQ

    question, answer = FAQ[1]
    async with httpx.AsyncClient(base_url=server.base_url + "/", timeout=60) as http:
        models = (await http.get("models")).json()
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        body = {"model": server.model_name, "messages": messages}
        completion = await http.post("chat/completions", json={**body, "temperature": 0, "max_tokens": 64})
    assert [m["id"] for m in models["data"]] == [server.model_name]
    assert completion.status_code == 200
    payload = completion.json()
    assert payload["object"] == "chat.completion"
    assert payload["choices"][0]["message"]["content"].strip() == answer.strip()
    assert payload["usage"]["prompt_tokens"] > 0


async def test_errors_are_openai_error_json(server: EngineServe, client: RemoteEngine) -> None:
    async with httpx.AsyncClient(base_url=server.base_url + "/", timeout=60) as http:
        unknown = await http.post(
            "chat/completions",
            json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        no_messages = await http.post("chat/completions", json={"model": server.model_name, "messages": []})
        not_json = await http.post(
            "chat/completions", content=b"{", headers={"Content-Type": "application/json"}
        )
        bad_role = await http.post(
            "chat/completions",
            json={"model": server.model_name, "messages": [{"role": "x", "content": "hi"}]},
        )
        too_long = await http.post(
            "chat/completions",
            json={"model": server.model_name, "messages": [{"role": "user", "content": "안녕 " * 20_000}]},
        )
        wrong_route = await http.get("nothing-here")
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]["message"]
    for response in (no_messages, not_json, bad_role, too_long):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert "tokens" in too_long.json()["error"]["message"]  # the context does not hold the prompt
    assert wrong_route.status_code == 404 and wrong_route.json()["error"]["message"]
    # through the client: an unknown model is unhealthy and fails without retries
    other = RemoteEngine(base_url=server.base_url, model="no-such-model", tokenizer=client.tokenizer)
    try:
        with pytest.raises(EngineUnhealthy, match="no-such-model"):
            await other.health()
        with pytest.raises(GenerationFailed, match="404"):
            await collect(other, request("hi"))
    finally:
        await other.aclose()


async def test_a_client_that_goes_away_cancels_its_request(server: EngineServe, client: RemoteEngine) -> None:
    before = (await health(server))["cancelled"]
    stream = client.generate(request("Tell me a very long story about the sea.", params=LONG))
    first = await anext(stream)
    assert first
    await stream.aclose()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while (state := await health(server))["running"] or state["waiting"]:
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert state["cancelled"] == before + 1  # stopped by the disconnect, not finished


async def test_a_cancelled_consumer_task_cancels_the_request(
    server: EngineServe, client: RemoteEngine
) -> None:
    before = (await health(server))["cancelled"]
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in client.generate(request("Another long story, please.", params=LONG)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 20
    while (await health(server))["cancelled"] == before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_lora_adapters_loaded_at_run_time_and_chosen_by_model(
    server: EngineServe, client: RemoteEngine, demo_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    from tests.inference.test_fast_lora import save_adapter

    base = LlamaForCausalLM.from_pretrained(demo_model_dir, dtype="float32").eval()
    adapter = tmp_path / "faq-v2"
    save_adapter(base, adapter, seed=11, std=0.2)
    question = "What does /reset do?"
    base_reply = "".join(await collect(client, request(question)))

    await client.load_lora("faq-v2", str(adapter))
    assert await model_ids(server) == [server.model_name, "faq-v2"]
    lora_reply = "".join(await collect(client, dataclasses.replace(request(question), lora="faq-v2")))
    assert lora_reply != base_reply  # the adapter changes the greedy reply
    await client.use_lora("faq-v2")  # the default from now on: model = faq-v2
    assert "".join(await collect(client, request(question))) == lora_reply
    explicit_base = dataclasses.replace(request(question), lora=BASE_MODEL)
    assert "".join(await collect(client, explicit_base)) == base_reply
    await client.health()
    await client.load_lora(
        "faq-v2", str(adapter)
    )  # again: the server says "already loaded", the client replaces it

    async with httpx.AsyncClient(base_url=server.base_url + "/", timeout=60) as http:
        missing = await http.post(
            "load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "none")}
        )
        unloaded = await http.post("unload_lora_adapter", json={"lora_name": "faq-v2"})
        unknown = await http.post("unload_lora_adapter", json={"lora_name": "faq-v2"})
    assert missing.status_code == 400 and missing.json()["error"]["message"]
    assert unloaded.status_code == 200 and unknown.status_code == 404
    with pytest.raises(GenerationFailed, match="404"):
        await collect(client, request(question))  # faq-v2 is no longer served
    await client.use_lora(None)
    with pytest.raises(ModelLoadError, match="never-loaded"):
        await client.use_lora("never-loaded")  # the client asks the server's model list first


async def test_the_learning_loop_has_the_server_load_the_version_it_serves(
    server: EngineServe,
    client: RemoteEngine,
    demo_model_dir: Path,
    tmp_path: Path,
    sqlite_store: ConversationStore,
) -> None:
    """Promotion (and restore at start) with a remote engine: load_lora + use_lora become vLLM's load call on the
    server and the version's name as the requests' ``model``."""
    from transformers import LlamaForCausalLM

    from bot.learning.service import FinetuneService
    from bot.store.learning_records import LearningRecords
    from tests.inference.test_fast_lora import save_adapter

    settings = load_settings(data_dir=tmp_path / "data", model={"name_or_path": str(demo_model_dir)})
    version_dir = settings.lora_dir / "versions" / "v1"
    base = LlamaForCausalLM.from_pretrained(demo_model_dir, dtype="float32").eval()
    save_adapter(base, version_dir, seed=5, std=0.2)
    records = LearningRecords(sqlite_store)
    run = records.create_run(trigger="manual", started_by="test", owner="test")
    records.promote(name="v1", path=str(version_dir), run_id=run.id, eval_loss=1.0, actor="test")
    question = "What does /reset do?"
    base_reply = "".join(await collect(client, request(question)))

    await FinetuneService(settings, sqlite_store, client).restore()

    assert "v1" in await model_ids(server)
    assert client.active_lora == "v1"
    served = "".join(await collect(client, request(question)))
    assert served == "".join(await collect(client, dataclasses.replace(request(question), lora="v1")))
    assert served != base_reply
    await client.use_lora(None)


def test_two_bot_processes_share_one_engine_server(
    server: EngineServe, demo_model_dir: Path, tmp_path: Path
) -> None:
    """Two console bots (their own data, their own process) on one engine: both answer from the demo model."""
    from inference.demo_model import FAQ

    question, answer = next((q, a) for q, a in FAQ if q.startswith("What does /reset"))
    bots = []
    for name in ("a", "b"):
        env = demo_engine_env(
            demo_model_dir,
            tmp_path / f"bot-{name}",
            HANBOT_ENGINE__KIND="remote",
            HANBOT_ENGINE__REMOTE_BASE_URL=server.base_url,
            HANBOT_ENGINE__REMOTE_MODEL=server.model_name,
            HANBOT_OPS__ENABLED="false",
        )
        bots.append(
            subprocess.Popen(
                [sys.executable, "-m", "bot", "chat", "--session", f"bot-{name}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
    replies = []
    for bot in bots:
        out, err = bot.communicate(f"{question}\n종료\n", timeout=180)
        assert bot.returncode == 0, err[-3000:]
        lines = [line.split("봇: ", 1)[1].strip() for line in out.splitlines() if "봇: " in line]
        assert len(lines) == 1, out
        replies.append(lines[0])
    assert replies == [answer, answer]
    assert server.health()["status"] == "ok"
