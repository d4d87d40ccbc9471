"""A loopback Hugging Face Hub serving one model folder: what huggingface_hub asks when it downloads a model.

``GET /api/models/{repo}[/revision/{rev}]`` (the model's files with their sizes), ``HEAD``/``GET
/{repo}/resolve/{rev}/{file}`` (the commit and ETag headers, then the bytes), and ``/api/models/{repo}/tree/...``
(listings: empty). A missing file is a 404 with ``X-Error-Code: EntryNotFound``, as the hub answers. Point a process
at it with ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo: str, folder: Path) -> None:
        self.repo = repo
        self.files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloaded(self) -> list[str]:
        """The files fetched (GET of their bytes), in order."""
        prefix = f"/{self.repo}/resolve/"
        return [
            path.removeprefix(prefix).split("/", 1)[1]
            for method, path in self.requests
            if method == "GET" and path.startswith(prefix)
        ]

    def _info(self) -> dict[str, Any]:
        return {
            "_id": "fake",
            "id": self.repo,
            "modelId": self.repo,
            "sha": SHA,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "lastModified": "2026-12-05T00:00:00.000Z",
            "createdAt": "2026-12-05T00:00:00.000Z",
            "siblings": [
                {"rfilename": name, "size": path.stat().st_size, "blobId": _etag(path)}
                for name, path in self.files.items()
            ],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self
        resolve = re.compile(rf"^/{re.escape(hub.repo)}/resolve/[^/]+/(?P<file>.+)$")
        info = re.compile(rf"^/api/models/{re.escape(hub.repo)}(/revision/[^/]+)?$")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path))
                if info.match(path):
                    return self._send(200, json.dumps(hub._info()).encode(), "application/json", body=body)
                if path.startswith(f"/api/models/{hub.repo}/tree/"):
                    return self._send(200, b"[]", "application/json", body=body)
                found = resolve.match(path)
                file = hub.files.get(found["file"]) if found else None
                if file is None:
                    return self._send(
                        404,
                        b'{"error":"Entry not found"}',
                        "application/json",
                        body=body,
                        headers={"X-Error-Code": "EntryNotFound"},
                    )
                data = file.read_bytes()
                headers = {"X-Repo-Commit": SHA, "ETag": f'"{_etag(file)}"'}
                return self._send(200, data, "application/octet-stream", body=body, headers=headers)

            def _send(
                self,
                status: int,
                data: bytes,
                kind: str,
                *,
                body: bool,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


def _etag(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
