"""Fine-tune llama-guard-mini's category model (``guardrails.embedded.categories``): the encoder's top layers and a
linear layer over their pooled output, on the training rows of the set whose ``category`` is the hazard taxonomy
itself (AILuminate: MLCommons' hazards, from which Llama Guard's S1-S13 come).

Measured on the dev split while choosing (top-1 on AILuminate's 262 dev rows, about +-0.03): fine-tuning the top four
layers reached 0.79-0.80 after two to four epochs, all six layers 0.80 (at the size of a whole encoder copy), the top
two 0.73; adding donotanswer's and hatecheck's coded rows lowered it to 0.73-0.77 (donotanswer's codes are mapped from
another taxonomy, and hatecheck's 2,560 S10 rows swamp the rest). The price of training on AILuminate alone is paid
on the other coded sets: see ``CATEGORY_SETS`` and the model card.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from guardrails.embedded.categories import pooled_logits, shipped

__all__ = ["CATEGORY_SETS", "fine_tune", "predict"]

# Training sets and the most rows each gives (by id hash; None: all). Measured with the full pipeline (dev top-1 of
# rows flagged at the recommended threshold, ailuminate / hatecheck / donotanswer): AILuminate alone 0.819-0.824 /
# 0.753-0.755 / 0.389-0.400 (three runs); with 100 of hatecheck's S10 rows 0.793 / 0.987 / 0.433 (the head: 0.705 /
# 1.000 / 0.856). A smaller file: the top two layers (7 MB in float16), trained with donotanswer and hatecheck too,
# reached 0.73 on AILuminate. Shipped: four layers with int8 weight matrices (7 MB; the float16 file they replaced
# gave the same top-1 over AILuminate's 262 dev rows, 0.733 on first windows, 1 row's code changed). Two layers on
# AILuminate alone: not tried.
CATEGORY_SETS: dict[str, int | None] = {"ailuminate_en_us": None}
BATCH = 16
WARMUP = 30  # steps of linearly rising learning rate, then a linear decay to zero
LINEAR_LR = 1e-3


def fine_tune(texts: Sequence[str], codes: Sequence[int], n_labels: int, cfg: Any) -> tuple[Any, Any, int]:
    """(model, linear, first fine-tuned layer), trained on each text's first window to predict ``codes`` (indices
    into ``n_labels``), the classes weighed equally. The fine-tuned layers come back rounded as the file stores them
    (``categories.shipped``), so what the card measures is what the file holds."""
    import torch

    from guardrails.embedded.encoder import shared_encoder
    from guardrails.models.runtime import pad_right

    encoder = shared_encoder()
    torch.manual_seed(cfg.seed)
    shuffle = random.Random(cfg.seed)
    model = copy.deepcopy(encoder.model)
    layers = model.encoder.layer
    first = len(layers) - cfg.category_layers
    for p in model.parameters():
        p.requires_grad = False
    tuned = [p for layer in layers[first:] for p in layer.parameters()]
    for p in tuned:
        p.requires_grad = True
    linear = torch.nn.Linear(model.config.hidden_size, n_labels)
    count = Counter(codes)
    class_weight = torch.tensor([len(codes) / (len(count) * count[c]) if count[c] else 0.0 for c in range(n_labels)])
    optimizer = torch.optim.AdamW(
        [{"params": tuned, "lr": cfg.category_lr}, {"params": linear.parameters(), "lr": LINEAR_LR}],
        weight_decay=0.01,
    )
    steps = cfg.category_epochs * -(-len(texts) // BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / WARMUP) * max(0.0, 1.0 - s / steps)
    )
    windows = [encoder.windows(t)[0][0] for t in texts]
    order = list(range(len(texts)))
    model.train()
    for _ in range(cfg.category_epochs):
        shuffle.shuffle(order)
        for at in range(0, len(order), BATCH):
            batch = order[at : at + BATCH]
            input_ids, mask = pad_right([windows[i] for i in batch], encoder.tokenizer.pad_token_id)
            logits = pooled_logits(model, linear, input_ids, mask)
            target = torch.tensor([codes[i] for i in batch])
            loss = torch.nn.functional.cross_entropy(logits, target, weight=class_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        for p in tuned:
            p.copy_(shipped(p))
    return model, linear.eval(), first


def predict(model: Any, linear: Any, windows: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """(n, labels) probabilities for token windows, in batches."""
    import torch

    from guardrails.models.runtime import pad_right

    out = []
    with torch.inference_mode():
        for at in range(0, len(windows), 64):
            input_ids, mask = pad_right(windows[at : at + 64], pad_id)
            out.append(torch.softmax(pooled_logits(model, linear, input_ids, mask), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, linear.out_features), np.float32)
