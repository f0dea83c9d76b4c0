"""What an annotator is, and how its answers become a record's markers, provenance and notes.

An annotator fills some marker categories for a batch of records. It returns, per record, a dict of category ->
value for the categories it could decide; a category it cannot decide (e.g. `code_type` for a response with no
code) is left out, never guessed. Values must be canonical values of the taxonomy. An answer that needs a reason
is a `MarkerNote(value, reason)`: the value (if any) becomes the marker and the reason goes to `marker_notes`, so a
marker left out or set to Unspecified always says why. `name` is the provenance string written next to each
marker it produced (`marker_provenance`; markers the input brought have provenance "input").

`explain` is the same decision shown with its evidence (`treasure annotate --explain`): per record, per category
it decides, a dict with the `value` it gives and whatever made it (counts, rules, scores, raw answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from treasure.taxonomy import Taxonomy

PROVENANCE_KEY = "marker_provenance"
NOTES_KEY = "marker_notes"  # category -> why its marker is Unspecified or left out (only present when needed)

Evidence = dict[str, Any]  # what `explain` shows for one category: {"value": ..., <why>...}


@dataclass(frozen=True)
class MarkerNote:
    """An annotator's answer that needs a reason: the value (None: no marker) and why."""

    value: Any
    reason: str


@runtime_checkable
class Annotator(Protocol):
    name: str  # provenance, e.g. "length:gpt2" or "embedding:all-MiniLM-L6-v2"
    categories: tuple[str, ...]  # the categories it can fill

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]: ...

    def explain(self, records: list[dict]) -> list[dict[str, Evidence]]: ...


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
