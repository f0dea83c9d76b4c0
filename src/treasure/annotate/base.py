"""What an annotator is: something that fills some marker categories for a batch of records.

An annotator returns, per record, a dict of category -> value for the categories it could decide; a category it
cannot decide (e.g. `code_type` for a response with no code) is left out, never guessed. Values must be canonical
values of the taxonomy. `name` is the provenance string written next to each marker it produced.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Annotator(Protocol):
    name: str  # provenance, e.g. "length:gpt2" or "embedding:all-MiniLM-L6-v2"
    categories: tuple[str, ...]  # the categories it can fill

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]: ...
