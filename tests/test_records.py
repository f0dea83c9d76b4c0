import json

import pytest

from treasure.errors import RecordError, TreasureError
from treasure.records import load_records, normalize_record, read_records, write_records

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_every_input_shape_normalises_to_messages():
    cases = {
        "messages": {"messages": CHAT, "id": 1},
        "prompt/completion strings": {"prompt": "Hi", "completion": "Hello!", "id": 1},
        "prompt/completion lists": {"prompt": CHAT[:1], "completion": CHAT[1:], "id": 1},
        "alpaca": {"instruction": "Hi", "input": "", "output": "Hello!", "id": 1},
        "sharegpt": {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
            "id": 1,
        },
    }
    for name, raw in cases.items():
        rec = normalize_record(raw)
        assert rec == {"messages": CHAT, "markers": {}, "id": 1}, name


def test_alpaca_input_is_appended_and_other_fields_kept():
    rec = normalize_record(
        {"instruction": "Sum", "input": "1 2", "output": "3", "meta": {"a": [1]}, "score": 0.5}
    )
    assert rec["messages"][0]["content"] == "Sum\n\n1 2"
    assert rec["meta"] == {"a": [1]} and rec["score"] == 0.5


def test_multi_turn_kept_whole_with_system():
    msgs = [{"role": "system", "content": "Be brief."}, *CHAT, {"role": "user", "content": "More?"},
            {"role": "assistant", "content": "No.", "name": "bot"}]  # fmt: skip
    assert normalize_record({"messages": msgs})["messages"] == msgs


def test_existing_markers_are_validated_and_canonicalised(paper):
    rec = normalize_record(
        {"messages": CHAT, "markers": {"domain": "math", "quality_bucket": 2}}, taxonomy=paper
    )
    assert rec["markers"] == {"domain": "Math", "quality_bucket": "2"}
    with pytest.raises(RecordError) as e:
        normalize_record({"messages": CHAT, "markers": {"domain": "Astrology"}}, source="f.jsonl", line=3,
                         taxonomy=paper)  # fmt: skip
    assert str(e.value).startswith("f.jsonl:3: markers.domain: unknown value 'Astrology'")


BAD_LINES = [
    (b'{"messages": [', "invalid JSON", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn", "messages"),
    (b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}', "empty",
     "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}', "expected a string",
     "messages[0].content"),
    (b'{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "unknown role",
     "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "markers": '
     b'{"task": "Juggling"}}', "unknown value 'Juggling'", "markers.task"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "x"}]}',
     "invalid UTF-8", None),
    (b'[1, 2]', "expected a JSON object", None),
    (b'{"text": "hello"}', "no conversation found", None),
    (b'{"conversations": [{"from": "alien", "value": "hi"}]}', "unknown role 'alien'", "conversations[0].from"),
    (b'{"instruction": "hi"}', "missing", "output"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, '
     b'{"role": "user", "content": "and?"}]}', "last turn must be the assistant", "messages[2].role"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message", "field"), BAD_LINES)
def test_bad_records_get_one_clear_error(tmp_path, paper, line, message, field):
    f = tmp_path / "in.jsonl"
    good = b'{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "ok"}]}\n'
    f.write_bytes(good + line + b"\n" + good)
    results = list(read_records(f, paper))
    assert [isinstance(r, RecordError) for _, r in results] == [False, True, False]  # the run goes on
    err = results[1][1]
    assert err.line == 2 and err.field == field and message in err.message
    assert str(err).startswith(f"{f}:2: ") and "\n" not in str(err)


def test_huge_message_is_rejected(tmp_path):
    big = "x" * (10 * 1024 * 1024)
    with pytest.raises(RecordError, match=r"messages\[1\]\.content: 10,485,760 characters is over the limit"):
        normalize_record(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": big}]}
        )


def test_jsonl_parquet_and_hf_dataset_round_trip(tmp_path):
    recs = [normalize_record({"messages": CHAT, "id": i, "meta": {"origin": "human"}}) for i in range(5)]
    for rec, d in zip(recs, "ABCDE", strict=True):
        rec["markers"] = {"domain": "Code", "length_tokens": len(d)}
    write_records(tmp_path / "a.jsonl", recs)
    write_records(tmp_path / "a.parquet", recs)
    assert load_records(tmp_path / "a.jsonl") == recs
    assert load_records(tmp_path / "a.parquet") == recs
    from datasets import Dataset

    Dataset.from_list(recs).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds") == recs
    (tmp_path / "a.json").write_text(json.dumps(recs))
    assert load_records(tmp_path / "a.json") == recs


def test_unknown_file_types_and_missing_files(tmp_path):
    with pytest.raises(TreasureError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(TreasureError, match="unknown file type '.csv'"):
        load_records(tmp_path / "x.csv")
    with pytest.raises(TreasureError, match="unknown output type"):
        write_records(tmp_path / "x.txt", [])
