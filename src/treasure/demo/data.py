"""The demo's data: the shipped OpenAssistant conversations, annotated by `treasure annotate`, split by tree.

One record per assistant reply (treasure.oasst): its whole conversation, the human quality label as `quality`
(``quality_bucket`` from per-language quartiles of it) and ``source``; length, format, code type, language, domain
and task from the annotators, with the model's own tokenizer for ``length_tokens``. Train and test are split by
message tree, so no held-out prompt (nor any sibling reply of one) is ever trained on.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from treasure.arms import write_jsonl

OASST_FILE = "oasst1_en_validation.jsonl"


def shipped_oasst() -> Path:
    """The packaged oasst1 English validation messages (Apache-2.0; data/SOURCE.md)."""
    return Path(str(files("treasure.demo") / "data" / OASST_FILE))


def shipped_humanevalpack() -> Path:
    """The packaged HumanEvalPack Python problems with their buggy solutions (MIT; evaluate/data/SOURCES.md)."""
    from treasure.evaluate.code_repair import DATA_FILE
    from treasure.evaluate.control import DATA_DIR

    return DATA_DIR / DATA_FILE


def prepare_data(
    folder: Path, tokenizer: str, *, test_share: float = 0.2, seed: int = 0
) -> tuple[Path, Path]:
    """Annotated train and test files in `folder` (made once; a second call reuses them)."""
    from treasure.annotate.options import AnnotateOptions
    from treasure.annotate.pipeline import run_annotate
    from treasure.oasst import convert_oasst, split_by_tree

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "train.annotated.jsonl", folder / "test.annotated.jsonl"
    if all(p.exists() for p in out):
        return out
    records = convert_oasst(shipped_oasst()).records
    train, test = split_by_tree(records, test_share=test_share, seed=seed)
    opts = AnnotateOptions(tokenizer=tokenizer)
    for rows, name, dst in ((train, "train.jsonl", out[0]), (test, "test.jsonl", out[1])):
        raw = folder / name
        write_jsonl(raw, rows)
        run_annotate(str(raw), str(dst), opts, progress=False)
    return out
