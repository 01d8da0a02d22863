"""Running guard models: checkpoint loading and the micro-batching runtime shared by the model-backed scanners.

Importing this package needs the ``models`` extra (torch, transformers); the core library does not.
"""

from guardrails.models.loading import ModelOptions, load_causal_lm, load_sequence_classifier, resolve_checkpoint
from guardrails.models.runtime import BatchRunner, BatchStats, pad_right

__all__ = [
    "BatchRunner",
    "BatchStats",
    "ModelOptions",
    "load_causal_lm",
    "load_sequence_classifier",
    "pad_right",
    "resolve_checkpoint",
]
