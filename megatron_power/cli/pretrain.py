"""``megatron-power pretrain``: a small GPT (dense or MoE) on real Megatron-Core.

With no flags: a 4-layer, 128-wide GPT with Power + muP on a synthetic Markov language
(known entropy, printed as the loss floor), about 2M tokens, a few minutes on 2 CPU
cores. ``--nproc 2 --tp 2`` (or ``--model moe --nproc 2 --ep 2``) runs it through
torchrun. The run directory holds config.json, metrics.jsonl, checkpoints/ and
loss_lr.png.

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

from ..schedules.decay import DecayShape
from ..training.config import PretrainConfig

DEFAULTS = PretrainConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="Train a small GPT with Power + muP on real Megatron-Core (CPU or GPU).",
        description=__doc__,
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
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=["dense", "moe"], default=DEFAULTS.model)
    model.add_argument("--hidden-size", type=int, default=DEFAULTS.hidden_size)
    model.add_argument("--num-layers", type=int, default=DEFAULTS.num_layers)
    model.add_argument("--head-dim", type=int, default=DEFAULTS.head_dim)
    model.add_argument("--num-experts", type=int, default=DEFAULTS.num_experts)
    model.add_argument("--seq-length", type=int, default=DEFAULTS.seq_length)
    model.add_argument("--no-mup", action="store_true", help="standard parameterisation")
    model.add_argument("--mup-base-hidden-size", type=int, default=DEFAULTS.mup_base_hidden_size)
    add_data_and_schedule_arguments(parser)
    parser.set_defaults(handler=run_pretrain)


def add_data_and_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and schedule flags (shared with ``import-hf``, whose runs continue here)."""
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
    schedule = parser.add_argument_group("schedule (tokens)")
    schedule.add_argument("--train-tokens", type=int, default=DEFAULTS.train_tokens)
    schedule.add_argument("--global-batch-size", type=int, default=DEFAULTS.global_batch_size)
    schedule.add_argument("--lr", type=float, default=DEFAULTS.lr)
    schedule.add_argument("--min-lr", type=float, default=DEFAULTS.min_lr)
    schedule.add_argument(
        "--lr-decay-style",
        default=DEFAULTS.lr_decay_style,
        choices=["power", "WSD", "cosine", "linear", "constant"],
    )
    schedule.add_argument("--lr-power-a", type=float, default=DEFAULTS.lr_power_a)
    schedule.add_argument("--lr-power-b", type=float, default=DEFAULTS.lr_power_b)
    schedule.add_argument(
        "--lr-power-batch-exponent",
        type=float,
        default=DEFAULTS.lr_power_batch_exponent,
        help="c in eta = a * beta**c * T**b (1: the paper's; `megatron-power fit` estimates it)",
    )
    schedule.add_argument("--warmup-tokens", type=int, default=DEFAULTS.warmup_tokens)
    schedule.add_argument(
        "--decay-tokens",
        type=int,
        default=None,
        help="Power tail / WSD decay length; default a fifth of --train-tokens; 0: none",
    )
    schedule.add_argument(
        "--decay-shape", default=DEFAULTS.decay_shape, choices=[shape.value for shape in DecayShape]
    )
    schedule.add_argument("--wsd-cycle-tokens", type=int, nargs="+", default=None)
    schedule.add_argument(
        "--branch-decay-tokens",
        type=int,
        default=None,
        help="with --init-from: decay over this many tokens from the checkpoint",
    )


def config_from_args(args: argparse.Namespace) -> tuple[PretrainConfig, Path | None]:
    """The resolved config (and the checkpoint to start from), validated before any work."""
    if args.resume:
        resume = Path(args.resume)
        if not (resume / "config.json").is_file():
            raise ValueError(f"--resume: {resume} has no config.json")
        config = PretrainConfig.load(resume / "config.json")
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
        model=args.model,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        head_dim=args.head_dim,
        num_experts=args.num_experts,
        seq_length=args.seq_length,
        mup=not args.no_mup,
        mup_base_hidden_size=args.mup_base_hidden_size,
        seed=args.seed,
        nproc=args.nproc,
        tensor_model_parallel_size=args.tp,
        expert_model_parallel_size=args.ep,
        device=args.device,
        exit_interval=args.exit_interval,
    )
    validate(config)
    return config, None


def data_and_schedule_fields(args: argparse.Namespace) -> dict:
    """PretrainConfig fields set by :func:`add_data_and_schedule_arguments`' flags."""
    return dict(
        data=args.data,
        vocab_size=args.vocab_size,
        tokenizer_model=args.tokenizer_model,
        lr=args.lr,
        min_lr=args.min_lr,
        lr_decay_style=args.lr_decay_style,
        lr_power_a=args.lr_power_a,
        lr_power_b=args.lr_power_b,
        lr_power_batch_exponent=args.lr_power_batch_exponent,
        warmup_tokens=args.warmup_tokens,
        decay_tokens=args.decay_tokens,
        decay_shape=args.decay_shape,
        wsd_cycle_tokens=args.wsd_cycle_tokens,
        train_tokens=args.train_tokens,
        global_batch_size=args.global_batch_size,
    )


def branch_config(args: argparse.Namespace, init_from: Path) -> PretrainConfig:
    """A run that starts from a trunk checkpoint and decays over --branch-decay-tokens."""
    trunk_dir = init_from.parent.parent
    if not (trunk_dir / "config.json").is_file() or not init_from.name.startswith("iter_"):
        raise ValueError(f"--init-from: {init_from} is not a run's checkpoints/iter_N directory")
    if args.branch_decay_tokens is None or args.run_dir is None:
        raise ValueError("--init-from: give --run-dir for the branch and --branch-decay-tokens")
    trunk = PretrainConfig.load(trunk_dir / "config.json")
    start_tokens = int(init_from.name.removeprefix("iter_")) * trunk.tokens_per_step
    config = dataclasses.replace(
        trunk,
        run_dir=args.run_dir,
        data_dir=trunk.data_dir or str(trunk_dir / "data"),
        branch_decay_start_tokens=start_tokens,
        branch_decay_tokens=args.branch_decay_tokens,
        train_tokens=start_tokens + args.branch_decay_tokens,
        decay_shape=args.decay_shape
        if args.decay_shape != DEFAULTS.decay_shape
        else trunk.decay_shape,
        exit_interval=None,
    )
    validate(config)
    return config


#: PretrainConfig / ScheduleSettings field -> the pretrain flag that sets it.
FLAGS = {
    "lr_power_a": "--lr-power-a",
    "lr_power_b": "--lr-power-b",
    "lr_power_batch_exponent": "--lr-power-batch-exponent",
    "lr_warmup_steps": "--warmup-tokens",
    "wsd_decay_steps": "--decay-tokens",
    "lr_wsd_decay_style": "--decay-shape",
    "lr_wsd_cycle_steps": "--wsd-cycle-tokens",
    "lr_branch_decay_steps": "--branch-decay-tokens",
    "lr_branch_decay_start_steps": "--init-from",
    "max_lr": "--lr",
    "min_lr": "--min-lr",
    "lr_decay_style": "--lr-decay-style",
    "base_hidden_size": "--mup-base-hidden-size",
}


def validate(config: PretrainConfig) -> None:
    """Every check that can fail, before any process starts."""
    from ..mup.rules import ModelShape
    from ..training.loop import mup_config, schedule_settings

    positive = {
        "--hidden-size": config.hidden_size, "--num-layers": config.num_layers,
        "--head-dim": config.head_dim, "--seq-length": config.seq_length,
        "--train-tokens": config.train_tokens, "--global-batch-size": config.global_batch_size,
        "--nproc": config.nproc, "--tp": config.tensor_model_parallel_size,
        "--ep": config.expert_model_parallel_size, "--vocab-size": config.vocab_size,
    }  # fmt: skip
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag}: must be >= 1, got {value}")
    if config.hidden_size % config.head_dim:
        raise ValueError(f"--head-dim: {config.head_dim} does not divide --hidden-size")
    model_parallel = config.tensor_model_parallel_size * config.expert_model_parallel_size
    if config.nproc % model_parallel:
        raise ValueError(f"--nproc: {config.nproc} is not a multiple of --tp x --ep")
    if config.expert_model_parallel_size > 1 and config.model != "moe":
        raise ValueError("--ep: expert parallelism needs --model moe")
    if config.model == "moe" and config.num_experts % config.expert_model_parallel_size:
        raise ValueError("--num-experts: not divisible by --ep")
    if config.train_tokens < config.tokens_per_step:
        raise ValueError("--train-tokens: shorter than one step (global batch x seq length)")
    if config.data != "markov" and not Path(config.data).is_file():
        raise ValueError(f"--data: no such file: {config.data}")
    try:
        schedule_settings(config)
        mup = mup_config(config)
        if mup is not None:
            mup.resolve(ModelShape(config.hidden_size, config.num_layers, config.head_dim))
    except ValueError as error:
        field, _, rest = str(error).partition(":")
        raise ValueError(f"{FLAGS.get(field.strip(), field)}:{rest}") from None


def run_pretrain(args: argparse.Namespace) -> int:
    config, init_from = config_from_args(args)
    run_dir = Path(config.run_dir)
    if not args.resume and init_from is None and (run_dir / "checkpoints").exists():
        raise ValueError(f"--run-dir: {run_dir} already has checkpoints; use --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    if config.nproc == 1:
        from ..training.loop import train

        train(config, init_from)
        return 0
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(config.nproc),
        "-m", "megatron_power.training.loop", str(run_dir / "config.json"),
    ]  # fmt: skip
    if init_from is not None:
        command.append(str(init_from))
    return subprocess.run(command, env=dict(os.environ), check=False).returncode
