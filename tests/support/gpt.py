"""Tiny Megatron-Core GPT / MoE models on CPU for tests (real classes, CPU shims)."""

from __future__ import annotations

import torch

from tests.support.cpu_shims import install_cpu_shims

VOCAB = 96
SEQ = 16


def init_model_parallel(tp: int = 1, pp: int = 1, ep: int = 1) -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
    )
    install_cpu_shims()


def tiny_config(
    hidden: int = 64,
    layers: int = 2,
    head_dim: int = 16,
    moe: bool = False,
    experts: int = 4,
    moe_ffn: int | None = None,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    sequence_parallel: bool = False,
    **extra,
):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_power.training.model import small_gpt_options

    options = small_gpt_options(
        hidden,
        layers,
        head_dim,
        moe_experts=experts if moe else None,
        moe_ffn_hidden_size=moe_ffn,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32,
        expert_model_parallel_size=ep,
        sequence_parallel=sequence_parallel,
        init_method_std=0.02,
    )
    options.update(extra)
    return TransformerConfig(**options)


def build_gpt(
    config,
    mup=None,
    pre_process: bool = True,
    post_process: bool = True,
    share_embeddings_and_output_weights: bool = False,
):
    """A GPTModel from the local spec; with ``mup`` the plugin's muP is applied."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_power.megatron.mup import apply_mup, mup_transformer_config

    if mup is not None:
        config = mup_transformer_config(config, mup)
    spec = get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts, moe_grouped_gemm=False, normalization="RMSNorm"
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        pre_process=pre_process,
        post_process=post_process,
    )
    if mup is not None:
        apply_mup(model, mup)
    return model


def batch(seed: int = 0, batch_size: int = 4):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch_size, SEQ), generator=generator)
    positions = torch.arange(SEQ).unsqueeze(0).expand(batch_size, -1)
    mask = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)
    return tokens, positions, mask
