"""The run's model: a small Granite-like GPT (dense or MoE) on Megatron-Core, with muP."""

from __future__ import annotations

from dataclasses import dataclass
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
    moe_aux_loss_coeff: float = 0.0,
    attention_dropout: float = 0.0,
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
        attention_dropout=attention_dropout,
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
            moe_aux_loss_coeff=moe_aux_loss_coeff,
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
        moe_aux_loss_coeff=config.moe_aux_loss_coeff,
        attention_dropout=config.attention_dropout,
        # Megatron-Core refuses to train MoE under tensor parallelism without it
        sequence_parallel=runs_sequence_parallel(config),
    )
    mup = config.mup_config()
    return mup_transformer_config(TransformerConfig(**options), mup), mup


def runs_sequence_parallel(config: PretrainConfig) -> bool:
    """MoE under tensor parallelism runs sequence parallel (Megatron-Core needs it)."""
    return config.model == "moe" and config.tensor_model_parallel_size > 1


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm in the place of Megatron's norm, its weight marked the way TE's and
    apex's norms mark theirs under sequence parallelism (each rank sees part of the
    sequence, so its gradient is summed over the tensor-parallel group): Megatron's torch
    norm refuses sequence parallelism, and TE / apex are not always there."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **_: Any) -> None:
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = True


def layer_spec(megatron_config: Any):
    """Megatron-Core's local GPT layer spec (and block spec under sequence parallelism,
    whose norms are :class:`SequenceParallelRMSNorm`)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(
        num_experts=megatron_config.num_moe_experts,
        moe_grouped_gemm=False,
        normalization="RMSNorm",
    )
    if not megatron_config.sequence_parallel:
        return spec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    spec.submodules.input_layernorm = SequenceParallelRMSNorm
    spec.submodules.pre_mlp_layernorm = SequenceParallelRMSNorm
    return TransformerBlockSubmodules(
        layer_specs=[spec] * megatron_config.num_layers, layer_norm=SequenceParallelRMSNorm
    )


def build_model(config: PretrainConfig, vocabulary: Vocabulary, device: torch.device):
    """The run's GPTModel with muP; padded vocabulary rows are masked out of the logits."""
    from megatron.core.models.gpt import GPTModel

    megatron_config, mup = transformer_config(config)
    torch.manual_seed(config.seed)
    model = GPTModel(
        config=megatron_config,
        transformer_layer_spec=layer_spec(megatron_config),
        vocab_size=vocabulary.padded,
        max_sequence_length=config.seq_length,
        position_embedding_type="rope",
        rotary_base=config.rotary_base,
        seq_len_interpolation_factor=config.seq_len_interpolation_factor,
        share_embeddings_and_output_weights=config.share_embeddings,
    )
    apply_mup(model, mup)
    if vocabulary.padded > vocabulary.size:
        model.output_layer.register_forward_hook(mask_padded_rows(vocabulary.size))
    return model.to(device), mup


@dataclass(frozen=True)
class Vocabulary:
    """The model's vocabulary (``size`` rows that mean tokens) and the rows it is built
    with: Megatron pads to a multiple of make_vocab_size_divisible_by x TP."""

    size: int
    padded: int

    @classmethod
    def unpadded(cls, size: int) -> Vocabulary:
        return cls(size, size)


def run_vocabulary(config: PretrainConfig, meta: dict[str, Any]) -> Vocabulary:
    """The data's vocabulary, or an imported model's (never smaller than the data's)."""
    size = config.model_vocab_size or meta["vocab_size"]
    if size < meta["vocab_size"]:
        raise ValueError(
            f"model_vocab_size: {size} is smaller than the data's vocabulary {meta['vocab_size']}"
        )
    return Vocabulary(size, padded_vocab_size(size, config))


def padded_vocab_size(size: int, config: PretrainConfig) -> int:
    multiple = config.make_vocab_size_divisible_by * config.tensor_model_parallel_size
    return -(-size // multiple) * multiple


def mask_padded_rows(size: int):
    """A forward hook for the output layer: logits of padded rows (global index >= size)
    set to the dtype's lowest value, so they take no probability and get no gradient - the
    loss is the one of the model's own vocabulary (Megatron-LM does not mask them)."""

    def hook(module, inputs, output):
        from megatron.core import parallel_state

        logits, bias = output
        local = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * local
        if start + local <= size:
            return output
        padded = torch.arange(start, start + local, device=logits.device) >= size
        return logits.masked_fill(padded, torch.finfo(logits.dtype).min), bias

    return hook
