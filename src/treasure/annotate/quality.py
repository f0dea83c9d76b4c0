"""Quality markers: a reward model's score (`quality`) and its quartile within each language (`quality_bucket`).

`QualityAnnotator` loads any Hugging Face sequence-classification model with one output (a reward model such as
Skywork-Reward or a local fine-tune) from a hub name or a local folder, renders each conversation with the
tokenizer's chat template (plain "User:/Assistant:" text when it has none), truncates from the left so the end of
the response is always scored, and writes the score rounded to 4 decimals. The rounding is deliberate: scores
then do not depend on the batch shape or the number of CPU threads, so the output is the same for every engine.

`quality_bucket` needs the whole dataset, so it is a pass over the finished output (`assign_quality_buckets`):
records are grouped by their `language` marker (records without one form their own group), and a record's bucket
is 1 + floor(4 * r / n), where n is the size of its group and r the number of records in the group with a strictly
higher score. So 1 is the best quartile, ties always share a bucket (the better one), and small groups need not
fill all four buckets (a group of two gets buckets 1 and 3). A bucket given in the input is kept; its score still
counts in its group. The pass is idempotent, which is what makes a run killed during it safe to redo.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from treasure.annotate.base import PROVENANCE_KEY
from treasure.errors import TreasureError
from treasure.taxonomy import Taxonomy

DECIMALS = 4


def render_for_reward(messages: list[dict], tokenizer: Any) -> str:
    """The text a reward model scores: its own chat template when it has one (as it was trained)."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template that rejects a role (e.g. tool turns): fall back to plain text
            pass
    names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


class QualityAnnotator:
    """Fills `quality` with a reward model's score of the whole conversation."""

    categories = ("quality",)

    def __init__(
        self, model: str, *, batch_size: int = 8, max_length: int | None = None, device: str | None = None
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise TreasureError(
                f"--reward-model {model}: cannot load a sequence-classification model ({e})"
            ) from None
        if self.model.config.num_labels != 1:
            raise TreasureError(
                f"--reward-model {model}: a reward model has one output; this one has {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token is None:  # e.g. GPT-2 and Llama tokenizers: padding is needed for batches
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the response, which the score is read from
        limits = [max_length, getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.model.config, "n_positions", None)]  # fmt: skip
        self.max_length = min(x for x in limits if x) if any(limits) else 2048
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.name = f"reward:{Path(model).name or model}"

    def scores(self, records: list[dict], detail: bool = False) -> list[dict[str, Any]]:
        """Per record: the raw score; with `detail`, also the token count and whether the text was truncated."""
        import torch

        texts = [render_for_reward(r["messages"], self.tokenizer) for r in records]
        out: list[dict[str, Any]] = [{} for _ in texts]
        # Longest first, so each batch pads little. The order depends only on the chunk, so it is reproducible.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                 add_special_tokens=False, return_tensors="pt").to(self.device)  # fmt: skip
            with torch.inference_mode():
                logits = self.model(**enc).logits[:, 0].float().cpu().tolist()
            for i, score in zip(idx, logits, strict=True):
                out[i] = {"score": score}
                if detail:
                    n = len(self.tokenizer(texts[i], add_special_tokens=False)["input_ids"])
                    out[i].update(tokens=n, truncated=n > self.max_length)
        return out

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        todo = [i for i, r in enumerate(records) if "quality" not in r["markers"]]
        found: list[dict[str, Any]] = [{} for _ in records]
        for i, s in zip(todo, self.scores([records[i] for i in todo]), strict=True):
            found[i] = {"quality": round(s["score"], DECIMALS)}
        return found

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        return [
            {
                "quality": {
                    "model": self.name,
                    **s,
                    "rounded": round(s["score"], DECIMALS),
                    "max_length": self.max_length,
                }
            }  # fmt: skip
            for s in self.scores(records, detail=True)
        ]


# -------------------------------------------------------------------------------------- the dataset-level pass


def quartile_bucket(score: float, ascending: list[float]) -> int:
    """The bucket of `score` in a group whose scores are `ascending` (sorted): 1 best, ties share a bucket."""
    n = len(ascending)
    better = n - bisect.bisect_right(ascending, score)
    return min(4, 1 + (4 * better) // n)


def _group(markers: dict) -> str | None:
    lang = markers.get("language")
    return None if lang is None else str(lang)


def bucket_groups(path: str | Path) -> dict[str | None, list[float]]:
    """Sorted quality scores per language group of an annotated JSONL file."""
    groups: dict[str | None, list[float]] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            markers = json.loads(line).get("markers") or {}
            if markers.get("quality") is not None:
                groups[_group(markers)].append(float(markers["quality"]))
    for scores in groups.values():
        scores.sort()
    return dict(groups)


def assign_quality_buckets(
    path: str | Path, taxonomy: Taxonomy, provenance: str = "quartile_by_language"
) -> int:
    """Fill `quality_bucket` in an annotated JSONL file, in place (atomically). Returns how many records have a
    computed bucket. Buckets from the input (provenance "input") are kept; computed ones are recomputed, so
    running it twice gives the same file."""
    from treasure.records import dumps

    path = Path(path)
    groups = bucket_groups(path)
    if not groups:
        return 0
    order = {c: i for i, c in enumerate(taxonomy.names)}
    filled = 0
    tmp = path.with_name(path.name + ".buckets.tmp")
    with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            rec = json.loads(line)
            markers, prov = rec.get("markers") or {}, rec.get(PROVENANCE_KEY) or {}
            if markers.get("quality") is None or prov.get("quality_bucket") == "input":
                dst.write(line)
                continue
            markers["quality_bucket"] = str(
                quartile_bucket(float(markers["quality"]), groups[_group(markers)])
            )
            rec["markers"] = dict(sorted(markers.items(), key=lambda kv: order.get(kv[0], len(order))))
            rec.setdefault(PROVENANCE_KEY, {})["quality_bucket"] = provenance
            filled += 1
            dst.write(dumps(rec) + "\n")
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return filled
