"""``megatron-power evaluate``: a finished run's final loss on its data's fixed validation set.

    megatron-power evaluate runs/a runs/b sweeps/grid     # run or sweep directories

``pretrain`` evaluates every run of one data set on the same sequences, whatever the run's
length or seed, and records which (``valid_set`` in summary.json: their count and sha256).
Runs trained before that (their validation set moved with --train-tokens and --seed) are
evaluated again from their final checkpoint; the earlier loss stays in summary.json under
``earlier_evaluations``. ``megatron-power predict`` compares final losses only of runs
evaluated on one set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..files import DirectoryLock
from ..training.config import PretrainConfig
from ..training.rundir import RunDir, finished_runs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="A finished run's final loss on its data's fixed validation set.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN",
        help="run directories of megatron-power pretrain, or sweep directories",
    )  # fmt: skip
    parser.add_argument(
        "--again", action="store_true", help="also runs already evaluated on their fixed set"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Every run checked before the first is evaluated: a mistake costs no evaluation.
    todo: list[tuple[RunDir, PretrainConfig, dict]] = []
    for path in finished_runs(args.runs, "RUN"):
        run_dir = RunDir(path)
        config = PretrainConfig.load(run_dir.config)
        if not run_dir.summary.is_file():
            raise ValueError(
                f"RUN: {path} has not finished (no summary.json); finish it first "
                f"(megatron-power pretrain --resume {path})"
            )
        summary = json.loads(run_dir.summary.read_text())
        todo.append((run_dir, config, summary))
    for run_dir, config, summary in todo:
        if "valid_set" in summary and not args.again:
            print(f"{run_dir.path}: validation loss {summary['valid_loss']:.4f} "
                  "(already on its data's fixed validation set)")  # fmt: skip
            continue
        with DirectoryLock(run_dir.path, "RUN"):
            code = evaluate_one(config)
        if code:
            return code
        after = json.loads(run_dir.summary.read_text())
        was = summary.get("valid_loss")
        change = "" if was is None else f" (was {was:.4f} on {describe(summary)})"
        print(f"{run_dir.path}: validation loss {after['valid_loss']:.4f}{change}")
    return 0


def evaluate_one(config: PretrainConfig) -> int:
    """One process in this one (a parallel run: its own processes, as it was trained)."""
    if config.nproc == 1:
        from ..training.loop import evaluate_finished

        evaluate_finished(config)
        return 0
    from .pretrain import launch_workers

    return launch_workers(config.nproc, [str(RunDir(config.run_dir).config), "--evaluate"])


def describe(summary: dict) -> str:
    found = summary.get("valid_set")
    if found is None:
        return "a validation set that depended on the run's length and seed"
    return f"validation set {found['sha256']}"
