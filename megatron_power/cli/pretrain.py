"""``megatron-power pretrain``: a small GPT (dense or MoE) on real Megatron-Core.

With no flags: a 4-layer, 128-wide GPT with Power + muP on a synthetic Markov language
(known entropy, printed as the loss floor), about 2M tokens, a few minutes on 2 CPU
cores. ``--nproc 2 --tp 2`` (or ``--model moe --nproc 2 --ep 2``) runs it through
torchrun. The run directory holds config.json, metrics.jsonl, checkpoints/ and
loss_lr.png.

The schedule flags are Megatron-LM's, counted in tokens; each has the same default as in
Megatron-LM and ``megatron-power schedule``. Without ``--lr`` the embedded default
schedule applies (your other schedule flags on top):
  {embedded_schedule}
Without ``--mup-base-hidden-size`` the embedded model's muP applies:
  {embedded_mup}

    megatron-power pretrain                                  # the embedded default
    megatron-power pretrain --run-dir runs/a --exit-interval 50   # stop early ...
    megatron-power pretrain --resume runs/a                  # ... and continue exactly
    megatron-power pretrain --init-from runs/a/checkpoints/iter_0000050 \\
        --run-dir runs/a-decay --branch-decay-tokens 100000  # a budget model from it
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..arguments import add_knob_argument
from ..knobs import Unit, dest_of, knob_of, knobs
from ..mup.rules import MupConfig
from ..schedules.settings import ScheduleSettings
from ..training.config import (
    EMBEDDED_MUP,
    EMBEDDED_SCHEDULE,
    FRACTION,
    PretrainConfig,
    fraction_key,
)
from ..training.rundir import RunDir, iteration_of, run_of_checkpoint

DEFAULTS = PretrainConfig()


def embedded_flags(values: dict[str, Any], cls: Any) -> list[str]:
    """Pretrain flags that spell out a dict of knob values (fractions as -fraction)."""
    flags: list[str] = []
    for name, value in values.items():
        meta = knob_of(cls, name.removesuffix(FRACTION))
        flag = meta.pretrain_fraction_flag if name.endswith(FRACTION) else meta.pretrain_flag
        flags += [flag, str(value)]
    return flags


EMBEDDED_DEFAULT = embedded_flags(EMBEDDED_SCHEDULE, ScheduleSettings)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="Train a small GPT with Power + muP on real Megatron-Core (CPU or GPU).",
        description=__doc__.format(
            embedded_schedule=" ".join(EMBEDDED_DEFAULT),
            embedded_mup=" ".join(embedded_flags(EMBEDDED_MUP, MupConfig)),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", default=None, help=f"default {DEFAULTS.run_dir}")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue RUN_DIR from its latest checkpoint, same config",
    )
    run.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        default=None,
        help="start a new run (e.g. a branch decay) from a checkpoint directory",
    )
    run.add_argument(
        "--exit-interval",
        type=int,
        default=None,
        help="stop after this many iterations, with a checkpoint",
    )
    run.add_argument("--nproc", type=int, default=DEFAULTS.nproc)
    run.add_argument("--tp", type=int, default=DEFAULTS.tensor_model_parallel_size)
    run.add_argument("--ep", type=int, default=DEFAULTS.expert_model_parallel_size)
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default=DEFAULTS.device)
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    model = add_model_arguments(parser)
    model.add_argument("--seq-length", type=int, default=DEFAULTS.seq_length)
    add_mup_arguments(parser)
    add_data_and_schedule_arguments(parser)
    parser.set_defaults(handler=run_pretrain)


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The model's shape flags (shared with ``mup-audit``)."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=["dense", "moe"], default=DEFAULTS.model)
    model.add_argument("--hidden-size", type=int, default=DEFAULTS.hidden_size)
    model.add_argument("--num-layers", type=int, default=DEFAULTS.num_layers)
    model.add_argument("--head-dim", type=int, default=DEFAULTS.head_dim)
    model.add_argument("--num-experts", type=int, default=DEFAULTS.num_experts)
    return model


def add_mup_arguments(parser: argparse.ArgumentParser) -> None:
    """``--no-mup`` and every MupConfig knob as ``--mup-*`` (shared with ``import-hf``)."""
    group = parser.add_argument_group("muP (MupConfig knobs)")
    group.add_argument("--no-mup", action="store_true", help="standard parameterisation")
    for item, meta in knobs(MupConfig):
        add_knob_argument(group, item, meta, meta.pretrain_flag)


def add_data_and_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and schedule flags (shared with ``import-hf``, whose runs continue here).
    The schedule flags are the ScheduleSettings knobs, counted in tokens."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=DEFAULTS.data,
        help="'markov' (synthetic, known entropy) or a .txt/.jsonl file",
    )
    data.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size)
    data.add_argument(
        "--tokenizer-model",
        default=None,
        help="SentencePiece model for --data text (trained on the fly if absent)",
    )
    schedule = parser.add_argument_group("schedule (ScheduleSettings knobs, in tokens)")
    schedule.add_argument("--train-tokens", type=int, default=DEFAULTS.train_tokens)
    schedule.add_argument("--global-batch-size", type=int, default=DEFAULTS.global_batch_size)
    for item, meta in knobs(ScheduleSettings):
        if meta.pretrain_flag:
            unit = "tokens" if meta.unit is Unit.SAMPLES else None
            add_knob_argument(schedule, item, meta, meta.pretrain_flag, unit)
        if meta.pretrain_fraction_flag:
            add_knob_argument(schedule, item, meta, meta.pretrain_fraction_flag, "fraction")


def schedule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule knobs the flags set, in tokens (a fraction under its own key); without
    ``--lr``, on top of the embedded default schedule."""
    values: dict[str, Any] = {}
    for item, meta in knobs(ScheduleSettings):
        given = getattr(args, dest_of(meta.pretrain_flag), None) if meta.pretrain_flag else None
        share = None
        if meta.pretrain_fraction_flag:
            share = getattr(args, dest_of(meta.pretrain_fraction_flag), None)
        if given is not None and share is not None:
            raise ValueError(
                f"{meta.pretrain_flag} and {meta.pretrain_fraction_flag}: give one, not both"
            )
        if given is not None:
            values[item.name] = given
        if share is not None:
            values[fraction_key(item.name)] = share
    if "max_lr" in values:
        return values
    embedded = {  # the embedded default, less what the flags set (in either unit)
        name: value
        for name, value in EMBEDDED_SCHEDULE.items()
        if name.removesuffix(FRACTION) not in {key.removesuffix(FRACTION) for key in values}
    }
    return {**embedded, **values}


def mup_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The muP knobs (the embedded model's without --mup-base-hidden-size); None: SP."""
    values = {
        item.name: getattr(args, dest_of(meta.pretrain_flag))
        for item, meta in knobs(MupConfig)
        if getattr(args, dest_of(meta.pretrain_flag), None) is not None
    }
    if args.no_mup:
        if values:
            flag = knob_of(MupConfig, next(iter(values))).pretrain_flag
            raise ValueError(f"{flag}: not applied with --no-mup (standard parameterisation)")
        return None
    if "base_hidden_size" not in values:
        values = {**EMBEDDED_MUP, **values}
    return values


def config_from_args(args: argparse.Namespace) -> tuple[PretrainConfig, Path | None]:
    """The resolved config (and the checkpoint to start from), validated before any work."""
    if args.resume:
        resume = RunDir(args.resume)
        if not resume.config.is_file():
            raise ValueError(f"--resume: {resume.path} has no config.json")
        config = PretrainConfig.load(resume.config)
        config.exit_interval = args.exit_interval  # a stop is per invocation, not per run
        return config, None
    init_from = Path(args.init_from) if args.init_from else None
    if init_from is not None:
        return branch_config(args, init_from), init_from
    if args.branch_decay_tokens is not None:
        raise ValueError("--branch-decay-tokens: needs --init-from CHECKPOINT")
    config = PretrainConfig(
        run_dir=args.run_dir or DEFAULTS.run_dir,
        **data_and_schedule_fields(args),
        mup=mup_from_args(args),
        model=args.model,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        head_dim=args.head_dim,
        num_experts=args.num_experts,
        seq_length=args.seq_length,
        seed=args.seed,
        nproc=args.nproc,
        tensor_model_parallel_size=args.tp,
        expert_model_parallel_size=args.ep,
        device=args.device,
        exit_interval=args.exit_interval,
    )
    config.validate()
    return config, None


def data_and_schedule_fields(args: argparse.Namespace) -> dict:
    """PretrainConfig fields set by :func:`add_data_and_schedule_arguments`' flags."""
    # The user's files are named from the working directory: recorded absolute, once.
    return dict(
        data=args.data if args.data == "markov" else str(Path(args.data).resolve()),
        vocab_size=args.vocab_size,
        tokenizer_model=str(Path(args.tokenizer_model).resolve()) if args.tokenizer_model else None,
        schedule=schedule_from_args(args),
        train_tokens=args.train_tokens,
        global_batch_size=args.global_batch_size,
    )


def branch_config(args: argparse.Namespace, init_from: Path) -> PretrainConfig:
    """A run that starts from a trunk checkpoint and decays over --branch-decay-tokens."""
    trunk = run_of_checkpoint(init_from)
    if trunk is None:
        raise ValueError(f"--init-from: {init_from} is not a run's checkpoints/iter_N directory")
    if args.branch_decay_tokens is None or args.run_dir is None:
        raise ValueError("--init-from: give --run-dir for the branch and --branch-decay-tokens")
    config = PretrainConfig.load(trunk.config)
    start_tokens = iteration_of(init_from) * config.tokens_per_step
    schedule = dict(config.schedule)
    schedule.update(
        lr_branch_decay_start_steps=start_tokens, lr_branch_decay_steps=args.branch_decay_tokens
    )
    for name in ("lr_wsd_decay_style", "lr_branch_decay_style"):  # shapes may be chosen anew
        flag = knob_of(ScheduleSettings, name).pretrain_flag
        if getattr(args, dest_of(flag)) is not None:
            schedule[name] = getattr(args, dest_of(flag))
    config = dataclasses.replace(
        config,
        run_dir=args.run_dir,
        # the trunk's tokens, relative to the branch: the two can move together
        data_dir=os.path.relpath(
            (config.path(config.data_dir) if config.data_dir else trunk.data).resolve(),
            Path(args.run_dir).resolve(),
        ),
        schedule=schedule,
        train_tokens=start_tokens + args.branch_decay_tokens,
        exit_interval=None,
    )
    config.validate()
    return config


def run_pretrain(args: argparse.Namespace) -> int:
    config, init_from = config_from_args(args)
    run = RunDir(config.run_dir)
    if not args.resume and (run.has_checkpoints() or run.config.exists()):
        # A new run or a branch never writes over a run (a trunk's checkpoints included).
        raise ValueError(
            f"--run-dir: {run.path} already holds a run; continue it with --resume "
            f"{run.path}, or choose another --run-dir"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    config.save(run.config)
    if config.nproc == 1:
        from ..training.loop import train

        train(config, init_from)
        return 0
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(config.nproc),
        "-m", "megatron_power.training.worker", str(run.config),
    ]  # fmt: skip
    if init_from is not None:
        command.append(str(init_from))
    return subprocess.run(command, env=dict(os.environ), check=False).returncode
