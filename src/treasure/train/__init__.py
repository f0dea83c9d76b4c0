"""Marker-aware fine-tuning on TRL's `SFTTrainer`: one concept per module, marker logic in pure functions.

The `markers:` recipe (treasure/recipe.py) and the bundle reader (treasure/bundle.py) are contracts other stages
read too, so they live at package level; this package imports them, never the other way round.

    render.py          record -> conversational prompt/completion with marker blocks; per-epoch dropout and order
    chat_template.py   wraps a model's Jinja chat template so it renders the prompt block from a `markers` argument
    data.py            rendered example -> (input_ids, completion_mask) that TRL trains on; per-epoch copies
    tokens.py          compact format: add the marker tokens, resize and initialise their embeddings
    tiny.py            `tiny-llama`: a small Llama built locally with the packaged GPT-2 tokenizer (no hub)
    model.py           load the model and tokenizer a config names (hub id, local folder or tiny-llama)
    config.py          TreasureSFTConfig (TRL's SFTConfig + data/markers fields) and the YAML + CLI loader
    trainer.py         build the SFTTrainer, train (resumable), save the bundle
    bundle.py          write the saved run's files beside the model (read back by treasure/bundle.py); export
    token_view.py      the token-role view `treasure inspect` prints: what the loss is computed on

Nothing here imports torch at package import time, so the CLI stays fast.
"""
