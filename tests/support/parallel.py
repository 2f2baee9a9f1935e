"""Rank functions for TP / EP / PP equivalence tests (spawned over gloo by run_ranks).

Each run builds the same muP model at some parallel layout, loads one set of full
(unsharded) weights into its shards, runs forward and backward on one batch, and returns
the loss and the full gradients, reassembled the way Megatron's layout dictates:

* TP: column/row-parallel shards along ``param.partition_dim``; the SwiGLU fc1 shard is
  [gate slice; up slice]; sequence-parallel norm grads are summed over the TP group
  (what Megatron's finalize_model_grads does).
* EP: rank r holds global experts r*E/EP ...; every rank feeds its own half of the batch
  and grads are averaged as data parallelism does (expert grads are already summed over
  the EP group by the token all-gather, so they are divided by the world size).
* PP: stage 0 sends its output to stage 1 and receives the input gradient back (a
  pipeline chained by hand: the pipeline schedule itself needs CUDA).
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

from megatron_power.mup import MupConfig
from tests.support.cpu_shims import keep_tensors_on_cpu
from tests.support.gpt import batch, build_gpt, init_model_parallel, tiny_config

MUP = MupConfig(base_hidden_size=32, embedding_multiplier=6.0, residual_multiplier=0.3)
GLU_FC1 = re.compile(r"mlp\.(linear_fc1|experts\.local_experts\.\d+\.linear_fc1)\.weight$")
LOCAL_EXPERT = re.compile(r"local_experts\.(\d+)\.")
LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def _shard(full: torch.Tensor, param: torch.nn.Parameter, name: str, rank: int, size: int):
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return full
    dim = param.partition_dim
    if GLU_FC1.search(name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim)[rank], up.chunk(size, dim)[rank]], dim)
    return full.chunk(size, dim)[rank]


def _unshard(grad: torch.Tensor, param: torch.nn.Parameter, name: str, group, size: int):
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return grad
    parts = [torch.empty_like(grad) for _ in range(size)]
    dist.all_gather(parts, grad.contiguous(), group=group)
    dim = param.partition_dim
    if GLU_FC1.search(name):
        gates, ups = zip(*(part.chunk(2, dim) for part in parts), strict=True)
        return torch.cat([torch.cat(gates, dim), torch.cat(ups, dim)], dim)
    return torch.cat(parts, dim)


def _expert_name(name: str, ep_rank: int, local_count: int) -> str:
    return LOCAL_EXPERT.sub(
        lambda m: f"local_experts.{int(m.group(1)) + ep_rank * local_count}.", name
    )


def tensor_or_expert_parallel(
    rank: int, world: int, tp: int, ep: int, moe: bool, sp: bool, full_state: dict | None
):
    from megatron.core import parallel_state

    init_model_parallel(tp=tp, ep=ep)
    torch.manual_seed(0)
    config = tiny_config(hidden=64, moe=moe, moe_ffn=32, tp=tp, ep=ep, sequence_parallel=sp)
    model = build_gpt(config, MUP)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    ep_rank = parallel_state.get_expert_model_parallel_rank()
    local_experts = config.num_moe_experts // ep if moe else 0

    def global_name(name: str) -> str:
        return _expert_name(name, ep_rank, local_experts) if moe else name

    if full_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(_shard(full_state[global_name(name)], param, name, tp_rank, tp))

    tokens, positions, mask = batch(seed=7, batch_size=4)
    if world > 1 and ep > 1:  # data parallel across EP ranks: each rank its own half
        half = tokens.shape[0] // world
        tokens, positions = (t[rank * half : (rank + 1) * half] for t in (tokens, positions))
    loss = model(tokens, positions, mask, labels=tokens).float().mean()
    loss.backward()

    tp_group = parallel_state.get_tensor_model_parallel_group()
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if sp and getattr(param, "sequence_parallel", False):
            dist.all_reduce(grad, group=tp_group)
        if ep > 1:
            if getattr(param, "allreduce", True):
                dist.all_reduce(grad)
            grad = grad / world
        grads[global_name(name)] = _unshard(grad, param, name, tp_group, tp)
    if ep > 1:
        everyone = [None] * world
        dist.all_gather_object(everyone, grads)
        grads = {name: grad for part in everyone for name, grad in part.items()}
        loss_sum = loss.detach().clone()
        dist.all_reduce(loss_sum)
        loss = loss_sum / world
    state = {global_name(n): p.detach().clone() for n, p in model.named_parameters()}
    return {"loss": loss.item(), "grads": grads, "state": state if world == 1 else None}


def pipeline_by_hand(rank: int, world: int, full_state: dict | None, tied: bool):
    """PP=world stages chained with send/recv; PP=1 when world == 1."""

    init_model_parallel(pp=world)
    keep_tensors_on_cpu()
    torch.manual_seed(0)
    config = tiny_config(hidden=64, layers=4, pp=world)
    first = rank == 0
    last = rank == world - 1
    model = build_gpt(
        config, MUP, pre_process=first, post_process=last, share_embeddings_and_output_weights=tied
    )
    offset = rank * (config.num_layers // world)

    def global_name(name: str) -> str:
        return LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)

    if full_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                source = global_name(name)
                if tied and last and not first and name == "output_layer.weight":
                    source = "embedding.word_embeddings.weight"
                param.copy_(full_state[source])

    tokens, positions, mask = batch(seed=7, batch_size=2)
    hidden_shape = (tokens.shape[1], tokens.shape[0], config.hidden_size)
    if not first:
        received = torch.empty(hidden_shape)
        dist.recv(received, src=rank - 1)
        received.requires_grad_(True)
        model.set_input_tensor(received)
    output = model(tokens if first else None, positions if first else None, mask,
                   labels=tokens if last else None)  # fmt: skip
    if last:
        loss = output.float().mean()
        loss.backward()
    else:
        dist.send(output.detach(), dst=rank + 1)
        upstream = torch.empty(hidden_shape)
        dist.recv(upstream, src=rank + 1)
        output.backward(upstream)
    if not first:
        dist.send(received.grad, dst=rank - 1)

    roles = {}
    from megatron_power.megatron.mup import classify_parameter

    for name, param in model.named_parameters():
        roles[global_name(name) + ("@last" if last and not first else "")] = classify_parameter(
            name, param
        )
    grads = {global_name(n): p.grad.detach().clone() for n, p in model.named_parameters()}
    if tied and world > 1:
        # Megatron sums the two copies' grads over the embedding group; do the same.
        key = "embedding.word_embeddings.weight"
        mine = grads.pop("output_layer.weight", grads.get(key))
        dist.all_reduce(mine)
        grads[key] = mine
    everyone = [None] * world
    dist.all_gather_object(everyone, (grads, roles, loss.item() if last else None))
    merged = {name: grad for part, _, _ in everyone for name, grad in part.items()}
    all_roles = {name: role for _, part, _ in everyone for name, role in part.items()}
    loss_value = next(value for _, _, value in everyone if value is not None)
    state = {global_name(n): p.detach().clone() for n, p in model.named_parameters()}
    return {
        "loss": loss_value,
        "grads": merged,
        "roles": all_roles,
        "state": state if world == 1 else None,
    }
