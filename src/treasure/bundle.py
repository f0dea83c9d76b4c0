"""The saved run, as the later stages read it: one folder with everything needed to use the model with markers.

`treasure train` writes it (train/bundle.py); generate, serve, evaluate and the demo experiments read it here.

output_dir/
  config.json, model.safetensors, ...     the model, Hugging Face format (a LoRA run: adapter_config.json and
                                          adapter_model.safetensors; `treasure export` merges it)
  tokenizer.json, tokenizer_config.json   the tokenizer, with the compact marker tokens when the run added them
  chat_template.jinja                     the model's template wrapped to take `markers` (train/chat_template.py)
  taxonomy.yaml                           the taxonomy the markers follow
  treasure.json                           the marker recipe (recipe.py): mode, format, categories, placement,
                                          dropout, separator, taxonomy fingerprint, marker tokens, base model, ...
  marker_stats.json                       the training set's marker value counts (treasure.stats), for
                                          long-tail slicing at evaluation time
  checkpoint-*/                           the trainer's checkpoints (what --resume continues from)

bundle = load_bundle("runs/tiny")      # model, tokenizer, taxonomy, markers, stats, info
text = bundle.prompt(messages, markers={"domain": "Code"})
parsed, response = bundle.split_completion(generated_text)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treasure.errors import TreasureError
from treasure.markers import ParsedBlock, render_block, split_completion
from treasure.recipe import MarkerConfig
from treasure.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLE_VERSION = 1
INFO_FILE, TAXONOMY_FILE, STATS_FILE = "treasure.json", "taxonomy.yaml", "marker_stats.json"
ADAPTER_FILE = "adapter_config.json"


@dataclass
class Bundle:
    """A loaded run. `model` is None when loaded with `load_model=False`."""

    path: Path
    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    taxonomy: Taxonomy  # the full taxonomy of the run
    markers: MarkerConfig
    stats: dict[str, Any]
    info: dict[str, Any]  # treasure.json

    @property
    def marker_taxonomy(self) -> Taxonomy:
        """The categories the model was trained with, in block order."""
        return self.markers.marker_taxonomy(self.taxonomy)

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        return dict(self.info.get("chat_template_kwargs") or {})

    def render_block(self, markers: dict[str, Any]) -> str:
        """The block for `markers` in the run's format (what the prompt carries and the completion starts with)."""
        return render_block(markers, self.marker_taxonomy, self.markers.format)

    def prompt(self, messages: list[dict], markers: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """The prompt text for `messages` with `markers` in it, ready for generation (the chat template's work)."""
        return self.tokenizer.apply_chat_template(
            messages,
            markers=markers,
            add_generation_prompt=True,
            tokenize=False,
            **{**self.chat_template_kwargs, **kwargs},
        )

    def split_completion(self, text: str) -> tuple[ParsedBlock, str]:
        """A generated completion -> (its parsed marker block, the response after it)."""
        return split_completion(text, self.marker_taxonomy, self.markers.format)


def read_info(path: str | Path) -> dict[str, Any]:
    info_path = Path(path) / INFO_FILE
    if not info_path.is_file():
        raise TreasureError(f"{path}: not a treasure bundle (no {INFO_FILE})")
    try:
        return json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TreasureError(f"{info_path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _marker_config(info: dict[str, Any]) -> MarkerConfig:
    return MarkerConfig.from_dict({k: info[k] for k in MarkerConfig.__dataclass_fields__ if k in info})


def _load_base(name: str, tokenizer: PreTrainedTokenizerBase, dtype: Any) -> PreTrainedModel:
    """The model a LoRA bundle was trained from, grown to the bundle's vocabulary."""
    from transformers import AutoModelForCausalLM

    from treasure.model_source import resolve_model
    from treasure.train.tiny import is_tiny, tiny_llama, tiny_tokenizer

    if is_tiny(name):
        model = tiny_llama(tiny_tokenizer())
    else:
        try:
            # treasure.json keeps the name the run was given (a GGUF file, an alias): resolve it here
            model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
        except (OSError, ValueError, TreasureError) as e:
            msg = " ".join(str(e).split())[:300]
            raise TreasureError(f"cannot load the base model {name!r} of this LoRA bundle ({msg})") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # The adapter holds the trained rows of the added tokens; their starting values do not matter here.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model


def load_bundle(
    path: str | Path, *, load_model: bool = True, merge_adapter: bool = True, dtype: Any = "auto"
) -> Bundle:
    """Load a bundle saved by `treasure train` (or `treasure export`).

    `load_model=False` loads only the tokenizer and metadata. A LoRA bundle's adapter is applied to its base model
    (`info["base_model"]`) and, with `merge_adapter`, merged into a plain model.
    """
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # the weight-loading bar is noise in logs and breaks one-line errors
        hf_logging.disable_progress_bar()
    path = Path(path)
    info = read_info(path)
    taxonomy = load_taxonomy(path / TAXONOMY_FILE)
    expected = info.get("taxonomy", {}).get("fingerprint")
    if expected and taxonomy.fingerprint() != expected:
        raise TreasureError(
            f"{path / TAXONOMY_FILE}: fingerprint {taxonomy.fingerprint()} differs from the one the model was "
            f"trained with ({expected}); the file was changed after training"
        )
    markers = _marker_config(info)
    markers.check(taxonomy, f"{path / INFO_FILE}: categories")
    stats_path = path / STATS_FILE
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = None
    if load_model:
        if (path / ADAPTER_FILE).is_file():
            from peft import PeftModel

            base = _load_base(info["base_model"], tokenizer, dtype)
            model = PeftModel.from_pretrained(base, str(path))
            if merge_adapter:
                model = model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        if markers.uses_countdown:
            from treasure.countdown import COUNTDOWN_FILE, attach_countdown

            if not (path / COUNTDOWN_FILE).is_file():
                raise TreasureError(f"{path}: trained with markers.countdown but {COUNTDOWN_FILE} is missing")
            attach_countdown(model, tokenizer, markers.marker_taxonomy(taxonomy), path / COUNTDOWN_FILE)
    return Bundle(path, model, tokenizer, taxonomy, markers, stats, info)


def load_plain_model(name: str, *, load_model: bool = True, dtype: Any = "auto") -> Bundle:
    """A model that is not a bundle (the default model's alias, a GGUF file, a Hugging Face folder, a hub id,
    tiny-llama) as a Bundle without markers (mode baseline), so the untuned model can be generated from and served.

    `path` is the folder the model was loaded from (the converted one for a GGUF file or an alias), and
    `info["base_model"]` the name as given.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from treasure.model_source import resolve_model
    from treasure.train.config import looks_local
    from treasure.train.tiny import is_tiny, tiny_llama, tiny_tokenizer

    if is_tiny(name):
        source, tokenizer = name, tiny_tokenizer()
        model = tiny_llama(tokenizer) if load_model else None
    else:
        source = resolve_model(name)
        if looks_local(source) and not Path(source).expanduser().is_dir():
            raise TreasureError(f"{name}: no such folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype) if load_model else None
        except (OSError, ValueError) as e:
            msg = " ".join(str(e).split())[:300]
            raise TreasureError(
                f"{name}: not a treasure bundle (no {INFO_FILE}) nor a model to load ({msg})"
            ) from None
    if not tokenizer.chat_template:
        raise TreasureError(
            f"{name}: the tokenizer has no chat template, so a conversation cannot be prompted"
        )
    info = {"mode": "baseline", "base_model": name, "source": source, "adapter": False, "plain_model": True}
    markers = MarkerConfig.from_dict({"mode": "baseline"})
    return Bundle(Path(source), model, tokenizer, load_taxonomy("paper"), markers, {}, info)


def load_any(name: str | Path, *, load_model: bool = True, dtype: Any = "auto") -> Bundle:
    """A bundle (a folder with treasure.json) through `load_bundle`, any other model through `load_plain_model`."""
    if (Path(name).expanduser() / INFO_FILE).is_file():
        return load_bundle(Path(name).expanduser(), load_model=load_model, dtype=dtype)
    return load_plain_model(str(name), load_model=load_model, dtype=dtype)
