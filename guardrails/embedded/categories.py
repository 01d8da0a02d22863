"""llama-guard-mini's category model: all-MiniLM-L6-v2 with its top layers fine-tuned to name a flagged text's S-code.

The head over frozen features (``heads.py``) decides whether a text is unsafe. Which hazard it is takes more than the
frozen features hold: on the dev split, heads and standalone classifiers over them named AILuminate's S-code for
65-75% of its prompts; the encoder with its top four layers fine-tuned on AILuminate's training rows, about 80% (the
model card has the shipped figure). It runs only on a text the head flagged (the scanner asks for an answer only
then), on that text's most unsafe window, so an allowed request never pays for it.

File: ``<head>-categories.safetensors`` next to the head: the fine-tuned layers under the encoder's own parameter
names, their weight matrices in int8 with a float32 scale per row (``<name>.scale``, see :func:`quantize`), biases
and norms in float16; a linear layer over their mean-pooled, L2-normalised output in float32; the labels and the
first fine-tuned layer in the metadata. The layers below it are the wheel's, shared with the encoder.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from guardrails._exceptions import ScannerError
from guardrails.models.runtime import pad_right

__all__ = ["CategoryModel", "categories_path", "pooled_logits", "save_categories", "quantize", "shipped"]

SCALE = 10.0  # pooled unit vectors are scaled before the linear layer (it trains faster than on unit vectors)
LAYER_PREFIX = "encoder.layer."


def categories_path(head_path: Path) -> Path:
    return head_path.with_name(f"{head_path.stem}-categories.safetensors")


def pooled_logits(model: Any, linear: Any, input_ids: Any, mask: Any) -> Any:
    """(batch, labels) logits: ``linear`` over the mean-pooled, L2-normalised last layer of ``model``."""
    import torch

    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
    return linear(torch.nn.functional.normalize(pooled, p=2, dim=1) * SCALE)


def quantize(weight: Any) -> tuple[Any, Any]:
    """(int8 values, float32 scale per row) of a weight matrix, symmetric. Each scale is rounded down to 11
    significant bits, so ``values * scale`` is exact in float32 and quantizing that again gives the same values and
    scales: the weights a training run measures (:func:`shipped`) are the weights the file gives back."""
    import torch

    top = weight.detach().float().abs().amax(dim=1).clamp_min(1e-12) / 127
    mantissa, exponent = torch.frexp(top)
    scale = torch.ldexp(torch.floor(mantissa * 2048) / 2048, exponent)
    values = torch.clamp(torch.round(weight.detach().float() / scale[:, None]), -127, 127).to(torch.int8)
    return values.contiguous(), scale.contiguous()


def shipped(value: Any) -> Any:
    """``value`` as the file holds it (float32): weight matrices through :func:`quantize`, the rest through float16."""
    if value.dim() == 2:
        values, scale = quantize(value)
        return values.float() * scale[:, None]
    return value.detach().half().float()


def save_categories(model: Any, linear: Any, first_layer: int, labels: tuple[str, ...], path: Path,
                    metadata: dict[str, str]) -> None:  # fmt: skip
    """Write the layers from ``first_layer`` up (int8 matrices, float16 rest) and ``linear`` (float32) to ``path``."""
    from safetensors.torch import save_file

    tensors = {}
    for name, value in model.state_dict().items():
        if not _fine_tuned(name, first_layer):
            continue
        if value.dim() == 2:
            tensors[name], tensors[f"{name}.scale"] = quantize(value.to("cpu"))
        else:
            tensors[name] = value.detach().to("cpu").half().contiguous()
    tensors |= {"linear.weight": linear.weight.detach().float(), "linear.bias": linear.bias.detach().float()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"labels": json.dumps(labels), "first_layer": str(first_layer), **metadata})


def _fine_tuned(name: str, first_layer: int) -> bool:
    """Whether the encoder parameter ``name`` belongs to a layer from ``first_layer`` up."""
    return name.startswith(LAYER_PREFIX) and int(name[len(LAYER_PREFIX) :].split(".")[0]) >= first_layer


class CategoryModel:
    """Loads ``path`` over ``encoder``'s model: a copy whose fine-tuned layers take the file's weights, the rest shared.

    ``probabilities`` is thread-safe (one forward pass at a time: it runs only for flagged texts). Build and call it
    on the encoder's thread (``encoder.runner.call``), as the scanner does: PyTorch ops from another thread start a
    second OpenMP team, which slows every forward pass of the process."""

    def __init__(self, path: Path, encoder: Any) -> None:
        import torch
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
        try:
            self.labels = tuple(json.loads(metadata["labels"]))
            self.first_layer = int(metadata["first_layer"])
            weight, bias = tensors.pop("linear.weight"), tensors.pop("linear.bias")
            scales = {k.removesuffix(".scale"): tensors.pop(k) for k in list(tensors) if k.endswith(".scale")}
            tensors |= {k: tensors[k].float() * scale[:, None] for k, scale in scales.items()}
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ScannerError(f"{path} is not a category model file ({exc!r} missing or malformed)") from None
        self.metadata = metadata
        base = encoder.model
        shared = [base.embeddings, *base.encoder.layer[: self.first_layer]]  # the unchanged lower part: not copied
        self.model = copy.deepcopy(base, memo={id(m): m for m in shared}).eval()
        expected = {k for k in self.model.state_dict() if _fine_tuned(k, self.first_layer)}
        if set(tensors) != expected:
            raise ScannerError(
                f"{path} does not fit this encoder: it holds {len(tensors)} tensors for layers {self.first_layer}+, "
                f"the encoder has {len(expected)}; retrain with `python -m guardrails.train llama-guard-mini`"
            )
        self.model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        self.linear.eval()
        self._pad = encoder.tokenizer.pad_token_id
        self._lock = threading.Lock()

    def probabilities(self, windows: list[list[int]]) -> np.ndarray:
        """(n, labels) probabilities for token windows (with [CLS]/[SEP], as ``MiniLMEncoder.windows`` makes)."""
        import torch

        input_ids, mask = pad_right(windows, self._pad)
        with self._lock, torch.inference_mode():
            logits = pooled_logits(self.model, self.linear, input_ids, mask)
        return torch.softmax(logits.float(), dim=-1).numpy()
