"""The run's model: a small Granite-like GPT (dense or MoE) on Megatron-Core, with muP."""

from __future__ import annotations

from typing import Any

import torch

from ..megatron.mup import apply_mup, mup_transformer_config
from .config import PretrainConfig


def small_gpt_options(
    hidden_size: int,
    num_layers: int,
    head_dim: int,
    ffn_hidden_size: int | None = None,
    moe_experts: int | None = None,
    moe_ffn_hidden_size: int | None = None,
    moe_router_topk: int = 2,
    num_query_groups: int | None = None,
    norm_epsilon: float = 1e-5,
    **parallel: Any,
) -> dict[str, Any]:
    """TransformerConfig fields of the small Granite-like GPT (RMSNorm, SwiGLU, RoPE, no
    bias, no dropout, fp32, CPU init) that pretrain and the tests build; MoE when
    ``moe_experts`` is given (allgather dispatcher: it runs on CPU)."""
    options: dict[str, Any] = dict(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=hidden_size // head_dim,
        kv_channels=head_dim,
        num_query_groups=num_query_groups,
        ffn_hidden_size=ffn_hidden_size or 2 * hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        **parallel,
    )
    if moe_experts:
        options.update(
            num_moe_experts=moe_experts,
            moe_router_topk=moe_router_topk,
            moe_ffn_hidden_size=moe_ffn_hidden_size or hidden_size,
            moe_grouped_gemm=False,
            moe_token_dispatcher_type="allgather",
            moe_aux_loss_coeff=0.0,
        )
    return options


def transformer_config(config: PretrainConfig):
    """The run's TransformerConfig (muP's softmax scale and init included) and muP config."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    options = small_gpt_options(
        config.hidden_size,
        config.num_layers,
        config.head_dim,
        config.ffn_hidden_size,
        moe_experts=config.num_experts if config.model == "moe" else None,
        moe_ffn_hidden_size=config.moe_ffn_hidden_size,
        moe_router_topk=config.moe_router_topk,
        num_query_groups=config.num_query_groups,
        norm_epsilon=config.norm_epsilon,
        init_method_std=config.init_method_std,
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        expert_model_parallel_size=config.expert_model_parallel_size,
    )
    mup = config.mup_config()
    return mup_transformer_config(TransformerConfig(**options), mup), mup


def build_model(config: PretrainConfig, vocab_size: int, device: torch.device):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    megatron_config, mup = transformer_config(config)
    spec = get_gpt_layer_local_spec(
        num_experts=megatron_config.num_moe_experts,
        moe_grouped_gemm=False,
        normalization="RMSNorm",
    )
    torch.manual_seed(config.seed)
    model = GPTModel(
        config=megatron_config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=config.seq_length,
        position_embedding_type="rope",
        rotary_base=config.rotary_base,
        share_embeddings_and_output_weights=config.share_embeddings,
    )
    apply_mup(model, mup)
    return model.to(device), mup


def model_vocab_size(config: PretrainConfig, meta: dict[str, Any]) -> int:
    """The data's vocabulary, or the larger padded one an imported model brings."""
    padded = config.padded_vocab_size
    if padded is not None and padded < meta["vocab_size"]:
        raise ValueError(
            f"padded_vocab_size: {padded} is smaller than the data's vocabulary "
            f"{meta['vocab_size']}"
        )
    return padded or meta["vocab_size"]
