"""Writing the saved run: the files `treasure train` puts beside the model and tokenizer, and `treasure export`.

The layout, and the reader every later stage uses, are treasure/bundle.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treasure.bundle import BUNDLE_VERSION, INFO_FILE, STATS_FILE, TAXONOMY_FILE, load_bundle
from treasure.countdown import COUNTDOWN_FILE
from treasure.errors import TreasureError

if TYPE_CHECKING:
    from treasure.train.config import RunConfig


def bundle_info(run: RunConfig, *, marker_tokens: list[str], adapter: bool, counts: dict[str, int]) -> dict:
    """The content of treasure.json for a finished run."""
    from treasure import __version__

    args = run.args
    return {
        "bundle_version": BUNDLE_VERSION,
        "treasure_version": __version__,
        **run.markers.to_dict(),
        "separator": run.markers.separator,
        "taxonomy": {
            "name": run.taxonomy.name,
            "version": run.taxonomy.version,
            "fingerprint": run.taxonomy.fingerprint(),
            "file": TAXONOMY_FILE,
        },
        "marker_categories": list(run.markers.marker_taxonomy(run.taxonomy).names),
        "marker_tokens": marker_tokens,
        "base_model": run.model.model_name_or_path,
        "adapter": adapter,
        "chat_template_kwargs": args.chat_template_kwargs or {},
        "seed": args.data_seed if args.data_seed is not None else args.seed,
        "train_file": args.train_file,
        "counts": counts,
    }


def write_bundle_files(output_dir: str | Path, run: RunConfig, *, stats: dict, **info: Any) -> None:
    """Write taxonomy.yaml, treasure.json and marker_stats.json beside the saved model and tokenizer."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run.taxonomy.save(out / TAXONOMY_FILE)
    (out / INFO_FILE).write_text(json.dumps(bundle_info(run, **info), indent=2, ensure_ascii=False) + "\n")
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")


def export_bundle(src: str | Path, dst: str | Path) -> Path:
    """Write `src` as a plain Hugging Face checkpoint bundle into `dst`: a LoRA run's adapter merged into its base."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise TreasureError(f"{dst}: export into a new folder, not the run's own")
    bundle = load_bundle(src, merge_adapter=True)
    dst.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(str(dst))
    bundle.tokenizer.save_pretrained(str(dst))
    for name in (TAXONOMY_FILE, STATS_FILE, COUNTDOWN_FILE):  # a countdown stays beside the merged model
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    info = {**bundle.info, "adapter": False, "exported_from": str(src)}
    (dst / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return dst
