"""What the local and the Ray engine share: the run plan, chunks, the worker that annotates them, the progress file.

An engine splits the input into chunks of `chunk_size` records (`chunked`), has a worker normalise and annotate
each one (`Worker`, loaded once per process or Ray actor), serialises it (`encode_chunk`) and appends the bytes to
the output and rejects files, recording after each write how far it got (`write_state`). Both engines cut the
same chunks, so every annotator sees the same batches and the output is byte-identical.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from treasure.annotate.base import NOTES_KEY, Annotator, apply_annotators
from treasure.annotate.options import AnnotateOptions
from treasure.annotate.registry import build_annotators
from treasure.errors import RecordError
from treasure.records import dumps, normalize_record
from treasure.taxonomy import Taxonomy, load_taxonomy

Item = tuple[int, Any]  # (line or row number, raw record or the RecordError reading it)
Processed = list[tuple[int, dict | RecordError]]  # a chunk's records or errors, in input order


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


class Worker:
    """Normalises and annotates chunks with annotators built once (per process, per Ray actor)."""

    def __init__(self, opts: AnnotateOptions, taxonomy: Taxonomy, annotators: list[Annotator]):
        self.opts, self.taxonomy, self.annotators = opts, taxonomy, annotators

    @classmethod
    def load(cls, opts: AnnotateOptions) -> Worker:
        """A worker in a fresh process: loads the taxonomy and builds the annotators from the options."""
        taxonomy = load_taxonomy(opts.taxonomy)
        worker = cls(opts, taxonomy, build_annotators(taxonomy, opts)[0])
        # One process per core; torch threads would oversubscribe. Only workers whose annotators use torch import
        # it (importing it costs seconds per worker, which heuristic-only runs need not pay).
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        return worker

    def process(self, source: str, items: list[Item]) -> Processed:
        """Normalise and annotate one chunk; returns (line, record or error) in input order."""
        tax, anns = self.taxonomy, self.annotators
        out: Processed = []
        good: list[tuple[int, dict]] = []
        for line, raw in items:
            if isinstance(raw, RecordError):
                out.append((line, raw))
                continue
            try:
                rec = normalize_record(
                    raw, source=source, line=line, taxonomy=tax, max_chars=self.opts.max_chars
                )
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
                    out.append(
                        (line, RecordError(e.message, source=source, line=line, field=e.field, raw=rec))
                    )
        out.sort(key=lambda t: t[0])
        return out


# A pool process's worker: multiprocessing calls module-level functions, so the worker lives here.
_POOL_WORKER: list[Worker] = []


def init_pool_worker(opts: AnnotateOptions) -> None:
    """A `multiprocessing.Pool` initializer: this process's worker."""
    _POOL_WORKER[:] = [Worker.load(opts)]


def pool_process(args: tuple[str, list[Item]]) -> Processed:
    """`Worker.process` in a pool process (after `init_pool_worker`)."""
    return _POOL_WORKER[0].process(*args)


def chunked(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """The items in lists of `size` (the last may be shorter)."""
    chunk: list[Item] = []
    for item in items:
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


def encode_chunk(chunk: Processed, on_error: str) -> Encoded:
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


def write_state(path: Path, state: dict) -> None:
    """Replace the progress file atomically: a kill leaves the old state or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def sync(fh: IO[bytes]) -> int:
    """Flush `fh` to disk; returns its length, which the progress file records."""
    fh.flush()
    os.fsync(fh.fileno())
    return fh.tell()


def progress_bar(initial: int, progress: bool | None):
    """A tqdm bar on stderr (None: shown only on a terminal)."""
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if progress is None else not progress
    return tqdm(desc="annotate", unit="rec", initial=initial, file=sys.stderr, disable=disable)
