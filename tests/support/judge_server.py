"""A local OpenAI-compatible judge server for LLM-judge tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeJudgeServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that prefers the longer of 'Response A' and
    'Response B' (A on equal length); it records requests and refuses more than ``limit`` of them."""

    def __init__(self, limit: int = 200, fail_first: int = 0, reply: str | None = None):
        self.requests: list[dict] = []
        self.limit, self.fail_first, self.reply = limit, fail_first, reply
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if len(server.requests) > server.limit:
                    return self._send(429, {"error": "too many requests"})
                if len(server.requests) <= server.fail_first:
                    return self._send(500, {"error": "try again"})
                text = body["messages"][-1]["content"]
                a, b = _candidates(text)
                winner = "A" if len(a) >= len(b) else "B"
                content = server.reply or f"One is better.\nPreferred: {winner}"
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

def _candidates(text: str) -> tuple[str, str]:
    """Response A and Response B as the default template lays them out."""
    a = text.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0]
    b = text.split("\n\nResponse B:\n", 1)[1].rsplit("\n\nFirst compare", 1)[0]
    return a, b
