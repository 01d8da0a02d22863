"""Loading checkpoints once, at start-up, from a local directory or the local Hugging Face cache, never the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from guardrails._exceptions import ScannerError

__all__ = ["ModelOptions", "resolve_checkpoint", "load_sequence_classifier", "load_causal_lm"]

Device = Literal["cpu", "cuda", "auto"]
DType = Literal["float32", "bfloat16", "float16", "auto"]


@dataclass(frozen=True, slots=True)
class ModelOptions:
    device: Device = "cpu"
    dtype: DType = "float32"

    def resolve(self) -> tuple[Any, Any]:
        """(torch.device, torch.dtype): ``auto`` picks CUDA when present, bf16 on CUDA and fp32 on CPU."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ScannerError("device: cuda was asked for, but torch sees no CUDA device; use device: cpu or auto")
        device = torch.device(
            "cuda"
            if self.device == "auto" and torch.cuda.is_available()
            else "cpu"
            if self.device == "auto"
            else self.device
        )
        if self.dtype == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        return device, dtype


def resolve_checkpoint(ref: str) -> Path:
    """A local checkpoint directory, or a Hugging Face id already in the local cache; a clear error otherwise."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ScannerError(f"model {ref!r}: {path} has no config.json; point the policy at a checkpoint directory")
        return path
    if not path.is_absolute() and ref.count("/") == 1 and not ref.startswith((".", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(ref, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache": say how to get it
            pass
    raise ScannerError(
        f"model {ref!r} not found at {path.absolute()} nor in the local Hugging Face cache; download it with "
        f"`hf download {ref} --local-dir DIR` (Meta's repositories need an accepted licence and a token) "
        "or point the policy's `model:` at a local directory"
    )


def _load(ref: str, options: ModelOptions, auto_class: str, kind: str) -> tuple[Any, Any]:
    import transformers

    path = resolve_checkpoint(ref)
    device, dtype = options.resolve()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = getattr(transformers, auto_class).from_pretrained(path, local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ScannerError(f"model {ref!r} at {path} could not be loaded as a {kind}: {exc}") from exc
    return tokenizer, model.to(device).eval()


def load_sequence_classifier(ref: str, options: ModelOptions) -> tuple[Any, Any]:
    """(tokenizer, model) for a sequence-classification checkpoint, in eval mode on the chosen device and dtype."""
    return _load(ref, options, "AutoModelForSequenceClassification", "classifier")


def load_causal_lm(ref: str, options: ModelOptions) -> tuple[Any, Any]:
    """(tokenizer, model) for a causal language model checkpoint, in eval mode on the chosen device and dtype."""
    return _load(ref, options, "AutoModelForCausalLM", "causal LM")
