"""Servers on loopback for the remote engine's tests.

``TransformersServe``: the real ``transformers serve`` (OpenAI-compatible) as a subprocess, serving a local model on
CPU. ``FakeOpenAI``: a small aiohttp server that speaks the same protocol but answers from a script, for what a real
server will not do on demand (429s, 500s, dropped connections, stalls, vLLM's LoRA endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def transformers_cli() -> Path:
    """The ``transformers`` console script of the running interpreter's environment."""
    return Path(sys.executable).parent / "transformers"


class TransformersServe:
    """``transformers serve MODEL --host 127.0.0.1 --port P --device cpu`` in a subprocess, offline."""

    def __init__(self, model_dir: Path, log_path: Path, *, startup_timeout_s: float = 180.0) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [
            str(transformers_cli()),
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--log-level",
            "info",
        ]
        self._log_path = log_path
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> TransformersServe:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        log = self._log_path.open("wb")
        self._process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.base_url}/models", timeout=2.0)
                if response.status_code == 200 and response.json().get("data"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"transformers serve did not answer within {self._startup_timeout_s} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=15)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class Reply:
    """One scripted answer of the fake server to a chat-completions POST."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON body of a non-200 answer
    chunks: Sequence[str] = ("Hello", ", ", "world", "!")
    delay_s: float = 0.0  # before each chunk
    stall_s: float = 0.0  # before the response headers
    drop_after: int | None = None  # cut the TCP connection after this many chunks
    error_event: str | None = None  # an {"error": ...} event after the chunks
    finish_reason: str | None = "stop"
    done: bool = True  # end with data: [DONE] (vLLM does; transformers serve does not)
    stream: bool = True  # False: one JSON chat.completion, as a server that ignores "stream" answers


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 answering from ``replies`` (the last one repeats)."""

    def __init__(
        self,
        replies: Sequence[Reply] | Callable[[int], Reply] | None = None,
        *,
        models: Sequence[str] = ("test-model",),
        models_status: int = 200,
        lora_status: int | None = None,  # None: no /load_lora_adapter route (404), like a server without it
        port: int = 0,  # a restarted server comes back on the same port
    ) -> None:
        self.port = port
        self._replies = replies if replies is not None else (Reply(),)
        self.models = list(models)
        self.models_status = models_status
        self.lora_status = lora_status
        self.requests: list[Recorded] = []
        self.disconnected = asyncio.Event()
        self.streams_finished = 0
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._streaming: set[asyncio.BaseTransport] = set()  # connections of replies in progress
        self.base_url = ""

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        if self.lora_status is not None:
            app.router.add_post("/v1/load_lora_adapter", self._load_lora)
            app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return self

    async def crash(self) -> None:
        """Die as a killed process does: every open connection cut at once, then nothing listens."""
        for transport in list(self._streaming):
            transport.abort()
        await self.stop()

    async def stop(self) -> None:
        self._stopping.set()  # stalled handlers return now instead of holding the shutdown
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        return body

    def _reply(self, index: int) -> Reply:
        if callable(self._replies):
            return self._replies(index)
        return self._replies[min(index, len(self._replies) - 1)]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        reply = self._reply(len(self.chat_requests) - 1)
        if reply.stall_s:
            await self._wait(reply.stall_s)
        if reply.status != 200:
            return web.json_response(
                reply.body or {"error": {"message": "scripted"}}, status=reply.status, headers=reply.headers
            )
        if not reply.stream:
            message = {"role": "assistant", "content": "".join(reply.chunks)}
            choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
            return web.json_response(
                {"object": "chat.completion", "choices": [choice]}, headers=reply.headers
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **reply.headers})
        await response.prepare(request)
        if request.transport is not None:
            self._streaming.add(request.transport)
        try:
            await self._send(response, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i, text in enumerate(reply.chunks):
                if reply.drop_after is not None and i >= reply.drop_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if reply.delay_s:
                    await self._wait(reply.delay_s)
                await self._send(response, {"choices": [{"index": 0, "delta": {"content": text}}]})
            if reply.drop_after is not None:
                assert request.transport is not None
                request.transport.abort()
                return response
            if reply.error_event is not None:
                await self._send(response, {"error": reply.error_event})
                return response
            if reply.finish_reason is not None:
                await self._send(
                    response, {"choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]}
                )
            if reply.done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.streams_finished += 1
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        finally:
            self._streaming.discard(request.transport)  # type: ignore[arg-type]
        return response

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _send(self, response: web.StreamResponse, payload: dict[str, Any]) -> None:
        payload = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "test-model", **payload}
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())
        transport = response._req.transport if response._req is not None else None  # type: ignore[attr-defined]
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [{"id": name, "object": "model", "owned_by": "test"} for name in self.models]
        return web.json_response({"object": "list", "data": data}, status=self.models_status)

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        assert self.lora_status is not None
        if self.lora_status != 200:
            return web.json_response({"error": {"message": "scripted failure"}}, status=self.lora_status)
        if body["lora_name"] in self.models:
            message = f"The lora adapter '{body['lora_name']}' has already been loaded."
            return web.json_response({"object": "error", "message": message, "code": 400}, status=400)
        self.models.append(body["lora_name"])
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        self.models.remove(body["lora_name"])
        return web.Response(text="Success")


REPO = Path(__file__).resolve().parents[2]


def demo_engine_env(model_dir: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """Settings (as the environment) for an engine on the demo model: CPU, float32, greedy, the hf decoder."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "HANBOT_DATA_DIR": str(data_dir),
        "HANBOT_MODEL__NAME_OR_PATH": str(model_dir),
        "HANBOT_MODEL__DTYPE": "float32",
        "HANBOT_MODEL__DEVICE_MAP": "",
        "HANBOT_ENGINE__DECODER": "hf",
        "HANBOT_GENERATION__TEMPERATURE": "0",
        "HANBOT_GENERATION__REPETITION_PENALTY": "1.0",
        "HANBOT_SCHEDULER__ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


class EngineServe:
    """``python -m inference serve`` (this project's engine server) in a subprocess on 127.0.0.1."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        model_name: str = "hanbot-demo",
        python: str = sys.executable,
        startup_timeout_s: float = 180.0,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model_name = model_name
        self.command = [
            python,
            "-m",
            "inference",
            "serve",
            "--port",
            str(self.port),
            "--served-model-name",
            model_name,
        ]
        self._env = env
        self._log_path = log_path
        self._startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineServe:
        log = self._log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self._env, cwd=REPO
        )
        log.close()
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the engine server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"the engine server did not answer within {self._startup_timeout_s} s:\n{self.log_tail()}"
        )

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5.0).json())

    def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
