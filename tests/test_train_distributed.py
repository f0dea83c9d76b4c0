"""Data-parallel training: two CPU processes under `accelerate launch` train the same model on both ranks.

`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is installed, so the tests use
accelerate's torchrun launcher (`--multi_gpu`, what configs/accelerate/cpu_2proc.yaml selects) with `use_cpu: true`
in the training config: two processes, gloo backend (docs/training.md).

Run as a script (by the test, under accelerate) this file is the worker: it trains a config through the same
`train()` the CLI calls and writes a digest of its parameters per rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ACCELERATE = Path(sys.executable).parent / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(shutil.which(str(ACCELERATE)) is None, reason="accelerate not installed")
def test_two_cpu_processes_train_the_same_model(tmp_path):
    from tiny import tiny_config

    cfg = tiny_config(tmp_path, max_steps=3, n_records=16)
    proc = _launch(__file__, str(cfg), str(tmp_path / "digest"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"digest.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]  # all-reduced gradients: identical weights on both ranks
    assert ranks[0]["changed"] and (tmp_path / "run" / "treasure.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(str(ACCELERATE)) is None, reason="accelerate not installed")
def test_the_train_command_runs_under_accelerate_launch(tmp_path):
    from tiny import tiny_config

    cfg = tiny_config(tmp_path, max_steps=2, n_records=16)
    proc = _launch(
        "-m", "treasure.cli", "train", str(cfg), "--save_strategy", "steps", "--save_steps", "2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved bundle to") == 1  # printed by the main process only
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert {p.name for p in (tmp_path / "run" / "checkpoint-2").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }  # one per rank: two processes trained
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _worker(config: str, prefix: str) -> None:
    import torch
    from transformers import TrainerCallback

    from treasure.train.config import load_config
    from treasure.train.tiny import tiny_llama
    from treasure.train.trainer import train

    initial = tiny_llama().state_dict()

    class Digest(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            h = hashlib.sha256()
            params = model.state_dict()
            for name in sorted(params):
                h.update(name.encode())
                h.update(params[name].detach().cpu().contiguous().numpy().tobytes())
            layer = "model.layers.0.self_attn.q_proj.weight"
            record = {
                "digest": h.hexdigest(),
                "world_size": args.world_size,
                "global_step": state.global_step,
                "changed": not torch.equal(params[layer].cpu(), initial[layer]),
            }
            Path(f"{prefix}.rank{args.process_index}.json").write_text(json.dumps(record))

    train(load_config(config), callbacks=[Digest()])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
