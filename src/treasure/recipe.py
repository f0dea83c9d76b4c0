"""The marker recipe: which markers a run trains on, in which format and where (the `markers:` section of a
training config, and what a bundle's treasure.json records so that generate, serve and evaluate use the model as it
was trained).

Every switch is an ablation of the paper's recipe (arXiv 2506.14702, section 3):

- ``mode``: ``markers`` (the recipe) or ``baseline`` (the very same records, order and steps with no markers at all).
- ``format``: ``paper`` (plain-text tags) or ``compact`` (one added token per categorical marker); see markers.py.
- ``categories``: the taxonomy categories that take part (default: all of them).
- ``placement``: ``both`` (the paper: appended to the last user turn and prepended to the completion),
  ``prompt`` or ``completion`` only.
- ``dataset_dropout``: share of examples whose prompt loses every marker (the paper: 0.5);
  ``sample_dropout``: share of each remaining example's prompt markers dropped (the paper: 0.5). Drawn afresh every
  epoch, reproducibly from the seed. The completion always keeps all markers: the model learns to infer them.
- ``embedding_init``: how the compact format's new token rows start: ``description`` (the mean embedding of the
  tokens of the value's description in the taxonomy) or ``mean`` (the mean of all existing rows).
- ``countdown``: beyond the paper, a learned remaining-length vector on every reply token after a block with
  ``length_tokens`` (countdown.py), so the reply can stop where the marker says. Compact format only.

Pure data with validation; no torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from treasure.errors import ConfigError
from treasure.markers import FORMATS, SEPARATOR, block_format
from treasure.taxonomy import Taxonomy

MODES = ("markers", "baseline")
PLACEMENTS = ("both", "prompt", "completion")
EMBEDDING_INITS = ("description", "mean")


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _flag(where: str, value: Any) -> bool:
    """A boolean, also as the command line writes it (true / false)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _rate(where: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number in [0, 1], got {value!r}")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number in [0, 1], got {value!r}") from None
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{where}: {value!r} is outside [0, 1]")
    return rate


@dataclass(frozen=True)
class MarkerConfig:
    """What a run trains on. Build it with `from_dict` (validates and names the bad key)."""

    mode: str = "markers"
    format: str = "paper"
    categories: tuple[str, ...] | None = None  # None: every category of the taxonomy
    placement: str = "both"
    dataset_dropout: float = 0.5
    sample_dropout: float = 0.5
    embedding_init: str = "description"
    countdown: bool = False

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, taxonomy: Taxonomy | None = None, where: str = "markers"
    ) -> MarkerConfig:
        """Validate a `markers:` mapping (values may be strings, as they come from the command line)."""
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{where}.{key}: unknown key{_suggest(key, known)} (allowed: {', '.join(known)})"
                )
        kw: dict[str, Any] = {}
        if "mode" in data:
            kw["mode"] = _choice(f"{where}.mode", data["mode"], MODES)
        if "format" in data:
            kw["format"] = _choice(f"{where}.format", data["format"], FORMATS)
        if "placement" in data:
            kw["placement"] = _choice(f"{where}.placement", data["placement"], PLACEMENTS)
        if "embedding_init" in data:
            kw["embedding_init"] = _choice(f"{where}.embedding_init", data["embedding_init"], EMBEDDING_INITS)
        if "countdown" in data:
            kw["countdown"] = _flag(f"{where}.countdown", data["countdown"])
        for key in ("dataset_dropout", "sample_dropout"):
            if key in data:
                kw[key] = _rate(f"{where}.{key}", data[key])
        if data.get("categories") is not None:
            cats = data["categories"]
            if isinstance(cats, str):  # `--markers.categories domain,task` on the command line
                cats = [c.strip() for c in cats.split(",") if c.strip()]
            if not isinstance(cats, list | tuple) or not all(isinstance(c, str) for c in cats):
                raise ConfigError(f"{where}.categories: expected a list of category names, got {cats!r}")
            if not cats:
                raise ConfigError(f"{where}.categories: empty (leave it out to use every category)")
            if len(set(cats)) != len(cats):
                raise ConfigError(f"{where}.categories: a category is listed twice in {cats}")
            kw["categories"] = tuple(cats)
        config = cls(**kw)
        if config.countdown and config.mode == "markers" and not block_format(config.format).added_tokens:
            raise ConfigError(
                f"{where}.countdown: needs format compact (its length marker and delimiters are single tokens), "
                f"not {config.format!r}"
            )
        if taxonomy is not None:
            config.check(taxonomy, where)
        return config

    def check(self, taxonomy: Taxonomy, where: str = "markers") -> None:
        """Every configured category must exist in `taxonomy`; a countdown needs `length_tokens` among them."""
        for name in self.categories or ():
            if name not in taxonomy:
                raise ConfigError(
                    f"{where}.categories: unknown category {name!r}{_suggest(name, taxonomy.names)} in taxonomy "
                    f"{taxonomy.name!r}"
                )
        if self.uses_countdown and "length_tokens" not in self.marker_taxonomy(taxonomy):
            raise ConfigError(
                f"{where}.countdown: needs the 'length_tokens' category among the run's markers"
            )

    @property
    def uses_countdown(self) -> bool:
        """Whether the model gets the length countdown (never in baseline mode: same model as plain SFT)."""
        return self.countdown and self.mode == "markers"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["categories"] = list(self.categories) if self.categories is not None else None
        return out

    def marker_taxonomy(self, taxonomy: Taxonomy) -> Taxonomy:
        """The categories that take part, in taxonomy order: what blocks are rendered (and validated) against."""
        return taxonomy.subset(self.categories) if self.categories is not None else taxonomy

    @property
    def prompt_markers(self) -> bool:
        """Whether prompts carry a marker block."""
        return self.mode == "markers" and self.placement in ("both", "prompt")

    @property
    def completion_markers(self) -> bool:
        """Whether completions start with a marker block."""
        return self.mode == "markers" and self.placement in ("both", "completion")

    @property
    def adds_tokens(self) -> bool:
        """Whether the tokenizer gets the format's added marker tokens (never in baseline mode: same model as plain
        SFT)."""
        return self.mode == "markers" and block_format(self.format).added_tokens

    @property
    def separator(self) -> str:
        """What joins a block to the text beside it (after a prompt's text, before a completion's response)."""
        return SEPARATOR[self.format]
