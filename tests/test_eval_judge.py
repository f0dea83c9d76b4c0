"""The pairwise judge against a real local OpenAI-compatible endpoint (uvicorn on 127.0.0.1) that sometimes
answers garbage or fails: every such reply is counted, none crashes the run."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from treasure.evaluate.judge import OpenAIJudge, pairwise


def judge_app(calls: list[str]) -> FastAPI:
    """A judge that prefers the answer containing "good"; otherwise (and for prompts with "garbage") it picks by
    a hash of the prompt among [[A]], [[B]], [[C]] and a reply without a verdict; "explode" gives HTTP 500."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        calls.append(prompt)
        if "explode" in prompt:
            return JSONResponse(
                {"error": {"message": "judge crashed", "type": "server_error"}}, status_code=500
            )
        a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
        b = prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
        if "garbage" in prompt:
            reply = "As a judge I find both answers delightful."
        elif "good" in a and "good" not in b:
            reply = "Assistant A is correct. [[A]]"
        elif "good" in b and "good" not in a:
            reply = "Assistant B is correct. [[B]]"
        else:
            k = hashlib.sha256(prompt.encode()).digest()[0] % 4
            reply = ["[[A]]", "[[B]]", "[[C]]", "no idea, sorry"][k]
        return {
            "id": "judge-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


class JudgeServer:
    """`judge_app` served by uvicorn on a free port of 127.0.0.1 in a background thread."""

    def __init__(self):
        self.calls: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._server = uvicorn.Server(
            uvicorn.Config(judge_app(self.calls), log_level="error", access_log=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("judge server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture(scope="module")
def judge_server():
    with JudgeServer() as server:
        yield server


def test_win_rate_against_a_real_endpoint_with_garbage_and_failures(judge_server):
    judge = OpenAIJudge(judge_server.base_url, "judge", api_key="k", timeout=10, max_retries=0)
    n = 12
    questions = [f"question {i}" for i in range(n)] + ["garbage question", "explode question"]
    a = ["good answer"] * 9 + ["meh"] * 3 + ["x", "y"]
    b = ["bad answer"] * 9 + ["good answer"] * 3 + ["x", "y"]
    result = pairwise(questions, a, b, judge, workers=4, n_boot=500)
    s = result.summary()
    assert len(judge_server.calls) == 2 * len(questions)  # both orders of every question
    assert (s["wins"], s["losses"], s["judged"]) == (9, 3, 12)
    assert s["win_rate"] == pytest.approx(0.75)
    assert s["ci_low"] < 0.75 < s["ci_high"]
    assert s["unparsed"] == 2  # the garbage question, in both orders
    assert s["errors"] == 2 and "500" in s["error_examples"][0]  # the failing one, in both orders
    assert s["first_position_rate"] == pytest.approx(0.5)  # this judge has no position bias
