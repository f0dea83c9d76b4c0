"""The request batcher over a stand-in Generator: grouping, settings kept apart, errors, cancellation, shutdown.

The stand-in's generate_batch records every call and answers each conversation with its own text, so a test sees
which jobs shared a batch and that every job got its own answer. The batcher with a real model is tested through the
server in tests/test_serve.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from treasure.generate.batcher import Batcher, BatcherClosed, batch_key


class FakeGenerator:
    """generate_batch that answers "<mode>:<user text>", records (texts, settings), and can be held or fail."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[list[str], dict]] = []
        self.delay = delay
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def generate_batch(self, conversations, markers, *, batch_size, **settings):
        texts = [c[-1]["content"] for c in conversations]
        assert batch_size == len(conversations) == len(markers)
        self.calls.append((texts, settings))
        self.started.set()
        self.hold.wait(10)
        time.sleep(self.delay)
        if any("boom" in t for t in texts):
            raise RuntimeError("the model fell over")
        return [f"{settings['mode']}:{t}:{m}" for t, m in zip(texts, markers, strict=True)]


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


GREEDY = {"mode": "inferred", "max_new_tokens": 8, "temperature": 0.0}


def _submit_together(batcher: Batcher, jobs: list[tuple[str, dict]]) -> list:
    """Submit while the worker is held on a first batch, so every job is waiting when it is free."""
    fake = batcher.generator
    fake.hold.clear()
    first = batcher.submit(_msg("first"), **GREEDY)
    assert fake.started.wait(10)
    futures = [batcher.submit(_msg(text), **kw) for text, kw in jobs]
    fake.hold.set()
    assert first.result(10) == "inferred:first:None"
    return [f.result(10) for f in futures]


def test_jobs_that_wait_together_run_as_one_batch_each_with_its_answer():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=16, wait_ms=0)
    answers = _submit_together(batcher, [(f"q{i}", GREEDY) for i in range(10)])
    assert answers == [f"inferred:q{i}:None" for i in range(10)]
    assert batcher.batch_sizes == {1: 1, 10: 1}
    assert fake.calls[1][0] == [f"q{i}" for i in range(10)]  # arrival order within the batch
    batcher.close()


def test_the_wait_gathers_jobs_that_arrive_apart():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=4, wait_ms=2_000)
    futures = []
    for i in range(4):  # the fourth fills the batch: it runs then, not after the 2 s
        futures.append(batcher.submit(_msg(f"q{i}"), **GREEDY))
        time.sleep(0.02)
    t = time.monotonic()
    assert [f.result(10) for f in futures] == [f"inferred:q{i}:None" for i in range(4)]
    assert time.monotonic() - t < 1.5 and batcher.batch_sizes == {4: 1}
    batcher.close()


def test_a_burst_makes_one_batch_and_the_wait_has_a_cap():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=64, wait_ms=200)  # cap: 5 x 200 ms after the first
    burst = []
    for i in range(4):  # 50 ms apart: each joins before the 200 ms gap ends
        burst.append(batcher.submit(_msg(f"b{i}"), **GREEDY))
        time.sleep(0.05)
    assert [f.result(10) for f in burst] == [f"inferred:b{i}:None" for i in range(4)]
    assert batcher.batch_sizes == {4: 1}
    stream = []
    t = time.monotonic()
    while time.monotonic() - t < 1.6:  # a job every 50 ms for 1.6 s: the cap starts a batch before the end
        stream.append(batcher.submit(_msg("s"), **GREEDY))
        time.sleep(0.05)
    for f in stream:
        f.result(10)
    assert sum(batcher.batch_sizes.values()) >= 3
    batcher.close()


def test_max_batch_size_caps_a_batch_and_one_means_one_at_a_time_in_order():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=3, wait_ms=0)
    _submit_together(batcher, [(f"q{i}", GREEDY) for i in range(7)])
    assert batcher.batch_sizes == {1: 2, 3: 2}
    one = Batcher(FakeGenerator(), max_batch_size=1, wait_ms=50)
    _submit_together(one, [(f"q{i}", GREEDY) for i in range(5)])
    assert one.batch_sizes == {1: 6}
    assert [texts for texts, _ in one.generator.calls] == [["first"]] + [[f"q{i}"] for i in range(5)]
    batcher.close()
    one.close()


def test_settings_that_differ_are_never_merged():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=16, wait_ms=0)
    sample = {"mode": "inferred", "max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9}
    jobs = [
        ("a", GREEDY),
        ("b", {**GREEDY, "mode": "fixed"}),
        ("c", {**GREEDY, "max_new_tokens": 9}),
        ("d", sample),
        ("e", {**sample, "top_p": 1.0}),
        ("f", {**sample, "seed": 1}),  # sampled with a seed: alone, as it would run alone
        ("g", {**sample, "seed": 1}),
        ("h", {**GREEDY, "seed": 5}),  # greedy: the seed does not matter, batched with a and i
        ("i", GREEDY),
        ("j", sample),
    ]
    answers = _submit_together(batcher, jobs)
    assert answers == [f"{kw['mode']}:{text}:None" for text, kw in jobs]
    groups = {tuple(texts) for texts, _ in fake.calls[1:]}
    assert groups == {("a", "h", "i"), ("b",), ("c",), ("d", "j"), ("e",), ("f",), ("g",)}
    for texts, settings in fake.calls[1:]:  # each batch ran with its jobs' own settings
        for text in texts:
            want = dict(jobs)[text]
            assert settings["mode"] == want["mode"] and settings["max_new_tokens"] == want["max_new_tokens"]
            assert settings["temperature"] == want["temperature"]
    # oldest first: the batch of the oldest waiting job runs next
    assert [texts[0] for texts, _ in fake.calls[1:]] == ["a", "b", "c", "d", "e", "f", "g"]
    batcher.close()


def test_batch_key():
    assert batch_key("fixed", 8, 0.0, 0.5, 3) == batch_key("fixed", 8, 0, 1.0, None)
    assert batch_key("fixed", 8, 1.0, 1.0, None) == batch_key("fixed", 8, 1, 1.0, None)
    assert batch_key("fixed", 8, 1.0, 1.0, 7) != batch_key("fixed", 8, 1.0, 1.0, 7)


def test_an_error_reaches_every_job_of_its_batch_and_the_worker_goes_on():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=16, wait_ms=0)
    fake.hold.clear()
    first = batcher.submit(_msg("first"), **GREEDY)
    assert fake.started.wait(10)
    bad = [batcher.submit(_msg(t), **GREEDY) for t in ("fine", "boom", "also fine")]
    apart = batcher.submit(_msg("other settings"), **{**GREEDY, "mode": "fixed"})
    fake.hold.set()
    assert first.result(10) == "inferred:first:None"
    for f in bad:
        with pytest.raises(RuntimeError, match="fell over"):
            f.result(10)
    assert apart.result(10) == "fixed:other settings:None"
    assert batcher.submit(_msg("after"), **GREEDY).result(10) == "inferred:after:None"
    batcher.close()


def test_a_cancelled_job_is_left_out():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=16, wait_ms=0)
    fake.hold.clear()
    first = batcher.submit(_msg("first"), **GREEDY)
    assert fake.started.wait(10)
    gone = batcher.submit(_msg("gone"), **GREEDY)
    kept = batcher.submit(_msg("kept"), **GREEDY)
    assert gone.cancel()
    fake.hold.set()
    assert first.result(10) and kept.result(10) == "inferred:kept:None"
    with pytest.raises(CancelledError):
        gone.result(0)
    assert fake.calls[1][0] == ["kept"]
    batcher.close()


def test_close_fails_what_waits_and_does_not_hang_on_a_running_batch():
    fake = FakeGenerator()
    batcher = Batcher(fake, max_batch_size=1, wait_ms=0)
    fake.hold.clear()
    running = batcher.submit(_msg("running"), **GREEDY)
    assert fake.started.wait(10)
    waiting = batcher.submit(_msg("waiting"), **GREEDY)
    t = time.monotonic()
    batcher.close(timeout=0.2)  # the running batch is held: close returns anyway
    assert time.monotonic() - t < 2
    with pytest.raises(BatcherClosed):
        batcher.submit(_msg("late"), **GREEDY)
    fake.hold.set()
    assert running.result(10) == "inferred:running:None"  # a batch that started still finishes
    with pytest.raises(BatcherClosed):
        waiting.result(10)
    assert not batcher._thread.join(5) and not batcher._thread.is_alive()
    Batcher(fake).close()  # never started: nothing to wait for


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(FakeGenerator(), max_batch_size=0)
    with pytest.raises(ValueError, match="wait_ms"):
        Batcher(FakeGenerator(), wait_ms=-1)
