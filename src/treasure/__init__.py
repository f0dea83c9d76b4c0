"""treasure: training-time markers for post-training language models (Treasure Hunt, arXiv 2506.14702)."""

from treasure.errors import TreasureError
from treasure.markers import parse_block, render_block
from treasure.taxonomy import Taxonomy, load_taxonomy

__version__ = "0.1.0"
__all__ = ["TreasureError", "Taxonomy", "load_taxonomy", "render_block", "parse_block", "__version__"]
