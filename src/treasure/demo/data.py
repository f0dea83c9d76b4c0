"""The demo's data: the shipped OpenAssistant conversations, annotated by `treasure annotate`, split by tree.

One record per assistant reply (treasure.oasst): its whole conversation, the human quality label as `quality`
(``quality_bucket`` from per-language quartiles of it) and ``source``; length, format, code type, language, domain
and task from the annotators, with the model's own tokenizer for ``length_tokens``. Train and test are split by
message tree, so no held-out prompt (nor any sibling reply of one) is ever trained on.
"""

from __future__ import annotations

import random
import re
from importlib.resources import files
from pathlib import Path

from treasure.arms import write_jsonl

OASST_FILE = "oasst1_en_validation.jsonl"


def shipped_oasst() -> Path:
    """The packaged oasst1 English validation messages (Apache-2.0; data/SOURCE.md)."""
    return Path(str(files("treasure.demo") / "data" / OASST_FILE))


def shipped_humanevalpack() -> Path:
    """The packaged HumanEvalPack Python problems with their buggy solutions (MIT; evaluate/data/SOURCES.md)."""
    from treasure.evaluate.code_repair import DATA_FILE
    from treasure.evaluate.control import DATA_DIR

    return DATA_DIR / DATA_FILE


# A paragraph break outside a code fence, after a sentence that ends: where a reply can stop and still read whole.
MIN_VIEW_WORDS = 10  # a shorter prefix ("Sure!") is an opening, not an answer
_SENTENCE_END = re.compile(r"[.!?)\"']\s*$")


def stopping_points(reply: str) -> list[int]:
    """Character offsets where `reply` could end early: each blank-line break (outside ``` fences) whose paragraph
    before it ends a sentence, after at least MIN_VIEW_WORDS words, and not the reply's own end."""
    points, fenced, pos, words = [], False, 0, 0
    parts = reply.split("\n\n")
    for part in parts[:-1]:
        fenced ^= part.count("```") % 2 == 1
        pos += len(part)
        words += len(part.split())  # the words of reply[:pos]
        if not fenced and words >= MIN_VIEW_WORDS and _SENTENCE_END.search(part) and reply[pos:].strip():
            points.append(pos)
        pos += 2
    return points


def prefix_views(records: list[dict], per_reply: int, seed: int = 0) -> list[dict]:
    """Up to `per_reply` shorter copies of each record whose reply has `stopping_points`: the same conversation,
    the reply cut at a paragraph break (chosen by a seeded draw), its markers kept for the annotators to redo.

    Why: in human data the end of a reply is foretold by its content, so a model can learn where to stop without
    reading a length marker. The same reply stopping at different points, each with its own length, makes the
    marker the only thing that tells when to stop. Each copy carries `view: "prefix"` and `view_of`, the
    original's message_id; the original records come first, unchanged."""
    if per_reply < 0:
        from treasure.errors import TreasureError

        raise TreasureError(f"length_views {per_reply}: expected 0 or more copies per reply")
    rng = random.Random(seed)
    views = []
    for rec in records:
        reply = rec["messages"][-1]["content"]
        points = stopping_points(reply)
        for cut in sorted(rng.sample(points, min(per_reply, len(points)))):
            view = {
                **rec,
                "messages": [*rec["messages"][:-1], {**rec["messages"][-1], "content": reply[:cut]}],
            }
            view["markers"] = dict(rec.get("markers", {}))
            view["view"], view["view_of"] = "prefix", rec.get("message_id")
            views.append(view)
    return list(records) + views


def fitting(records: list[dict], model: str, max_length: int, reserve: int) -> list[dict]:
    """The records whose whole conversation, in `model`'s chat template, plus `reserve` tokens for the marker
    blocks, fits `max_length`: trained on, each shows its end of turn and the length its `length_tokens` says.

    Why: training cuts a longer record at `max_length`, so its reply never ends there, and its length marker
    tells a stop the model never sees. The same records go to both arms (the reserve does not depend on the arm)."""
    from treasure.train.model import load_tokenizer

    tok = load_tokenizer(model)
    return [
        r
        for r in records
        if len(tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]) + reserve <= max_length
    ]


def prepare_data(
    folder: Path, tokenizer: str, *, test_share: float = 0.2, seed: int = 0, length_views: int = 0
) -> tuple[Path, Path]:
    """Annotated train and test files in `folder` (made once; a second call reuses them). `length_views` adds that
    many `prefix_views` of each training reply (never of a held-out one) before annotation."""
    from treasure.annotate.options import AnnotateOptions
    from treasure.annotate.pipeline import run_annotate
    from treasure.oasst import convert_oasst, split_by_tree

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "train.annotated.jsonl", folder / "test.annotated.jsonl"
    if all(p.exists() for p in out):
        return out
    records = convert_oasst(shipped_oasst()).records
    train, test = split_by_tree(records, test_share=test_share, seed=seed)
    train = prefix_views(train, length_views, seed)
    opts = AnnotateOptions(tokenizer=tokenizer)
    for rows, name, dst in ((train, "train.jsonl", out[0]), (test, "test.jsonl", out[1])):
        raw = folder / name
        write_jsonl(raw, rows)
        run_annotate(str(raw), str(dst), opts, progress=False)
    return out
