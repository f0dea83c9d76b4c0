"""The LLM annotator against local OpenAI-compatible endpoints: well-behaved, failing, unreachable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from openai_stub import StubConfig, StubServer

from treasure.annotate.llm import (
    LLMAnnotator,
    load_fewshot,
    parse_answer,
    render_conversation,
    response_format,
    system_prompt,
)
from treasure.annotate.options import AnnotateOptions, LLMSettings
from treasure.annotate.pipeline import run_annotate
from treasure.errors import TreasureError
from treasure.taxonomy import parse_taxonomy

LLM_CATS = ["domain", "task", "format"]
DOMAINS, TASKS, FORMATS = (
    ["Code", "Math", "Legal", "Culture"],
    ["CodeFix", "Reasoning", "Summarization"],
    ["Tabular", "none", "JSON"],
)


def make_input(path, n, extra=None):
    """Records whose text carries the answer the stub model gives (<<category=value>>), for exact checks."""
    rows = []
    for i in range(n):
        hint = f"<<domain={DOMAINS[i % 4]}>> <<task={TASKS[i % 3]}>> <<format={FORMATS[i % 3]}>>"
        hint += (extra or {}).get(i, "")
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i} {hint}"},
                                                 {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 7)}]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def kill_9_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (or at the timeout), as a crash would, and reap it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def settings(server, tmp_path, **kw):
    kw = {
        "model": "stub-model",
        "cache": str(tmp_path / "cache.sqlite"),
        "backoff": 0.01,
        "concurrency": 8,
        **kw,
    }
    return LLMSettings(base_url=server.base_url, **kw)


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ---------------------------------------------------------------------------------------------- prompt units


def test_prompt_lists_values_with_descriptions_and_none_only_without_unspecified(paper):
    task = system_prompt(paper["task"])
    assert "Category: task" in task and "- CodeFix: find and fix a bug or error in given code" in task
    assert "- none:" in task  # task has no Unspecified: the model may say no value applies
    domain = system_prompt(paper["domain"])
    assert "- Unspecified: no clear domain" in domain and "- none:" not in domain
    schema = response_format(paper["format"], "json_schema")["json_schema"]
    assert schema["schema"]["properties"]["value"]["enum"][-1] == "none" and schema["strict"]
    assert response_format(paper["format"], "none") is None


@pytest.mark.parametrize(
    ("text", "category", "expect"),
    [
        ('{"value": "Code"}', "domain", ("Code", None)),
        ('```json\n{"value": "code"}\n```', "domain", ("Code", None)),  # fenced, other case
        ("Sure! {\"value\": \"Math\"} is my answer", "domain", ("Math", None)),
        ('"Legal"', "domain", ("Legal", None)),
        ("Legal.", "domain", ("Legal", None)),
        ('{"domain": "Finance"}', "domain", ("Finance", None)),
        ('{"value": "none"}', "format", (None, None)),  # no value applies: no marker
        ('{"value": null}', "domain", ("Unspecified", None)),
        ('{"value": "Poetry"}', "domain", (None, "'Poetry' is not an allowed value")),
        ('{"value": "Sci', "domain", (None, "not JSON: '{\"value\": \"Sci'")),
        ("", "task", (None, "empty answer")),
        ('{"label": "Code"}', "domain", (None, "no `value` in '{\"label\": \"Code\"}'")),
    ],
)  # fmt: skip
def test_parse_answer(paper, text, category, expect):
    assert parse_answer(text, paper[category]) == expect


def test_numeric_category_of_a_user_taxonomy():
    tax = parse_taxonomy("name: t\ncategories:\n  difficulty:\n    kind: int\n    min: 1\n    max: 5\n")
    cat = tax["difficulty"]
    assert parse_answer('{"value": 3}', cat) == (3, None)
    assert parse_answer('{"value": 9}', cat)[1] == "'9' is not an allowed value"
    assert response_format(cat, "json_schema")["json_schema"]["schema"]["properties"]["value"] == {
        "type": "integer", "minimum": 1, "maximum": 5}  # fmt: skip
    assert "an integer at least 1 and at most 5" in system_prompt(cat)


def test_builtin_fewshot_fits_the_paper_taxonomy_and_user_files_are_checked(paper, tmp_path):
    shots = load_fewshot(None, paper, LLM_CATS)
    assert all(len(shots[c]) >= 6 for c in LLM_CATS)
    assert any(s.value is None for s in shots["format"])  # a "none applies" example for plain prose
    bad = tmp_path / "shots.jsonl"
    bad.write_text(json.dumps({"category": "domain", "value": "Poetry", "messages": []}) + "\n")
    with pytest.raises(TreasureError, match=r"shots\.jsonl:1: domain: unknown value 'Poetry'"):
        load_fewshot(str(bad), paper, ["domain"])


def test_long_turns_keep_head_and_tail():
    text = render_conversation(
        [{"role": "user", "content": "q" * 50 + "END"}, {"role": "assistant", "content": "a"}], 30
    )
    assert "[... 23 characters cut ...]" in text and text.count("q") == 20 + 7 and "qEND" in text


# --------------------------------------------------------------------------------------- a real endpoint


def test_well_behaved_endpoint_markers_provenance_and_cache(tmp_path):
    make_input(tmp_path / "in.jsonl", 40)
    with StubServer() as server:
        opts = AnnotateOptions(
            categories=[*LLM_CATS, "length_tokens"], llm=settings(server, tmp_path), chunk_size=16
        )
        s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
        first = server.cfg.stats["requests"]
        assert first == 40 * 3 and (s.read, s.written) == (40, 40)
        recs = read(tmp_path / "out.jsonl")
        for i, rec in enumerate(recs):
            assert rec["markers"]["domain"] == DOMAINS[i % 4] and rec["markers"]["task"] == TASKS[i % 3]
            prov = rec["marker_provenance"]
            assert prov["domain"].startswith("llm:stub-model:v1-") and prov["length_tokens"] == "length:gpt2"
            if (
                FORMATS[i % 3] == "none"
            ):  # format has no Unspecified: "none" leaves the marker out, with a note
                assert "format" not in rec["markers"] and "no value applies" in rec["marker_notes"]["format"]
            else:
                assert rec["markers"]["format"] == FORMATS[i % 3] and "marker_notes" not in rec
        # A re-run, and a run into another file, cost no requests: every answer is in the cache.
        (tmp_path / "out.jsonl").unlink()
        run_annotate(tmp_path / "in.jsonl", tmp_path / "again.jsonl", opts, progress=False)
        assert server.cfg.stats["requests"] == first
        assert read(tmp_path / "again.jsonl") == recs
        # Another model is another cache key.
        other = AnnotateOptions(
            categories=["domain"], llm=settings(server, tmp_path, model="other"), chunk_size=16
        )
        run_annotate(tmp_path / "in.jsonl", tmp_path / "other.jsonl", other, progress=False)
        assert server.cfg.stats["requests"] == first + 40


def test_input_markers_are_kept_and_not_asked_for(tmp_path):
    make_input(tmp_path / "in.jsonl", 6)
    rows = read(tmp_path / "in.jsonl")
    rows[0]["markers"] = {"domain": "Medical"}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with StubServer() as server:
        opts = AnnotateOptions(categories=["domain"], llm=settings(server, tmp_path), chunk_size=4)
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
        assert server.cfg.stats["requests"] == 5
    first = read(tmp_path / "out.jsonl")[0]
    assert first["markers"]["domain"] == "Medical" and first["marker_provenance"]["domain"] == "input"


def test_failing_endpoint_finishes_and_accounts_for_every_record(tmp_path):
    """500s, 429s, timeouts, malformed bodies and answers on 40% of attempts; two records that always fail."""
    extra = {3: " <<garbage>>", 4: " <<always500>>"}
    make_input(tmp_path / "in.jsonl", 30, extra)
    cfg = StubConfig(failure_rate=0.4, timeout_sleep=2.0)
    with StubServer(cfg) as server:
        llm = settings(server, tmp_path, timeout=0.4, max_retries=8, max_attempts=3)
        opts = AnnotateOptions(categories=LLM_CATS, llm=llm, chunk_size=10)
        s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert all(
        cfg.stats[kind] > 0 for kind in ("500", "429", "timeout", "malformed_body", "malformed_answer")
    )
    assert (s.read, s.written, s.rejected) == (30, 30, 0)
    recs = read(tmp_path / "out.jsonl")
    for i, rec in enumerate(recs):
        notes = rec.get("marker_notes", {})
        for cat in LLM_CATS:  # every (record, category): a marker, or a reason why not
            assert cat in rec["markers"] or cat in notes, (i, cat)
        if i not in extra:
            assert rec["markers"]["domain"] == DOMAINS[i % 4] and rec["markers"]["task"] == TASKS[i % 3]
    garbage, down = recs[3], recs[4]
    assert garbage["markers"]["domain"] == "Unspecified" and "task" not in garbage["markers"]
    assert "invalid answer after 3 attempts" in garbage["marker_notes"]["domain"]
    assert down["markers"]["domain"] == "Unspecified" and "format" not in down["markers"]
    assert "no answer: HTTP 500 (after 9 tries)" in down["marker_notes"]["task"]
    assert s.noted >= 2


def test_transport_failures_are_not_cached(tmp_path):
    make_input(tmp_path / "in.jsonl", 2, {1: " <<always500>>"})
    with StubServer() as server:
        opts = AnnotateOptions(
            categories=["domain"], llm=settings(server, tmp_path, max_retries=1), chunk_size=4
        )
        run_annotate(tmp_path / "in.jsonl", tmp_path / "a.jsonl", opts, progress=False)
        assert server.cfg.stats["requests"] == 1 + 2
        run_annotate(tmp_path / "in.jsonl", tmp_path / "b.jsonl", opts, progress=False)
        assert server.cfg.stats["requests"] == 3 + 2  # the failed one is asked again, the answered one is not


def test_unreachable_endpoint_stops_the_run_and_a_rerun_finishes_it(tmp_path):
    make_input(tmp_path / "in.jsonl", 3)
    llm = LLMSettings(model="m", base_url="http://127.0.0.1:9/v1", cache="none", max_retries=1, backoff=0.01)
    opts = AnnotateOptions(categories=["domain"], llm=llm)
    with pytest.raises(TreasureError, match=r"LLM endpoint http://127.0.0.1:9/v1: cannot connect"):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    with StubServer() as server:
        llm.base_url = server.base_url  # the URL is not part of the run's fingerprint: the same run goes on
        s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert s.written == 3 and all("domain" in r["markers"] for r in read(tmp_path / "out.jsonl"))


def test_refused_key_stops_the_run(tmp_path, paper):
    with StubServer(StubConfig(fixed_status=401)) as server:
        ann = LLMAnnotator(paper, LLMSettings(model="m", base_url=server.base_url, cache="none"), ["domain"])
        try:
            with pytest.raises(TreasureError, match=r"refused the API key \(HTTP 401, model 'm'\)"):
                ann.annotate([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                               "markers": {}}])  # fmt: skip
        finally:
            ann.close()


def test_explain_shows_the_raw_answer_from_the_cache(tmp_path):
    make_input(tmp_path / "in.jsonl", 5, {2: " <<garbage>>"})
    with StubServer() as server:
        common = ["--categories", "domain,length_tokens", "--llm-model", "stub-model", "--llm-base-url",
                  server.base_url, "--llm-cache", str(tmp_path / "cache.sqlite")]  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "treasure.cli", "annotate", tmp_path / "in.jsonl", "-o",
                              tmp_path / "out.jsonl", *common], capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "1 records have markers left Unspecified or out" in run.stderr
        asked = server.cfg.stats["requests"]
        out = subprocess.run([sys.executable, "-m", "treasure.cli", "annotate", tmp_path / "out.jsonl",
                              "--explain", "r2", *common], capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert server.cfg.stats["requests"] == asked  # the evidence came from the cache
    text = out.stdout
    assert "out.jsonl:3  r2" in text and "domain = Unspecified   [llm:stub-model:v1-" in text
    assert (
        "invalid answer after 3 attempts" in text and "I think it is probably something like science?" in text
    )
    assert '"cached": true' not in text and "cached=true" in text
    assert "length_tokens = " in text and 'tokenizer="gpt2"' in text


@pytest.mark.slow  # ~20 s idle, more on a busy machine: three CLI runs, two with a spawned pool
def test_kill_9_of_a_num_proc_llm_run_then_rerun_is_identical(tmp_path):
    make_input(tmp_path / "in.jsonl", 400)
    with StubServer(StubConfig(latency=0.01)) as server:

        def cmd(out, cache, num_proc):
            return [sys.executable, "-m", "treasure.cli", "annotate", str(tmp_path / "in.jsonl"), "-o", str(out),
                    "--categories", "domain,task,length_tokens,length_bucket", "--llm-model", "stub-model",
                    "--llm-base-url", server.base_url, "--llm-cache", str(cache), "--num-proc", str(num_proc),
                    "--chunk-size", "20", "--llm-concurrency", "4"]  # fmt: skip

        # The reference runs in one process: the output must not depend on --num-proc either.
        ref = subprocess.run(
            cmd(tmp_path / "ref.jsonl", tmp_path / "ref.sqlite", 1), capture_output=True, text=True
        )
        assert ref.returncode == 0, ref.stderr
        out, state, cache = (
            tmp_path / "out.jsonl",
            tmp_path / "out.jsonl.progress.json",
            tmp_path / "cache.sqlite",
        )
        proc = subprocess.Popen(cmd(out, cache, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_9_when(
            proc, lambda: state.exists() and json.loads(state.read_text() or "{}").get("consumed", 0) >= 60
        )
        consumed = json.loads(state.read_text())["consumed"]
        assert 0 < consumed < 400, "the kill must land mid-run"
        before = server.cfg.stats["requests"]
        again = subprocess.run(cmd(out, cache, 2), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert f"resumed after {consumed}" in again.stdout
        # The resumed run asks only for records after the last written chunk (fewer where the cache already
        # holds answers that arrived after it).
        assert server.cfg.stats["requests"] - before <= (400 - consumed) * 2
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_explain_gives_evidence_for_the_offline_annotators_too(tmp_path):
    from treasure.annotate.explain import explain

    rec = {"id": "c1", "meta": {"origin": "human"}, "messages": [
        {"role": "user", "content": "Write a Python function that adds two numbers, please."},
        {"role": "assistant", "content": "Here it is:\n\n```python\ndef add(a, b):\n    return a + b\n```\n"}]}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(rec) + "\n")
    opts = AnnotateOptions(categories=["length_tokens", "code_type", "format", "language", "source"],
                           field_map={"source": "meta.origin"})  # fmt: skip
    run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    rows = {r["category"]: r for r in explain(tmp_path / "out.jsonl", "c1", opts)["markers"]}
    assert rows["code_type"]["value"] == "python"
    assert rows["code_type"]["evidence"]["code_blocks"] == [{"language": "python", "lines": 2}]
    assert rows["format"]["evidence"]["detectors_that_fire"][0] == rows["format"]["value"]
    assert rows["language"]["evidence"]["identified"] == rows["language"]["value"] == "English"
    assert rows["length_tokens"]["evidence"]["tokens"] == rows["length_tokens"]["value"]
    assert rows["source"]["evidence"] == {
        "annotator": "fields:source=meta.origin",
        "field": "meta.origin",
        "raw": "human",
    }
    assert not any("differs" in r for r in rows.values())
