"""The options of an annotate run, with each default and help written once: `AnnotateOptions` and, for the LLM
annotator (annotate/llm.py), `LLMSettings`.

`treasure annotate` derives its flags from these fields (treasure/options.py). The options' hash (`fingerprint`)
guards a resumed run against changed settings; fields marked `fingerprint: False` do not change the output (e.g.
request concurrency), so a killed run may resume with other values.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from treasure.records import DEFAULT_MAX_CHARS

if TYPE_CHECKING:
    from treasure.taxonomy import Taxonomy

ON_ERROR = ("fail", "skip")


def decisive(obj: Any) -> Any:
    """A dataclass as a dict, without the fields marked `metadata={"fingerprint": False}`, nor those marked
    `"omit_default": True` while at their default (an option added later: old runs keep their fingerprint)."""
    if is_dataclass(obj):
        return {
            f.name: decisive(getattr(obj, f.name))
            for f in fields(obj)
            if f.metadata.get("fingerprint", True)
            and not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)
        }
    return obj


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "treasure", "llm-cache.sqlite")


@dataclass
class LLMSettings:
    """How to reach and prompt the model. Fields marked `fingerprint: False` do not change the output."""

    model: str = field(metadata={"help": "model name at the endpoint; enables the LLM annotator"})
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"fingerprint": False, "help": "endpoint URL up to /v1 (default: $OPENAI_BASE_URL, else {default})"},
    )  # fmt: skip
    categories: list[str] | None = field(
        default=None,
        metadata={"help": "categories the LLM fills (default: those with `annotator: llm`, else domain,task,format)"},
    )  # fmt: skip
    fewshot: str | None = field(
        default=None,
        metadata={"help": "few-shot examples JSONL {category, value, messages} (default: the built-in examples)"},
    )  # fmt: skip
    num_fewshot: int = field(
        default=6, metadata={"help": "few-shot examples per category (the first ones of the file, in order)"}
    )
    structured: str = field(
        default="json_schema",
        metadata={"choices": ("json_schema", "json_object", "none"),
                  "help": "how the answer format is enforced (json_schema needs vLLM, Ollama or OpenAI)"},
    )  # fmt: skip
    temperature: float = field(default=0.0, metadata={"cli": False, "help": "sampling temperature"})
    max_tokens: int = field(default=32, metadata={"cli": False, "help": "tokens of one answer"})
    max_attempts: int = field(
        default=3,
        metadata={"help": "answers asked for before Unspecified (an invalid answer is corrected and asked again)"},
    )  # fmt: skip
    max_chars: int = field(
        default=3000,
        metadata={
            "cli": False,
            "help": "characters of each shown turn; longer turns keep their head and tail",
        },
    )
    concurrency: int = field(
        default=16, metadata={"fingerprint": False, "help": "requests in flight (per --num-proc worker)"}
    )
    cache: str | None = field(
        default=None,
        metadata={"fingerprint": False, "help": "answer cache (SQLite) path, or 'none' "
                                                "(default: ~/.cache/treasure/llm-cache.sqlite)"},
    )  # fmt: skip
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"fingerprint": False, "help": "environment variable with the API key"},
    )
    timeout: float = field(default=60.0, metadata={"fingerprint": False, "help": "seconds per request"})
    max_retries: int = field(
        default=6, metadata={"fingerprint": False, "help": "retries of a request on 429/5xx/timeouts"}
    )
    backoff: float = field(
        default=0.5,
        metadata={
            "fingerprint": False,
            "cli": False,
            "help": "first retry delay in seconds; doubles, max 30 s",
        },
    )

    def cache_path(self) -> str | None:
        if self.cache is not None and self.cache.lower() == "none":
            return None
        return self.cache or _default_cache()


@dataclass
class AnnotateOptions:
    """Everything that decides the output; its hash guards a resumed run against changed settings."""

    taxonomy: str | None = field(default=None, metadata={"help": "taxonomy YAML (default: the paper's)"})
    categories: list[str] | None = field(
        default=None,
        metadata={"help": "comma-separated subset of categories to annotate (default: all the taxonomy has)"},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer.json or local HF tokenizer folder for length_tokens"}
    )
    field_map: dict[str, str] = field(
        default_factory=dict,
        metadata={"flag": "--map", "action": "append", "metavar": "CATEGORY=FIELD",
                  "help": "fill a category from an input field, e.g. source=meta.origin (repeatable)"},
    )  # fmt: skip
    seeds: str | None = field(
        default=None, metadata={"help": "extra labelled examples (JSONL) for the domain/task classifier"}
    )
    embedding_fine_tune: int = field(
        default=0,
        metadata={"metavar": "EPOCHS", "omit_default": True,
                  "help": "fine-tune the domain/task classifier's MiniLM end to end on its examples for EPOCHS "
                          "epochs first (about a minute per epoch on one core; cached); 0: frozen"},
    )  # fmt: skip
    on_error: str = field(
        default="fail",
        metadata={"choices": ON_ERROR, "help": "a bad record stops the run (fail) or goes to the rejects file (skip)"},
    )  # fmt: skip
    max_chars: int = field(
        default=DEFAULT_MAX_CHARS, metadata={"cli": False, "help": "a longer message is a bad record"}
    )
    split: str | None = field(default=None, metadata={"help": "split of a saved DatasetDict"})
    chunk_size: int = field(
        default=512,
        metadata={"help": "records per batch and per progress step (default {default}; with an LLM, "
                          "64 x --llm-concurrency)"},
    )  # fmt: skip
    llm: LLMSettings | None = field(
        default=None,
        metadata={"cli": False, "help": "an LLM for domain/task/format or any category (annotate/llm.py)"},
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "HF sequence-classification reward model (name or folder) for `quality`"},
    )
    reward_batch_size: int = field(default=8, metadata={"help": "records per reward-model batch"})
    reward_max_length: int | None = field(
        default=None, metadata={"help": "tokens scored (default: the model's)"}
    )

    def fingerprint(self, taxonomy: Taxonomy) -> str:
        blob = json.dumps({**decisive(self), "taxonomy": taxonomy.fingerprint()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
