"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations


class TreasureError(Exception):
    """Base class: `str(err)` is the one line shown to the user."""


class TaxonomyError(TreasureError):
    """An invalid taxonomy file or an unknown category/value. Names the file, line and key."""


class RecordError(TreasureError):
    """A bad input record. Names the file, line (or row) and field."""

    def __init__(
        self, message: str, *, source: str = "", line: int | None = None, field: str | None = None, raw=None
    ):
        self.message = message
        self.raw = raw  # the input as read, so a rejects file loses nothing
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"source": self.source, "line": self.line, "field": self.field, "error": self.message}


class ConfigError(TreasureError):
    """A bad configuration value. Names the key or path."""
