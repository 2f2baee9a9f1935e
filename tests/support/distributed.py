"""Process groups for CPU tests: one-rank gloo in-process, or N ranks spawned."""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_power.training.distributed import free_port, set_rendezvous_address


def init_single_process_gloo() -> None:
    if dist.is_initialized():
        return
    set_rendezvous_address()
    dist.init_process_group("gloo", rank=0, world_size=1)


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException as error:  # report it to the parent, never hang it
        payload = ("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    with open(f"{out}.{rank}", "wb") as handle:
        pickle.dump(payload, handle)
    if dist.is_initialized():
        dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return each result.

    ``fn`` must be importable (a module-level function). A failing rank raises here with
    its traceback.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result")
        mp.start_processes(
            _worker,
            args=(world_size, free_port(), fn, args, out),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        results = []
        for rank in range(world_size):
            with open(f"{out}.{rank}", "rb") as handle:
                status, value = pickle.load(handle)
            if status != "ok":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results.append(value)
    return results
