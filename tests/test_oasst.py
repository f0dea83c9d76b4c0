"""OpenAssistant messages and trees -> records (treasure/oasst.py), and `treasure annotate --from oasst`."""

import json
import subprocess
import sys

import pytest
from tiny import SHARED

from treasure.errors import RecordError, TreasureError
from treasure.oasst import convert_oasst, read_oasst, split_by_tree
from treasure.taxonomy import load_taxonomy

OASST = SHARED / "conversations"
FLAT, TREES = OASST / "oasst1_en_validation.jsonl", OASST / "oasst_en_100_tree.jsonl"
needs_shared = pytest.mark.skipif(not OASST.is_dir(), reason="needs ../shared/data/conversations")


def msg(mid, parent, role, text, tree="t1", **kw):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text,
            "lang": "en", "rank": None, "deleted": False, "review_result": True, "synthetic": False, **kw}  # fmt: skip


def labels(quality, **more):
    names = ["quality", *more]
    return {"name": names, "value": [quality, *more.values()], "count": [3] * len(names)}


FLAT_ROWS = [
    msg("p1", None, "prompter", "What is a monad?"),
    msg("a1", "p1", "assistant", "A monoid in the category of endofunctors.", rank=0, labels=labels(0.75, humor=0.5)),
    msg("a2", "p1", "assistant", "deleted answer", rank=1, deleted=True),
    msg("a3", "p1", "assistant", "rejected answer", review_result=False),
    msg("p2", "a1", "prompter", "In plain words?"),
    msg("a4", "p2", "assistant", "A way to chain computations.", labels=labels(0.333333)),
    msg("p3", "a1", "prompter", "a deleted follow-up", deleted=True),
    msg("a5", "p3", "assistant", "an answer under a deleted prompt"),
    msg("a6", "gone", "assistant", "an orphan whose parent is not in the file", tree="t2"),
    msg("q1", None, "prompter", "Write a haiku.", tree="t3", synthetic=True),
    msg("b1", "q1", "assistant", "Autumn moonlight", tree="t3", labels=labels(1.0)),
]  # fmt: skip

TREE = {
    "message_tree_id": "n1",
    "prompt": {**msg("r", None, "prompter", "Name a colour.", tree="n1"), "replies": [
        {**msg("x1", "r", "assistant", "Blue.", rank=0), "replies": [
            {**msg("x2", "x1", "prompter", "Another?"), "replies": [
                {**msg("x3", "x2", "assistant", "Red.", rank=0), "replies": []}]}]},
        {**msg("y1", "r", "assistant", "Green.", rank=1, deleted=True), "replies": []}]},
}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_flat_messages_one_record_per_kept_reply(tmp_path):
    conv = convert_oasst(write_jsonl(tmp_path / "flat.jsonl", FLAT_ROWS))
    assert [r["message_id"] for r in conv.records] == ["a1", "a4", "b1"]
    assert conv.messages == len(FLAT_ROWS) and conv.unlabelled == 0
    assert dict(conv.skipped) == {"deleted": 1, "failed review": 1, "a message above it: deleted": 1,
                                  "broken parent chain (a parent not in the file)": 1}  # fmt: skip
    a1, a4, b1 = conv.records
    assert a1["messages"] == [{"role": "user", "content": "What is a monad?"},
                              {"role": "assistant", "content": "A monoid in the category of endofunctors."}]  # fmt: skip
    assert [m["role"] for m in a4["messages"]] == ["user", "assistant", "user", "assistant"]
    assert a1["markers"] == {"quality": 0.75, "source": "Human"}
    assert a1["oasst_labels"] == {"quality": 0.75, "humor": 0.5}
    assert a4["markers"]["quality"] == 0.3333  # rounded as reward-model scores are
    assert b1["markers"]["source"] == "Synthetic"  # its prompt was model-written
    assert {k: a1[k] for k in ("message_tree_id", "parent_id", "rank", "lang")} == {
        "message_tree_id": "t1", "parent_id": "p1", "rank": 0, "lang": "en"}  # fmt: skip


def test_nested_trees_and_mixed_rows(tmp_path):
    with pytest.warns(UserWarning, match="skipped replies: 1 deleted"):  # never silently
        recs = read_oasst(write_jsonl(tmp_path / "trees.jsonl", [TREE]))
    assert [r["message_id"] for r in recs] == ["x1", "x3"]
    assert recs[1]["parent_id"] == "x2" and recs[1]["message_tree_id"] == "n1"
    assert [m["content"] for m in recs[1]["messages"]] == ["Name a colour.", "Blue.", "Another?", "Red."]
    assert "quality" not in recs[0]["markers"]  # the tree export has ranks but no labels
    mixed = convert_oasst(write_jsonl(tmp_path / "mixed.jsonl", [TREE, *FLAT_ROWS]))
    assert len(mixed.records) == 5 and mixed.unlabelled == 2


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        ({"message_id": "m", "parent_id": None, "text": "hi"}, ":2: role: missing"),
        ({**msg("m", None, "prompter", "hi"), "role": "bot"}, ":2: role: unknown role 'bot'"),
        ({**msg("a1", "p1", "assistant", "again")}, ":2: message_id: duplicate message_id 'a1'"),
        ({**msg("m", None, "assistant", "x"), "labels": {"name": ["quality"], "value": []}}, ":2: labels.value:"),
        ({"message_tree_id": "z", "prompt": {"message_id": "z", "role": "prompter", "text": "q",
          "replies": [{"message_id": "z1", "role": "assistant"}]}}, ":2: prompt.replies[0].text: missing"),
        ({**msg("m", ["p1"], "assistant", "x")}, ":2: parent_id: expected a message id or null"),
        ({"id": 3}, ":2: not an oasst message"),
    ],
)  # fmt: skip
def test_bad_rows_name_the_file_line_and_field(tmp_path, row, expect):
    path = write_jsonl(tmp_path / "bad.jsonl", [FLAT_ROWS[1], row])
    with pytest.raises(RecordError) as e:
        convert_oasst(path)
    assert str(e.value).startswith(str(path) + expect)


def test_split_by_tree_is_deterministic_and_keeps_trees_whole():
    recs = [{"message_tree_id": f"tree{i // 3}", "n": i} for i in range(600)]
    train, test = split_by_tree(recs, test_share=0.25, seed=1)
    assert len(train) + len(test) == 600
    assert not {r["message_tree_id"] for r in train} & {r["message_tree_id"] for r in test}
    assert 0.15 < len(test) / 600 < 0.35
    assert split_by_tree(recs[::-1], test_share=0.25, seed=1)[1] == test[::-1]  # the order does not matter
    assert split_by_tree(recs, test_share=0.25, seed=2)[1] != test
    assert split_by_tree(recs, test_share=0)[1] == [] and split_by_tree(recs, test_share=1)[0] == []
    with pytest.raises(TreasureError, match="record 0: no message_tree_id"):
        split_by_tree([{"messages": []}])


def reviewed_replies(rows):
    return [m for m in rows if m["role"] == "assistant" and not m["deleted"] and m["review_result"] is True]


def tree_messages(node):
    yield node
    for child in node["replies"]:
        yield from tree_messages(child)


@needs_shared
@pytest.mark.parametrize("path", [FLAT, TREES], ids=["flat", "trees"])
def test_real_files(path):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if "prompt" in rows[0]:
        rows = [m for tree in rows for m in tree_messages(tree["prompt"])]
    conv = convert_oasst(path)
    recs = conv.records
    assert len(recs) == len(reviewed_replies(rows)) == (1185 if path == FLAT else 687)
    for r in recs:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * (len(r["messages"]) // 2)
    quality = load_taxonomy()["quality"]
    scores = [r["markers"]["quality"] for r in recs if "quality" in r["markers"]]
    assert all(0 <= q <= 1 and quality.coerce(q) == q for q in scores)
    assert len(scores) == (1181 if path == FLAT else 0)  # the tree export carries ranks, not labels
    train, test = split_by_tree(recs)
    assert len(train) + len(test) == len(recs) and test
    assert not {r["message_tree_id"] for r in train} & {r["message_tree_id"] for r in test}


@needs_shared
def test_annotate_cli_from_oasst(tmp_path):
    lines = FLAT.read_text(encoding="utf-8").splitlines(keepends=True)
    src = tmp_path / "slice.jsonl"
    src.write_text("".join(lines[:61]), encoding="utf-8")  # whole trees: 40 reviewed assistant replies
    out = tmp_path / "out.jsonl"
    run = subprocess.run([sys.executable, "-m", "treasure.cli", "annotate", src, "--from", "oasst", "-o", out],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (
        "oasst: 40 replies from 61 messages" in run.stderr and "read 40, written 40, rejected 0" in run.stdout
    )
    assert "source not annotated" not in run.stderr  # every record brought it
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.jsonl",
        "slice.jsonl",
    ]  # the converted file is gone
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for r in recs:
        m, prov = r["markers"], r["marker_provenance"]
        assert prov["quality"] == prov["source"] == "input" and m["source"] == "Human"
        assert (
            m["quality_bucket"] in {"1", "2", "3", "4"} and prov["quality_bucket"] == "quartile_by_language"
        )
        assert {"domain", "task", "length_bucket", "language"} <= set(m)
        assert r["oasst_labels"]["quality"] == pytest.approx(m["quality"], abs=1e-4)
    best = max(recs, key=lambda r: r["markers"]["quality"])
    assert best["markers"]["quality_bucket"] == "1"
    bad = subprocess.run([sys.executable, "-m", "treasure.cli", "annotate", out, "--from", "oasst", "--explain", "x"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "drop --from" in bad.stderr
