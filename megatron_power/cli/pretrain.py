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
        --run-dir runs/a-decay --branch-decay-tokens 102400  # a budget model from it
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from ..arguments import add_knob_argument
from ..files import DirectoryLock
from ..knobs import Unit, dest_of, knob_of, knobs
from ..mup.rules import MupConfig
from ..schedules.batch import parse_step_batch_schedule
from ..schedules.settings import ScheduleSettings, unapplied_power_knob
from ..training.config import (
    EMBEDDED_MUP,
    EMBEDDED_SCHEDULE,
    FRACTION,
    PretrainConfig,
    fraction_key,
    settings_of,
)
from ..training.resume import config_changes, same_lr_curve
from ..training.rundir import CONFIG_NAME, RunDir, iteration_of, run_of_checkpoint

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
        help="continue RUN_DIR from its latest checkpoint; flags given now are compared "
        "with the run's (--exit-interval and a longer --train-tokens that leaves the LR "
        "curve unchanged apply; other changes are refused)",
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
    run.add_argument(
        "--override-opt-param-scheduler",
        "--override-opt_param-scheduler",
        action="store_true",
        help="with --resume: continue with the schedule flags given now (Megatron-LM's "
        "switch); without it a changed schedule is refused",
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
        help="SentencePiece .model or Hugging Face tokenizer.json for --data text (a "
        "SentencePiece model is trained on the fly if absent)",
    )
    schedule = parser.add_argument_group("schedule (ScheduleSettings knobs, in tokens)")
    schedule.add_argument("--train-tokens", type=int, default=DEFAULTS.train_tokens)
    schedule.add_argument("--global-batch-size", type=int, default=DEFAULTS.global_batch_size)
    schedule.add_argument(
        "--step-batch-size-schedule",
        default=None,
        metavar='"TOKENS:BATCH ..."',
        help='Global batch by tokens seen, e.g. "0:8 1M:16 4M:32" (Megatron-LM 0.18+; '
        "K/M/B/T); not with --global-batch-size: the last batch is the run's",
    )
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
        return _refuse_unapplied(values, values)
    embedded = {  # the embedded default, less what the flags set (in either unit)
        name: value
        for name, value in EMBEDDED_SCHEDULE.items()
        if name.removesuffix(FRACTION) not in {key.removesuffix(FRACTION) for key in values}
    }
    return _refuse_unapplied({**embedded, **values}, values)


def _refuse_unapplied(schedule: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``schedule``, unless a power-only flag in ``given`` would do nothing in it."""
    unused = unapplied_power_knob(given, schedule.get("lr_decay_style"))
    if unused is not None:
        flag = knob_of(ScheduleSettings, unused[0]).pretrain_flag
        raise ValueError(f"{flag}: only applies with --lr-decay-style power, not {unused[1]}")
    return schedule


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


def config_from_args(args: argparse.Namespace) -> tuple[PretrainConfig, Path | None, bool]:
    """The resolved config, the checkpoint to start from and whether the scheduler takes
    this config's schedule over the checkpoint's; validated before any work."""
    given = getattr(args, "given", set())
    for flag in ("--resume", "--run-dir", "--init-from"):  # '' would read as "not given"
        if getattr(args, dest_of(flag), None) == "":
            raise ValueError(f"{flag}: needs a directory, got ''")
    for flag in ("--exit-interval", "--branch-decay-tokens"):
        value = getattr(args, dest_of(flag), None)
        if value is not None and value < 1:
            raise ValueError(f"{flag}: must be an integer >= 1, got {value}")
    if args.resume:
        config, override = resume_config(args, given)
        return config, None, override
    if "override_opt_param_scheduler" in given:
        raise ValueError("--override-opt-param-scheduler: only with --resume")
    init_from = Path(args.init_from) if args.init_from else None
    if init_from is not None:
        return branch_config(args, init_from), init_from, False
    if args.branch_decay_tokens is not None:
        raise ValueError("--branch-decay-tokens: needs --init-from CHECKPOINT")
    if args.model != "moe" and "num_experts" in given:
        raise ValueError("--num-experts: only applies with --model moe")
    if args.data == "markov" and "tokenizer_model" in given:
        raise ValueError(
            "--tokenizer-model: only applies with --data FILE (text); the synthetic markov "
            "source has its own tokens (--vocab-size)"
        )
    if args.step_batch_size_schedule is not None:
        if "global_batch_size" in given:
            raise ValueError(
                "--step-batch-size-schedule: give it or --global-batch-size, not both "
                "(Megatron's rule: the schedule's last batch is the run's)"
            )
        schedule = parse_step_batch_schedule(args.step_batch_size_schedule, args.seq_length)
        args.global_batch_size = schedule[-1][1]
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
    return config, None, False


#: pretrain flags whose argparse dest is not the config field's name.
FIELD_OF_DEST = {"tp": "tensor_model_parallel_size", "ep": "expert_model_parallel_size"}


def resume_config(args: argparse.Namespace, given: set[str]) -> tuple[PretrainConfig, bool]:
    """The saved run with the flags given now on top. A change that alters the math is
    refused, naming each flag with its old and new value, unless it is a schedule change
    and ``--override-opt-param-scheduler`` accepts it; ``--exit-interval`` and a longer
    ``--train-tokens`` that leaves the trained part of the LR curve unchanged apply."""
    resume = RunDir(args.resume)
    if not resume.config.is_file():
        raise ValueError(f"--resume: {resume.path} has no config.json")
    for dest in ("run_dir", "init_from"):
        if dest in given:
            raise ValueError(f"--{dest.replace('_', '-')}: not with --resume (the run "
                             f"continues in {resume.path})")  # fmt: skip
    current = PretrainConfig.load(resume.config)
    # What the newest checkpoint was trained with is the truth (config.json may be edited).
    latest = resume.latest_checkpoint()
    trained = current
    if latest is not None and (latest / CONFIG_NAME).is_file():
        trained = PretrainConfig.load(latest / CONFIG_NAME)
        trained.run_dir = current.run_dir
    asked = overlay_flags(current, args, given)
    try:
        asked.validate(inputs_needed=False)
    except ValueError as error:
        raise ValueError(f"--resume: {error}") from None
    changes = config_changes(trained, asked)
    schedule_changes = [c for c in changes if c.schedule]
    longer = any(c.field == "train_tokens" for c in changes) and same_lr_curve(trained, asked)
    if longer:  # a longer run, the same LR at every step trained or planned so far
        changes = [c for c in changes if c.field != "train_tokens"]
        schedule_changes = [c for c in schedule_changes if c.field != "train_tokens"]
        print(f"--train-tokens: extending the run to {asked.train_tokens} tokens "
              "(the LR curve so far is unchanged)")  # fmt: skip
    refused = [c for c in changes if not c.schedule]
    if not args.override_opt_param_scheduler:
        refused += schedule_changes
    if refused:
        accept = ""
        if schedule_changes and not args.override_opt_param_scheduler:
            accept = "; --override-opt-param-scheduler accepts the schedule's changes"
        fixed = [c for c in refused if not c.schedule]
        hint = (" (model, data, seed, batch and layout cannot change in a run: start a new "
                "--run-dir, or --init-from one of its checkpoints)") if fixed else ""  # fmt: skip
        raise ValueError(
            f"--resume: {resume.path} was trained with other settings: "
            + ", ".join(str(c) for c in refused)
            + accept
            + hint
        )
    if schedule_changes:
        print("--override-opt-param-scheduler: continuing with the new schedule: "
              + ", ".join(str(c) for c in schedule_changes))  # fmt: skip
    asked.exit_interval = args.exit_interval  # a stop is per invocation, not per run
    return asked, bool(schedule_changes) or longer


def overlay_flags(saved: PretrainConfig, args: argparse.Namespace, given: set[str]):
    """``saved`` with every flag the user gave on top (fractions re-resolved)."""
    settings = settings_of(PretrainConfig)
    changes: dict[str, Any] = {}
    for dest in given:
        name = FIELD_OF_DEST.get(dest, dest)
        if name in settings and settings[name].flag is not None:
            changes[name] = getattr(args, dest)
    for name in ("data", "tokenizer_model"):
        if name in changes and changes[name] not in (None, "markov"):
            changes[name] = str(Path(changes[name]).resolve())
    schedule = dict(saved.schedule)
    for item, meta in knobs(ScheduleSettings):
        for flag, key in ((meta.pretrain_flag, item.name),
                          (meta.pretrain_fraction_flag, fraction_key(item.name))):  # fmt: skip
            if flag and dest_of(flag) in given:
                schedule.pop(item.name, None)
                schedule[key] = getattr(args, dest_of(flag))
    mup = saved.mup
    mup_given = {
        item.name: getattr(args, dest_of(meta.pretrain_flag))
        for item, meta in knobs(MupConfig)
        if dest_of(meta.pretrain_flag) in given
    }
    if args.no_mup:
        mup = mup_from_args(args)  # None, or the error for muP flags with --no-mup
    elif mup_given:
        base = saved.mup if saved.mup is not None else {}
        if "base_hidden_size" not in {**base, **mup_given}:
            base = {**EMBEDDED_MUP, **base}
        mup = {**base, **mup_given}
    return dataclasses.replace(saved, **changes, schedule=schedule, mup=mup)


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
        step_batch_size_schedule=args.step_batch_size_schedule,
    )


def branch_config(args: argparse.Namespace, init_from: Path) -> PretrainConfig:
    """A run that starts from a trunk checkpoint and decays over --branch-decay-tokens."""
    trunk = run_of_checkpoint(init_from)
    if trunk is None:
        raise ValueError(f"--init-from: {init_from} is not a run's checkpoints/iter_N directory")
    if args.branch_decay_tokens is None or args.run_dir is None:
        raise ValueError("--init-from: give --run-dir for the branch and --branch-decay-tokens")
    config = PretrainConfig.load(trunk.config)
    if config.step_batch_size_schedule is not None:
        raise ValueError(
            "--init-from: the trunk follows --step-batch-size-schedule; branch decays of such "
            "runs are not supported yet (resume the trunk with a decay instead)"
        )
    step = config.tokens_per_step
    if args.branch_decay_tokens % step:
        low = args.branch_decay_tokens // step * step
        raise ValueError(
            f"--branch-decay-tokens: {args.branch_decay_tokens} is not a whole number of the "
            f"trunk's steps ({step} tokens each), so the run would end before its decay does; "
            f"use {low or step} or {low + step}"
        )
    start_tokens = iteration_of(init_from) * step
    start = start_tokens // config.seq_length
    for begin, end, final in config.schedule_settings().decay_windows():
        if begin < start and (start < end or final):
            raise ValueError(
                f"--init-from: iteration {iteration_of(init_from)} lies inside the trunk's "
                f"decay (tokens {begin * config.seq_length:.0f}-{end * config.seq_length:.0f}): "
                "its LR has already decayed; branch from a checkpoint before that decay"
            )
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
        exit_interval=args.exit_interval,
    )
    config.validate()
    return config


def run_pretrain(args: argparse.Namespace) -> int:
    config, init_from, override = config_from_args(args)
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device: cuda asked for, but no CUDA device is visible here")
    run = RunDir(config.run_dir)
    with DirectoryLock(run.path, "--resume" if args.resume else "--run-dir"):
        if not args.resume and run.complete_checkpoints():
            # A new run or a branch never writes over a run (a trunk's checkpoints included).
            raise ValueError(
                f"--run-dir: {run.path} already holds a run; continue it with --resume "
                f"{run.path}, or choose another --run-dir"
            )
        if not args.resume and run.config.exists():
            # A launch that died before its first checkpoint trained nothing: what it
            # prepared (data, tokenizer) came from its flags, not these.
            print(f"--run-dir: {run.path} holds a launch that wrote no checkpoint; starting over")
            run.clear_unfinished()
        config.save(run.config)
        if config.nproc == 1:
            from ..training.loop import train

            train(config, init_from, override_schedule=override)
            return 0
        worker = [str(run.config)]
        if init_from is not None:
            worker += ["--init-from", str(init_from)]
        if override:
            worker.append("--override-schedule")
        return launch_workers(config.nproc, worker)


def launch_workers(nproc: int, worker_args: list[str]) -> int:
    """torchrun's own launcher, in this process: a worker's one-line error (rank 0 prints
    it) and exit status reach the user without torchrun's ChildFailedError traceback."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # its notices
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc),
         "-m", "megatron_power.training.worker", *worker_args]
    )  # fmt: skip
    try:
        torchrun(args)
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        for code in (2, 1):  # a user's mistake, a run that had to stop: the worker said why
            if code in codes:
                return code
        raise RuntimeError(f"a worker process failed (exit codes {sorted(codes)})") from None
    return 0
