"""OpenAssistant data (oasst1, oasst2) -> treasure records, with the human labels as markers.

Input: any file `records.iter_raw` reads (.jsonl, .json, .parquet, a saved HF dataset) holding either messages,
one per row, linked by `parent_id` (the `OpenAssistant/oasst1` rows: message_id, parent_id, message_tree_id, role
prompter|assistant, text, lang, rank, labels, deleted, review_result, synthetic), or whole trees, one per row
(`{message_tree_id, prompt: {..., replies: [{..., replies: [...]}]}}`, the oasst tree export). Rows of both
shapes may be mixed.

Output: one record per assistant reply. `messages` is the path from the tree's root prompt to that reply
(prompter -> user), so a reply deep in a tree is a multi-turn conversation; kept fields: message_tree_id,
message_id, parent_id, rank (0 = best among its siblings, None when unranked), lang, and `oasst_labels` (label
name -> value) of the reply. A reply is skipped, counted by reason, when it or a message above it is deleted or
did not pass review (`review_result` not true), when its parent chain leaves the file, or when a turn on its path
is empty or breaks the user/assistant alternation. Malformed rows raise a RecordError naming the file and line.

Markers (kept by `annotate` as input markers):
- `quality`: the reply's human `quality` label as oasst exports it: the mean of its labellers' ratings on a
  5-point scale mapped to 0, 0.25, ..., 1 (higher is better), rounded to 4 decimals like the reward-model scores
  of annotate/quality.py. The paper's `quality` is a reward-model score (a float with no fixed range, higher is
  better): the scale differs, the direction does not, and `quality_bucket`, the marker a model is conditioned
  on, depends on the order within a language alone. Do not mix these scores with a reward model's in one
  dataset. A reply without a quality label gets no `quality` (and annotate leaves its bucket out).
- `source`: Human, or Synthetic when any message on the path was written by a model (`synthetic`).
- `quality_bucket` is left to annotate, which computes per-language quartiles of `quality` over the whole output.

`split_by_tree` splits records into train and test by a hash of message_tree_id, so that no tree (no shared
prompt or conversation prefix) is on both sides. From the command line, annotate first, then split:

    treasure annotate oasst.jsonl --from oasst -o oasst.annotated.jsonl
    python -c "from treasure.oasst import split_by_tree; from treasure.records import load_records, write_records
    train, test = split_by_tree(load_records('oasst.annotated.jsonl'))
    write_records('train.jsonl', train); write_records('test.jsonl', test)"
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treasure.errors import RecordError, TreasureError
from treasure.records import iter_raw

ROLES = {"prompter": "user", "assistant": "assistant"}
DECIMALS = 4  # as annotate/quality.py rounds reward-model scores


@dataclass
class OasstConversion:
    """The records of one oasst file and what did not become a record."""

    records: list[dict]
    messages: int = 0  # messages read (trees flattened)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> assistant replies skipped
    unlabelled: int = 0  # records without a human quality label (no `quality` marker)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (
            f"{len(self.records)} replies from {self.messages} messages; skipped replies: {skipped}; "
            f"without a quality label: {self.unlabelled}"
        )


def read_oasst(path: str | Path) -> list[dict]:
    """The records of an oasst file (see the module docstring); warns with the counts when replies were skipped."""
    conv = convert_oasst(path)
    if conv.skipped:
        warnings.warn(f"{path}: {conv.summary()}", stacklevel=2)
    return conv.records


def convert_oasst(path: str | Path) -> OasstConversion:
    """Read an oasst file of messages or trees into records, counting what was skipped and why."""
    messages: dict[str, dict] = {}  # message_id -> message, in file order (trees depth-first)
    for line, raw in iter_raw(path):
        if isinstance(raw, RecordError):
            raise raw
        err = _where(str(path), line)
        if not isinstance(raw, dict):
            raise err(None, f"expected a JSON object, got {type(raw).__name__}")
        if "prompt" in raw and "role" not in raw:
            tree = raw.get("message_tree_id")
            rows = _flatten(raw["prompt"], "prompt", None, tree, err)
        elif "message_id" in raw:
            if not isinstance(raw.get("parent_id"), str | None):
                raise err("parent_id", f"expected a message id or null, got {raw['parent_id']!r}")
            rows = [(_message(raw, None, err), raw.get("parent_id"), raw.get("message_tree_id"))]
        else:
            raise err(None, "not an oasst message (message_id, parent_id, role, text) or tree (prompt)")
        for msg, parent, tree in rows:
            if msg["id"] in messages:
                raise err(msg["field"] + "message_id", f"duplicate message_id {msg['id']!r}")
            messages[msg["id"]] = {**msg, "parent_id": parent, "tree": tree}

    conv = OasstConversion(records=[], messages=len(messages))
    for msg in messages.values():
        if msg["role"] != "assistant":
            continue
        path_or_reason = _path(msg, messages)
        if isinstance(path_or_reason, str):
            conv.skipped[path_or_reason] += 1
            continue
        record = _record(path_or_reason)
        conv.unlabelled += "quality" not in record["markers"]
        conv.records.append(record)
    return conv


def split_by_tree(
    records: list[dict], test_share: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, test): each message tree goes wholly to one side, test with probability `test_share`, decided by
    a hash of (seed, message_tree_id), so the split is the same on every machine and for any record order. The
    share is one of trees, so the share of records varies around it."""
    if not 0 <= test_share <= 1:
        raise TreasureError(f"test_share {test_share}: expected a share between 0 and 1")
    train: list[dict] = []
    test: list[dict] = []
    for i, rec in enumerate(records):
        tree = rec.get("message_tree_id")
        if not tree:
            raise TreasureError(f"record {i}: no message_tree_id to split by")
        digest = hashlib.sha256(f"{seed}:{tree}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") < test_share * 2**64 else train).append(rec)
    return train, test


# ---------------------------------------------------------------------------------------------------- helpers


def _where(source: str, line: int):
    def err(fld: str | None, message: str) -> RecordError:
        return RecordError(message, source=source, line=line, field=fld)

    return err


def _message(raw: Any, prefix: str | None, err) -> dict:
    """The fields of one message that a record needs; `prefix` is its place in a tree row (None: a flat row)."""
    where = f"{prefix}." if prefix else ""
    if not isinstance(raw, dict):
        raise err(prefix, f"expected a message object, got {type(raw).__name__}")
    for key in ("message_id", "role", "text"):
        if not isinstance(raw.get(key), str):
            raise err(
                where + key, "missing" if raw.get(key) is None else f"expected a string, got {raw[key]!r}"
            )
    if raw["role"] not in ROLES:
        raise err(where + "role", f"unknown role {raw['role']!r} (valid: {', '.join(ROLES)})")
    rank = raw.get("rank")
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, int | float) or rank != int(rank)
    ):
        raise err(where + "rank", f"expected an integer or null, got {rank!r}")
    return {
        "id": raw["message_id"],
        "field": where,
        "role": ROLES[raw["role"]],
        "text": raw["text"],
        "removed": "deleted" if raw.get("deleted") else _review(raw.get("review_result")),
        "synthetic": bool(raw.get("synthetic")),
        "rank": None if rank is None else int(rank),
        "lang": raw.get("lang"),
        "labels": _labels(raw.get("labels"), where + "labels", err),
    }


def _review(result: Any) -> str | None:
    return None if result is True else ("failed review" if result is False else "not reviewed")


def _labels(raw: Any, fld: str, err) -> dict[str, float]:
    """name -> value from the columnar form ({name: [...], value: [...], count: [...]}, the HF rows) or the
    per-name form ({name: {value, count}}, the oasst JSON export)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise err(fld, f"expected a mapping, got {type(raw).__name__}")
    if isinstance(raw.get("name"), list):
        names, values = raw["name"], raw.get("value")
        if not isinstance(values, list) or len(values) != len(names):
            raise err(fld + ".value", f"expected a list of {len(names)} values, one per name")
        pairs = list(zip(names, values, strict=True))
    else:
        pairs = [(k, v.get("value") if isinstance(v, dict) else v) for k, v in raw.items()]
    out = {}
    for name, value in pairs:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise err(f"{fld}.{name}", f"expected a number, got {value!r}")
        out[str(name)] = float(value)
    return out


def _flatten(
    node: Any, prefix: str, parent: str | None, tree: str | None, err
) -> list[tuple[dict, Any, Any]]:
    """A tree row's messages depth-first, each with its parent's id taken from the nesting."""
    msg = _message(node, prefix, err)
    tree = tree or msg["id"]  # an oasst tree's id is its root prompt's id
    out = [(msg, parent, tree)]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise err(f"{prefix}.replies", f"expected a list, got {type(replies).__name__}")
    for i, child in enumerate(replies):
        out += _flatten(child, f"{prefix}.replies[{i}]", msg["id"], tree, err)
    return out


def _path(reply: dict, messages: dict[str, dict]) -> list[dict] | str:
    """The messages from the root prompt down to `reply`, or why the reply cannot be a record."""
    if reply["removed"]:
        return reply["removed"]
    chain, seen = [reply], {reply["id"]}
    while chain[-1]["parent_id"] is not None:
        parent = messages.get(chain[-1]["parent_id"])
        if parent is None or parent["id"] in seen:
            return (
                "broken parent chain (a parent not in the file)" if parent is None else "parent chain loops"
            )
        if parent["removed"]:
            return f"a message above it: {parent['removed']}"
        chain.append(parent)
        seen.add(parent["id"])
    chain.reverse()
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(chain)):
        return "roles do not alternate user/assistant from the root"
    if any(not m["text"].strip() for m in chain):
        return "an empty turn on its path"
    return chain


def _record(chain: list[dict]) -> dict:
    reply = chain[-1]
    markers: dict[str, Any] = {}
    if "quality" in reply["labels"]:
        markers["quality"] = round(reply["labels"]["quality"], DECIMALS)
    markers["source"] = "Synthetic" if any(m["synthetic"] for m in chain) else "Human"
    return {
        "messages": [{"role": m["role"], "content": m["text"]} for m in chain],
        "markers": markers,
        "message_tree_id": reply["tree"] or chain[0]["id"],
        "message_id": reply["id"],
        "parent_id": reply["parent_id"],
        "rank": reply["rank"],
        "lang": reply["lang"],
        "oasst_labels": reply["labels"],
    }
