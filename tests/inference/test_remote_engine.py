"""RemoteEngine against real servers on loopback.

``transformers serve`` (a real OpenAI-compatible server) serves the demo model on CPU: the remote engine must stream
the same greedy reply as the model run in this process. A small aiohttp server (``FakeOpenAI``) answers from a
script for what a real server does not do on demand: 429 with Retry-After, persistent 500s, dropped connections,
stalls, vLLM's LoRA endpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.domain import BASE_MODEL, ChatTurn, GenerationParams, GenerationRequest, Role
from bot.errors import (
    EnginePaused,
    EngineUnhealthy,
    GenerationFailed,
    GenerationTimeout,
    ModelLoadError,
    QueueFull,
)
from bot.settings import DEFAULT_SYSTEM_PROMPT, Settings, load_settings
from inference.openai_stream import chat_body, error_detail, parse_chunk, retry_after_s, sse_data
from inference.remote_engine import EstimatingTokenizer, RemoteEngine, load_chat_tokenizer
from inference.tokenizer import HFChatTokenizer
from tests.inference.remote_server import FakeOpenAI, Reply, TransformersServe, free_port

API_KEY = "sk-hanbot-test-4f1c9a7e"
SECRET_QUESTION = "비밀 질문: what is the launch code?"
GREEDY = GenerationParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.0)


def request(
    text: str = "Hello", *, params: GenerationParams = GREEDY, timeout_s: float | None = None
) -> GenerationRequest:
    turns = (ChatTurn(Role.SYSTEM, DEFAULT_SYSTEM_PROMPT), ChatTurn(Role.USER, text))
    return GenerationRequest(
        request_id="req-1", channel="test:-:c1", turns=turns, params=params, timeout_s=timeout_s
    )


async def collect(engine: RemoteEngine, req: GenerationRequest) -> list[str]:
    return [str(chunk) async for chunk in engine.generate(req)]


class SleepRecorder:
    """Stands in for asyncio.sleep in the retry loop: records the delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


# ---------------------------------------------------------------- a real server: transformers serve


@pytest.fixture(scope="module")
def serve(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServe]:
    server = TransformersServe(demo_model_dir, tmp_path_factory.mktemp("serve") / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def served_engine(serve: TransformersServe) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(
        base_url=serve.base_url,
        model=str(serve.model_dir),
        tokenizer=load_chat_tokenizer(str(serve.model_dir)),
        api_key=SecretStr(API_KEY),
    )
    yield engine
    await engine.aclose()


def local_greedy_replies(model_dir: Path, requests: list[GenerationRequest]) -> list[str]:
    """The replies of the same model run in this process: greedy ``generate``, decoded without special tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    replies = []
    for req in requests:
        messages = [{"role": t.role.value, "content": t.content} for t in req.turns]
        inputs: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=req.params.max_new_tokens, do_sample=False)
        replies.append(
            str(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        )
    return replies


async def local_engine_replies(settings: Settings, requests: list[GenerationRequest]) -> list[str]:
    """The replies of the project's LocalEngine on the same model."""
    from inference.local_engine import LocalEngine

    engine = LocalEngine.from_settings(settings)
    try:
        return ["".join([c async for c in engine.generate(req) if isinstance(c, str)]) for req in requests]
    finally:
        await engine.aclose()


@pytest.mark.slow
async def test_streams_the_same_greedy_reply_as_the_local_engine(
    served_engine: RemoteEngine, serve: TransformersServe, settings: Settings
) -> None:
    from inference.demo_model import FAQ

    params = GenerationParams(max_new_tokens=128, do_sample=False, repetition_penalty=1.0)
    pairs = FAQ[:4]  # Korean and English
    requests = [request(question, params=params) for question, _ in pairs]
    expected = await local_engine_replies(settings, requests)
    assert expected == local_greedy_replies(serve.model_dir, requests)  # and plain transformers agrees
    for req, reply, (_, answer) in zip(requests, expected, pairs, strict=True):
        chunks = await collect(served_engine, req)
        assert "".join(chunks) == reply
        assert reply.strip() == answer.strip()  # the demo model knows its FAQ: a meaningful reply
        assert len(chunks) > 1  # streamed, not one block at the end
    concurrent = await asyncio.gather(*(collect(served_engine, req) for req in requests))
    assert ["".join(chunks) for chunks in concurrent] == expected


@pytest.mark.slow
async def test_strict_server_rejects_repetition_penalty_and_the_engine_drops_it(
    served_engine: RemoteEngine, caplog: pytest.LogCaptureFixture
) -> None:
    from inference.demo_model import FAQ

    question = FAQ[0][0]
    params = GenerationParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.1)
    with caplog.at_level(logging.WARNING, logger="inference.remote_engine"):
        first = "".join(await collect(served_engine, request(question, params=params)))
        second = "".join(await collect(served_engine, request(question, params=params)))
    assert first == second != ""
    warnings = [r for r in caplog.records if "repetition_penalty" in r.getMessage()]
    assert len(warnings) == 1  # learnt once, then the field is left out


@pytest.mark.slow
async def test_token_count_matches_the_servers_prompt_tokens(
    served_engine: RemoteEngine, serve: TransformersServe
) -> None:
    turns = request("안녕하세요! How do I reset the conversation?").turns
    messages = [{"role": t.role.value, "content": t.content} for t in turns]
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{serve.base_url}/chat/completions",
            json={"model": str(serve.model_dir), "messages": messages, "max_tokens": 1, "temperature": 0.0},
            timeout=60,
        )
    assert response.status_code == 200
    assert isinstance(served_engine.tokenizer, HFChatTokenizer)
    assert served_engine.tokenizer.count_tokens(turns) == response.json()["usage"]["prompt_tokens"]
    assert served_engine.tokenizer.context_length > 0


@pytest.mark.slow
async def test_health_and_a_model_the_server_does_not_serve(
    served_engine: RemoteEngine, serve: TransformersServe
) -> None:
    await served_engine.health()
    wrong = RemoteEngine(base_url=serve.base_url, model="no/such-model", tokenizer=EstimatingTokenizer(2048))
    try:
        with pytest.raises(EngineUnhealthy, match="no/such-model"):
            await wrong.health()
        with pytest.raises(GenerationFailed):  # the server is pinned to the demo model: HTTP 400, not retried
            await collect(wrong, request())
    finally:
        await wrong.aclose()


@pytest.mark.slow
async def test_lora_on_a_server_without_lora_support_is_a_clear_error(served_engine: RemoteEngine) -> None:
    with pytest.raises(ModelLoadError, match="load_lora_adapter"):
        await served_engine.load_lora("faq-v2", "/srv/lora/faq-v2")
    with pytest.raises(ModelLoadError, match="faq-v2"):
        await served_engine.use_lora("faq-v2")
    await served_engine.use_lora(None)
    assert served_engine.model == str(Path(served_engine.model))


@pytest.mark.slow
async def test_from_settings_with_the_key_from_the_environment(
    serve: TransformersServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.demo_model import FAQ

    monkeypatch.setenv("HANBOT_REMOTE_API_KEY", API_KEY)
    settings = load_settings(
        data_dir=tmp_path / "data",
        model={"name_or_path": str(serve.model_dir), "dtype": "float32", "device_map": None},
        engine={"kind": "remote", "remote_base_url": serve.base_url, "remote_max_retries": 1},
    )
    engine = RemoteEngine.from_settings(settings)
    try:
        assert engine.model == str(serve.model_dir)
        assert isinstance(engine.tokenizer, HFChatTokenizer)
        question, answer = FAQ[1]
        assert "".join(await collect(engine, request(question))).strip() == answer.strip()
        assert API_KEY not in repr(engine)
    finally:
        await engine.aclose()


# ---------------------------------------------------------------- a scripted server: retries, errors, closing

FakeFactory = Callable[..., Awaitable[FakeOpenAI]]


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeFactory]:
    servers: list[FakeOpenAI] = []

    async def make(*args: Any, **kwargs: Any) -> FakeOpenAI:
        server = await FakeOpenAI(*args, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., RemoteEngine]]:
    made: list[RemoteEngine] = []

    def make(base_url: str, **kwargs: Any) -> RemoteEngine:
        options: dict[str, Any] = {
            "model": "test-model",
            "tokenizer": EstimatingTokenizer(2048),
            "api_key": SecretStr(API_KEY),
            "max_retries": 3,
            "sleep": SleepRecorder(),
        }
        options.update(kwargs)
        engine = RemoteEngine(base_url=base_url, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.aclose()


async def test_429_with_retry_after_then_success(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=429, headers={"Retry-After": "7"}), Reply()])
    sleep = SleepRecorder()
    engine = engines(fake.base_url, sleep=sleep)
    assert "".join(await collect(engine, request())) == "Hello, world!"
    assert len(fake.chat_requests) == 2
    assert len(sleep.delays) == 1 and sleep.delays[0] >= 7.0  # at least what the server asked


async def test_persistent_429_is_queue_full(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=429, headers={"Retry-After": "1"})])
    engine = engines(fake.base_url, max_retries=2)
    with pytest.raises(QueueFull):
        await collect(engine, request())
    assert len(fake.chat_requests) == 3


async def test_persistent_500_fails_after_backoff_with_jitter(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=500)])
    sleep = SleepRecorder()
    engine = engines(fake.base_url, sleep=sleep, max_retries=4, backoff_base_s=1.0, backoff_max_s=100.0)
    with pytest.raises(GenerationFailed, match="500"):
        await collect(engine, request())
    assert len(fake.chat_requests) == 5
    for attempt, delay in enumerate(sleep.delays):  # equal jitter: between half and all of 1, 2, 4, 8 s
        assert 2**attempt / 2 <= delay <= 2**attempt


async def test_503_then_success_and_a_retry_after_date(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server(
        [Reply(status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), Reply()]
    )
    engine = engines(fake.base_url)
    assert "".join(await collect(engine, request())) == "Hello, world!"
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_s("soon") is None


async def test_retry_after_beyond_the_deadline_gives_up_at_once(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=429, headers={"Retry-After": "30"}), Reply()])
    sleep = SleepRecorder()
    engine = engines(fake.base_url, sleep=sleep)
    with pytest.raises(QueueFull):
        await collect(engine, request(timeout_s=5.0))
    assert sleep.delays == [] and len(fake.chat_requests) == 1


async def test_connection_refused_is_retried_then_fails(engines: Callable[..., RemoteEngine]) -> None:
    sleep = SleepRecorder()
    engine = engines(f"http://127.0.0.1:{free_port()}/v1", sleep=sleep, max_retries=2)
    with pytest.raises(GenerationFailed, match="cannot reach"):
        await collect(engine, request())
    assert len(sleep.delays) == 2


async def test_connection_dropped_before_the_first_token_is_retried(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(drop_after=0), Reply(finish_reason=None, done=False, chunks=()), Reply()])
    engine = engines(fake.base_url)
    assert "".join(await collect(engine, request())) == "Hello, world!"
    assert len(fake.chat_requests) == 3


async def test_connection_dropped_after_the_first_token_fails_without_retry(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(drop_after=2), Reply()])
    engine = engines(fake.base_url)
    received: list[str] = []
    with pytest.raises(GenerationFailed, match="broke off"):
        async for chunk in engine.generate(request()):
            received.append(str(chunk))
    assert received == ["Hello", ", "]
    assert len(fake.chat_requests) == 1


async def test_stream_that_ends_without_finishing_fails(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(finish_reason=None, done=False)])
    engine = engines(fake.base_url)
    with pytest.raises(GenerationFailed):
        await collect(engine, request())
    assert len(fake.chat_requests) == 1


async def test_a_server_that_ignores_stream_true_still_answers(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(stream=False)])
    engine = engines(fake.base_url)
    assert await collect(engine, request()) == ["Hello, world!"]


async def test_error_event_in_the_stream_fails(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(chunks=("Hi",), error_event="CUDA out of memory")])
    engine = engines(fake.base_url)
    with pytest.raises(GenerationFailed, match="out of memory"):
        await collect(engine, request())
    assert len(fake.chat_requests) == 1


async def test_bad_request_is_not_retried(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=400, body={"error": {"message": "context too long"}})])
    engine = engines(fake.base_url)
    with pytest.raises(GenerationFailed, match="context too long"):
        await collect(engine, request())  # greedy, repetition_penalty 1.0: no extra field to blame
    assert len(fake.chat_requests) == 1
    assert "repetition_penalty" not in fake.chat_requests[0].body


async def test_400_with_the_extra_field_is_sent_once_more_without_it(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(status=400)])
    engine = engines(fake.base_url)
    with pytest.raises(GenerationFailed):
        await collect(engine, request(params=GenerationParams()))
    first, second = (r.body for r in fake.chat_requests)
    assert first["repetition_penalty"] == 1.1 and "repetition_penalty" not in second


async def test_request_body_maps_the_generation_params(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply()])
    engine = engines(fake.base_url)
    params = GenerationParams(max_new_tokens=99, temperature=0.7, top_p=0.8, repetition_penalty=1.2, seed=5)
    await collect(engine, request("Hi", params=params))
    await collect(engine, request("Hi", params=GREEDY))
    sampled, greedy = (r.body for r in fake.chat_requests)
    assert sampled["model"] == "test-model" and sampled["stream"] is True
    assert sampled["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hi"},
    ]
    assert (sampled["max_tokens"], sampled["temperature"], sampled["top_p"]) == (99, 0.7, 0.8)
    assert (sampled["repetition_penalty"], sampled["seed"]) == (1.2, 5)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "repetition_penalty" not in greedy


async def test_closing_the_stream_early_closes_the_connection(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(chunks=tuple(f"t{i} " for i in range(1000)), delay_s=0.01)])
    engine = engines(fake.base_url)
    stream = engine.generate(request())
    assert [await anext(stream), await anext(stream)] == ["t0 ", "t1 "]
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(fake.disconnected.wait(), timeout=10)
    assert fake.streams_finished == 0


async def test_cancelling_the_consumer_closes_the_connection(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(chunks=tuple(f"t{i} " for i in range(1000)), delay_s=0.01)])
    engine = engines(fake.base_url)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(request()):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), timeout=10)


async def test_a_stall_before_the_reply_is_a_timeout(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(stall_s=30)])
    engine = engines(fake.base_url)
    with pytest.raises(GenerationTimeout):
        await collect(engine, request(timeout_s=0.5))


async def test_a_silent_server_mid_stream_is_a_timeout(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(chunks=("a", "b"), delay_s=30)])
    engine = engines(fake.base_url, timeout_s=0.5)  # the read timeout between two chunks
    with pytest.raises(GenerationTimeout):
        await collect(engine, request())


async def test_api_key_goes_in_the_header_and_never_in_the_logs(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine], caplog: pytest.LogCaptureFixture
) -> None:
    fake = await fake_server([Reply(status=500), Reply()], lora_status=200)
    engine = engines(fake.base_url)
    with caplog.at_level(logging.DEBUG):
        await collect(engine, request(SECRET_QUESTION, params=GenerationParams()))
        await engine.health()
        await engine.load_lora("faq-v2", "/srv/lora/faq-v2")
    assert {r.headers.get("Authorization") for r in fake.requests} == {f"Bearer {API_KEY}"}
    assert caplog.records  # the engine (and httpx) did log
    assert API_KEY not in caplog.text
    assert SECRET_QUESTION not in caplog.text and "launch code" not in caplog.text
    assert "Hello, world" not in caplog.text


async def test_refused_key_is_an_error_that_names_the_setting(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine], caplog: pytest.LogCaptureFixture
) -> None:
    fake = await fake_server(
        [Reply(status=401, body={"error": {"message": f"Incorrect API key: {API_KEY}"}})]
    )
    engine = engines(fake.base_url)
    with caplog.at_level(logging.DEBUG), pytest.raises(GenerationFailed) as raised:
        await collect(engine, request())
    assert len(fake.chat_requests) == 1
    assert "HANBOT_REMOTE_API_KEY" in caplog.text
    assert API_KEY not in caplog.text and API_KEY not in str(raised.value)


async def test_pause_refuses_new_work_and_waits_for_running_streams(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply(chunks=("a", "b", "c"))])
    engine = engines(fake.base_url)
    stream = engine.generate(request())
    assert await anext(stream) == "a"
    pausing = asyncio.create_task(engine.pause())
    await asyncio.sleep(0.05)
    assert not pausing.done()  # draining: one stream still runs
    with pytest.raises(EnginePaused):
        await collect(engine, request())
    assert [chunk async for chunk in stream] == ["b", "c"]
    await asyncio.wait_for(pausing, timeout=10)
    await engine.resume()
    assert "".join(await collect(engine, request())) == "abc"


async def test_load_and_use_lora_on_a_vllm_like_server(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply()], models=("test-model", "served-at-start"), lora_status=200)
    engine = engines(fake.base_url)
    await engine.load_lora("faq-v2", "/srv/lora/faq-v2")
    await engine.use_lora("faq-v2")
    await collect(engine, request())
    await engine.health()
    await engine.load_lora("faq-v2", "/srv/lora/faq-v3")  # same name again: unloaded, then loaded anew
    await engine.use_lora("served-at-start")  # --lora-modules served-at-start=/path
    await collect(engine, request())
    await engine.use_lora(None)
    await collect(engine, request())
    assert [r.body["model"] for r in fake.chat_requests] == ["faq-v2", "served-at-start", "test-model"]
    # a request that names its version (GenerationRequest.lora) sends it, whatever the default is
    await engine.use_lora("faq-v2")
    await collect(engine, dataclasses.replace(request(), lora="served-at-start"))
    await collect(engine, dataclasses.replace(request(), lora=BASE_MODEL))
    await collect(engine, request())
    assert [r.body["model"] for r in fake.chat_requests[3:]] == ["served-at-start", "test-model", "faq-v2"]
    admin = [(r.path, r.body) for r in fake.requests if "lora" in r.path]
    assert admin == [
        ("/v1/load_lora_adapter", {"lora_name": "faq-v2", "lora_path": "/srv/lora/faq-v2"}),
        ("/v1/load_lora_adapter", {"lora_name": "faq-v2", "lora_path": "/srv/lora/faq-v3"}),
        ("/v1/unload_lora_adapter", {"lora_name": "faq-v2"}),
        ("/v1/load_lora_adapter", {"lora_name": "faq-v2", "lora_path": "/srv/lora/faq-v3"}),
    ]
    with pytest.raises(ModelLoadError, match="not-there"):
        await engine.use_lora("not-there")


async def test_lora_load_failure_is_a_model_load_error(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    fake = await fake_server([Reply()], lora_status=500)
    engine = engines(fake.base_url)
    with pytest.raises(ModelLoadError, match="HTTP 500"):
        await engine.load_lora("faq-v2", "/srv/lora/faq-v2")


async def test_health_failures_are_engine_unhealthy(
    fake_server: FakeFactory, engines: Callable[..., RemoteEngine]
) -> None:
    healthy = await fake_server(models=("test-model:latest",))  # Ollama lists name:latest
    await engines(healthy.base_url).health()
    broken = await fake_server(models_status=500)
    with pytest.raises(EngineUnhealthy, match="500"):
        await engines(broken.base_url).health()
    with pytest.raises(EngineUnhealthy, match="cannot reach"):
        await engines(f"http://127.0.0.1:{free_port()}/v1").health()
    other = await fake_server(models=("another-model",))
    with pytest.raises(EngineUnhealthy, match="test-model"):
        await engines(other.base_url).health()


# ---------------------------------------------------------------- tokenizer and wire format


def test_tokenizer_falls_back_to_a_conservative_estimate(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="inference.remote_engine"):
        tokenizer = load_chat_tokenizer(str(tmp_path / "no-tokenizer-here"))
    assert isinstance(tokenizer, EstimatingTokenizer)
    assert tokenizer.context_length == 8192
    assert "estimated" in caplog.text
    assert load_chat_tokenizer(str(tmp_path / "none"), context_length=4096).context_length == 4096
    turns = [
        ChatTurn(Role.USER, "안녕하세요, 반갑습니다"),
        ChatTurn(Role.ASSISTANT, "Hello there, nice to meet you"),
    ]
    # Llama-3 needs about 8 + 7 text tokens here; the estimate counts 16 + 15
    assert tokenizer.count_tokens(turns) == 1 + 16 + 15 + 10 + 4
    assert tokenizer.count_tokens(turns, add_generation_prompt=False) == 1 + 16 + 15 + 10


async def test_sse_parsing_follows_the_spec() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            ": keep-alive",
            "event: message",
            'data: {"a":',
            "data: 1}",
            "",
            "data:[DONE]\r",
            "",
            "data: last",
        ]:
            yield line

    assert [data async for data in sse_data(lines())] == ['{"a":\n1}', "[DONE]", "last"]


def test_chunks_and_error_bodies() -> None:
    assert parse_chunk('{"choices":[{"delta":{"content":"안녕"}}]}').text == "안녕"
    assert parse_chunk('{"choices":[],"usage":{"prompt_tokens":3}}').text == ""
    assert parse_chunk('{"choices":[{"delta":{},"finish_reason":"length"}]}').finish_reason == "length"
    assert parse_chunk('{"error": {"message": "boom"}}').error == "boom"
    assert parse_chunk("not json").error is not None
    # FastAPI's validation errors echo the request (message text included): only the field names are kept
    fastapi_422 = {"detail": [{"loc": ["body", "messages"], "msg": "bad", "input": SECRET_QUESTION}]}
    assert error_detail(fastapi_422) == "invalid fields: body.messages"
    assert "repetition_penalty" not in chat_body(request(), "m", send_extras=True)
    assert "repetition_penalty" not in chat_body(request(params=GenerationParams()), "m", send_extras=False)
