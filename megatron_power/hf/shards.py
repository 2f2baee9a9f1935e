"""Gather a ``megatron-power pretrain`` checkpoint's TP/EP shards into one state dict, and
split one back at a chosen TP/EP.

A checkpoint directory holds ``rank{r:03d}.pt`` per rank, each with the local
``GPTModel.state_dict()`` (local spec) and ``parallel``: that rank's place in
Megatron's grid. Tensor parallelism splits column-parallel weights (embedding, readout,
QKV, fc1) on dim 0 and row-parallel ones (proj, fc2) on dim 1; a gated fc1 holds
[gate shard; up shard], so it is split per half. Expert parallelism holds
``num_experts / ep`` experts per rank under local indices.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..training.rundir import rank_files

_EXPERT = re.compile(r"^(?P<head>.*\.local_experts\.)(?P<index>\d+)(?P<tail>\..*)$")
_COLUMN = re.compile(r"(word_embeddings|output_layer|linear_qkv|linear_fc1)\.weight$")
_ROW = re.compile(r"(linear_proj|linear_fc2)\.weight$")
_GATED = re.compile(r"linear_fc1\.weight$")


def read_rank_files(checkpoint: Path) -> list[dict]:
    """Every rank's saved state, with its grid position; refuses files that lack one."""
    files = rank_files(Path(checkpoint))
    if not files:
        raise ValueError(f"CKPT: {checkpoint} holds no rank*.pt files")
    states = [torch.load(file, map_location="cpu", weights_only=False) for file in files]
    for file, state in zip(files, states, strict=True):
        if "parallel" not in state:
            raise ValueError(f"CKPT: {file} has no 'parallel' entry (saved by an older version)")
    return states


def _merge(name: str, shards: list[torch.Tensor], gated: bool) -> torch.Tensor:
    if len(shards) == 1:
        return shards[0]
    if gated and _GATED.search(name):
        halves = [shard.chunk(2, dim=0) for shard in shards]
        return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
    if _COLUMN.search(name):
        return torch.cat(shards, dim=0)
    if _ROW.search(name):
        return torch.cat(shards, dim=1)
    for shard in shards[1:]:
        if not torch.equal(shard, shards[0]):
            raise ValueError(f"CKPT: replicated tensor {name} differs between ranks")
    return shards[0]


def _split(name: str, tensor: torch.Tensor, parts: int, index: int, gated: bool) -> torch.Tensor:
    if parts == 1:
        return tensor
    dim = 1 if _ROW.search(name) else 0
    if (_COLUMN.search(name) or _ROW.search(name)) and tensor.shape[dim] % (
        2 * parts if gated and _GATED.search(name) else parts
    ):
        raise ValueError(f"--tp: {parts} does not divide {name} {tuple(tensor.shape)}")
    if gated and _GATED.search(name):
        gate, up = tensor.chunk(2, dim=0)
        return torch.cat([gate.chunk(parts)[index], up.chunk(parts)[index]]).clone()
    if _COLUMN.search(name):
        return tensor.chunk(parts, dim=0)[index].clone()
    if _ROW.search(name):
        return tensor.chunk(parts, dim=1)[index].clone()
    return tensor.clone()


def gather_state_dict(states: list[dict], gated: bool = True) -> dict[str, torch.Tensor]:
    """One global state dict (global expert indices) from every rank's shards."""
    dense = sorted(
        (s for s in states if s["parallel"]["dp_rank"] == 0), key=lambda s: s["parallel"]["tp_rank"]
    )
    full: dict[str, torch.Tensor] = {}
    for name in dense[0]["model"]:
        if name.endswith("_extra_state") or _EXPERT.match(name):
            continue
        full[name] = _merge(name, [s["model"][name] for s in dense], gated)
    experts = [s for s in states if s["parallel"]["edp_rank"] == 0]
    ep_size = dense[0]["parallel"]["ep_size"]
    for ep_rank in range(ep_size):
        group = sorted(
            (s for s in experts if s["parallel"]["ep_rank"] == ep_rank),
            key=lambda s: s["parallel"]["etp_rank"],
        )
        names = [n for n in group[0]["model"] if _EXPERT.match(n) and "_extra_state" not in n]
        local_count = 1 + max((int(_EXPERT.match(n)["index"]) for n in names), default=-1)
        for name in names:
            match = _EXPERT.match(name)
            index = ep_rank * local_count + int(match["index"])
            merged = _merge(name, [s["model"][name] for s in group], gated)
            full[f"{match['head']}{index}{match['tail']}"] = merged
    return full


def megatron_rank_layout(tp: int, ep: int) -> list[dict[str, int]]:
    """Grid positions of ``tp * ep`` ranks in Megatron's default order (tp-cp-ep-dp-pp):
    dense ranks are tp-fastest; experts use tensor parallel = tp, then ep, then dp."""
    world = tp * ep
    return [
        {
            "rank": rank, "world_size": world, "tp_rank": rank % tp, "tp_size": tp,
            "dp_rank": rank // tp, "ep_rank": (rank // tp) % ep, "ep_size": ep,
            "etp_rank": rank % tp, "etp_size": tp, "edp_rank": rank // (tp * ep),
        }
        for rank in range(world)
    ]  # fmt: skip


def split_state_dict(
    full: dict[str, torch.Tensor], tp: int, ep: int, num_experts: int | None, gated: bool = True
) -> list[tuple[dict[str, int], dict[str, torch.Tensor]]]:
    """Each rank's (grid position, local state dict) for a run at ``tp`` x ``ep``."""
    if num_experts is not None and num_experts % ep:
        raise ValueError(f"--ep: {ep} does not divide the {num_experts} experts")
    local_count = num_experts // ep if num_experts else 0
    ranks = []
    for place in megatron_rank_layout(tp, ep):
        local: dict[str, torch.Tensor] = {}
        for name, tensor in full.items():
            match = _EXPERT.match(name)
            if match is None:
                local[name] = _split(name, tensor, tp, place["tp_rank"], gated)
                continue
            owner, index = divmod(int(match["index"]), local_count)
            if owner == place["ep_rank"]:
                local[f"{match['head']}{index}{match['tail']}"] = _split(
                    name, tensor, place["etp_size"], place["etp_rank"], gated
                )
        ranks.append((place, local))
    return ranks
