"""The annotation pipeline: read any input, run the annotators in batches, write markers with provenance.

- Markers already in a record are kept (provenance "input"); annotators fill only what is missing.
- Bad records fail the run (`on_error="fail"`) or go to a rejects file with the reason and the input as read
  (`on_error="skip"`), so read = written + rejected always holds.
- Resumable: output is written chunk by chunk and a small progress file records, after each chunk is on disk, how
  much input was consumed and how long each output file was. A re-run after `kill -9` truncates the files to the
  last recorded lengths and continues, so the result is byte-identical to an uninterrupted run.
- `num_proc > 1` annotates chunks in worker processes (each loads its annotators once); order is kept.
  `engine="ray"` runs the same chunks on a Ray cluster (annotate/ray_engine.py); the output is byte-identical.
- An annotator may answer `MarkerNote(value, reason)` instead of a value: the value (if any) becomes the marker
  and the reason goes to `marker_notes`, so a marker left out or set to Unspecified always says why.
- Dataset-level markers come after the streaming pass: `quality_bucket` is the quartile of `quality` within the
  record's language (annotate/quality.py). That pass rewrites the finished stream atomically and is idempotent, so
  a run killed during it simply redoes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treasure.annotate.base import Annotator
from treasure.errors import RecordError, TreasureError
from treasure.records import DEFAULT_MAX_CHARS, dumps, iter_raw, normalize_record, write_records
from treasure.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from treasure.annotate.llm import LLMSettings

PROVENANCE_KEY = "marker_provenance"
NOTES_KEY = "marker_notes"  # category -> why its marker is Unspecified or left out (only present when needed)
DATASET_LEVEL = ("quality_bucket",)  # markers that need the whole dataset: filled after the streaming pass


@dataclass(frozen=True)
class MarkerNote:
    """An annotator's answer that needs a reason: the value (None: no marker) and why."""

    value: Any
    reason: str


def _decisive(obj: Any) -> Any:
    """A dataclass as a dict, without the fields marked `metadata={"fingerprint": False}` (they do not change the
    output, e.g. request concurrency, so a killed run may resume with other values)."""
    if is_dataclass(obj):
        return {
            f.name: _decisive(getattr(obj, f.name))
            for f in fields(obj)
            if f.metadata.get("fingerprint", True)
        }
    return obj


@dataclass
class AnnotateOptions:
    """Everything that decides the output; its hash guards a resumed run against changed settings."""

    taxonomy: str | None = None  # path, or None for the paper's
    categories: list[str] | None = None  # restrict to these categories (default: all the taxonomy has)
    tokenizer: str | None = None
    field_map: dict[str, str] = field(default_factory=dict)
    seeds: str | None = None  # extra labelled examples for the embedding classifier
    on_error: str = "fail"
    max_chars: int = DEFAULT_MAX_CHARS
    split: str | None = None
    chunk_size: int = 512
    llm: LLMSettings | None = None  # an LLM for domain/task/format or any category (annotate/llm.py)
    reward_model: str | None = None  # a HF sequence-classification reward model for `quality`
    reward_batch_size: int = 8
    reward_max_length: int | None = None

    def fingerprint(self, taxonomy: Taxonomy) -> str:
        blob = json.dumps({**_decisive(self), "taxonomy": taxonomy.fingerprint()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def _field_map(taxonomy: Taxonomy, opts: AnnotateOptions) -> dict[str, str]:
    wanted = [c for c in taxonomy if opts.categories is None or c.name in opts.categories]
    field_map = {c.name: c.from_field for c in wanted if c.from_field}
    field_map.update(
        {k: v for k, v in opts.field_map.items() if opts.categories is None or k in opts.categories}
    )
    return field_map


def dataset_level_categories(taxonomy: Taxonomy, opts: AnnotateOptions) -> list[str]:
    """The wanted categories filled by a pass over the whole output (not mapped from a field)."""
    field_map = _field_map(taxonomy, opts)
    return [
        c for c in DATASET_LEVEL
        if c in taxonomy and (opts.categories is None or c in opts.categories) and c not in field_map
    ]  # fmt: skip


def build_annotators(taxonomy: Taxonomy, opts: AnnotateOptions) -> tuple[list[Annotator], dict[str, str]]:
    """The annotators for the taxonomy's categories, and the categories no annotator can fill (with why)."""
    wanted = [c for c in taxonomy if opts.categories is None or c.name in opts.categories]
    field_map = _field_map(taxonomy, opts)
    routed_to_llm: set[str] = set()
    if opts.llm is not None:
        from treasure.annotate.llm import llm_categories

        routed_to_llm = set(llm_categories(taxonomy, opts.llm))
    by_kind: dict[str, list[str]] = {}
    for c in wanted:
        if c.name not in field_map and c.name not in DATASET_LEVEL:
            by_kind.setdefault("llm" if c.name in routed_to_llm else (c.annotator or ""), []).append(c.name)
    if dataset_level_categories(taxonomy, opts) and "quality" in taxonomy and "quality" not in field_map:
        # quality_bucket is computed from quality, so asking for the bucket also fills the score.
        by_kind.setdefault("reward_model", [])
        if "quality" not in by_kind["reward_model"]:
            by_kind["reward_model"].append("quality")
    annotators: list[Annotator] = []
    skipped: dict[str, str] = {}
    for kind, cats in by_kind.items():
        if kind == "length":
            from treasure.annotate.length import LengthAnnotator

            annotators.append(_restrict(LengthAnnotator(opts.tokenizer), cats))
        elif kind == "format":
            from treasure.annotate.format import FormatAnnotator

            annotators.append(FormatAnnotator())
        elif kind == "code":
            from treasure.annotate.code import CodeTypeAnnotator

            annotators.append(CodeTypeAnnotator())
        elif kind == "language":
            from treasure.annotate.language import LanguageAnnotator

            annotators.append(LanguageAnnotator())
        elif kind == "embedding":
            from treasure.annotate.embedding import EmbeddingAnnotator

            annotators.append(
                EmbeddingAnnotator(taxonomy, categories=tuple(cats), extra_seeds_path=opts.seeds)
            )
        elif kind == "llm":
            from treasure.annotate.llm import LLMAnnotator

            annotators.append(LLMAnnotator(taxonomy, opts.llm, cats))  # type: ignore[arg-type]
        elif kind == "fields":
            skipped.update({c: "no input field mapped (use --map CATEGORY=FIELD)" for c in cats})
        elif kind == "reward_model":
            if "quality" in cats and opts.reward_model:
                from treasure.annotate.quality import QualityAnnotator

                annotators.append(QualityAnnotator(opts.reward_model, batch_size=opts.reward_batch_size,
                                                   max_length=opts.reward_max_length))  # fmt: skip
            for c in cats:
                if c != "quality":
                    skipped[c] = "a reward model fills `quality` only"
                elif not opts.reward_model:
                    skipped[c] = "needs a reward model (--reward-model PATH)"
        else:
            skipped.update(
                {c: f"no offline annotator for this category ({kind or 'none set'})" for c in cats}
            )
    if field_map:
        from treasure.annotate.fields import FieldAnnotator

        annotators.insert(0, FieldAnnotator(taxonomy, field_map))
    return annotators, skipped


def close_annotators(annotators: list[Annotator]) -> None:
    """Release what annotators hold open (the LLM annotator's event loop, connections and cache)."""
    for ann in annotators:
        close = getattr(getattr(ann, "inner", ann), "close", None)
        if close is not None:
            close()


class _restrict:
    """An annotator limited to some of its categories (e.g. only length_tokens)."""

    def __init__(self, inner: Annotator, categories: list[str]):
        self.inner, self.categories, self.name = inner, tuple(categories), inner.name

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        return [{k: v for k, v in m.items() if k in self.categories} for m in self.inner.annotate(records)]


def apply_annotators(records: list[dict], annotators: list[Annotator], taxonomy: Taxonomy) -> list[dict]:
    """Fill missing markers in place (records already normalised); returns the records."""
    for rec in records:
        prov = rec.setdefault(PROVENANCE_KEY, {})
        for cat in rec["markers"]:
            prov.setdefault(cat, "input")
    for ann in annotators:
        results = ann.annotate(records)
        for rec, found in zip(records, results, strict=True):
            for cat, value in found.items():
                if cat in taxonomy and cat not in rec["markers"]:
                    if isinstance(value, MarkerNote):
                        rec.setdefault(NOTES_KEY, {})[cat] = f"{ann.name}: {value.reason}"
                        value = value.value
                        if value is None:
                            continue
                    rec["markers"][cat] = value
                    rec[PROVENANCE_KEY][cat] = ann.name
    for rec in records:  # markers in taxonomy order, whoever filled them
        rec["markers"] = {c: rec["markers"][c] for c in taxonomy.names if c in rec["markers"]} | {
            c: v for c, v in rec["markers"].items() if c not in taxonomy
        }
    return records


# ------------------------------------------------------------------------------------------ chunk processing

_WORKER: dict[str, Any] = {}


def _init_worker(opts: AnnotateOptions) -> None:
    tax = load_taxonomy(opts.taxonomy)
    _WORKER.update(taxonomy=tax, annotators=build_annotators(tax, opts)[0], opts=opts)
    # One process per core; torch threads would oversubscribe. Only workers whose annotators use torch import it
    # (importing it costs seconds per worker, which heuristic-only runs need not pay).
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _process_chunk(args: tuple[str, list[tuple[int, Any]]]) -> list[tuple[int, dict | RecordError]]:
    """Normalise and annotate one chunk; returns (line, record or error) in input order."""
    source, items = args
    tax, anns, opts = _WORKER["taxonomy"], _WORKER["annotators"], _WORKER["opts"]
    out: list[tuple[int, dict | RecordError]] = []
    good: list[tuple[int, dict]] = []
    for line, raw in items:
        if isinstance(raw, RecordError):
            out.append((line, raw))
            continue
        try:
            rec = normalize_record(raw, source=source, line=line, taxonomy=tax, max_chars=opts.max_chars)
            good.append((line, rec))
        except RecordError as e:
            e.raw = raw
            out.append((line, e))
    try:
        apply_annotators([r for _, r in good], anns, tax)
        out.extend(good)
    except RecordError:
        # One record broke the batch (e.g. an unmappable field value): redo one by one to find it.
        for line, rec in good:
            try:
                apply_annotators([rec], anns, tax)
                out.append((line, rec))
            except RecordError as e:
                out.append((line, RecordError(e.message, source=source, line=line, field=e.field, raw=rec)))
    out.sort(key=lambda t: t[0])
    return out


def _chunks(it: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for item in it:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class Encoded:
    """A processed chunk as the bytes to append to the output and rejects files, with its counts."""

    out: bytes
    rejects: bytes
    read: int
    written: int
    rejected: int
    noted: int


def encode_chunk(chunk: list[tuple[int, dict | RecordError]], on_error: str) -> Encoded:
    """Serialise a processed chunk; with `on_error="fail"` the first bad record raises."""
    lines, rejects, noted = [], [], 0
    for _, item in chunk:
        if isinstance(item, RecordError):
            if on_error == "fail":
                raise item
            rejects.append(dumps({**item.to_dict(), "input": item.raw}))
        else:
            noted += NOTES_KEY in item
            lines.append(dumps(item))
    out = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    rej = ("\n".join(rejects) + "\n").encode("utf-8") if rejects else b""
    return Encoded(out, rej, len(chunk), len(lines), len(rejects), noted)


# ------------------------------------------------------------------------------------------------ the run


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _sync(fh) -> int:
    fh.flush()
    os.fsync(fh.fileno())
    return fh.tell()


@dataclass
class RunPlan:
    """A validated run: paths, settings and annotators, shared by the local and the Ray engine."""

    in_path: Path
    out_path: Path
    opts: AnnotateOptions
    taxonomy: Taxonomy
    annotators: list[Annotator]
    skipped: dict[str, str]
    rejects_path: Path | None
    stream_path: Path  # the JSONL the streaming pass appends to (the output itself, unless it is Parquet)
    state_path: Path  # progress of a run in flight; gone once the run is complete
    shard_dir: Path  # the Ray engine's finished shards
    fingerprint: str
    dataset_level: list[str]


def plan_run(
    in_path: str | Path, out_path: str | Path, opts: AnnotateOptions, rejects_path: str | Path | None = None
) -> RunPlan:
    """Check the options and paths, build the annotators (failing fast, before any input is read)."""
    if opts.on_error not in ("fail", "skip"):
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
            _write_state(plan.state_path, state)
        summary = Summary(resumed_from=resumed_from, annotators=[a.name for a in plan.annotators],
                          not_annotated=dict(plan.skipped))  # fmt: skip
        _finish(plan, summary)
    finally:
        close_annotators(plan.annotators)
    summary.read, summary.written, summary.rejected = state["consumed"], state["written"], state["rejected"]
    summary.noted = state["noted"]
    summary.seconds = time.perf_counter() - start
    return summary


def _progress_bar(initial: int, progress: bool | None):
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if progress is None else not progress
    return tqdm(desc="annotate", unit="rec", initial=initial, file=sys.stderr, disable=disable)


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
        chunks = ((str(plan.in_path), c) for c in _chunks(items, opts.chunk_size))
        if num_proc > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(opts,))
            stack.callback(pool.terminate)
            results = pool.imap(_process_chunk, chunks)
        else:
            _WORKER.update(taxonomy=plan.taxonomy, annotators=plan.annotators, opts=opts)
            results = map(_process_chunk, chunks)
        bar = stack.enter_context(_progress_bar(state["consumed"], progress))
        for chunk in results:
            enc = encode_chunk(chunk, opts.on_error)
            out_fh.write(enc.out)
            state["out_bytes"] = _sync(out_fh)
            if rej_fh:
                rej_fh.write(enc.rejects)
                state["rej_bytes"] = _sync(rej_fh)
            for key in ("written", "rejected", "noted"):
                state[key] += getattr(enc, key)
            state["consumed"] += enc.read
            _write_state(plan.state_path, state)
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
