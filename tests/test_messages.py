"""Messages at every edge (treasure/messages.py): what records, `treasure serve` and `treasure generate --input`
accept and the error each one gives for a bad message, checked against goldens taken before the three edges
shared one normaliser (tests/golden/message_edges.json; the changes since are listed below, each with its reason),
and the JSON `treasure serve` answers for a fixed tiny bundle (tests/golden/serve_response.json).

`TREASURE_WRITE_GOLDEN=1 pytest tests/test_messages.py` rewrites the golden files from the code as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from treasure.errors import RecordError

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("TREASURE_WRITE_GOLDEN") == "1"

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}

# Raw records as `treasure annotate` / `treasure train` read them.
RECORDS: dict[str, Any] = {
    "messages": {"messages": [U, A], "id": 3},
    "messages_extra_field": {"messages": [{**U, "name": "ann"}, A]},
    "system_and_tool": {
        "messages": [{"role": "system", "content": "be brief"}, U, {"role": "tool", "content": "42"}, A]
    },  # fmt: skip
    "two_replies": {"messages": [U, A, A]},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    "prompt_completion": {"prompt": "hi", "completion": "yo", "extra": 1},
    "prompt_completion_lists": {"prompt": [U], "completion": [A]},
    "alpaca": {"instruction": "do", "input": "this", "output": "done"},
    "not_an_object": [1, 2],
    "messages_not_a_list": {"messages": "hi"},
    "messages_empty": {"messages": []},
    "message_not_an_object": {"messages": ["hi", A]},
    "role_missing": {"messages": [{"content": "hi"}, A]},
    "content_missing": {"messages": [{"role": "user"}, A]},
    "role_unknown": {"messages": [{"role": "robot", "content": "hi"}, A]},
    "role_developer": {"messages": [{"role": "developer", "content": "hi"}, A]},
    "role_not_a_string": {"messages": [{"role": 5, "content": "hi"}, A]},
    "content_int": {"messages": [{"role": "user", "content": 5}, A]},
    "content_none": {"messages": [{"role": "user", "content": None}, A]},
    "content_parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A]},
    "content_empty": {"messages": [{"role": "user", "content": " \n"}, A]},
    "content_too_long": {"messages": [U, {"role": "assistant", "content": "x" * 41}]},
    "no_assistant": {"messages": [U]},
    "last_turn_user": {"messages": [U, A, U]},
    "sharegpt_from_missing": {"conversations": [{"value": "hi"}]},
    "sharegpt_from_unknown": {"conversations": [{"from": "alien", "value": "hi"}]},
    "sharegpt_value_missing": {"conversations": [{"from": "human"}]},
    "prompt_empty": {"prompt": "", "completion": "yo"},
    "completion_missing": {"prompt": "hi"},
    "prompt_list_bad_role": {"prompt": [{"role": "robot", "content": "hi"}], "completion": "yo"},
    "completion_list_empty_content": {"prompt": "hi", "completion": [{"role": "assistant", "content": ""}]},
    "alpaca_output_int": {"instruction": "do", "output": 3},
    "no_conversation": {"text": "hello"},
    "markers_not_a_mapping": {"messages": [U, A], "markers": ["Code"]},
}

# Chat-completions request bodies (model and max_tokens are added) as `treasure serve` gets them.
REQUESTS: dict[str, Any] = {
    "plain": [U],
    "multi_turn": [{"role": "system", "content": "be brief"}, U, A, U],
    "developer": [{"role": "developer", "content": "be brief"}, U],
    "text_parts": [
        {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}
    ],
    "content_null": [U, {"role": "assistant", "content": None}, U],
    "content_empty": [{"role": "user", "content": ""}],
    "extra_fields_dropped": [{"role": "user", "content": "hi", "name": "ann"}],
    "missing": None,
    "not_a_list": "hi",
    "empty": [],
    "message_not_an_object": ["hi"],
    "role_missing": [{"content": "hi"}],
    "role_unknown": [{"role": "wizard", "content": "hi"}],
    "content_missing": [{"role": "user"}],
    "content_int": [{"role": "user", "content": 5}],
    "image_part": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    "part_not_an_object": [{"role": "user", "content": ["hi"]}],
    "too_many": [U, A, U, A],
    "too_many_and_bad": [U, A, U, {"role": "wizard", "content": "x"}],
    "too_long": [{"role": "user", "content": "x" * 51}],
}

# Input lines of `treasure generate --input`.
PROMPTS: dict[str, Any] = {
    "prompt": {"prompt": "hi", "id": "a"},
    "prompt_empty": {"prompt": ""},
    "prompt_blank": {"prompt": "  "},
    "prompt_not_a_string": {"prompt": 5},
    "messages_to_answer": {"messages": [{"role": "system", "content": "be brief"}, U]},
    "messages_extra_field": {"messages": [{**U, "name": "ann"}]},
    "messages_with_reference": {"messages": [U, A]},
    "messages_extra_field_with_reference": {"messages": [{**U, "name": "ann"}, A]},
    "two_replies": {"messages": [U, A, A]},
    "bad_role": {"messages": [{"role": "wizard", "content": "hi"}]},
    "developer": {"messages": [{"role": "developer", "content": "hi"}]},
    "content_int": {"messages": [{"role": "user", "content": 5}]},
    "content_empty": {"messages": [{"role": "user", "content": ""}]},
    "message_not_an_object": {"messages": ["hi", U]},
    "messages_empty": {"messages": []},
    "messages_not_a_list": {"messages": "hi"},
    "prompt_completion": {"prompt": "hi", "completion": "yo"},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    "sharegpt_to_answer": {"conversations": [{"from": "human", "value": "hi"}]},
    "alpaca": {"instruction": "do", "output": "done"},
    "no_conversation": {"text": "hello"},
    "not_an_object": [1],
    "markers_not_a_mapping": {"prompt": "hi", "markers": "Code"},
}

# Errors whose text the shared normaliser changed, old text -> why. The verdict did not change, nor serve's status,
# param and code; the new text names its field, which may be a more precise one than before. Key: "edge/case".
UNIFIED_TEXT: dict[str, str] = {
    "records/messages_empty": "'no assistant turn' -> 'empty (a conversation needs at least one message)'",
    "records/prompt_empty": "field messages[0].content -> prompt (the input field that is empty)",
    "records/prompt_list_bad_role": "field messages[0].role -> prompt[0].role (the input field)",
    "records/completion_list_empty_content": "field messages[1].content -> completion[0].content (the input field)",
    "serve/content_int": "'must be a string' -> 'expected a string, got int'",
    "serve/empty": "'messages must be a non-empty list' -> 'messages: empty (...)'",
    "serve/missing": "'messages must be a non-empty list' -> 'messages: expected a list of messages, got NoneType'",
    "serve/not_a_list": "'messages must be a non-empty list' -> 'messages: expected a list of messages, got str'",
    "serve/message_not_an_object": "'must be an object' -> 'expected a message object, got str'",
    "serve/role_missing": "'unknown role None' -> 'missing'",
    "generate/bad_role": "one text for every bad message, field messages[0] -> messages[0].role: unknown role",
    "generate/developer": "as bad_role (developer is OpenAI's wire name, taken by serve only)",
    "generate/content_int": "field messages[0] -> messages[0].content: expected a string",
    "generate/message_not_an_object": "'expected {role, content} ...' -> 'expected a message object, got str'",
    "generate/messages_empty": "'no assistant turn' -> 'empty (a conversation needs at least one message)'",
}
# Inputs an edge now treats differently (accepts, rejects or returns otherwise), with why.
CHANGED_VERDICT: dict[str, str] = {
    "generate/content_empty": "rejected now: `generate --input` checks its messages as records are checked (an "
    "empty turn was accepted before only when the record did not end with an assistant turn)",
    "generate/messages_extra_field": "other message fields (name) are kept now, as they were already when the "
    "record ended with an assistant turn and as records keep them",
}


def _record_case(raw: Any) -> dict[str, Any]:
    from treasure.records import normalize_record

    try:
        return {"ok": normalize_record(raw, source="in.jsonl", line=7, max_chars=40)}
    except RecordError as e:
        return {"error": {"field": e.field, "message": str(e)}}


def _request_case(messages: Any) -> dict[str, Any]:
    from treasure.serve import APIError, Limits, parse_request

    body: dict[str, Any] = {"model": "m", "max_tokens": 4}
    if messages is not None:
        body["messages"] = messages
    try:
        req = parse_request(body, "m", Limits(max_messages=3, max_content_chars=50))
    except APIError as e:
        return {"error": {"status": e.status, "param": e.param, "code": e.code, "message": e.message}}
    return {"ok": dataclasses.asdict(req)}


class _AnyMarkers:
    """What read_prompts needs of a Generator: markers pass through."""

    @staticmethod
    def validate_markers(markers: dict) -> dict:
        return markers


def _prompt_case(raw: Any, tmp_path: Path) -> dict[str, Any]:
    from treasure.commands.generate import read_prompts

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(raw) + "\n", encoding="utf-8")
    try:
        items = read_prompts("in.jsonl", {}, _AnyMarkers())
    except RecordError as e:
        return {"error": {"field": e.field, "message": str(e)}}
    return {"ok": items}


def _edges(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "records": {k: _record_case(v) for k, v in RECORDS.items()},
        "serve": {k: _request_case(v) for k, v in REQUESTS.items()},
        "generate": {k: _prompt_case(v, tmp_path) for k, v in PROMPTS.items()},
    }


def _compare(name: str, old: dict, new: dict) -> list[str]:
    """What differs between a golden case and today's, allowing the documented text and verdict changes."""
    if name in CHANGED_VERDICT:
        return []
    if set(old) != set(new):
        return [f"{name}: was {old}, now {new}"]
    if "ok" in old:
        return [] if old == new else [f"{name}: accepted as {old['ok']}, now as {new['ok']}"]
    o, n = dict(old["error"]), dict(new["error"])
    if name in UNIFIED_TEXT:
        field = n.get("field") or n.get("param")
        if not field or field not in n["message"]:
            return [f"{name}: the new text {n['message']!r} does not name its field {field!r}"]
        for key in ("message", "field"):
            o.pop(key, None), n.pop(key, None)
    return [] if o == n else [f"{name}: error was {o}, now {n}"]


def test_every_edge_accepts_and_rejects_messages_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = _edges(tmp_path)
    path = GOLDEN / "message_edges.json"
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            json.dumps(now, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
        )
    golden = json.loads(path.read_text(encoding="utf-8"))
    assert set(golden) == set(now)
    problems = []
    for edge, cases in golden.items():
        assert set(cases) == set(now[edge]), edge
        for case, old in cases.items():
            problems += _compare(f"{edge}/{case}", old, now[edge][case])
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- serve's JSON answer


def _post(base_url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_answers_a_fixed_request_as_before(tmp_path_factory):
    """The OpenAI-compatible JSON for two greedy requests and two bad ones (id and timestamp left out)."""
    from test_generate import make_bundle
    from test_serve import Server

    from treasure.bundle import load_bundle
    from treasure.generate.engine import Generator
    from treasure.serve import create_app

    bundle = make_bundle(tmp_path_factory.mktemp("golden-serve"), "paper")
    app = create_app(Generator(load_bundle(bundle)), model_name="tiny")
    base = {"model": "tiny", "max_tokens": 24, "temperature": 0}
    bodies = {
        "fixed": {**base, "messages": [U], "markers": {"domain": "code"}},
        "inferred": {**base, "messages": [{"role": "developer", "content": "be brief"}, U]},
        "bad_role": {**base, "messages": [{"role": "wizard", "content": "hi"}]},
        "bad_marker": {**base, "messages": [U], "markers": {"domain": "Cooking"}},
    }
    now = {}
    with Server(app) as server:
        for name, body in bodies.items():
            status, answer = _post(server.base_url, body)
            answer.pop("id", None), answer.pop("created", None)
            now[name] = {"status": status, "answer": answer}
    path = GOLDEN / "serve_response.json"
    if WRITE:
        path.write_text(
            json.dumps(now, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
        )
    golden = json.loads(path.read_text(encoding="utf-8"))
    for name in ("fixed", "inferred", "bad_marker"):
        assert now[name] == golden[name], name
    # the bad role's text is the shared normaliser's (UNIFIED_TEXT); status, param and code are as before
    old, new = golden["bad_role"], now["bad_role"]
    assert new["status"] == old["status"] == 400
    for key in ("param", "code", "type"):
        assert new["answer"]["error"][key] == old["answer"]["error"][key]
    assert "messages[0].role" in new["answer"]["error"]["message"]


# ------------------------------------------------------------------------------------------- the normaliser


def test_one_error_text_names_source_line_and_field():
    from treasure.messages import normalize_messages

    with pytest.raises(RecordError) as e:
        normalize_messages([U, {"role": "user", "content": " "}], source="f.jsonl", line=4)
    assert str(e.value) == "f.jsonl:4: messages[1].content: empty"
    assert (e.value.field, e.value.message) == ("messages[1].content", "empty")


def test_the_edges_differ_only_by_their_rules():
    from treasure.messages import OPENAI_REQUEST, RECORD, normalize_messages

    wire = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}],
            "name": "ann",
        },
        {"role": "assistant", "content": None},
    ]
    assert normalize_messages(wire, rules=OPENAI_REQUEST) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
    ]
    with pytest.raises(RecordError, match=r"messages\[0\]\.role: unknown role 'developer'"):
        normalize_messages(wire, rules=RECORD)
    kept = normalize_messages([{**U, "name": "ann"}, A])
    assert kept == [{**U, "name": "ann"}, A] and kept[0] is not U  # a copy, other fields kept


def test_max_chars_and_the_field_prefix():
    from treasure.messages import normalize_messages

    with pytest.raises(
        RecordError, match=r"^<input>: prompt\[0\]\.content: 3 characters is over the limit of 2$"
    ):
        normalize_messages([U | {"content": "abc"}], field="prompt", max_chars=2)


def test_roles_are_defined_once():
    """No other module keeps its own list of roles: every edge reads treasure.messages.ROLES."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "treasure"
    defining = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [getattr(t, "id", None) for t in node.targets] if isinstance(node, ast.Assign) else []
            if "ROLES" in names and isinstance(node.value, ast.Tuple):
                defining.append(str(path.relative_to(src)))
    assert defining == ["messages.py"]
