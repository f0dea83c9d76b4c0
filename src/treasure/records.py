"""Dataset I/O: read JSONL / JSON / Parquet / saved HF datasets, normalise every record, write JSONL or Parquet.

Every record becomes ``{"messages": [{"role", "content"}, ...], "markers": {...}, ...other input fields}``.
Accepted input shapes: ``messages``; ``prompt``/``completion`` (strings or message lists); Alpaca
(``instruction``/``input``/``output``); ShareGPT (``conversations`` of ``from``/``value``). Fields that were
turned into ``messages`` are removed; every other field is kept as it was. Each problem raises a RecordError
naming the file, line (or row) and field; each message is checked by treasure/messages.py, as every other edge
checks its messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from treasure.errors import RecordError, TaxonomyError, TreasureError
from treasure.messages import check_content, normalize_messages
from treasure.taxonomy import Taxonomy

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system", "tool": "tool",
    "function": "tool", "observation": "tool",
}  # fmt: skip
# A message longer than this is almost always a broken record (a file pasted in by mistake, a binary blob).
DEFAULT_MAX_CHARS = 1_000_000


def _where(source: str, line: int | None):
    def err(field: str | None, message: str) -> RecordError:
        return RecordError(message, source=source, line=line, field=field)

    return err


def _sharegpt(value: Any, field: str, err) -> Any:
    """ShareGPT turns (`from`/`value`) as messages; anything else is left to the message checks."""
    if not isinstance(value, list):
        return value
    out = []
    for i, msg in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(msg, dict):
            out.append(msg)
            continue
        msg = dict(msg)
        if "from" not in msg:
            raise err(f"{f}.from", "missing")
        who = msg.pop("from")
        if not isinstance(who, str) or who.lower() not in SHAREGPT_ROLES:
            raise err(f"{f}.from", f"unknown role {who!r} (valid: {', '.join(sorted(SHAREGPT_ROLES))})")
        if "value" not in msg:
            raise err(f"{f}.value", "missing")
        out.append({"role": SHAREGPT_ROLES[who.lower()], "content": msg.pop("value"), **msg})
    return out


def _to_messages(raw: dict, err, **where: Any) -> tuple[list[dict], tuple[str, ...]]:
    """Return (messages, consumed input keys); `where` (source, line, max_chars) goes to the message checks."""
    if "messages" in raw:
        return normalize_messages(raw["messages"], field="messages", **where), ("messages",)
    if "conversations" in raw:
        turns = _sharegpt(raw["conversations"], "conversations", err)
        return normalize_messages(turns, field="conversations", **where), ("conversations",)
    if "prompt" in raw or "completion" in raw:
        for key in ("prompt", "completion"):
            if key not in raw:
                raise err(key, "missing (prompt/completion records need both)")
        msgs = []
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            value = raw[key]
            if isinstance(value, str):
                msgs.append({"role": role, "content": check_content(value, key, **where)})
            else:
                msgs += normalize_messages(value, field=key, **where)
        return msgs, ("prompt", "completion")
    if "instruction" in raw or "output" in raw:
        for key in ("instruction", "output"):
            if key not in raw:
                raise err(key, "missing (Alpaca records need instruction and output)")
        instruction, extra, output = raw["instruction"], raw.get("input", ""), raw["output"]
        for key, val in (("instruction", instruction), ("input", extra), ("output", output)):
            if not isinstance(val, str):
                raise err(key, f"expected a string, got {type(val).__name__}")
        user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        msgs = [
            {"role": "user", "content": check_content(user, "instruction", **where)},
            {"role": "assistant", "content": check_content(output, "output", **where)},
        ]
        return msgs, ("instruction", "input", "output")
    raise err(
        None,
        "no conversation found: expected `messages`, `conversations` (ShareGPT), `prompt`/`completion` "
        "or `instruction`/`output` (Alpaca)",
    )


def normalize_record(
    raw: Any,
    *,
    source: str = "<input>",
    line: int | None = None,
    taxonomy: Taxonomy | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> dict:
    """Normalise one input record. Raises RecordError naming source, line and field."""
    err = _where(source, line)
    if not isinstance(raw, dict):
        raise err(None, f"expected a JSON object, got {type(raw).__name__}")
    messages, consumed = _to_messages(raw, err, source=source, line=line, max_chars=max_chars)
    field = consumed[0] if consumed[0] in ("messages", "conversations") else "messages"
    if not any(m["role"] == "assistant" for m in messages):
        raise err(field, "no assistant turn")
    if messages[-1]["role"] != "assistant":
        raise err(f"{field}[{len(messages) - 1}].role", "the last turn must be the assistant's reply")
    record = {"messages": messages}
    markers = raw.get("markers") or {}
    if not isinstance(markers, dict):
        raise err("markers", f"expected a mapping of category to value, got {type(markers).__name__}")
    if taxonomy is not None:
        checked = {}
        for key, value in markers.items():
            if value is None:  # Parquet writes a missing marker as null
                continue
            try:
                checked[key] = taxonomy.coerce(key, value)
            except TaxonomyError as e:
                raise err(f"markers.{key}", str(e).split(": ", 1)[-1]) from None
        markers = checked
    else:
        markers = {k: v for k, v in markers.items() if v is not None}
    record["markers"] = markers
    for key, value in raw.items():
        if key not in consumed and key not in record:
            record[key] = value
    return record


# --------------------------------------------------------------------------------------------------- reading


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw.decode("utf-8", errors="replace").rstrip("\n")
                yield (
                    lineno,
                    RecordError(f"invalid UTF-8 at byte {e.start}", source=str(path), line=lineno, raw=bad),
                )
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield (
                    lineno,
                    RecordError(
                        f"invalid JSON: {e.msg} (column {e.colno})",
                        source=str(path),
                        line=lineno,
                        raw=text.rstrip("\n"),
                    ),
                )


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TreasureError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise TreasureError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise TreasureError(f"{path}: a .json file must hold a list of records (use .jsonl for one per line)")
    yield from enumerate(data, 1)


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise TreasureError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def _iter_hf_dataset(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:
        raise TreasureError(f"{path}: not a saved Hugging Face dataset ({e})") from None
    if isinstance(ds, DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise TreasureError(f"{path}: holds splits {list(ds)}; choose one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise TreasureError(f"{path}: no split {split!r} (has {list(ds)})")
        ds = ds[split]
    yield from enumerate(ds, 1)


def iter_raw(path: str | Path, split: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number, raw record or RecordError) from any supported file or folder."""
    p = Path(path)
    if not p.exists():
        raise TreasureError(f"{p}: no such file or directory")
    if p.is_dir():
        yield from _iter_hf_dataset(p, split)
    elif p.suffix == ".parquet":
        yield from _iter_parquet(p)
    elif p.suffix == ".json":
        yield from _iter_json_array(p)
    elif p.suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(p)
    else:
        raise TreasureError(
            f"{p}: unknown file type {p.suffix!r} (use .jsonl, .json, .parquet or a dataset folder)"
        )


def read_records(
    path: str | Path,
    taxonomy: Taxonomy | None = None,
    *,
    split: str | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[tuple[int, dict | RecordError]]:
    """Yield (line, normalised record) or (line, RecordError) for each input record; never stops at a bad one."""
    for line, raw in iter_raw(path, split):
        if isinstance(raw, RecordError):
            yield line, raw
            continue
        try:
            yield (
                line,
                normalize_record(raw, source=str(path), line=line, taxonomy=taxonomy, max_chars=max_chars),
            )
        except RecordError as e:
            yield line, e


def load_records(path: str | Path, taxonomy: Taxonomy | None = None, **kw) -> list[dict]:
    """All records of a file; the first bad one raises its RecordError."""
    out = []
    for _, rec in read_records(path, taxonomy, **kw):
        if isinstance(rec, RecordError):
            raise rec
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------------- writing


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def write_records(path: str | Path, records: list[dict]) -> int:
    """Write records to .jsonl or .parquet (chosen by extension). Returns the count written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # from_pylist takes its columns from the first row only: build from one struct array so a key that
            # only some records carry is kept.
            rows = list(records)
            table = pa.Table.from_struct_array(pa.array(rows)) if rows else pa.table({})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TreasureError(
                f"{p}: records do not share one schema for Parquet ({e}); write .jsonl"
            ) from None
        pq.write_table(table, p)
        return table.num_rows
    if p.suffix not in (".jsonl", ".ndjson"):
        raise TreasureError(f"{p}: unknown output type {p.suffix!r} (use .jsonl or .parquet)")
    n = 0
    with p.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(dumps(rec) + "\n")
            n += 1
    return n


def last_assistant(record: dict) -> str:
    """The final assistant turn: what response-level annotators measure and what a model's answer is compared to."""
    return record["messages"][-1]["content"]


def prompt_messages(record: dict) -> list[dict]:
    """The turns a model answers: the conversation before the record's final assistant turn."""
    return record["messages"][:-1]


def prompt_text(record: dict) -> str:
    """The last user turn: what prompt-level annotators (domain, task) read."""
    for msg in reversed(record["messages"]):
        if msg["role"] == "user":
            return msg["content"]
    return ""
