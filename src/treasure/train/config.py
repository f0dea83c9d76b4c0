"""The training config: one YAML holding TRL's `SFTConfig` and `ModelConfig` fields plus a `markers:` section.

    treasure train configs/tiny-cpu.yaml --learning_rate 1e-3 --markers.format compact

Command-line values override the YAML, as TRL's own `TrlParser` does (YAML values become the parser's defaults).
`--markers.KEY VALUE` overrides one key of the `markers:` section. Relative paths inside a YAML (train_file,
eval_file, taxonomy, a chat_template_path that is a file, and a model_name_or_path that starts with ./ or ../) are
relative to the YAML's folder, so a config and its data travel together; paths given on the command line are
relative to the working directory, as is output_dir. Every error is one line naming the key (and the YAML line) or the path.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, SFTConfig, TrlParser

from treasure.errors import ConfigError
from treasure.model_source import check_model, is_alias, is_gguf
from treasure.recipe import MarkerConfig
from treasure.taxonomy import Taxonomy, load_taxonomy
from treasure.train.tiny import is_tiny


@dataclass
class TreasureSFTConfig(SFTConfig):
    """TRL's `SFTConfig` plus what a marker run needs: its data, its taxonomy and its `markers:` recipe."""

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["markers", "chat_template_kwargs"]

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training records: .jsonl, .json, .parquet or a saved Hugging Face dataset, in any shape treasure "
            "reads (messages, prompt/completion, Alpaca, ShareGPT), with `markers` filled by `treasure annotate`."
        },
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Evaluation records, same formats as train_file (optional)."}
    )
    taxonomy: str = field(
        default="paper",
        metadata={"help": "Taxonomy YAML the markers follow, or 'paper' for the paper's 13 categories."},
    )
    markers: dict | str | None = field(
        default=None,
        metadata={
            "help": "The marker recipe: mode (markers|baseline), format (paper|compact), categories (list), placement "
            "(both|prompt|completion), dataset_dropout, sample_dropout (in [0, 1]), embedding_init "
            "(description|mean). Override one key with --markers.KEY VALUE."
        },
    )
    end_of_turn_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of each end-of-turn label in the loss (1: TRL's own loss). Above 1 the decision to stop "
            "counts more, so a length marker that tells when to stop is worth reading (treasure/train/loss.py)."
        },
    )
    line_break_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of each line-break label (a token that starts with a newline) in the loss: with "
            "end_of_turn_weight, both answers to 'stop at the end of this line?' count (treasure/train/loss.py)."
        },
    )
    embedding_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the new marker-token rows (LoRA with the compact format: PEFT's trainable "
            "tokens), on the run's schedule; default: learning_rate. A new row starts far from what the model "
            "predicts, and at LoRA's rate it moves too little in a short run for the model to write it (the "
            "block then closes early and its numbers spill into the reply: docs/findings.md)."
        },
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra arguments for every chat-template call, in training and in the saved bundle, e.g. "
            '{"date_string": "26 Jul 2024"} for Llama 3 templates.'
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # Structure and ranges are checked here; categories against the taxonomy in `load_config`.
        if self.markers is not None and not isinstance(self.markers, dict):
            raise ConfigError(
                f"markers: expected a mapping (a YAML section or a JSON object), got {self.markers!r}"
            )
        self.markers = MarkerConfig.from_dict(self.markers or {}).to_dict()
        # The loss is always the completion's (marker block and response): TRL's switches for other masks would
        # either be overridden or fail on the pre-tokenised data, so refuse them by name.
        if self.completion_only_loss is False:
            raise ConfigError(
                "completion_only_loss: false is not supported: the loss never covers the prompt"
            )
        if self.assistant_only_loss:
            raise ConfigError(
                "assistant_only_loss: not needed: the loss covers the final assistant turn only"
            )
        for name in ("end_of_turn_weight", "line_break_weight", "embedding_learning_rate"):
            value = getattr(self, name)
            if value is None and name == "embedding_learning_rate":
                continue  # the run's learning_rate
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"{name}: expected a number above 0, got {value!r}")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise ConfigError(f"chat_template_kwargs: expected a mapping, got {self.chat_template_kwargs!r}")

    @property
    def marker_config(self) -> MarkerConfig:
        return MarkerConfig.from_dict(self.markers)


@dataclass
class RunConfig:
    """Everything `treasure train` reads from a config: TRL's two dataclasses plus the loaded taxonomy and recipe."""

    args: TreasureSFTConfig
    model: ModelConfig
    taxonomy: Taxonomy
    markers: MarkerConfig
    source: str | None = None  # the YAML it came from


class _Parser(TrlParser):
    """TRL's parser, whose errors are one-line ConfigErrors instead of a usage dump and exit."""

    def error(self, message: str):  # argparse's hook
        raise ConfigError(message)


_PATH_KEYS = ("train_file", "eval_file", "taxonomy", "chat_template_path")


def _parser() -> _Parser:
    return _Parser((TreasureSFTConfig, ModelConfig), allow_abbrev=False)


def yaml_mapping(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The YAML's top-level mapping and the line of each key."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return data, lines


def _split_marker_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Pull `--markers.KEY VALUE` / `--markers.KEY=VALUE` out of the command line."""
    rest: list[str] = []
    markers: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if arg.startswith("--markers."):
            key, eq, value = arg[len("--markers.") :].partition("=")
            if not eq:
                value = next(it, None)
                if value is None:
                    raise ConfigError(f"--markers.{key}: expected a value")
            markers[key] = value
        else:
            rest.append(arg)
    return rest, markers


def _resolve(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    return str((base / value).resolve()) if not value.startswith("~") else os.path.expanduser(value)


def _is_file_like(value: str, base: Path) -> bool:
    return looks_local(value) or value.endswith((".jinja", ".j2")) or (base / value).exists()


def looks_local(name: str) -> bool:
    """A model name that can only be a local path (a hub id is `name` or `org/name`)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith("/")


def load_config(path: str | Path, overrides: Sequence[str] = (), *, check_files: bool = True) -> RunConfig:
    """Load a training YAML with command-line `overrides` on top. Raises ConfigError naming the key or path.

    `check_files=False` skips the checks that need the data and model to be on this machine (used to validate a
    shipped config that names a hub model and the user's data).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    data, lines = yaml_mapping(path)
    parser = _parser()
    known = {a.dest for a in parser._actions}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}:{lines.get(str(key), '?')}: unknown key {key!r}{hint}")
    base = path.resolve().parent
    for key in _PATH_KEYS:
        value = data.get(key)
        if key == "taxonomy" and value == "paper":
            continue
        if key == "chat_template_path" and isinstance(value, str) and not _is_file_like(value, base):
            continue  # a hub id (`org/model`) whose template to use
        if key in data:
            data[key] = _resolve(value, base)
    name = data.get("model_name_or_path")
    if isinstance(name, str) and name.startswith(("./", "../")):
        data["model_name_or_path"] = _resolve(name, base)
    argv, marker_overrides = _split_marker_overrides(list(overrides))
    if marker_overrides:
        markers = data.get("markers") or {}
        if not isinstance(markers, dict):
            raise ConfigError(f"{path}:{lines.get('markers', '?')}: markers: expected a mapping")
        data["markers"] = {**markers, **marker_overrides}
    parser.set_defaults_with_config(**data)  # as TrlParser does: the YAML's values become the defaults
    try:
        args, model_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    taxonomy = load_taxonomy(args.taxonomy)
    markers = MarkerConfig.from_dict(args.markers, taxonomy)
    run = RunConfig(args=args, model=model_args, taxonomy=taxonomy, markers=markers, source=str(path))
    if check_files:
        check_paths(run)
    return run


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    if "bf16" in msg and "use_cpu" in msg:
        msg += " (on a machine without a GPU set `bf16: false`, or `use_cpu: true`)"
    return msg


def check_paths(run: RunConfig) -> None:
    """The data files and a local model must exist; the model must be named."""
    args = run.args
    if not args.train_file:
        raise ConfigError("train_file: missing (the annotated records to train on)")
    for key in ("train_file", "eval_file"):
        value = getattr(args, key)
        if value and not Path(value).exists():
            raise ConfigError(f"{key}: {value}: no such file or directory")
    name = run.model.model_name_or_path
    if not name:
        raise ConfigError(
            "model_name_or_path: missing (a hub id, a local folder, a .gguf file, smollm2-135m-instruct or tiny-llama)"
        )
    if is_gguf(name) or is_alias(name):
        try:
            check_model(name)  # the file or the wheel is there; converting waits until the model is loaded
        except ConfigError as e:
            raise ConfigError(f"model_name_or_path: {e}") from None
    elif not is_tiny(name) and looks_local(name) and not Path(os.path.expanduser(name)).is_dir():
        raise ConfigError(f"model_name_or_path: {name}: no such directory")
    if (
        args.chat_template_path
        and looks_local(args.chat_template_path)
        and not Path(args.chat_template_path).exists()
    ):
        raise ConfigError(f"chat_template_path: {args.chat_template_path}: no such file or directory")
