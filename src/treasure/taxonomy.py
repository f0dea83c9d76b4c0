"""The marker taxonomy as data: categories, their kinds and values, loaded from YAML and validated.

A taxonomy file is a mapping with `name`, `version` and `categories`; each category is a mapping with
`kind` (categorical | int | float), a `description`, and for categorical categories `values` (value -> one-line
description). Optional keys: `from_field` (fill the category from a field of the input record, dotted path),
`min`/`max` (numeric bounds), `annotator` (which offline annotator fills it by default).
The order of `categories` is the fixed order of markers inside a rendered block.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from treasure.errors import TaxonomyError

Kind = Literal["categorical", "int", "float"]
KINDS = ("categorical", "int", "float")
# Names and values become marker syntax (tags, added tokens), so they may not hold whitespace or delimiters.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[^\s<>|=]+$")
_CATEGORY_KEYS = {"kind", "description", "values", "from_field", "min", "max", "annotator"}
_TOP_KEYS = {"name", "version", "description", "categories"}


@dataclass(frozen=True)
class Category:
    name: str
    kind: Kind
    description: str = ""
    values: tuple[str, ...] = ()
    value_descriptions: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    from_field: str | None = None
    min: float | None = None
    max: float | None = None
    annotator: str | None = None

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")

    def coerce(self, value: Any) -> str | int | float:
        """Return the canonical form of `value` or raise TaxonomyError saying why it is not valid."""
        if self.kind == "categorical":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise TaxonomyError(f"{self.name}: expected one of {list(self.values)}, got {value!r}")
            text = str(value).strip()
            if text in self.values:
                return text
            folded = {v.lower(): v for v in self.values}
            if text.lower() in folded:
                return folded[text.lower()]
            raise TaxonomyError(f"{self.name}: unknown value {value!r} (valid: {', '.join(self.values)})")
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise TaxonomyError(f"{self.name}: expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise TaxonomyError(f"{self.name}: expected a finite number, got {value!r}")
        if self.kind == "int":
            if number != int(number):
                raise TaxonomyError(f"{self.name}: expected an integer, got {value!r}")
            number = int(number)
        if self.min is not None and number < self.min:
            raise TaxonomyError(f"{self.name}: {value!r} is below the minimum {self.min}")
        if self.max is not None and number > self.max:
            raise TaxonomyError(f"{self.name}: {value!r} is above the maximum {self.max}")
        return number


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    categories: tuple[Category, ...]
    description: str = ""
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.categories})

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> Category:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise TaxonomyError(
                f"unknown category {name!r} in taxonomy {self.name!r} (known: {', '.join(self.names)})"
            ) from None

    def __iter__(self):
        return iter(self.categories)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    def coerce(self, name: str, value: Any) -> str | int | float:
        return self[name].coerce(value)

    def validate_markers(self, markers: dict[str, Any]) -> dict[str, Any]:
        """Canonicalise a whole marker dict, in taxonomy order. Raises TaxonomyError naming the category."""
        if not isinstance(markers, dict):
            raise TaxonomyError(
                f"markers must be a mapping of category to value, got {type(markers).__name__}"
            )
        out = {}
        for key in markers:
            self[key]  # unknown category -> error
        for cat in self.categories:
            if cat.name in markers and markers[cat.name] is not None:
                out[cat.name] = cat.coerce(markers[cat.name])
        return out

    def subset(self, names: list[str] | tuple[str, ...]) -> Taxonomy:
        """The same taxonomy restricted to `names` (kept in taxonomy order)."""
        for n in names:
            self[n]
        keep = tuple(c for c in self.categories if c.name in set(names))
        return Taxonomy(self.name, self.version, keep, self.description, self.path)

    def to_dict(self) -> dict:
        cats = {}
        for c in self.categories:
            d: dict[str, Any] = {"kind": c.kind, "description": c.description}
            if c.values:
                d["values"] = {v: c.value_descriptions.get(v, "") for v in c.values}
            for key in ("from_field", "min", "max", "annotator"):
                if getattr(c, key) is not None:
                    d[key] = getattr(c, key)
            cats[c.name] = d
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "categories": cats,
        }

    def fingerprint(self) -> str:
        """A short hash of the taxonomy's content: part of cache keys and saved bundles."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8"
        )


# ---------------------------------------------------------------------------------------------------------------
# Loading with line numbers: compose the YAML node tree ourselves so every error can name the line and key path.


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node, where: str, err) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise err(node, f"{where}: expected a single value")
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value


def _mapping(node: yaml.Node, where: str, err) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise err(node, f"{where}: expected a mapping")
    seen = set()
    items = []
    for k, v in node.value:
        key = str(k.value)
        if key in seen:
            raise err(k, f"{where}: duplicate key {key!r}")
        seen.add(key)
        items.append((key, k, v))
    return items


def parse_taxonomy(text: str, source: str = "<taxonomy>") -> Taxonomy:
    """Parse taxonomy YAML text. Errors name `source:line` and the key path."""

    def err(node: yaml.Node | None, msg: str) -> TaxonomyError:
        line = f":{_line(node)}" if node is not None else ""
        return TaxonomyError(f"{source}{line}: {msg}")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise TaxonomyError(f"{source}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if root is None:
        raise TaxonomyError(f"{source}: empty taxonomy file")
    top = {key: (k, v) for key, k, v in _mapping(root, "top level", err)}
    for key, (k, _) in top.items():
        if key not in _TOP_KEYS:
            raise err(k, f"unknown key {key!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if "name" not in top or "categories" not in top:
        raise err(root, "a taxonomy needs `name` and `categories`")
    name = str(_scalar(top["name"][1], "name", err))
    version = str(_scalar(top["version"][1], "version", err)) if "version" in top else "1"
    description = str(_scalar(top["description"][1], "description", err)) if "description" in top else ""
    cats_node = top["categories"][1]
    categories = []
    for cname, ck, cv in _mapping(cats_node, "categories", err):
        where = f"categories.{cname}"
        if not _NAME_RE.match(cname):
            raise err(ck, f"{where}: category names must be identifiers (letters, digits, _)")
        spec = {key: (k, v) for key, k, v in _mapping(cv, where, err)}
        for key, (k, _) in spec.items():
            if key not in _CATEGORY_KEYS:
                raise err(k, f"{where}.{key}: unknown key (allowed: {', '.join(sorted(_CATEGORY_KEYS))})")
        if "kind" not in spec:
            raise err(ck, f"{where}: missing `kind` (one of {', '.join(KINDS)})")
        kind = str(_scalar(spec["kind"][1], f"{where}.kind", err))
        if kind not in KINDS:
            raise err(spec["kind"][1], f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        values: list[str] = []
        vdesc: dict[str, str] = {}
        if kind == "categorical":
            if "values" not in spec:
                raise err(ck, f"{where}: a categorical category needs `values`")
            vnode = spec["values"][1]
            if isinstance(vnode, yaml.SequenceNode):
                pairs = [(str(n.value), n, None) for n in vnode.value]
            else:
                pairs = _mapping(vnode, f"{where}.values", err)
            for vname, vk, vv in pairs:
                if not _VALUE_RE.match(vname):
                    raise err(vk, f"{where}.values.{vname}: values may not contain spaces or < > | =")
                if vname in values:
                    raise err(vk, f"{where}.values: duplicate value {vname!r}")
                values.append(vname)
                vdesc[vname] = "" if vv is None else str(_scalar(vv, f"{where}.values.{vname}", err) or "")
            if not values:
                raise err(vnode, f"{where}.values: at least one value is needed")
        elif "values" in spec:
            raise err(spec["values"][0], f"{where}.values: only categorical categories have values")
        bounds = {}
        for key in ("min", "max"):
            if key in spec:
                if kind == "categorical":
                    raise err(spec[key][0], f"{where}.{key}: only numeric categories have bounds")
                val = _scalar(spec[key][1], f"{where}.{key}", err)
                if isinstance(val, bool) or not isinstance(val, int | float):
                    raise err(spec[key][1], f"{where}.{key}: expected a number, got {val!r}")
                bounds[key] = val
        opt = {}
        for key in ("description", "from_field", "annotator"):
            if key in spec:
                opt[key] = str(_scalar(spec[key][1], f"{where}.{key}", err))
        categories.append(
            Category(
                name=cname,
                kind=kind,  # type: ignore[arg-type]
                description=opt.get("description", ""),
                values=tuple(values),
                value_descriptions=vdesc,
                from_field=opt.get("from_field"),
                annotator=opt.get("annotator"),
                **bounds,
            )
        )
    if not categories:
        raise err(cats_node, "categories: at least one category is needed")
    return Taxonomy(
        name=name, version=version, categories=tuple(categories), description=description, path=source
    )


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy file; `None` or "paper" gives the paper's taxonomy shipped with the package."""
    if path is None or str(path) == "paper":
        return paper_taxonomy()
    p = Path(path)
    if not p.is_file():
        raise TaxonomyError(f"{p}: taxonomy file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaxonomyError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return parse_taxonomy(text, str(p))


@cache
def paper_taxonomy() -> Taxonomy:
    """The 13 categories of the paper (`taxonomies/paper.yaml`)."""
    text = resources.files("treasure.taxonomies").joinpath("paper.yaml").read_text(encoding="utf-8")
    return parse_taxonomy(text, "paper.yaml")
