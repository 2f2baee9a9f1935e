"""One training step's parts: loss, data-parallel gradient averaging, clipping, evaluation.

The plain algorithm (what Megatron's DDP and optimizer do), so it runs on CPU (gloo) as on
GPU (nccl).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .data import get_batch


def forward_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # GPTDataset's mask is [1, s, s] per sample, True where attention is blocked.
    losses = model(
        batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]
    )
    mask = batch["loss_mask"]
    return (losses.float() * mask).sum() / mask.sum()


def average_gradients(model) -> None:
    """Data-parallel gradient averaging (what Megatron's DDP does), after summing the
    gradients of sequence-parallel replicas (norms, router) over tensor parallelism: each
    rank saw only its part of the sequence (what Megatron's finalize_model_grads does).

    Expert gradients already hold every data-parallel rank's tokens (the token dispatcher
    gathers them over the expert group), so they are summed over the expert-data-parallel
    group only; both are divided by the data-parallel size.
    """
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        tp_group = parallel_state.get_tensor_model_parallel_group()
        for param in model.parameters():
            if param.grad is not None and getattr(param, "sequence_parallel", False):
                dist.all_reduce(param.grad, group=tp_group)
    dp_size = parallel_state.get_data_parallel_world_size()
    if dp_size == 1:
        return
    dp_group = parallel_state.get_data_parallel_group()
    expert_dp_group = parallel_state.get_expert_data_parallel_group()
    for param in model.parameters():
        if param.grad is None:
            continue
        expert = not getattr(param, "allreduce", True)
        dist.all_reduce(param.grad, group=expert_dp_group if expert else dp_group)
        param.grad.div_(dp_size)


def clip_gradients(model, max_norm: float) -> float:
    """Global gradient norm over all shards, each parameter counted once; clip to ``max_norm``."""
    from megatron.core import parallel_state

    sharded = torch.zeros(1, device=next(model.parameters()).device)
    replicated = torch.zeros_like(sharded)
    experts = torch.zeros_like(sharded)
    for param in model.parameters():
        if param.grad is None:
            continue
        square = param.grad.float().pow(2).sum()
        if not getattr(param, "allreduce", True):
            experts += square
        elif getattr(param, "tensor_model_parallel", False):
            sharded += square
        else:
            replicated += square
    dist.all_reduce(sharded, group=parallel_state.get_tensor_model_parallel_group())
    dist.all_reduce(experts, group=parallel_state.get_expert_model_parallel_group())
    norm = math.sqrt((sharded + replicated + experts).item())
    if max_norm > 0 and norm > max_norm:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(max_norm / (norm + 1e-6))
    return norm


@torch.no_grad()
def evaluated_set(dataset, samples: int, dp_size: int, seq_length: int) -> dict[str, Any]:
    """What :func:`evaluate` reads, named by its content (sha256 of the sequences' tokens
    and labels): two runs' losses compare only when these are equal."""
    per_rank = max(1, samples // dp_size)
    digest = hashlib.sha256()
    for index in range(per_rank * dp_size):
        sample = dataset[index % len(dataset)]
        for key in ("tokens", "labels"):
            digest.update(np.asarray(sample[key], dtype=np.int64).tobytes())
    return {"sequences": per_rank * dp_size, "seq_length": seq_length,
            "sha256": digest.hexdigest()[:16]}  # fmt: skip


def evaluate(model, dataset, samples: int, dp_rank: int, dp_size: int, device) -> float:
    from megatron.core import parallel_state

    model.eval()
    per_rank = max(1, samples // dp_size)
    total = torch.zeros(1, device=device)
    for start in range(0, per_rank, 8):
        count = min(8, per_rank - start)
        batch = get_batch(dataset, dp_rank * per_rank + start, count, device)
        total += forward_loss(model, batch) * count
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    model.train()
    return (total / (per_rank * dp_size)).item()
