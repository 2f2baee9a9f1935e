"""The one place that knows where things live: a run directory, its checkpoints, their
rank files, and the Megatron-LM release layout that ``import-hf`` writes.

A run directory::

    config.json  metrics.jsonl  summary.json  loss_lr.png  data/tokens.{bin,idx,json}
    data/valid.{bin,idx,json}           the synthetic source's fixed validation tokens
    checkpoints/latest                  the newest iteration, written last
    checkpoints/iter_0000050/rank000.pt one file per rank (model, optimizer, scheduler, RNG)
    checkpoints/iter_0000050/config.json the configuration it was trained with
    hf_source/                          an imported model's files but its weights
                                        (config.json, tokenizer, generation config)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ITER_PREFIX = "iter_"
CONFIG_NAME = "config.json"
#: A checkpoint being written: renamed to iter_N once every rank's file is in.
PARTIAL_SUFFIX = ".partial"


class RunDir:
    """Paths inside one run directory (nothing is created by asking)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def plot(self) -> Path:
        return self.path / "loss_lr.png"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def hf_source(self) -> Path:
        """What import-hf kept of the Hugging Face model (export starts from it)."""
        return self.path / "hf_source"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints / "latest"

    def checkpoint(self, iteration: int) -> Path:
        return self.checkpoints / f"{ITER_PREFIX}{iteration:07d}"

    def partial_checkpoint(self, iteration: int) -> Path:
        return self.checkpoints / f"{ITER_PREFIX}{iteration:07d}{PARTIAL_SUFFIX}"

    def complete_checkpoints(self) -> list[Path]:
        """Finished checkpoint directories, newest first (partial ones are never listed)."""
        found = [path for path in self.checkpoints.glob(f"{ITER_PREFIX}*")
                 if path.is_dir() and iteration_of(path) is not None]  # fmt: skip
        return sorted(found, key=iteration_of, reverse=True)

    def clear_unfinished(self) -> None:
        """Remove what a launch without a checkpoint wrote (only the run's own names)."""
        for name in ("config.json", "metrics.jsonl", "summary.json", "loss_lr.png",
                     "tokenizer.model", "tokenizer.vocab", "tokenizer_corpus.txt"):  # fmt: skip
            (self.path / name).unlink(missing_ok=True)
        for directory in (self.data, self.checkpoints):
            if directory.is_dir():
                shutil.rmtree(directory)

    def has_checkpoints(self) -> bool:
        return self.checkpoints.exists()

    def latest_iteration(self) -> int | None:
        pointer = self.latest_pointer
        text = pointer.read_text().strip() if pointer.exists() else ""
        return int(text) if text.isdigit() else None

    def latest_checkpoint(self) -> Path | None:
        """The pointer's checkpoint, or the newest complete one if the pointer is missing
        or names none."""
        iteration = self.latest_iteration()
        if iteration is not None and self.checkpoint(iteration).is_dir():
            return self.checkpoint(iteration)
        complete = self.complete_checkpoints() if self.checkpoints.exists() else []
        return complete[0] if complete else None

    def write_latest(self, iteration: int) -> None:
        """Atomically (temporary name, fsync, rename): the pointer is never half written."""
        temporary = self.latest_pointer.with_name("latest.tmp")
        with temporary.open("w") as handle:
            handle.write(f"{iteration}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.latest_pointer)


def rank_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"rank{rank:03d}.pt"


def rank_files(checkpoint: Path) -> list[Path]:
    return sorted(Path(checkpoint).glob("rank*.pt"))


def iteration_of(checkpoint: Path) -> int | None:
    """The iteration of a ``checkpoints/iter_N`` directory, None for any other path."""
    name = Path(checkpoint).name
    digits = name.removeprefix(ITER_PREFIX)
    return int(digits) if name.startswith(ITER_PREFIX) and digits.isdigit() else None


def run_of_checkpoint(checkpoint: Path) -> RunDir | None:
    """The run directory a ``checkpoints/iter_N`` belongs to, None if it is not one."""
    checkpoint = Path(checkpoint)
    run = RunDir(checkpoint.parent.parent)
    if iteration_of(checkpoint) is None or checkpoint.parent.name != "checkpoints":
        return None
    return run if run.config.is_file() else None


def resolve_checkpoint(path: Path, what: str = "CKPT") -> tuple[RunDir, Path]:
    """(run, checkpoint directory) for a run directory (its latest) or one of its iter_N."""
    path = Path(path)
    if RunDir(path).config.is_file():
        run = RunDir(path)
        latest = run.latest_checkpoint()
        if latest is None:
            raise ValueError(f"{what}: {path} has no checkpoints")
        return run, latest
    run = run_of_checkpoint(path)
    if run is None:
        raise ValueError(f"{what}: {path} is neither a run directory nor its checkpoints/iter_N")
    return run, path


# ----------------------------------------------------------- Megatron-LM's torch format
def megatron_lm_release_file(root: Path, tp_rank: int, ep_rank: int, ep_size: int) -> Path:
    """``release/mp_rank_TT[_EEE]/model_optim_rng.pt``, as Megatron-LM's
    get_checkpoint_name spells it (the expert rank only with expert parallelism)."""
    name = f"mp_rank_{tp_rank:02d}" + (f"_{ep_rank:03d}" if ep_size > 1 else "")
    return Path(root) / "release" / name / "model_optim_rng.pt"


def megatron_lm_tracker(root: Path) -> Path:
    """Megatron-LM's pointer to the checkpoint to load (holds ``release`` here)."""
    return Path(root) / "latest_checkpointed_iteration.txt"


def finished_runs(paths: list[Path], flag: str) -> list[Path]:
    """Run directories named directly or through a sweep directory's runs/ (there, the
    finished ones)."""
    found = []
    for path in map(Path, paths):
        if (path / CONFIG_NAME).is_file() and RunDir(path).metrics.is_file():
            found.append(path)
        elif (path / "sweep.json").is_file():
            finished = sorted(p for p in (path / "runs").glob("*") if RunDir(p).summary.is_file())
            if not finished:
                raise ValueError(f"{flag}: {path} is a sweep directory with no finished run")
            found += finished
        else:
            raise ValueError(
                f"{flag}: {path} is not a run directory (config.json + metrics.jsonl of "
                "megatron-power pretrain) or a sweep directory"
            )
    return found
