import json
import os
import signal
import subprocess
import sys
import time

import pytest

from treasure.annotate.options import AnnotateOptions
from treasure.annotate.pipeline import run_annotate
from treasure.errors import RecordError, TreasureError

FAST = ["length_tokens", "length_sentences", "length_paragraphs", "length_bucket", "source"]


def make_input(path, n, bad_every=0):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            if bad_every and i % bad_every == 3:
                fh.write('{"messages": [{"role": "user", "content": "orphan"}]}\n')
                continue
            rec = {
                "id": f"r{i}",
                "meta": {"origin": ["human", "synthetic", "translated"][i % 3]},
                "messages": [{"role": "user", "content": f"Question {i}?"},
                             {"role": "assistant", "content": ("Answer sentence. " * (1 + i % 50)) + f"#{i}"}],
            }  # fmt: skip
            if i % 7 == 0:
                rec["markers"] = {"length_bucket": "long"}  # given by the user: must be kept
            fh.write(json.dumps(rec) + "\n")


def opts(**kw):
    return AnnotateOptions(categories=FAST, field_map={"source": "meta.origin"}, **kw)


def test_markers_provenance_and_kept_input_markers(tmp_path):
    make_input(tmp_path / "in.jsonl", 30)
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts(), progress=False)
    assert (s.read, s.written, s.rejected) == (30, 30, 0)
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [f"r{i}" for i in range(30)]  # order kept
    r0, r1 = recs[0], recs[1]
    assert r0["markers"]["length_bucket"] == "long" and r0["marker_provenance"]["length_bucket"] == "input"
    assert (
        r1["markers"]["length_bucket"] == "concise"
        and r1["marker_provenance"]["length_bucket"] == "length:gpt2"
    )
    assert (
        r1["markers"]["source"] == "Synthetic"
        and r1["marker_provenance"]["source"] == "fields:source=meta.origin"
    )
    assert recs[2]["markers"]["source"] == "Translation"
    assert list(r1["markers"]) == [
        "length_tokens",
        "length_sentences",
        "length_paragraphs",
        "length_bucket",
        "source",
    ]
    assert r1["meta"] == {"origin": "synthetic"}  # input fields kept


def test_skip_writes_rejects_and_counts_reconcile(tmp_path):
    make_input(tmp_path / "in.jsonl", 100, bad_every=10)
    with open(tmp_path / "in.jsonl", "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"meta": {"origin": "aliens"}, "messages": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a"}]}) + "\n")  # fmt: skip
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts(on_error="skip", chunk_size=16),
                     rejects_path=tmp_path / "rej.jsonl", progress=False)  # fmt: skip
    rejects = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    written = len((tmp_path / "out.jsonl").read_text().splitlines())
    assert (
        s.read == 102 == s.written + s.rejected and written == s.written and len(rejects) == s.rejected == 12
    )
    assert rejects[0]["line"] == 4 and rejects[0]["error"] == "no assistant turn"
    assert rejects[0]["input"]["messages"][0]["content"] == "orphan"  # nothing lost
    assert rejects[-2]["input"] == "{not json"
    assert rejects[-1]["field"] == "meta.origin" and "aliens" in rejects[-1]["error"]


def test_fail_mode_raises_the_first_bad_record(tmp_path):
    make_input(tmp_path / "in.jsonl", 20, bad_every=10)
    with pytest.raises(RecordError, match=r"in\.jsonl:4: messages: no assistant turn"):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts(), progress=False)


def test_parquet_output_and_num_proc_give_the_same_records(tmp_path):
    make_input(tmp_path / "in.jsonl", 300)
    run_annotate(tmp_path / "in.jsonl", tmp_path / "one.jsonl", opts(chunk_size=50), progress=False)
    run_annotate(
        tmp_path / "in.jsonl", tmp_path / "two.parquet", opts(chunk_size=50), num_proc=2, progress=False
    )
    from treasure.records import load_records

    assert load_records(tmp_path / "two.parquet") == load_records(tmp_path / "one.jsonl")
    assert not list(tmp_path.glob("*.progress.json")) and not list(tmp_path.glob("*.partial.jsonl"))


def test_resume_refuses_other_settings(tmp_path):
    make_input(tmp_path / "in.jsonl", 10)
    (tmp_path / "out.jsonl.progress.json").write_text(json.dumps({"fingerprint": "x", "input": "y"}))
    with pytest.raises(TreasureError, match="partial run with other input or settings"):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts(), progress=False)


def test_kill_9_then_rerun_gives_identical_output(tmp_path):
    make_input(tmp_path / "in.jsonl", 40000, bad_every=97)
    cmd = [sys.executable, "-m", "treasure.cli", "annotate", str(tmp_path / "in.jsonl"), "--categories",
           ",".join(FAST), "--map", "source=meta.origin", "--on-error", "skip", "--chunk-size", "200"]  # fmt: skip
    ref = subprocess.run([*cmd, "-o", str(tmp_path / "ref.jsonl")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "out.jsonl.progress.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("consumed", 0) >= 2000:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    consumed = json.loads(state.read_text())["consumed"]
    assert 0 < consumed < 40000, "the kill must land mid-run"
    again = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resumed after {consumed}" in again.stdout
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert (tmp_path / "out.jsonl.rejects.jsonl").read_bytes() == (
        tmp_path / "ref.jsonl.rejects.jsonl"
    ).read_bytes()
