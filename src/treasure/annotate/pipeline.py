"""The annotation pipeline: read any input, run the annotators in batches, write markers with provenance.

- Markers already in a record are kept (provenance "input"); annotators fill only what is missing.
- Bad records fail the run (`on_error="fail"`) or go to a rejects file with the reason and the input as read
  (`on_error="skip"`), so read = written + rejected always holds.
- Resumable: output is written chunk by chunk and a small progress file records, after each chunk is on disk, how
  much input was consumed and how long each output file was. A re-run after `kill -9` truncates the files to the
  last recorded lengths and continues, so the result is byte-identical to an uninterrupted run.
- `num_proc > 1` annotates chunks in worker processes (each loads its annotators once); order is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from treasure.annotate.base import Annotator
from treasure.errors import RecordError, TreasureError
from treasure.records import DEFAULT_MAX_CHARS, dumps, iter_raw, normalize_record, write_records
from treasure.taxonomy import Taxonomy, load_taxonomy

PROVENANCE_KEY = "marker_provenance"


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

    def fingerprint(self, taxonomy: Taxonomy) -> str:
        blob = json.dumps({**asdict(self), "taxonomy": taxonomy.fingerprint()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Summary:
    read: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    annotators: list[str] = field(default_factory=list)
    not_annotated: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        rate = (self.read - self.resumed_from) / self.seconds if self.seconds else 0.0
        resumed = f" (resumed after {self.resumed_from})" if self.resumed_from else ""
        return (
            f"read {self.read}, written {self.written}, rejected {self.rejected}{resumed} "
            f"in {self.seconds:.1f}s ({rate:,.0f} records/s)"
        )


def build_annotators(taxonomy: Taxonomy, opts: AnnotateOptions) -> tuple[list[Annotator], dict[str, str]]:
    """The annotators for the taxonomy's categories, and the categories no annotator can fill (with why)."""
    wanted = [c for c in taxonomy if opts.categories is None or c.name in opts.categories]
    field_map = {c.name: c.from_field for c in wanted if c.from_field}
    field_map.update({k: v for k, v in opts.field_map.items() if opts.categories is None or k in opts.categories})
    by_kind: dict[str, list[str]] = {}
    for c in wanted:
        if c.name not in field_map:
            by_kind.setdefault(c.annotator or "", []).append(c.name)
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

            annotators.append(EmbeddingAnnotator(taxonomy, categories=tuple(cats), extra_seeds_path=opts.seeds))
        elif kind == "fields":
            skipped.update({c: "no input field mapped (use --map CATEGORY=FIELD)" for c in cats})
        elif kind == "reward_model":
            skipped.update({c: "needs a reward model (not part of offline annotation)" for c in cats})
        else:
            skipped.update({c: f"no offline annotator for this category ({kind or 'none set'})" for c in cats})
    if field_map:
        from treasure.annotate.fields import FieldAnnotator

        annotators.insert(0, FieldAnnotator(taxonomy, field_map))
    return annotators, skipped


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
    import torch

    torch.set_num_threads(1)  # one process per core; threads would oversubscribe
    tax = load_taxonomy(opts.taxonomy)
    _WORKER.update(taxonomy=tax, annotators=build_annotators(tax, opts)[0], opts=opts)


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
            good.append((line, normalize_record(raw, source=source, line=line, taxonomy=tax, max_chars=opts.max_chars)))
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


# ------------------------------------------------------------------------------------------------ the run


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _sync(fh) -> int:
    fh.flush()
    os.fsync(fh.fileno())
    return fh.tell()


def run_annotate(
    in_path: str | Path,
    out_path: str | Path,
    opts: AnnotateOptions,
    *,
    rejects_path: str | Path | None = None,
    num_proc: int = 1,
    progress: bool | None = None,
) -> Summary:
    """Annotate `in_path` into `out_path` (.jsonl or .parquet). Resumes a killed run of the same settings."""
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
    annotators, skipped = build_annotators(taxonomy, opts)  # fail fast on bad options, before reading
    if out_path.suffix not in (".jsonl", ".parquet"):
        raise TreasureError(f"{out_path}: unknown output type {out_path.suffix!r} (use .jsonl or .parquet)")
    if out_path.resolve() == in_path.resolve():
        raise TreasureError(f"{out_path}: the output must not overwrite the input")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Parquet cannot be appended to safely: stream JSONL, convert at the end.
    stream_path = out_path if out_path.suffix == ".jsonl" else out_path.with_name(out_path.name + ".partial.jsonl")
    state_path = out_path.with_name(out_path.name + ".progress.json")
    fingerprint = opts.fingerprint(taxonomy)
    state = {"fingerprint": fingerprint, "input": str(in_path), "consumed": 0, "out_bytes": 0, "rej_bytes": 0,
             "written": 0, "rejected": 0}  # fmt: skip
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if old.get("fingerprint") != fingerprint or old.get("input") != str(in_path):
            raise TreasureError(
                f"{out_path}: a partial run with other input or settings is here ({state_path.name}); "
                "delete both to start over"
            )
        state = old
    summary = Summary(resumed_from=state["consumed"], annotators=[a.name for a in annotators], not_annotated=skipped)
    start = time.perf_counter()
    mode = "r+b" if state["consumed"] else "wb"
    if mode == "r+b" and not stream_path.exists():
        raise TreasureError(f"{stream_path}: missing, but {state_path.name} says a run was in progress")
    out_fh = open(stream_path, mode)
    out_fh.truncate(state["out_bytes"])
    out_fh.seek(state["out_bytes"])
    rej_fh = None
    if rejects_path:
        rejects_path = Path(rejects_path)
        rej_fh = open(rejects_path, "r+b" if state["consumed"] and rejects_path.exists() else "wb")
        rej_fh.truncate(state["rej_bytes"])
        rej_fh.seek(state["rej_bytes"])
    pool = None
    try:
        from tqdm.auto import tqdm

        items = iter_raw(in_path, opts.split)
        for _ in range(state["consumed"]):
            next(items, None)
        chunks = ((str(in_path), c) for c in _chunks(items, opts.chunk_size))
        if num_proc > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(opts,))
            results = pool.imap(_process_chunk, chunks)
        else:
            _WORKER.update(taxonomy=taxonomy, annotators=annotators, opts=opts)
            results = map(_process_chunk, chunks)
        bar = tqdm(desc="annotate", unit="rec", initial=state["consumed"], disable=progress is False or None,
                   file=sys.stderr)  # fmt: skip
        if progress is None:
            bar.disable = not sys.stderr.isatty()
        for chunk in results:
            lines, rejects = [], []
            for line, item in chunk:
                if isinstance(item, RecordError):
                    if opts.on_error == "fail":
                        raise item
                    rejects.append(dumps({**item.to_dict(), "input": item.raw}))
                else:
                    lines.append(dumps(item))
            if lines:
                out_fh.write(("\n".join(lines) + "\n").encode("utf-8"))
            if rejects and rej_fh:
                rej_fh.write(("\n".join(rejects) + "\n").encode("utf-8"))
            state["out_bytes"] = _sync(out_fh)
            if rej_fh:
                state["rej_bytes"] = _sync(rej_fh)
            state["consumed"] += len(chunk)
            state["written"] += len(lines)
            state["rejected"] += len(rejects)
            _write_state(state_path, state)
            bar.update(len(chunk))
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
        out_fh.close()
        if rej_fh:
            rej_fh.close()
    if out_path.suffix == ".parquet":
        with open(stream_path, encoding="utf-8") as fh:
            write_records(out_path, [json.loads(line) for line in fh])
        stream_path.unlink()
    state_path.unlink()
    summary.read, summary.written, summary.rejected = state["consumed"], state["written"], state["rejected"]
    summary.seconds = time.perf_counter() - start
    return summary
