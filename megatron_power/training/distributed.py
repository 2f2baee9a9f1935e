"""Process setup: the rendezvous, torch.distributed, Megatron's parallel state, the device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .config import PretrainConfig


def free_port() -> int:
    """A free local port for a single-process run (torchrun sets its own)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_rendezvous_address() -> None:
    """MASTER_ADDR/PORT for init_process_group: torchrun's when it launched us; a lone
    process takes a free port, since one inherited from its parent (a sweep, a SLURM job,
    a test session) would collide with a sibling run's."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def init_distributed(config: PretrainConfig) -> torch.device:
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        set_rendezvous_address()
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
    from megatron.core import parallel_state, tensor_parallel

    sizes = (config.tensor_model_parallel_size, config.expert_model_parallel_size)
    if parallel_state.model_parallel_is_initialized() and sizes != (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_expert_model_parallel_world_size(),
    ):
        parallel_state.destroy_model_parallel()
    # Once per process (``evaluate`` goes through many runs): each call makes new groups,
    # and gloo's threads of the old ones stay.
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=config.tensor_model_parallel_size,
            expert_model_parallel_size=config.expert_model_parallel_size,
        )
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tensor_parallel.model_parallel_cuda_manual_seed(config.seed)
        return torch.device("cuda", torch.cuda.current_device())
    from ..megatron.cpu import install_cpu_support

    install_cpu_support()
    return torch.device("cpu")


def parallel_ranks() -> dict[str, int]:
    """Where this rank's shards sit in the model-parallel grid (saved with them, so an
    export can gather them without recomputing Megatron's rank order)."""
    from megatron.core import parallel_state as ps

    return {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "tp_size": ps.get_tensor_model_parallel_world_size(),
        "dp_rank": ps.get_data_parallel_rank(),
        "ep_rank": ps.get_expert_model_parallel_rank(),
        "ep_size": ps.get_expert_model_parallel_world_size(),
        "etp_rank": ps.get_expert_tensor_parallel_rank(),
        "etp_size": ps.get_expert_tensor_parallel_world_size(),
        "edp_rank": ps.get_expert_data_parallel_rank(),
    }
