"""The Ray engine (Ray Data on a local instance): same bytes as the local engine, shards, resume, kill -9."""

import json
import logging
import subprocess
import sys

import pytest
from openai_stub import StubConfig, StubServer
from test_annotate_llm import kill_9_when
from test_annotate_quality import make_reward_model

from treasure.annotate.options import AnnotateOptions, LLMSettings
from treasure.annotate.pipeline import run_annotate
from treasure.annotate.ray_engine import plan_shards, read_shard
from treasure.errors import RecordError, TreasureError
from treasure.records import iter_raw

ray = pytest.importorskip("ray", reason="the Ray engine needs `pip install treasure[ray]`")

FAST = ["length_tokens", "length_bucket", "source"]


@pytest.fixture(scope="module", autouse=True)
def _stop_ray():
    yield
    ray.shutdown()


@pytest.fixture
def local_ray():
    """A local Ray instance with two CPUs, shared by the tests of this module (starting one takes seconds)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)


def make_input(path, n, bad=(), blank_every=0):
    lines = []
    for i in range(n):
        if i in bad:
            lines.append('{"messages": [{"role": "user", "content": "orphan"}]}')
            continue
        if blank_every and i % blank_every == 1:
            lines.append("   ")
        rec = {"id": f"r{i}", "meta": {"origin": ["human", "synthetic"][i % 2]},
               "messages": [{"role": "user", "content": f"Question {i} <<domain={['Code', 'Math'][i % 2]}>>"},
                            {"role": "assistant", "content": "Answer sentence. " * (1 + i % 9)}]}  # fmt: skip
        if i % 3:
            rec["markers"] = {"language": ["English", "French"][i % 2]}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


def fast_opts(**kw):
    return AnnotateOptions(categories=FAST, field_map={"source": "meta.origin"}, **kw)


# ---------------------------------------------------------------------------------------------- shard plan


def test_shards_read_exactly_what_the_local_reader_reads(tmp_path):
    path = tmp_path / "in.jsonl"
    good = '{"messages": [], "n": %d}\n'
    path.write_bytes(
        (good % 1).encode() + b"\n" + b"  \t \n" + (good % 2).encode() + "\u00a0\u2028\n".encode()
        + b"\x1c\n" + b'{"bad json\n' + (good % 3).encode() + b'{"x": "\xff\xfe"}\n' + (good % 4).encode()
        + (good % 5).encode() + (good % 6).encode().rstrip(b"\n")
    )  # fmt: skip
    expect = [(line, x.to_dict() if isinstance(x, RecordError) else x) for line, x in iter_raw(path)]
    for size in (1, 2, 3, 100):
        shards, n = plan_shards(path, None, size)
        assert n == len(expect) == 8 and [s["start"] for s in shards] == list(range(0, n, size))
        got = [item for s in shards for item in read_shard(path, None, s)]
        assert [(line, x.to_dict() if isinstance(x, RecordError) else x) for line, x in got] == expect
        assert all(
            isinstance(a, RecordError) == isinstance(b, RecordError)
            for (_, a), (_, b) in zip(got, iter_raw(path), strict=True)
        )


def test_non_jsonl_inputs_shard_by_record_index(tmp_path):
    from treasure.records import write_records

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(10)]  # fmt: skip
    write_records(tmp_path / "in.parquet", rows)
    shards, n = plan_shards(tmp_path / "in.parquet", None, 4)
    assert n == 10 and [(s["start"], s["stop"]) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    got = [item for s in shards for item in read_shard(tmp_path / "in.parquet", None, s)]
    assert got == list(iter_raw(tmp_path / "in.parquet"))


def test_a_partial_run_of_another_engine_is_refused(tmp_path, paper):
    make_input(tmp_path / "in.jsonl", 5)
    state = {"fingerprint": fast_opts().fingerprint(paper),
             "input": str(tmp_path / "in.jsonl"), "engine": "local", "consumed": 2}  # fmt: skip
    (tmp_path / "out.jsonl.progress.json").write_text(json.dumps(state))
    with pytest.raises(
        TreasureError, match="a partial run of the local engine is here; resume it with --engine local"
    ):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fast_opts(), engine="ray", progress=False)


def test_shard_size_must_be_a_multiple_of_the_chunk_size(tmp_path, local_ray):
    make_input(tmp_path / "in.jsonl", 5)
    with pytest.raises(TreasureError, match="--shard-size 30 must be a multiple of --chunk-size 16"):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fast_opts(chunk_size=16), engine="ray",
                     shard_size=30, progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------ on Ray


def test_ray_output_is_byte_identical_to_the_local_engine(tmp_path, local_ray):
    """Every kind of annotator at once: fields, length, an LLM endpoint, a reward model and the bucket pass."""
    make_input(tmp_path / "in.jsonl", 120, bad={5, 77}, blank_every=17)
    reward = make_reward_model(tmp_path / "reward")
    with StubServer(StubConfig(latency=0.002)) as server:
        llm = LLMSettings(model="stub", base_url=server.base_url, cache="none", concurrency=4)
        opts = AnnotateOptions(categories=[*FAST, "domain", "format", "quality", "quality_bucket"], llm=llm,
                               reward_model=reward, field_map={"source": "meta.origin"}, on_error="skip",
                               chunk_size=16)  # fmt: skip
        local = run_annotate(tmp_path / "in.jsonl", tmp_path / "local.jsonl", opts, progress=False)
        on_ray = run_annotate(tmp_path / "in.jsonl", tmp_path / "ray.jsonl", opts, progress=False, engine="ray",
                              num_proc=2, shard_size=32)  # fmt: skip
    assert (on_ray.read, on_ray.written, on_ray.rejected, on_ray.noted) == (
        local.read, local.written, local.rejected, local.noted) == (120, 118, 2, local.noted)  # fmt: skip
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "ray.jsonl.rejects.jsonl").read_bytes() == (
        tmp_path / "local.jsonl.rejects.jsonl"
    ).read_bytes()
    first = json.loads((tmp_path / "ray.jsonl").read_text().splitlines()[0])
    assert {"quality", "quality_bucket", "length_tokens", "domain", "source"} <= set(first["markers"])
    assert (
        not (tmp_path / "ray.jsonl.shards").exists() and not (tmp_path / "ray.jsonl.progress.json").exists()
    )


def test_a_crashed_ray_run_resumes_from_its_finished_shards(tmp_path, local_ray, monkeypatch):
    import treasure.annotate.ray_engine as engine

    make_input(tmp_path / "in.jsonl", 200)
    run_annotate(tmp_path / "in.jsonl", tmp_path / "ref.parquet", fast_opts(chunk_size=20), progress=False)
    real, written = engine._write_atomic, []

    def crash_after_three_shards(path, data):
        if path.name.endswith(".done.json"):
            if len(written) == 3:
                raise KeyboardInterrupt  # the driver dies; three shards are on disk
            written.append(path.name)
        real(path, data)

    monkeypatch.setattr(engine, "_write_atomic", crash_after_three_shards)
    with pytest.raises(KeyboardInterrupt):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.parquet", fast_opts(chunk_size=20), engine="ray",
                     num_proc=2, shard_size=40, progress=False)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out.parquet.shards").glob("*.done.json")) == [
        "000000.done.json", "000001.done.json", "000002.done.json"]  # fmt: skip
    monkeypatch.setattr(engine, "_write_atomic", real)
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.parquet", fast_opts(chunk_size=20), engine="ray",
                     num_proc=2, progress=False)  # fmt: skip
    assert s.resumed_from == 120 and s.read == 200
    from treasure.records import load_records

    assert load_records(tmp_path / "out.parquet") == load_records(tmp_path / "ref.parquet")


def test_fail_mode_raises_the_first_bad_record_in_input_order(tmp_path, local_ray):
    make_input(tmp_path / "in.jsonl", 100, bad={70, 95})
    with pytest.raises(RecordError, match=r"in\.jsonl:71: messages: no assistant turn"):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fast_opts(chunk_size=10), engine="ray",
                     num_proc=2, shard_size=10, progress=False)  # fmt: skip
    done = sorted((tmp_path / "out.jsonl.shards").glob("*.done.json"))
    assert len(done) == 7  # the shards before it are on disk, as the local engine keeps the chunks before it


@pytest.mark.slow  # three CLI runs, two of which start a local Ray instance (~10 s each)
def test_kill_9_of_a_ray_run_then_rerun_is_identical(tmp_path):
    ray.shutdown()  # the CLI starts its own local instance
    make_input(tmp_path / "in.jsonl", 20000, bad={33, 12345}, blank_every=997)
    run_annotate(tmp_path / "in.jsonl", tmp_path / "ref.jsonl", fast_opts(chunk_size=250, on_error="skip"),
                 progress=False)  # fmt: skip
    out, shards = tmp_path / "out.jsonl", tmp_path / "out.jsonl.shards"
    cmd = [sys.executable, "-m", "treasure.cli", "annotate", str(tmp_path / "in.jsonl"), "-o", str(out),
           "--categories", ",".join(FAST), "--map", "source=meta.origin", "--on-error", "skip",
           "--chunk-size", "250", "--shard-size", "500", "--engine", "ray", "--num-proc", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_9_when(proc, lambda: len(list(shards.glob("*.done.json"))) >= 3, timeout=180)
    done = len(list(shards.glob("*.done.json")))
    assert 0 < done < 40, "the kill must land mid-run"
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed after" in again.stdout
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert (tmp_path / "out.jsonl.rejects.jsonl").read_bytes() == (
        tmp_path / "ref.jsonl.rejects.jsonl"
    ).read_bytes()


def test_a_worker_error_reaches_the_driver_as_one_line(tmp_path, local_ray):
    from treasure.annotate.llm import EndpointError

    make_input(tmp_path / "in.jsonl", 20)
    llm = LLMSettings(model="m", base_url="http://127.0.0.1:9/v1", cache="none", max_retries=0)
    opts = AnnotateOptions(categories=["domain"], llm=llm, chunk_size=10)
    with pytest.raises(EndpointError) as err:
        run_annotate(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, engine="ray", num_proc=2, progress=False
        )
    assert str(err.value).startswith(
        "LLM endpoint http://127.0.0.1:9/v1: cannot connect"
    ) and "\n" not in str(err.value)
