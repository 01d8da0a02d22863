"""Heads built by the tests: a known direction in embedding space, so what they should flag is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guardrails.embedded import Head, save_head, shared_encoder
from guardrails.embedded.encoder import WIDTH

LG_LABELS = ("safe", *(f"S{i}" for i in range(1, 15)))


def direction(text: str) -> np.ndarray:
    """The text's sentence embedding inside the features (the middle layer's part zeroed): x @ direction is the
    cosine of two texts' sentence embeddings."""
    features = np.array(shared_encoder().embed_first_window([text])[0])
    features[WIDTH:] = 0.0
    return features


def attack_head(path: Path, trigger: str, sharpness: float = 20.0) -> Path:
    """p[attack] = softmax over (0, sharpness * (cos(x, trigger) - 0.5)): near the trigger scores high."""
    d = direction(trigger)
    w2 = np.stack([np.zeros_like(d), sharpness * d])
    save_head(Head("test-attack", ("benign", "attack"), None, None, w2, np.array([0.0, -sharpness * 0.5]), {}), path)
    return path


def hazard_head(path: Path, trigger: str, code: str = "S9", sharpness: float = 20.0) -> Path:
    """p[code] against p[safe] as in attack_head; every other category is (practically) impossible."""
    d = direction(trigger)
    w2 = np.zeros((len(LG_LABELS), d.shape[0]))
    b2 = np.full(len(LG_LABELS), -100.0)
    b2[0] = 0.0
    w2[LG_LABELS.index(code)] = sharpness * d
    b2[LG_LABELS.index(code)] = -sharpness * 0.5
    save_head(Head("test-hazard", LG_LABELS, None, None, w2, b2, {}), path)
    return path


def category_model(head_path: Path, code: str, *, first_layer: int = 4) -> Path:
    """A category model beside ``head_path`` that names ``code`` for every text: the encoder's layers from
    ``first_layer`` up, nudged so that loading them is observable, and a linear layer biased towards ``code``."""
    import copy

    import torch

    from guardrails.embedded import shared_encoder
    from guardrails.embedded.categories import categories_path, save_categories

    model = copy.deepcopy(shared_encoder().model)
    with torch.no_grad():
        for layer in model.encoder.layer[first_layer:]:
            layer.output.dense.bias.add_(0.25)
    linear = torch.nn.Linear(model.config.hidden_size, len(LG_LABELS) - 1)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-10.0)
        linear.bias[LG_LABELS.index(code) - 1] = 10.0
    path = categories_path(head_path)
    save_categories(model, linear, first_layer, LG_LABELS[1:], path, {})
    return path
