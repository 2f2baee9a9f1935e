"""Checkpoints of a pretrain run: one file per rank (model, optimizer, scheduler, RNG and
the rank's place in the parallel grid); paths come from :mod:`.rundir`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ..files import atomic_write_text
from .distributed import parallel_ranks
from .rundir import CONFIG_NAME, PARTIAL_SUFFIX, RunDir, rank_file


class CheckpointError(ValueError):
    """A checkpoint that cannot be read."""


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary name, fsync, then rename: a reader sees all or nothing."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    run: RunDir, iteration: int, model, optimizer, scheduler, config_json: str
) -> None:
    """Every rank writes its file into ``iter_N.partial`` (rank 0 also the config the
    checkpoint was trained with, which ``--resume`` compares); once all have, rank 0 renames
    the directory to ``iter_N`` and then moves the latest pointer. A crash at any moment
    leaves the previous checkpoint and pointer as they were; partial directories are
    never read (and are cleared by the next save)."""
    rank = dist.get_rank()
    final, partial = run.checkpoint(iteration), run.partial_checkpoint(iteration)
    if rank == 0:
        for stale in run.checkpoints.glob(f"*{PARTIAL_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    state = {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "parallel": parallel_ranks(),
    }
    atomic_save(state, rank_file(partial, rank))
    dist.barrier()
    if rank == 0:
        atomic_write_text(partial / CONFIG_NAME, config_json)
        _fsync_directory(partial)
        if final.exists():  # a checkpoint of this iteration from before a fallback
            replaced = final.with_name(final.name + ".replaced")
            os.replace(final, replaced)
            shutil.rmtree(replaced)
        os.replace(partial, final)
        _fsync_directory(run.checkpoints)
        run.write_latest(iteration)
    dist.barrier()


def _read(path: Path) -> dict | None:
    try:
        state = torch.load(rank_file(path, dist.get_rank()), weights_only=False)
    except Exception:  # a truncated or foreign file: the caller falls back
        return None
    return state if isinstance(state, dict) and "iteration" in state else None


def _all_ranks(ok: bool, device: torch.device) -> bool:
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def resume(run: RunDir, model, optimizer, scheduler) -> int:
    """Load the newest checkpoint every rank can read (0 when there is none), saying so
    when that is not the one the latest pointer names."""
    device = next(model.parameters()).device
    pointer = run.latest_checkpoint()
    skipped = []
    for path in run.complete_checkpoints():
        state = _read(path)
        if _all_ranks(state is not None, device):
            if dist.get_rank() == 0 and (skipped or path != pointer):
                why = f" ({', '.join(p.name for p in skipped)} unreadable)" if skipped else ""
                print(f"resuming from {path}{why}; latest pointer: {pointer}")
            return apply_state(path, state, model, optimizer, scheduler)
        skipped.append(path)
    if skipped:
        raise CheckpointError(
            f"--resume: no readable checkpoint in {run.checkpoints} "
            f"(tried {', '.join(p.name for p in skipped)})"
        )
    return 0


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Load this rank's file of one given checkpoint (``--init-from``)."""
    state = _read(path)
    if not _all_ranks(state is not None, next(model.parameters()).device):
        raise CheckpointError(f"--init-from: {path} is not a readable checkpoint")
    return apply_state(path, state, model, optimizer, scheduler)


def apply_state(path: Path, state: dict, model, optimizer, scheduler) -> int:
    """Put a rank's saved state into the model, optimizer and scheduler; an imported
    checkpoint (weights only) starts a fresh optimizer and schedule at its iteration."""
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
        # Each group's LR range is this run's (muP's per-group max_lr/min_lr under the
        # schedule asked for), not the checkpoint's: an accepted schedule override applies.
        ranges = [{key: group[key] for key in ("max_lr", "min_lr") if key in group}
                  for group in optimizer.param_groups]  # fmt: skip
        optimizer.load_state_dict(state["optimizer"])
        for group, kept in zip(optimizer.param_groups, ranges, strict=True):
            group.update(kept)
    if state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    return state["iteration"]
