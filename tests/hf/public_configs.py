"""The config.json of the public checkpoints the README gives import commands for.

Transcribed from the Hugging Face Hub pages (this machine has no network) and checked
against the paper's Table 4 (arXiv 2408.13359: widths, layers, heads, KV heads, MLP size,
experts, top-k, m_emb 12, m_residual 0.22); re-download with
``huggingface-cli download ibm/PowerLM-3b config.json`` to compare. The paper prints
m_width 8 for PowerLM-3B, where 2304 / 256 (the base width of its other models) is 9.
"""

from __future__ import annotations

from typing import Any

POWERLM_3B: dict[str, Any] = {
    "architectures": ["GraniteForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attention_multiplier": 0.015625, "bos_token_id": 0, "embedding_multiplier": 12.0,
    "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "logits_scaling": 9.0, "max_position_embeddings": 4096,
    "mlp_bias": False, "model_type": "granite", "num_attention_heads": 36,
    "num_hidden_layers": 40, "num_key_value_heads": 36, "pad_token_id": 0,
    "residual_multiplier": 0.22, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 49152,
}  # fmt: skip
POWERMOE_3B: dict[str, Any] = {
    "architectures": ["GraniteMoeForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attention_multiplier": 0.015625, "bos_token_id": 0,
    "embedding_multiplier": 12.0, "eos_token_id": 0, "hidden_act": "silu",
    "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 512,
    "logits_scaling": 6.0, "max_position_embeddings": 4096, "model_type": "granitemoe",
    "num_attention_heads": 24, "num_experts_per_tok": 8, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 40, "output_router_logits": False,
    "pad_token_id": 0, "residual_multiplier": 0.22, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 10000.0, "router_aux_loss_coef": 0.001,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 49152,
}  # fmt: skip
GRANITE_3_0_2B_BASE: dict[str, Any] = {
    "architectures": ["GraniteForCausalLM"], "attention_bias": False, "attention_dropout": 0.1,
    "attention_multiplier": 0.015625, "bos_token_id": 0, "embedding_multiplier": 12.0,
    "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "logits_scaling": 8.0, "max_position_embeddings": 4096,
    "mlp_bias": False, "model_type": "granite", "num_attention_heads": 32,
    "num_hidden_layers": 40, "num_key_value_heads": 8, "pad_token_id": 0,
    "residual_multiplier": 0.22, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 49155,
}  # fmt: skip

#: Hub name: (config.json, layouts (tp, ep) for one 80 GB GPU, for eight), as the README
#: gives them (Megatron-LM with --bf16 --use-distributed-optimizer; PP 1: 3B fits without).
PUBLIC = {
    "ibm/PowerLM-3b": (POWERLM_3B, [(1, 1)], [(1, 1), (2, 1), (4, 1)]),
    "ibm/PowerMoE-3b": (POWERMOE_3B, [(1, 1)], [(1, 8), (1, 4), (2, 4)]),
    "ibm-granite/granite-3.0-2b-base": (GRANITE_3_0_2B_BASE, [(1, 1)], [(1, 1), (2, 1)]),
}


def shrunk(config: dict[str, Any]) -> dict[str, Any]:
    """The same config with 2 layers and the width cut to hidden / logits_scaling x 1 head
    group: head_dim 64, the GQA ratio, experts, top-k, vocabulary and every scalar kept."""
    heads, groups = config["num_attention_heads"], config["num_key_value_heads"]
    ratio = heads // groups
    new_heads = ratio * max(1, round(config["logits_scaling"]) // ratio)
    hidden = 64 * new_heads
    return dict(
        config, num_hidden_layers=2, hidden_size=hidden, num_attention_heads=new_heads,
        num_key_value_heads=new_heads // ratio,
        intermediate_size=config["intermediate_size"] * hidden // config["hidden_size"],
    )  # fmt: skip
