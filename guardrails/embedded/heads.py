"""Small classification heads over the encoder's features, stored as safetensors with their labels in the metadata.

A head is a two-layer perceptron ``softmax(W2 relu(W1 x + b1) + b2)`` (or a single layer when ``W1`` is absent),
evaluated in numpy: no framework is needed to run one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guardrails._exceptions import ScannerError

__all__ = ["Head", "load_head", "save_head", "weights_path"]

WEIGHTS = Path(__file__).resolve().parent / "weights"


def weights_path(name: str) -> Path:
    return WEIGHTS / f"{name}.safetensors"


@dataclass(frozen=True)
class Head:
    name: str
    labels: tuple[str, ...]
    w1: np.ndarray | None  # (hidden, dim)
    b1: np.ndarray | None  # (hidden,)
    w2: np.ndarray  # (labels, hidden or dim)
    b2: np.ndarray  # (labels,)
    metadata: dict[str, str]

    @property
    def input_dim(self) -> int:
        return int((self.w2 if self.w1 is None else self.w1).shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, >= input_dim) features -> (n, labels) probabilities, from the leading ``input_dim`` features."""
        x = x[:, : self.input_dim]
        h = x if self.w1 is None else np.maximum(x @ self.w1.T + self.b1, 0.0)  # (n, hidden)
        logits = h @ self.w2.T + self.b2  # (n, labels)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def save_head(head: Head, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {"w2": head.w2.astype(np.float32), "b2": head.b2.astype(np.float32)}
    if head.w1 is not None:
        tensors |= {"w1": head.w1.astype(np.float32), "b1": head.b1.astype(np.float32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"name": head.name, "labels": json.dumps(head.labels), **head.metadata})


def load_head(path: Path, *, widths: tuple[int, ...] | None = None) -> Head:
    """The head in ``path``; with ``widths``, a :class:`ScannerError` unless it takes one of those feature counts."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    labels = tuple(json.loads(metadata.pop("labels")))
    name = metadata.pop("name")
    head = Head(name, labels, tensors.get("w1"), tensors.get("b1"), tensors["w2"], tensors["b2"], metadata)
    if widths is not None and head.input_dim not in widths:
        takes = " or ".join(map(str, widths))
        raise ScannerError(
            f"{path} takes {head.input_dim} features per window; heads of this encoder take {takes}: "
            f"retrain it with `python -m guardrails.train {name} --data ../shared/data`"
        )
    return head
