"""Granite / GraniteMoE models built by transformers' own classes, and the two forward
passes the HF tests compare: transformers' and Megatron-Core's on an imported run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers

TOKENS = torch.tensor(
    [[5, 17, 3, 60, 2, 9, 41, 8, 33, 12, 7, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
)

#: Every muP scalar non-trivial, GQA, an odd vocabulary, untied.
DENSE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.11,
             logits_scaling=2.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
             bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
MOE = dict(DENSE, vocab_size=99, num_local_experts=4, num_experts_per_tok=2,
           router_aux_loss_coef=0.02)  # fmt: skip
#: Only what has no default worth keeping: transformers fills in the rest (attention
#: multiplier 1.0, rms_norm_eps 1e-6, untied, ...).
MINIMAL = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, tie_word_embeddings=True)  # fmt: skip


def build_granite(
    directory: Path, fields: dict[str, Any], dtype: torch.dtype = torch.float32,
    minimal: bool = False, seed: int = 0,
) -> Path:  # fmt: skip
    """A transformers Granite (GraniteMoE when ``fields`` has experts) with random weights
    (std 0.2, norms around 1: every path matters), saved with save_pretrained; ``minimal``
    rewrites config.json with only ``fields`` (and the model type)."""
    moe = "num_local_experts" in fields
    config_class = transformers.GraniteMoeConfig if moe else transformers.GraniteConfig
    model_class = transformers.GraniteMoeForCausalLM if moe else transformers.GraniteForCausalLM
    torch.manual_seed(seed)
    model = model_class(config_class(**fields))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.2)
    model.to(dtype).save_pretrained(directory)
    if minimal:
        kept = {"architectures": [model_class.__name__],
                "model_type": config_class.model_type, **fields}  # fmt: skip
        (Path(directory) / "config.json").write_text(json.dumps(kept, indent=2))
    return Path(directory)


def hf_logits(directory: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        return model(tokens).logits


def megatron_logits(
    rank: int, world_size: int, run_dirs: list[str], tokens: torch.Tensor,
    files: list[str] | None = None,
):  # fmt: skip
    """On every rank: Megatron-Core's forward of each run's latest checkpoint (or of
    ``files[rank]``, for one run) at the run's own TP/EP, gathered over tensor
    parallelism, cut to the model's vocabulary (padding rows masked as in training)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_power.training.config import PretrainConfig
    from megatron_power.training.distributed import init_distributed
    from megatron_power.training.model import Vocabulary, build_model
    from megatron_power.training.rundir import RunDir

    results = []
    for run_dir in run_dirs:
        config = PretrainConfig.load(Path(run_dir) / "config.json")
        init_distributed(config)
        file = files[rank] if files else RunDir(run_dir).latest_checkpoint() / f"rank{rank:03d}.pt"
        state = torch.load(file, weights_only=False)
        rows = state["model"]["embedding.word_embeddings.weight"].shape[0]
        rows *= parallel_state.get_tensor_model_parallel_world_size()
        vocabulary = Vocabulary(config.model_vocab_size or rows, rows)
        model, _ = build_model(config, vocabulary, torch.device("cpu"))
        missing = model.load_state_dict(state["model"], strict=False).missing_keys
        assert all(key.endswith("_extra_state") for key in missing), missing
        model.eval()
        length = tokens.shape[1]
        positions = torch.arange(length).expand_as(tokens)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)[None, None]
        with torch.no_grad():
            logits = model(tokens, positions, causal)
        group = parallel_state.get_tensor_model_parallel_group()
        parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, logits.contiguous(), group=group)
        parallel_state.destroy_model_parallel()
        results.append(torch.cat(parts, dim=-1)[..., : vocabulary.size])
    return results
