"""A compact generation engine for Llama-family models with mixture-of-experts layers (gpt-fast / nano-vllm style).

Modules, by responsibility: ``config`` (families, from ``config.json``), ``model`` (one decoder, swappable
feed-forward), ``attention`` (paged-cache attention), ``loader`` (safetensors), ``gguf`` (GGUF -> cached
safetensors), ``quant`` (kernels per weight storage, int8), ``native`` (the C decode kernels of ``kernels.c``,
built on first use), ``sampling``, ``sequence``, ``scheduler`` (continuous batching, paged KV blocks), ``runner`` (one
step on the model), ``core`` (sync step loop), ``engine`` (async API).

Heavy dependencies (torch, safetensors, transformers' tokenizers) are imported with this package: import it only
where generation is needed.
"""

from .config import ModelConfig
from .core import EngineCore
from .engine import Completion, Engine
from .loader import load_model
from .sampling import SamplingParams

__all__ = ["Completion", "Engine", "EngineCore", "ModelConfig", "SamplingParams", "load_model"]
