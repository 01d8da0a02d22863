"""Tiny random checkpoints of every family the engine runs, built with transformers and saved once per session.

Each is built from a config, saved with ``save_pretrained`` (the layout a real checkpoint has), and loaded back by
transformers as the reference. Weights use a larger init than transformers' default so that logits spread out and a
wrong formula shows up far above the 1e-4 tolerance. A byte-level BPE tokenizer with a ChatML template is saved next
to each, so the async engine can run on them.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 320
EOS = 2  # <|im_end|>
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    initializer_range=0.08,
    bos_token_id=None,
    eos_token_id=EOS,
    pad_token_id=0,
)
CORPUS = [
    "def reverse(s):\n    return s[::-1]\n",
    "The quick brown fox jumps over the lazy dog. Ünïcödé and emoji 🙂 too.",
    "Guardrails scan inputs and outputs of language models for unsafe content.",
    "import os\nprint(os.getcwd())\n",
] * 30
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# name -> (transformers config class, model class, config overrides)
FAMILIES = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama4_step1": (
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        dict(
            num_hidden_layers=4,
            head_dim=16,
            num_local_experts=4,
            intermediate_size_mlp=128,
            interleave_moe_layer_step=1,
            attention_chunk_size=8,
            floor_scale=4,
            attn_scale=0.5,
            use_qk_norm=True,
        ),
    ),
    "llama4_step2": (
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        dict(
            num_hidden_layers=4,
            head_dim=16,
            num_local_experts=4,
            intermediate_size_mlp=128,
            interleave_moe_layer_step=2,
            attention_chunk_size=8,
            floor_scale=4,
            attn_scale=0.5,
            use_qk_norm=False,
        ),
    ),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_hidden_layers=3,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[1],
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            head_dim=16,
            norm_topk_prob=True,
        ),
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, clip_qkv=3.0)),
}


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    assert fast.convert_tokens_to_ids("<|im_end|>") == EOS
    return fast


def build_checkpoint(family: str, path: Path, *, seed: int = 0, **overrides) -> Path:
    import torch
    import transformers

    config_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path
