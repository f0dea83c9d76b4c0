"""A local OpenAI-compatible chat-completions endpoint for tests and benchmarks, well-behaved or deliberately failing.

The "model" is deterministic: for the category named in the request's JSON schema (or the system prompt's
`Category:` line) it answers `{"value": V}`, where V comes from a hint `<<category=V>>` in the conversation, else
from a hash of the conversation over the allowed values. Hints also choose per-record misbehaviour:
`<<garbage>>` (always an invalid answer) and `<<always500>>` (always HTTP 500).

Random failures are drawn from a hash of (request body, attempt number), so a run is reproducible: HTTP 500, 429
(with Retry-After), a timeout (the server sleeps past the client's timeout), a 200 whose body is not JSON, and a
200 whose answer is not valid JSON. `GET /stats` returns what the server did (requests, failures by kind). Run in
a thread (`StubServer`) inside tests, or as a process for benchmarks:
`python tests/openai_stub.py --port 8011 --latency 0.2`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

HINT = re.compile(r"<<([A-Za-z_][A-Za-z0-9_]*)=([^<>\s]+)>>")
FAILURES = ("500", "429", "timeout", "malformed_body", "malformed_answer")


@dataclass
class StubConfig:
    latency: float = 0.0  # seconds per request
    failure_rate: float = 0.0  # chance that one attempt fails (one of `failures`, chosen by hash)
    failures: tuple[str, ...] = FAILURES
    timeout_sleep: float = 3.0  # how long a "timeout" failure keeps the client waiting
    fixed_status: int | None = None  # answer every request with this HTTP error (e.g. 401)
    stats: Counter = field(default_factory=Counter)  # what the server did, for assertions


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _category_and_values(body: dict) -> tuple[str, list[str]]:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]
        prop = schema["schema"]["properties"]["value"]
        values = [v for v in prop.get("enum", []) if v is not None]
        return schema["name"].removeprefix("marker_"), values
    system = body["messages"][0]["content"]
    cat = re.search(r"^Category: (\S+)", system, re.M).group(1)
    values = re.findall(r"^- (\S+?):", system, re.M)
    return cat, values


def answer(body: dict) -> str:
    """The stub model's reply text for one request."""
    cat, values = _category_and_values(body)
    convo = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "user" else ""
    # After a correction request, answer for the original conversation (the last record-bearing user turn).
    for msg in reversed(body["messages"]):
        if msg["role"] == "user" and "<conversation>" in msg["content"]:
            convo = msg["content"]
            break
    if "<<garbage>>" in convo:
        return "I think it is probably something like science?"
    hints = dict(HINT.findall(convo))
    value = hints.get(cat) or values[_h(convo, cat) % len(values)]
    return json.dumps({"value": value})


def create_app(cfg: StubConfig) -> FastAPI:
    app = FastAPI()
    attempts: Counter = Counter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        body = json.loads(raw)
        key = hashlib.sha256(raw).hexdigest()
        attempts[key] += 1
        cfg.stats["requests"] += 1
        if cfg.fixed_status:
            return JSONResponse({"error": {"message": "refused"}}, status_code=cfg.fixed_status)
        convo = json.dumps(body["messages"])
        failure = None
        if "<<always500>>" in convo:
            failure = "500"
        elif cfg.failure_rate and (_h(key, str(attempts[key])) % 10_000) < cfg.failure_rate * 10_000:
            failure = cfg.failures[_h("kind", key, str(attempts[key])) % len(cfg.failures)]
        if cfg.latency:
            await asyncio.sleep(cfg.latency)
        if failure:
            cfg.stats[failure] += 1
        if failure == "500":
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        if failure == "429":
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0.05"}
            )
        if failure == "timeout":
            await asyncio.sleep(cfg.timeout_sleep)
        if failure == "malformed_body":
            return PlainTextResponse('{"id": "x", "choices": [', media_type="application/json")
        content = '{"value": "Sci' if failure == "malformed_answer" else answer(body)
        cfg.stats["answered"] += 1
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    @app.get("/stats")
    async def stats():
        return dict(cfg.stats)

    return app


class StubServer:
    """The stub app served by uvicorn on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, cfg: StubConfig | None = None):
        self.cfg = cfg or StubConfig()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.cfg), log_level="error", access_log=False, timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--failure-rate", type=float, default=0.0)
    args = ap.parse_args()
    cfg = StubConfig(latency=args.latency, failure_rate=args.failure_rate)
    uvicorn.run(create_app(cfg), host="127.0.0.1", port=args.port, log_level="error", access_log=False,
                timeout_keep_alive=30, backlog=4096)  # fmt: skip


if __name__ == "__main__":
    main()
