"""Generation with marker blocks: constrained decoding of the block (constrain.py)."""
