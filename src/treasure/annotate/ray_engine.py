"""The Ray engine: the annotation pipeline's streaming pass on a Ray cluster, with Ray Data, in resumable shards.

The driver plans shards of `shard_size` records (a multiple of the chunk size, so every annotator sees exactly
the batches the local engine gives it and the output is byte-identical) and keeps the plan in the progress file.
For JSONL a shard is a byte range found by one scan of the file, so workers read their own shard and the input
crosses the network once; other formats are counted once and read by record index. A Ray Data pipeline of shard
descriptors runs `map_batches` over an actor pool (each actor loads its annotators once, like a `--num-proc`
worker) and returns each shard's output bytes, in order. The driver writes every finished shard atomically to
`OUT.shards/`; a crash loses only the shards in flight, and a re-run skips the finished ones. When all are done
they are concatenated into the output, and the pipeline's dataset-level pass and Parquet conversion follow, the
same for every engine.

On a cluster (`address`), the input path must be readable on every node (shared storage, as for Ray's own
readers) and treasure installed in the workers' environment; the output and shards live where the driver runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from itertools import islice
from pathlib import Path
from typing import Any

from treasure.annotate.chunks import (
    Encoded,
    RunPlan,
    Worker,
    chunked,
    encode_chunk,
    progress_bar,
    write_state,
)
from treasure.errors import RecordError, TreasureError
from treasure.records import _iter_jsonl, iter_raw

DEFAULT_CHUNKS_PER_SHARD = 8


# ---------------------------------------------------------------------------------------------- shard plan


def _blank(raw: bytes) -> bool:
    """Whether records' JSONL reader skips this line (it decodes, then skips lines that are only whitespace)."""
    if not raw.strip():
        return True
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def plan_shards(path: Path, split: str | None, shard_size: int) -> tuple[list[dict], int]:
    """Shard descriptors and the number of input records. JSONL shards are byte ranges: [offset, end)."""
    shards: list[dict] = []
    n = 0
    if path.suffix in (".jsonl", ".ndjson"):
        offset = 0
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not _blank(raw):
                    if n % shard_size == 0:
                        if shards:
                            shards[-1]["end"] = offset
                        shards.append({"index": len(shards), "start": n, "offset": offset, "line": lineno})
                    n += 1
                offset += len(raw)
        if shards:
            shards[-1]["end"] = offset
        return shards, n
    for _ in iter_raw(path, split):
        n += 1
    shards = [
        {"index": k, "start": s, "stop": min(s + shard_size, n)}
        for k, s in enumerate(range(0, n, shard_size))
    ]
    return shards, n


class _ByteRange:
    """A path whose `open()` yields only bytes [offset, end) of the file, so records' own JSONL reader (the one
    the local engine uses) reads a shard, and both engines decode input identically."""

    def __init__(self, path: Path, offset: int, end: int):
        self.path, self.offset, self.end = path, offset, end

    def open(self, mode: str = "rb") -> io.BytesIO:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return io.BytesIO(fh.read(self.end - self.offset))

    def __str__(self) -> str:
        return str(self.path)


def read_shard(path: Path, split: str | None, shard: dict) -> list[tuple[int, Any]]:
    """The (line or row number, raw record or RecordError) items of one shard, as `iter_raw` yields them."""
    if "offset" not in shard:
        return list(islice(iter_raw(path, split), shard["start"], shard["stop"]))
    items = []
    shift = shard["line"] - 1  # the reader counts lines from 1 within the range
    for line, raw in _iter_jsonl(_ByteRange(path, shard["offset"], shard["end"])):  # type: ignore[arg-type]
        if isinstance(raw, RecordError):
            raw.line = line + shift
        items.append((line + shift, raw))
    return items


# -------------------------------------------------------------------------------------------------- workers


class ShardWorker:
    """A Ray Data actor: loads the annotators once, then annotates whole shards."""

    def __init__(self, opts, in_path: str):
        self.worker = Worker.load(opts)
        self.opts, self.path = opts, Path(in_path)

    def __call__(self, batch):
        import pyarrow as pa

        rows: dict[str, list] = {k: [] for k in ("index", "out", "rejects", "counts", "error")}
        for shard in batch.to_pylist():
            items = read_shard(self.path, self.opts.split, shard)
            outs, rejects, counts, error = [], [], {"read": 0, "written": 0, "rejected": 0, "noted": 0}, ""
            try:
                for chunk in chunked(iter(items), self.opts.chunk_size):
                    enc: Encoded = encode_chunk(
                        self.worker.process(str(self.path), chunk), self.opts.on_error
                    )
                    outs.append(enc.out)
                    rejects.append(enc.rejects)
                    for key in counts:
                        counts[key] += getattr(enc, key)
            except (
                RecordError
            ) as e:  # on_error="fail": reported in shard order by the driver, like the local run
                error = json.dumps(e.to_dict())
            rows["index"].append(shard["index"])
            rows["out"].append(b"".join(outs))
            rows["rejects"].append(b"".join(rejects))
            rows["counts"].append(json.dumps(counts))
            rows["error"].append(error)
        types = {"index": pa.int64(), "out": pa.binary(), "rejects": pa.binary(), "counts": pa.string(),
                 "error": pa.string()}  # fmt: skip
        return pa.table({k: pa.array(v, type=types[k]) for k, v in rows.items()})


# --------------------------------------------------------------------------------------------------- driver


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _shard_files(plan: RunPlan, index: int) -> tuple[Path, Path, Path]:
    base = plan.shard_dir / f"{index:06d}"
    return Path(f"{base}.jsonl"), Path(f"{base}.rejects.jsonl"), Path(f"{base}.done.json")


def _original_error(exc: BaseException) -> BaseException:
    """The TreasureError a worker raised, out of Ray's wrapper (so the CLI shows its one line), else `exc`."""
    err: BaseException | None = exc
    while err is not None:
        cause = getattr(err, "cause", None)  # RayTaskError: the worker's own exception
        if isinstance(cause, BaseException):
            err = cause
        elif isinstance(err, TreasureError):
            if err.args and isinstance(err.args[0], str):  # Ray appends its retry advice to the message
                err.args = (err.args[0].split("\n", 1)[0], *err.args[1:])
            return err
        else:
            err = err.__cause__
    return exc


def _connect(address: str | None, num_workers: int | None) -> bool:
    """Join `address` or start a local instance; True when this call started Ray (and so should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    elif num_workers:
        kwargs["num_cpus"] = num_workers
    ray.init(**kwargs)
    return True


def stream_ray(
    plan: RunPlan,
    state: dict,
    *,
    num_workers: int | None = None,
    address: str | None = None,
    shard_size: int | None = None,
    progress: bool | None = None,
) -> int:
    """The streaming pass on Ray: fills `plan.stream_path` (and the rejects file). Returns records resumed from."""
    opts = plan.opts
    size_now = plan.in_path.stat().st_size if plan.in_path.is_file() else None
    if "shards" not in state:
        shard_size = shard_size or opts.chunk_size * DEFAULT_CHUNKS_PER_SHARD
        if shard_size % opts.chunk_size:
            raise TreasureError(
                f"--shard-size {shard_size} must be a multiple of --chunk-size {opts.chunk_size}"
            )
        shards, total = plan_shards(plan.in_path, opts.split, shard_size)
        state.update(shard_size=shard_size, shards=shards, total=total, input_size=size_now)
        write_state(plan.state_path, state)
    elif shard_size and shard_size != state["shard_size"]:
        raise TreasureError(
            f"resume with --shard-size {state['shard_size']} (the size this run was planned with)"
        )
    elif state.get("input_size") != size_now:
        raise TreasureError(
            f"{plan.in_path}: changed since this run was planned; delete {plan.state_path.name}"
        )
    plan.shard_dir.mkdir(exist_ok=True)
    # The finished shards on disk are the truth: the state file may lag behind the last one by a kill.
    for key in ("consumed", "written", "rejected", "noted"):
        state[key] = 0
    pending = []
    for shard in state["shards"]:
        done = _shard_files(plan, shard["index"])[2]
        if done.exists():
            counts = json.loads(done.read_text())
            state["consumed"] += counts["read"]
            for key in ("written", "rejected", "noted"):
                state[key] += counts[key]
        else:
            pending.append(shard)
    resumed_from = state["consumed"]
    if pending:
        _run_shards(plan, state, pending, num_workers, address, progress)
    _concatenate(plan, [s["index"] for s in state["shards"]])
    return resumed_from


def _run_shards(plan: RunPlan, state: dict, pending: list[dict], num_workers, address, progress) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise TreasureError("--engine ray needs Ray Data: pip install 'treasure[ray]'") from None

    started = _connect(address, num_workers)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
             ctx.raise_original_map_exception)  # fmt: skip
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # Ray Data logs a worker's exception with its traceback before raising it; we raise it (ours as one line).
        for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # Results in shard order, so the first bad record fails the run first, as in the local engine; a worker's
        # TreasureError reaches the driver as itself.
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = ctx.print_on_execution_start = False
        ctx.raise_original_map_exception = True
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
            ShardWorker,
            fn_constructor_args=(plan.opts, str(plan.in_path)),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(pending))),
            num_cpus=1,
        )
        with progress_bar(state["consumed"], progress) as bar:
            try:
                for row in ds.iter_rows():
                    if row["error"]:
                        err = json.loads(row["error"])
                        raise RecordError(err.pop("error"), **err)
                    out, rej, done = _shard_files(plan, row["index"])
                    _write_atomic(out, row["out"])
                    _write_atomic(rej, row["rejects"])
                    counts = json.loads(row["counts"])
                    _write_atomic(done, json.dumps(counts).encode())  # last: marks the shard finished
                    state["consumed"] += counts["read"]
                    for key in ("written", "rejected", "noted"):
                        state[key] += counts[key]
                    write_state(plan.state_path, state)
                    bar.update(counts["read"])
            except RecordError:
                raise
            except Exception as e:
                ours = _original_error(e)
                if ours is e:
                    raise
                raise ours from None
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
         ctx.raise_original_map_exception) = saved  # fmt: skip
        if started:
            ray.shutdown()


def _concatenate(plan: RunPlan, indices: list[int]) -> None:
    """All shards, in order, into the stream file and the rejects file (redone from scratch after a kill)."""
    targets = [(plan.stream_path, 0)] + ([(plan.rejects_path, 1)] if plan.rejects_path else [])
    for target, which in targets:
        with open(target, "wb") as dst:
            for k in indices:
                with open(_shard_files(plan, k)[which], "rb") as src:
                    shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
