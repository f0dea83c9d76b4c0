"""Markers copied from fields of the input record (provenance a dataset already carries, e.g. `source`).

A mapping `category -> dotted field path` comes from `--map source=meta.origin` or from a taxonomy's
`from_field`. Field values are matched to taxonomy values case-insensitively, through a small table of common
synonyms (e.g. "translated" -> Translation); a value that matches nothing is an error naming the field, never a
silent guess.
"""

from __future__ import annotations

from typing import Any

from treasure.errors import RecordError, TaxonomyError
from treasure.taxonomy import Taxonomy

SYNONYMS: dict[str, dict[str, str]] = {
    "source": {
        "human": "Human", "people": "Human", "crowd": "Human", "annotator": "Human",
        "translated": "Translation", "machine_translated": "Translation", "mt": "Translation",
        "synthetic": "Synthetic", "generated": "Synthetic", "model": "Synthetic", "llm": "Synthetic",
        "other": "Others", "unknown": "Others",
    },
    "style": {
        "formal": "Formal", "professional": "Formal",
        "informal": "Informal", "casual": "Informal", "conversational": "Informal",
        "persona": "Custom", "custom": "Custom", "roleplay": "Custom",
    },
}  # fmt: skip

_MISSING = object()


def get_path(record: dict, path: str) -> Any:
    """`meta.origin` -> record["meta"]["origin"]; returns a sentinel when any step is missing."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def parse_field_map(items: list[str] | None) -> dict[str, str]:
    """Parse `--map category=field.path` options."""
    out = {}
    for item in items or []:
        cat, sep, path = item.partition("=")
        if not sep or not cat.strip() or not path.strip():
            raise TaxonomyError(f"--map {item!r}: expected CATEGORY=FIELD (e.g. source=meta.origin)")
        out[cat.strip()] = path.strip()
    return out


class FieldAnnotator:
    """Fills categories from input fields. A record without the field gets no marker for that category."""

    def __init__(self, taxonomy: Taxonomy, field_map: dict[str, str]):
        for cat in field_map:
            taxonomy[cat]  # unknown category -> TaxonomyError
        self.taxonomy = taxonomy
        self.field_map = dict(field_map)
        self.categories = tuple(field_map)
        self.name = "fields:" + ",".join(f"{c}={p}" for c, p in field_map.items())

    def _value(self, cat: str, raw: Any, path: str) -> Any:
        category = self.taxonomy[cat]
        if category.kind == "categorical" and isinstance(raw, str):
            alias = SYNONYMS.get(cat, {}).get(raw.strip().lower().replace(" ", "_").replace("-", "_"))
            if alias in category.values:
                raw = alias
        try:
            return category.coerce(raw)
        except TaxonomyError as e:
            raise RecordError(str(e).split(": ", 1)[-1], field=path) from None

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        out = []
        for rec in records:
            found = {}
            for cat, path in self.field_map.items():
                raw = get_path(rec, path)
                if raw is not _MISSING and raw is not None:
                    found[cat] = self._value(cat, raw, path)
            out.append(found)
        return out

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record: each mapped field's path and its raw value (None: the record lacks it)."""
        out = []
        for rec in records:
            per_cat = {}
            for cat, path in self.field_map.items():
                raw = get_path(rec, path)
                per_cat[cat] = {"field": path, "raw": None if raw is _MISSING else raw}
            out.append(per_cat)
        return out
