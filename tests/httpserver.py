"""A real HTTP server on loopback for tests: a tiny items API, a redirect, a large body, and a log of
every request received."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackAPI:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.by_key: dict[str, str] = {}  # Idempotency-Key -> item id, for /keyed-items
        self.delay = 0.0  # seconds /keyed-items waits before it answers a new key
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                api.requests.append((self.command, self.path, dict(self.headers.items()), body))
                return body

            def do_POST(self) -> None:
                body = self._record()
                if self.path == "/items":
                    item_id = str(len(api.items) + 1)
                    api.items[item_id] = json.loads(body or b"{}")
                    self._reply(201, {"id": item_id, "url": f"{api.url}/items/{item_id}"})
                elif self.path == "/keyed-items":  # honours Idempotency-Key: a repeat gets the first answer
                    key = self.headers.get("Idempotency-Key", "")
                    if key in api.by_key:
                        item_id = api.by_key[key]
                        self._reply(200, {"id": item_id, "url": f"{api.url}/items/{item_id}"})
                        return
                    item_id = api.by_key[key] = str(len(api.items) + 1)
                    api.items[item_id] = json.loads(body or b"{}")
                    time.sleep(api.delay)  # the caller may be killed meanwhile; the item exists regardless
                    with contextlib.suppress(OSError):
                        self._reply(201, {"id": item_id, "url": f"{api.url}/items/{item_id}"})
                else:
                    self._reply(404, {"error": "no such path"})

            def do_DELETE(self) -> None:
                self._record()
                item_id = self.path.rsplit("/", 1)[-1]
                if api.items.pop(item_id, None) is None:
                    self._reply(404, {"error": "no such item"})
                else:
                    self._reply(204)

            def do_GET(self) -> None:
                self._record()
                if self.path == "/redirect-to-metadata":
                    self._reply(302, None, {"Location": "http://169.254.169.254/latest/meta-data/"})
                elif self.path == "/big":
                    data = b"x" * (2 * 1024 * 1024)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/echo-headers":  # a hostile API: shows the caller what it sent
                    self._reply(200, {"headers": dict(self.headers.items())})
                elif self.path == "/secret-ref":  # a hostile API: data shaped like a secret reference
                    self._reply(200, {"x": {"secretKeyRef": {"name": "s", "key": "k"}}})
                elif self.path.startswith("/items/"):
                    item = api.items.get(self.path.rsplit("/", 1)[-1])
                    self._reply(200 if item is not None else 404, item or {"error": "no such item"})
                else:
                    self._reply(200, {"items": api.items})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
