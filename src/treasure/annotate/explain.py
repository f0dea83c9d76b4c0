"""Why a record's markers have their values: `treasure annotate FILE --explain ID`.

FILE is usually an annotated output (it holds `marker_provenance`, `marker_notes` and, for `quality_bucket`, the
scores of the whole dataset), but raw input works too. The record's annotator-made markers are set aside and the
annotators, built from the same options as an `annotate` run, are run again on it, each asked for its evidence:

- each annotator answers through its `explain(records)` hook (annotate/base.py): length its tokenizer and count,
  fields the path and its raw value, format the detectors that fire, code the code blocks and their languages,
  language the identified language and its probability, the embedding classifier its scores and runner-up, the
  LLM its raw answers, attempts and whether they came from the cache, the reward model its raw score, tokens and
  truncation;
- `quality_bucket` shows the record's language group, its size and how many records in it scored higher.

A value that differs from the file's is flagged: the file was written with other settings than these.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from treasure.annotate.base import NOTES_KEY, PROVENANCE_KEY, Annotator, apply_annotators
from treasure.annotate.options import AnnotateOptions
from treasure.annotate.registry import build_annotators, close_annotators, dataset_level_categories
from treasure.errors import RecordError, TreasureError
from treasure.records import read_records
from treasure.taxonomy import Taxonomy, load_taxonomy


def find_record(
    path: str | Path, record_id: str, id_field: str = "id", split: str | None = None
) -> tuple[int, dict]:
    """(line, record) for `record_id`: the value of `id_field`, or `line:N` for the record on line (row) N."""
    want_line = int(record_id[5:]) if record_id.startswith("line:") and record_id[5:].isdigit() else None
    for line, rec in read_records(path, split=split):
        if want_line is not None and line != want_line:
            continue
        if isinstance(rec, RecordError):
            if want_line is not None:
                raise rec
            continue
        if want_line is not None or str(rec.get(id_field)) == record_id:
            return line, rec
    raise TreasureError(f"{path}: no record with {id_field} = {record_id!r} (or use line:N)")


def evidence(annotators: list[Annotator], record: dict, taxonomy: Taxonomy) -> tuple[dict, dict[str, dict]]:
    """The record re-annotated (a copy), and per category the evidence of the annotator that filled it."""
    redo = copy.deepcopy(record)
    found: dict[str, dict] = {}
    for ann in annotators:
        before = set(redo["markers"])  # markers from the input, or from an earlier annotator, stay theirs
        for cat, ev in ann.explain([redo])[0].items():
            if cat not in before and cat in taxonomy:
                found.setdefault(cat, {"annotator": ann.name, **ev})
        apply_annotators([redo], [ann], taxonomy)  # later annotators see earlier markers, as in a run
    return redo, found


def _bucket_evidence(path: Path, record: dict) -> dict:
    from treasure.annotate.quality import bucket_groups, quartile_bucket

    score = record["markers"].get("quality")
    if score is None:
        return {"why": "the record has no quality score"}
    if path.suffix not in (".jsonl", ".ndjson"):
        return {"why": "bucket evidence needs the annotated output as JSONL"}
    lang = record["markers"].get("language")
    group = bucket_groups(path).get(None if lang is None else str(lang), [])
    if not group:
        return {"why": "this file holds no quality scores: explain on the annotated output"}
    better = sum(1 for s in group if s > float(score))
    cuts = [group[len(group) - 1 - (q * len(group)) // 4] for q in (1, 2, 3)]
    return {
        "annotator": "quartile_by_language", "group": lang or "(no language marker)", "group_size": len(group),
        "scored_higher": better, "rule": "1 + floor(4 * scored_higher / group_size); ties share the better bucket",
        "value": str(quartile_bucket(float(score), group)), "approx_cuts_best_first": cuts,
    }  # fmt: skip


def explain(
    path: str | Path, record_id: str, opts: AnnotateOptions, *, id_field: str = "id"
) -> dict[str, Any]:
    """Everything `--explain` shows, as data."""
    path = Path(path)
    taxonomy = load_taxonomy(opts.taxonomy)
    line, record = find_record(path, record_id, id_field, opts.split)
    given = dict(record["markers"])
    prov, notes = record.get(PROVENANCE_KEY) or {}, record.get(NOTES_KEY) or {}
    fresh = {k: v for k, v in record.items() if k not in (PROVENANCE_KEY, NOTES_KEY)}
    fresh["markers"] = {k: v for k, v in given.items() if prov.get(k, "input") == "input"}
    annotators, skipped = build_annotators(taxonomy, opts)
    try:
        redo, found = evidence(annotators, fresh, taxonomy)
    finally:
        close_annotators(annotators)
    for cat in dataset_level_categories(taxonomy, opts):
        if prov.get(cat, "") != "input":
            found[cat] = _bucket_evidence(path, record)
    rows = []
    for cat in taxonomy.names:
        if cat not in given and cat not in found and cat not in notes and cat not in skipped:
            continue
        ev = found.get(cat, {})
        again = redo["markers"].get(cat, ev.get("value"))
        row = {"category": cat, "value": given.get(cat), "by": prov.get(cat, "input" if cat in given else None),
               "note": notes.get(cat) or skipped.get(cat), "evidence": ev}  # fmt: skip
        if cat in given and row["by"] != "input" and again is not None and str(again) != str(given[cat]):
            row["differs"] = again  # the file was annotated with other settings than these
        rows.append(row)
    return {"source": f"{path}:{line}", "id": record.get(id_field), "markers": rows}


def format_explanation(report: dict[str, Any]) -> str:
    """The report as text for the terminal: one block per marker."""
    lines = [f"{report['source']}  {report['id'] if report['id'] is not None else ''}".rstrip()]
    for row in report["markers"]:
        value = "(none)" if row["value"] is None else row["value"]
        lines.append(f"  {row['category']} = {value}" + (f"   [{row['by']}]" if row["by"] else ""))
        if row.get("note"):
            lines.append(f"      note: {row['note']}")
        if "differs" in row:
            lines.append(f"      ! re-annotating with these options gives {row['differs']!r}")
        # The value and note are shown above; repeat them only where the evidence disagrees.
        ev = {k: v for k, v in row["evidence"].items()
              if k != "annotator" and not (k in ("value", "note") and (str(v) == str(row["value"])
                                                                     or str(v) in str(row.get("note"))))}  # fmt: skip
        if ev:
            text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in ev.items())
            lines.append(f"      {text[:400]}")
    return "\n".join(lines)
