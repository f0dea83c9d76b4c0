"""An annotate run: read any input, run the annotators in chunks, write markers with provenance; `run_annotate`.

- Markers already in a record are kept (provenance "input"); annotators fill only what is missing.
- Bad records fail the run (`on_error="fail"`) or go to a rejects file with the reason and the input as read
  (`on_error="skip"`), so read = written + rejected always holds.
- Resumable: output is written chunk by chunk and a small progress file records, after each chunk is on disk, how
  much input was consumed and how long each output file was. A re-run after `kill -9` truncates the files to the
  last recorded lengths and continues, so the result is byte-identical to an uninterrupted run.
- The local engine is here: `num_proc > 1` annotates chunks in worker processes (each loads its annotators once);
  order is kept. `engine="ray"` runs the same chunks on a Ray cluster (annotate/ray_engine.py); the output is
  byte-identical. What both engines share (the plan, chunks, the worker, the progress file) is annotate/chunks.py;
  which annotators a run builds is annotate/registry.py; what an annotator answers (values, `MarkerNote`s with
  a reason for `marker_notes`) and how that becomes markers and provenance is annotate/base.py.
- Dataset-level markers come after the streaming pass: `quality_bucket` is the quartile of `quality` within the
  record's language (annotate/quality.py). That pass rewrites the finished stream atomically and is idempotent, so
  a run killed during it simply redoes it.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from treasure.annotate.chunks import (
    RunPlan,
    Worker,
    chunked,
    encode_chunk,
    init_pool_worker,
    pool_process,
    progress_bar,
    sync,
    write_state,
)
from treasure.annotate.options import ON_ERROR, AnnotateOptions
from treasure.annotate.registry import build_annotators, close_annotators, dataset_level_categories
from treasure.errors import TreasureError
from treasure.records import iter_raw, write_records
from treasure.taxonomy import load_taxonomy


@dataclass
class Summary:
    read: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    noted: int = 0  # records with marker_notes
    annotators: list[str] = field(default_factory=list)
    not_annotated: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        rate = (self.read - self.resumed_from) / self.seconds if self.seconds else 0.0
        resumed = f" (resumed after {self.resumed_from})" if self.resumed_from else ""
        return (
            f"read {self.read}, written {self.written}, rejected {self.rejected}{resumed} "
            f"in {self.seconds:.1f}s ({rate:,.0f} records/s)"
        )


def plan_run(
    in_path: str | Path, out_path: str | Path, opts: AnnotateOptions, rejects_path: str | Path | None = None
) -> RunPlan:
    """Check the options and paths, build the annotators (failing fast, before any input is read)."""
    if opts.on_error not in ON_ERROR:
        raise TreasureError(f"--on-error {opts.on_error!r}: expected fail or skip")
    if opts.on_error == "skip" and rejects_path is None:
        rejects_path = str(out_path) + ".rejects.jsonl"
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.exists():
        raise TreasureError(f"{in_path}: no such file or directory")
    taxonomy = load_taxonomy(opts.taxonomy)
    for c in opts.categories or []:
        taxonomy[c]
    if out_path.suffix not in (".jsonl", ".parquet"):
        raise TreasureError(f"{out_path}: unknown output type {out_path.suffix!r} (use .jsonl or .parquet)")
    if out_path.resolve() == in_path.resolve():
        raise TreasureError(f"{out_path}: the output must not overwrite the input")
    annotators, skipped = build_annotators(taxonomy, opts)  # fail fast on bad options, before reading
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Parquet cannot be appended to safely: stream JSONL, convert at the end.
    stream = out_path if out_path.suffix == ".jsonl" else out_path.with_name(out_path.name + ".partial.jsonl")
    return RunPlan(
        in_path=in_path,
        out_path=out_path,
        opts=opts,
        taxonomy=taxonomy,
        annotators=annotators,
        skipped=skipped,
        rejects_path=Path(rejects_path) if rejects_path else None,
        stream_path=stream,
        state_path=out_path.with_name(out_path.name + ".progress.json"),
        shard_dir=out_path.with_name(out_path.name + ".shards"),
        fingerprint=opts.fingerprint(taxonomy),
        dataset_level=dataset_level_categories(taxonomy, opts),
    )


def _load_state(plan: RunPlan, engine: str) -> dict:
    state = {"fingerprint": plan.fingerprint, "input": str(plan.in_path), "engine": engine, "phase": "stream",
             "consumed": 0, "out_bytes": 0, "rej_bytes": 0, "written": 0, "rejected": 0, "noted": 0}  # fmt: skip
    if not plan.state_path.exists():
        return state
    old = json.loads(plan.state_path.read_text())
    if old.get("fingerprint") != plan.fingerprint or old.get("input") != str(plan.in_path):
        raise TreasureError(
            f"{plan.out_path}: a partial run with other input or settings is here ({plan.state_path.name}); "
            "delete both to start over"
        )
    if old.get("engine", "local") != engine:
        raise TreasureError(
            f"{plan.out_path}: a partial run of the {old.get('engine', 'local')} engine is here; resume it with "
            f"--engine {old.get('engine', 'local')}, or delete {plan.state_path.name} to start over"
        )
    return {**state, **old}


def run_annotate(
    in_path: str | Path,
    out_path: str | Path,
    opts: AnnotateOptions,
    *,
    rejects_path: str | Path | None = None,
    num_proc: int | None = 1,
    progress: bool | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    shard_size: int | None = None,
) -> Summary:
    """Annotate `in_path` into `out_path` (.jsonl or .parquet). Resumes a killed run of the same settings.

    `engine="ray"` runs on a Ray cluster (`ray_address`, else a local instance) with `num_proc` workers (None:
    one per CPU of the cluster), in shards of `shard_size` records (a multiple of `opts.chunk_size`).
    """
    if engine not in ("local", "ray"):
        raise TreasureError(f"--engine {engine!r}: expected local or ray")
    plan = plan_run(in_path, out_path, opts, rejects_path)
    start = time.perf_counter()
    try:
        state = _load_state(plan, engine)
        resumed_from = state["consumed"]
        if state["phase"] == "stream":
            if engine == "ray":
                from treasure.annotate.ray_engine import stream_ray

                resumed_from = stream_ray(plan, state, num_workers=num_proc, address=ray_address,
                                          shard_size=shard_size, progress=progress)  # fmt: skip
            else:
                _stream_local(plan, state, num_proc or 1, progress)
            state["phase"] = "finish"
            write_state(plan.state_path, state)
        summary = Summary(resumed_from=resumed_from, annotators=[a.name for a in plan.annotators],
                          not_annotated=dict(plan.skipped))  # fmt: skip
        _finish(plan, summary)
    finally:
        close_annotators(plan.annotators)
    summary.read, summary.written, summary.rejected = state["consumed"], state["written"], state["rejected"]
    summary.noted = state["noted"]
    summary.seconds = time.perf_counter() - start
    return summary


def _stream_local(plan: RunPlan, state: dict, num_proc: int, progress: bool | None) -> None:
    """The streaming pass in this process (or a pool of `num_proc` processes), chunk by chunk, resumable."""
    opts = plan.opts
    mode = "r+b" if state["consumed"] else "wb"
    if mode == "r+b" and not plan.stream_path.exists():
        raise TreasureError(
            f"{plan.stream_path}: missing, but {plan.state_path.name} says a run was in progress"
        )
    with ExitStack() as stack:
        out_fh = stack.enter_context(open(plan.stream_path, mode))
        out_fh.truncate(state["out_bytes"])
        out_fh.seek(state["out_bytes"])
        rej_fh = None
        if plan.rejects_path:
            rej_mode = "r+b" if state["consumed"] and plan.rejects_path.exists() else "wb"
            rej_fh = stack.enter_context(open(plan.rejects_path, rej_mode))
            rej_fh.truncate(state["rej_bytes"])
            rej_fh.seek(state["rej_bytes"])
        items = iter_raw(plan.in_path, opts.split)
        for _ in range(state["consumed"]):
            next(items, None)
        source = str(plan.in_path)
        if num_proc > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(num_proc, initializer=init_pool_worker, initargs=(opts,))
            stack.callback(pool.terminate)
            results = pool.imap(pool_process, ((source, c) for c in chunked(items, opts.chunk_size)))
        else:
            worker = Worker(opts, plan.taxonomy, plan.annotators)
            results = (worker.process(source, c) for c in chunked(items, opts.chunk_size))
        bar = stack.enter_context(progress_bar(state["consumed"], progress))
        for chunk in results:
            enc = encode_chunk(chunk, opts.on_error)
            out_fh.write(enc.out)
            state["out_bytes"] = sync(out_fh)
            if rej_fh:
                rej_fh.write(enc.rejects)
                state["rej_bytes"] = sync(rej_fh)
            for key in ("written", "rejected", "noted"):
                state[key] += getattr(enc, key)
            state["consumed"] += enc.read
            write_state(plan.state_path, state)
            bar.update(enc.read)


def _finish(plan: RunPlan, summary: Summary) -> None:
    """After the streaming pass: dataset-level markers, Parquet, cleanup. Each step may be redone after a kill."""
    if plan.stream_path.exists():  # absent only when a Parquet run was killed after its conversion
        if plan.dataset_level:
            from treasure.annotate.quality import assign_quality_buckets

            if assign_quality_buckets(plan.stream_path, plan.taxonomy) == 0:
                summary.not_annotated["quality_bucket"] = (
                    "no record has a quality score (--reward-model PATH, or quality markers in the input)"
                )
        if plan.out_path.suffix == ".parquet":
            with open(plan.stream_path, encoding="utf-8") as fh:
                write_records(plan.out_path, [json.loads(line) for line in fh])
            plan.stream_path.unlink()
    if plan.shard_dir.exists():
        shutil.rmtree(plan.shard_dir)
    plan.state_path.unlink()
