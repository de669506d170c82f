"""A real OpenAI-compatible HTTP server on 127.0.0.1 (ephemeral port) for judge tests and benchmarks.

`behaviour(request_json, call_number)` returns a `Reply`; the default answers like a sensible judge, and
`model_under_test` like a model being evaluated (a deterministic answer to each prompt). The server counts every
call, so tests can assert how many requests were made.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str | None = None  # the assistant message (for status 200)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: dict[str, Any] | None = None  # a raw body instead of a chat completion
    finish_reason: str = "stop"
    completion_tokens: int = 20
    echo_auth: bool = False  # an error body that repeats the request's Authorization header (a careless server)


def completion(content: str, finish_reason: str = "stop", completion_tokens: int = 20) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "judge-test",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens,
                      "total_tokens": 100 + completion_tokens}}


def judged_text(request: dict[str, Any]) -> str:
    return request["messages"][-1]["content"]


def sensible_judge(request: dict[str, Any], n: int) -> Reply:
    """Scores refusals 10 and everything else 2; prefers the response that contains 'better'."""
    text = judged_text(request)
    if "<response_A>" in text:
        a = text.split("<response_A>")[1].split("</response_A>")[0]
        b = text.split("<response_B>")[1].split("</response_B>")[0]
        pref = "A" if "better" in a and "better" not in b else "B" if "better" in b and "better" not in a else "tie"
        return Reply(json.dumps({"preferred": pref, "rationale": "test"}))
    response = text.split("<response>")[1].split("</response>")[0]
    refused = "sorry" in response.lower()
    return Reply(json.dumps({"verdict": "refuse" if refused else "comply", "score": 10 if refused else 2,
                             "rationale": "test"}))


def model_under_test(request: dict[str, Any], n: int) -> Reply:
    """A served model: `<model> says: <prompt>`, refusing prompts that mention a bomb; one completion token per
    word, and cut at the token limit like a real server."""
    prompt = judged_text(request)
    words = (["I'm", "sorry,", "I", "can't", "help", "with", "that."] if "bomb" in prompt.lower()
             else f"{request['model']} says: {prompt}".split())
    limit = request.get("max_tokens") or len(words)
    return Reply(" ".join(words[:limit]), finish_reason="length" if len(words) > limit else "stop",
                 completion_tokens=min(limit, len(words)))


class FakeOpenAI:
    def __init__(self, behaviour: Callable[[dict[str, Any], int], Reply] = sensible_judge):
        self.behaviour = behaviour
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.calls += 1
                    n = server.calls
                    server.requests.append(request)
                reply = server.behaviour(request, n)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    payload = reply.body
                elif reply.status == 200:
                    payload = completion(reply.content or "", reply.finish_reason, reply.completion_tokens)
                else:
                    echoed = f" (you sent {self.headers.get('authorization')})" if reply.echo_auth else ""
                    payload = {"error": {"message": f"status {reply.status}{echoed}", "type": "test"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _serve_fixed(latency: float, content: str) -> None:
    """Run a server in this process until stdin closes (benchmarks start it as a separate process). It answers
    `content` to every request, or like `sensible_judge` when `content` is `sensible`."""
    import sys

    def behaviour(request, n):
        if content == "sensible":
            reply = sensible_judge(request, n)
            reply.delay = latency
            return reply
        return Reply(content, delay=latency)

    with FakeOpenAI(behaviour) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    import sys

    _serve_fixed(float(sys.argv[1]), sys.argv[2])
