"""Checkpoints of a pretrain run: one file per rank (model, optimizer, scheduler, RNG and
the rank's place in the parallel grid); paths come from :mod:`.rundir`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .distributed import parallel_ranks
from .rundir import RunDir, rank_file


def save_checkpoint(run: RunDir, iteration: int, model, optimizer, scheduler) -> None:
    """Every rank writes its file; rank 0 moves the latest pointer once all have."""
    path = run.checkpoint(iteration)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "parallel": parallel_ranks(),
        },
        rank_file(path, dist.get_rank()),
    )
    dist.barrier()
    if dist.get_rank() == 0:
        run.write_latest(iteration)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Load this rank's file; an imported checkpoint (weights only) starts a fresh
    optimizer and schedule at its iteration."""
    state = torch.load(rank_file(path, dist.get_rank()), weights_only=False)
    if state.get("imported_from"):
        # Written without building the model: it lacks the modules' empty _extra_state.
        result = model.load_state_dict(state["model"], strict=False)
        missing = [key for key in result.missing_keys if not key.endswith("._extra_state")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {path}: does not fit the model (missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
    else:
        model.load_state_dict(state["model"])
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    return state["iteration"]
