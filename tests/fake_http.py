"""The HTTP server under the fake APIs (fake_kfp.py, fake_kubernetes.py): started on 127.0.0.1
with a free port, records every request, and answers with the subclass's `_answer`."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeApi:
    """`url` is the server's base URL; `requests` what it received, as dicts {"method", "path",
    "query", "body", "authorization"}. Set `fail_with` to an HTTP status to answer every request
    with it. Use as a context manager (started on enter, stopped on exit)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_with: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, object]:
        """(HTTP status, answer): a dict is sent as JSON, a str as plain text."""
        raise NotImplementedError

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = urllib.parse.parse_qs(parsed.query)
                fake.requests.append({"method": method, "path": parsed.path, "query": query,
                                      "body": body,
                                      "authorization": self.headers.get("Authorization")})
                status, answer = ((fake.fail_with, {"error": "refused"}) if fake.fail_with
                                  else fake._answer(method, parsed.path, query, body))
                text = isinstance(answer, str)
                payload = answer.encode() if text else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def log_message(self, *args):
                pass

        return Handler
