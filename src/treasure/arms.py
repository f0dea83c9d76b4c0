"""What the demo's experiments share: one arm trained from a `treasure train` YAML written beside it, quiet
library output, and the atomic result files a resumable experiment keeps (the synthetic suite, suite/experiment.py
and suite/sweep.py; the real-model demo, demo/run.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from treasure.errors import ConfigError

# The `treasure train` settings of an experiment arm that neither experiment varies: no checkpoints, evaluation,
# logs or bars of the trainer's own (the experiment reports), the tokens read counted for the compute row.
QUIET_RUN: dict[str, Any] = {
    "activation_checkpointing": False,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_strategy": "no",
    "disable_tqdm": True,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "include_num_input_tokens_seen": True,  # padding included (TrlParser takes no "non_padding")
}


def quiet() -> None:
    """Library progress bars and warnings would bury an experiment's own lines."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("treasure").setLevel(logging.WARNING)


def use_cuda(device: str) -> bool:
    """Whether an arm trains on the GPU: `device` is auto, cpu or cuda (a ConfigError when cuda is not there)."""
    if device == "cpu":
        return False
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for, but torch sees no GPU")
    return torch.cuda.is_available()


def train_from_yaml(config: dict[str, Any], folder: Path) -> tuple[Any, float]:
    """Train one arm from its YAML (written first, so `treasure train folder/config.yaml` repeats the run), with
    the trainer's output in folder/train.log. Returns the TrainResult and the seconds it took."""
    import yaml

    from treasure.train.config import load_config
    from treasure.train.trainer import train

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    t0 = time.perf_counter()
    with (folder / "train.log").open("w", encoding="utf-8") as log_fh, contextlib.redirect_stdout(log_fh):
        result = train(load_config(path))
    return result, round(time.perf_counter() - t0, 1)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically (a killed run leaves the old file or none, never half of one)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write `rows` as JSON lines atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
