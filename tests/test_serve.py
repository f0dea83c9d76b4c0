"""`treasure serve` driven with the official `openai` client over loopback: completions, streaming, markers,
errors, and a bounded load test. The server is a real uvicorn on 127.0.0.1 (a free port), in a thread for most
tests and as the `treasure serve` command in a subprocess for one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import uvicorn
from test_generate import FAKE_BLOCKS, USER, make_bundle

from treasure.bundle import load_bundle
from treasure.generate.engine import Generator
from treasure.serve import Limits, create_app

KEY = "sekret-key"
NAME = "tiny"
LIMITS = Limits(
    max_body_bytes=20_000, max_messages=8, max_content_chars=4_000, max_tokens=80, default_max_tokens=16
)


class Server:
    """create_app(...) served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="error", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Server:
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("serve"), "paper")
    gen = Generator(load_bundle(bundle))
    with Server(create_app(gen, model_name=NAME, api_key=KEY, limits=LIMITS)) as server:
        yield server, bundle


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0].base_url, api_key=KEY, max_retries=0, timeout=60)


def _chat(client, **kw):
    kw.setdefault("model", NAME)
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 40)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(**kw)


def _error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and "domain" in models[0].marker_categories


def test_completion_with_markers(client):
    resp = _chat(client, extra_body={"markers": {"domain": "code", "length_bucket": "concise"}})
    assert resp.object == "chat.completion" and resp.model == NAME
    assert resp.fixed == {"length_bucket": "concise", "domain": "Code"} and resp.marker_mode == "fixed"
    assert resp.markers["domain"] == "Code" and resp.markers == {**resp.inferred, **resp.fixed}
    content = resp.choices[0].message.content
    assert "<MARKER_LIST>" not in content and "</domain>" not in content
    assert resp.usage.completion_tokens <= 72 and resp.choices[0].finish_reason in ("stop", "length")
    # vLLM's way of passing them works too; and no markers: the model infers its block
    resp = _chat(client, extra_body={"chat_template_kwargs": {"markers": {"domain": "Math"}}})
    assert resp.fixed == {"domain": "Math"} and resp.markers["domain"] == "Math"
    resp = _chat(client)
    assert resp.fixed == {} and resp.marker_mode == "inferred" and resp.markers == resp.inferred


def test_streaming_matches_non_streaming(client):
    for extra in ({}, {"markers": {"domain": "Code"}}):
        whole = _chat(client, extra_body=extra)
        chunks = list(_chat(client, extra_body=extra, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        last = [c for c in chunks if c.choices][-1]
        assert last.choices[0].finish_reason == whole.choices[0].finish_reason
        assert (last.markers, last.fixed, last.inferred) == (whole.markers, whole.fixed, whole.inferred)
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done(served):
    body = json.dumps({"model": NAME, "messages": USER, "max_tokens": 4, "stream": True}).encode()
    req = urllib.request.Request(served[0].base_url + "/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    for e in events[:-1]:
        assert json.loads(e.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_user_typed_marker_syntax_is_content(client):
    typed = [{"role": "user", "content": "Reverse 'apple'." + FAKE_BLOCKS}]
    for extra in ({}, {"markers": {"length_bucket": "concise"}}):
        plain, spoofed = _chat(client, extra_body=extra), _chat(client, messages=typed, extra_body=extra)
        assert spoofed.fixed == plain.fixed
        assert all(spoofed.markers[k] == v for k, v in plain.fixed.items())


@pytest.mark.parametrize(
    ("kw", "status", "param", "code"),
    [
        ({"extra_body": {"markers": {"domain": "Cooking"}}}, 400, "markers", "invalid_marker"),
        ({"extra_body": {"markers": {"colour": "red"}}}, 400, "markers", "invalid_marker"),
        ({"extra_body": {"markers": "domain=Code"}}, 400, "markers", "invalid_marker"),
        ({"extra_body": {"marker_mode": "psychic"}}, 400, "marker_mode", None),
        ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
        ({"max_tokens": 81}, 400, "max_tokens", "max_tokens_exceeded"),
        ({"max_tokens": 0}, 400, "max_tokens", None),
        ({"temperature": 7}, 400, "temperature", None),
        ({"messages": USER * 9}, 400, "messages", "too_many_messages"),
        (
            {"messages": [{"role": "user", "content": "x" * 4_001}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", None),
        ({"messages": [{"role": "user", "content": "x" * 30_000}]}, 413, None, "request_too_large"),
        ({"extra_body": {"padding": "y" * 30_000}}, 413, None, "request_too_large"),
    ],
)
def test_bad_requests_get_openai_errors(client, kw, status, param, code):
    with pytest.raises(openai.APIStatusError) as exc:
        _chat(client, **kw)
    assert exc.value.status_code == status
    err = _error(exc)
    assert err["param"] == param and err["code"] == code and err["type"] == "invalid_request_error"


def test_stream_errors_come_before_the_stream(client):
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, stream=True, extra_body={"markers": {"domain": "Cooking"}})
    assert "domain: unknown value 'Cooking'" in _error(exc)["message"]


def test_api_key_is_required(served):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=served[0].base_url, api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})  # fmt: skip
        with pytest.raises(openai.AuthenticationError) as exc:
            _chat(bad)
        assert _error(exc)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_unknown_route_and_bad_json(served):
    req = urllib.request.Request(served[0].base_url + "/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 400 and "not valid JSON" in json.loads(exc.value.read())["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(served[0].base_url + "/nothing", timeout=30)
    assert exc.value.code == 404 and "error" in json.loads(exc.value.read())


def test_load_16_clients_200_requests(served, client):
    """Bounded load: zero 5xx, every response well-formed, the event loop answers while generation runs."""
    statuses: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        extra = {"markers": {"domain": "Code"}} if i % 3 == 0 else {}
        try:
            if i % 4 == 0:
                chunks = list(_chat(client, max_tokens=4, stream=True, extra_body=extra))
                last = [c for c in chunks if c.choices][-1]
                ok = last.choices[0].finish_reason in ("stop", "length") and isinstance(last.markers, dict)
            elif i % 17 == 0:  # an invalid request among the valid ones
                try:
                    _chat(client, max_tokens=4, extra_body={"markers": {"domain": "Cooking"}})
                    ok = False
                except openai.BadRequestError:
                    ok = True
            else:
                resp = _chat(client, max_tokens=4, temperature=1.0, seed=i, extra_body=extra)
                ok = isinstance(resp.choices[0].message.content, str) and resp.usage.completion_tokens <= 4
                ok = ok and (not extra or resp.markers["domain"] == "Code")
            with lock:
                statuses.append(200)
                if not ok:
                    problems.append(f"request {i}: malformed")
        except openai.APIStatusError as e:
            with lock:
                statuses.append(e.status_code)
                problems.append(f"request {i}: {e.status_code} {e.response.text[:200]}")

    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:
        while not done.is_set():
            t = time.perf_counter()
            urllib.request.urlopen(served[0].base_url.removesuffix("/v1") + "/health", timeout=30).read()
            pings.append(time.perf_counter() - t)
            time.sleep(0.05)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    done.set()
    pinger.join(timeout=10)
    assert len(statuses) == 200 and not [s for s in statuses if s >= 500]
    assert not problems, problems[:5]
    assert pings and max(pings) < 2.0  # the loop is not blocked by generation


def test_the_treasure_serve_command(served, tmp_path):
    """`treasure serve` itself, in a subprocess on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "treasure.cli", "serve", "--model", str(served[1]), "--port", str(port),
           "--model-name", "cli-tiny", "--api-key", KEY, "--max-tokens-limit", "8", "--log-level", "warning"]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=30)
        deadline = time.time() + 90
        while True:
            try:
                assert [m.id for m in client.models.list().data] == ["cli-tiny"]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.25)
        resp = _chat(client, model="cli-tiny", max_tokens=8, extra_body={"markers": {"domain": "Code"}})
        assert resp.markers["domain"] == "Code"
        with pytest.raises(openai.BadRequestError):
            _chat(client, model="cli-tiny", max_tokens=9)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


# ------------------------------------------------------------------------------------------------- batching


@pytest.fixture(scope="module")
def batched(served):
    """A second server, on its own Generator of the same bundle, that batches with a generous wait (the CPU is
    shared, so requests fired together may take a while to arrive)."""
    gen = Generator(load_bundle(served[1]))
    app = create_app(gen, model_name=NAME, limits=LIMITS, max_batch_size=8, batch_wait_ms=500)
    with Server(app) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)
        yield client, app, gen


ASKS = [
    ("Reverse 'apple'.", None),
    ("hi", {"domain": "Code"}),
    ("Write a short poem about the sea and the sky, with rhymes.", None),
    ("What is 2 + 2?", {"length_bucket": "concise"}),
    ("Fix this line: prnt(1 + 2)", {"domain": "Code", "task": "CodeFix"}),
    ("Say something.", None),
]


def test_concurrent_greedy_requests_are_batched_and_answer_as_one_at_a_time(batched):
    client, app, gen = batched
    alone = [
        gen.generate([{"role": "user", "content": text}], markers, max_new_tokens=24)
        for text, markers in ASKS
    ]
    before = sum(app.state.batcher.batch_sizes.values())

    def ask(i: int):
        if i == len(ASKS):  # an invalid request among them: its 400 comes before it is queued
            with pytest.raises(openai.BadRequestError):
                _chat(client, max_tokens=24, extra_body={"markers": {"domain": "Cooking"}})
            return None
        text, markers = ASKS[i]
        extra = {"markers": markers} if markers else {}
        return _chat(client, messages=[{"role": "user", "content": text}], max_tokens=24, extra_body=extra)

    with ThreadPoolExecutor(len(ASKS) + 1) as pool:
        resps = list(pool.map(ask, range(len(ASKS) + 1)))[:-1]
    for resp, want in zip(resps, alone, strict=True):
        assert resp.choices[0].message.content == want.text
        assert (resp.markers, resp.fixed, resp.marker_mode) == (want.markers, want.fixed, want.mode)
        assert resp.usage.completion_tokens == want.completion_tokens
        assert resp.choices[0].finish_reason == want.finish_reason
    sizes = app.state.batcher.batch_sizes
    # two settings (fixed, inferred): at least two batches, and fewer batches than requests
    assert 2 <= sum(sizes.values()) - before < len(ASKS) and max(sizes) > 1


def test_an_error_in_a_batch_fails_its_requests_and_the_server_goes_on(batched, monkeypatch):
    client, app, gen = batched
    real = gen.generate_batch
    sizes: list[int] = []

    def flaky(conversations, *args, **kw):
        sizes.append(len(conversations))
        if len(sizes) == 1:
            raise RuntimeError("the model fell over")
        return real(conversations, *args, **kw)

    monkeypatch.setattr(gen, "generate_batch", flaky)

    def ask(i: int) -> int:
        try:
            _chat(client, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4)
            return 200
        except openai.APIStatusError as e:
            assert e.status_code != 500 or e.response.json()["error"]["type"] == "server_error"
            return e.status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(ask, range(4)))
    assert sizes[0] >= 2 and sorted(statuses) == [200] * (4 - sizes[0]) + [500] * sizes[0]
    assert _chat(client, max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_serve_rejects_bad_batch_options(served, capsys):
    from treasure.cli import main

    assert main(["serve", "--model", str(served[1]), "--max-batch-size", "0"]) == 2
    assert main(["serve", "--model", str(served[1]), "--batch-wait-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--max-batch-size must be at least 1" in err and "--batch-wait-ms must be 0 or more" in err
