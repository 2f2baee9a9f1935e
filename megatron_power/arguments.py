"""Command-line flags for the schedules, in Megatron-LM's names, and their conversion.

Two groups:

* :func:`add_megatron_scheduler_args`: Megatron-LM's own scheduler flags (``--lr``,
  ``--lr-decay-style``, ``--lr-warmup-samples`` ...), for tools that run without a
  Megatron-LM tree (``megatron-power schedule``), so users can paste their launch flags.
* :func:`add_power_args`: the flags this plugin adds (``--lr-power-a`` ...). The
  Megatron-LM hooks add only these; Megatron-LM defines the first group itself.

:func:`settings_from_args` turns either into :class:`ScheduleSettings` exactly the way
Megatron-LM's ``get_optimizer_param_scheduler`` turns iterations into samples.
"""

from __future__ import annotations

import argparse

from .megatron.settings import ALL_STYLES, ScheduleSettings
from .schedules.decay import DecayShape
from .schedules.power import PAPER_A, PAPER_B, PAPER_REFERENCE_SEQ_LENGTH

DECAY_SHAPES = [shape.value for shape in DecayShape]


def add_megatron_scheduler_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM's scheduler and batch flags, with Megatron-LM's defaults."""
    group = parser.add_argument_group("Megatron-LM scheduler flags")
    group.add_argument("--lr", type=float, default=None, help="Peak (max) learning rate.")
    group.add_argument("--min-lr", type=float, default=0.0)
    group.add_argument("--lr-warmup-init", type=float, default=0.0)
    group.add_argument("--lr-decay-style", default="linear", choices=list(ALL_STYLES))
    group.add_argument("--lr-decay-iters", type=int, default=None)
    group.add_argument("--lr-decay-samples", type=int, default=None)
    group.add_argument("--lr-warmup-fraction", type=float, default=None)
    group.add_argument("--lr-warmup-iters", type=int, default=0)
    group.add_argument("--lr-warmup-samples", type=int, default=0)
    group.add_argument("--lr-wsd-decay-style", default="exponential", choices=DECAY_SHAPES)
    group.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    group.add_argument("--lr-wsd-decay-samples", type=int, default=None)
    group.add_argument("--train-iters", type=int, default=None)
    group.add_argument("--train-samples", type=int, default=None)
    group.add_argument("--global-batch-size", type=int, default=None)
    group.add_argument(
        "--rampup-batch-size",
        nargs=3,
        type=int,
        default=None,
        metavar=("START", "INCREMENT", "RAMPUP_SAMPLES"),
        help="Batch-size ramp, as in Megatron-LM.",
    )
    group.add_argument("--seq-length", type=int, default=None)
    group.add_argument("--override-opt_param-scheduler", action="store_true")
    group.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true")
    return parser


def add_power_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The plugin's flags: Power law, extra decay shapes, WSD-S cycles, branch decay."""
    group = parser.add_argument_group("megatron-power scheduler flags")
    group.add_argument(
        "--lr-power-a",
        type=float,
        default=PAPER_A,
        help="Power law coefficient a in lr = min(lr, beta * a * tokens**b). Paper: 4.0.",
    )
    group.add_argument(
        "--lr-power-b",
        type=float,
        default=PAPER_B,
        help="Power law exponent b (< 0). Paper: -0.51.",
    )
    group.add_argument(
        "--lr-power-reference-seq-length",
        type=int,
        default=PAPER_REFERENCE_SEQ_LENGTH,
        help="beta counts the global batch in sequences of this many tokens (paper: 4096).",
    )
    group.add_argument(
        "--lr-power-batch-exponent",
        type=float,
        default=1.0,
        help="lr scales as beta**exponent; the paper assumes 1 (linear in batch size).",
    )
    group.add_argument(
        "--lr-decay-half-life-iters",
        type=int,
        default=None,
        help="Half-life of the half_life decay shape (MiniCPM); default fits the window.",
    )
    group.add_argument("--lr-decay-half-life-samples", type=int, default=None)
    group.add_argument(
        "--lr-wsd-cycle-iters",
        type=int,
        nargs="+",
        default=None,
        help="WSD-S: decay to --min-lr at each of these iterations, then return to the "
        "stable LR; each decay lasts --lr-wsd-decay-iters/samples.",
    )
    group.add_argument("--lr-wsd-cycle-samples", type=int, nargs="+", default=None)
    group.add_argument(
        "--lr-branch-decay-start-iters",
        type=int,
        default=None,
        help="Branch decay: start decaying at this iteration (a stable-phase checkpoint).",
    )
    group.add_argument("--lr-branch-decay-start-samples", type=int, default=None)
    group.add_argument(
        "--lr-branch-decay-iters",
        type=int,
        default=None,
        help="Branch decay: decay over this many iterations, then hold --min-lr.",
    )
    group.add_argument("--lr-branch-decay-samples", type=int, default=None)
    group.add_argument("--lr-branch-decay-style", default=None, choices=DECAY_SHAPES)
    return parser


def _pick(args: argparse.Namespace, stem: str, batch: int | None) -> int | None:
    """``--<stem>-iters`` (times the global batch) or ``--<stem>-samples``, not both."""
    iters = getattr(args, f"{stem}_iters", None)
    samples = getattr(args, f"{stem}_samples", None)
    flag = "--" + stem.replace("_", "-")
    if iters is not None and samples is not None:
        raise ValueError(f"{flag}-iters and {flag}-samples: give one, not both")
    if iters is None:
        return samples
    if batch is None:
        raise ValueError(f"--global-batch-size: needed to turn {flag}-iters into samples")
    if isinstance(iters, list):
        return [value * batch for value in iters]
    return iters * batch


def settings_from_args(args: argparse.Namespace) -> ScheduleSettings:
    """Megatron-LM's ``get_optimizer_param_scheduler`` conversion, plus the plugin's flags."""
    batch = args.global_batch_size
    if args.lr is None:
        raise ValueError("--lr: required")
    if args.train_iters is not None and args.train_samples is not None:
        raise ValueError("--train-iters and --train-samples: give one, not both")
    if args.train_iters is not None:
        if batch is None:
            raise ValueError("--global-batch-size: needed with --train-iters")
        decay_iters = args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters
        lr_decay_steps = decay_iters * batch
        wsd_decay_steps = None
        if args.lr_wsd_decay_iters is not None:
            wsd_decay_steps = args.lr_wsd_decay_iters * batch
        warmup_steps = args.lr_warmup_iters * batch
    elif args.train_samples is not None:
        lr_decay_steps = (
            args.lr_decay_samples if args.lr_decay_samples is not None else args.train_samples
        )
        wsd_decay_steps = args.lr_wsd_decay_samples
        warmup_steps = args.lr_warmup_samples
    else:
        raise ValueError("--train-iters or --train-samples: one is required")
    if args.lr_warmup_fraction is not None:
        warmup_steps = args.lr_warmup_fraction * lr_decay_steps  # a float, as in Megatron-LM
    cycles = _pick(args, "lr_wsd_cycle", batch)
    try:
        return _settings(args, lr_decay_steps, wsd_decay_steps, warmup_steps, cycles, batch)
    except ValueError as error:
        raise ValueError(name_the_flag(str(error))) from None


#: ScheduleSettings field -> the flag(s) a Megatron-LM user sets it with.
FIELD_FLAGS = {
    "lr_decay_style": "--lr-decay-style",
    "max_lr": "--lr",
    "min_lr": "--min-lr",
    "init_lr": "--lr-warmup-init",
    "lr_warmup_steps": "--lr-warmup-iters/--lr-warmup-samples/--lr-warmup-fraction",
    "lr_decay_steps": "--lr-decay-iters/--lr-decay-samples (default: --train-iters/-samples)",
    "wsd_decay_steps": "--lr-wsd-decay-iters/--lr-wsd-decay-samples",
    "lr_wsd_decay_style": "--lr-wsd-decay-style",
    "seq_length": "--seq-length",
    "lr_power_a": "--lr-power-a",
    "lr_power_b": "--lr-power-b",
    "lr_power_reference_seq_length": "--lr-power-reference-seq-length",
    "lr_power_batch_exponent": "--lr-power-batch-exponent",
    "lr_decay_half_life_steps": "--lr-decay-half-life-iters/-samples",
    "lr_wsd_cycle_steps": "--lr-wsd-cycle-iters/-samples",
    "lr_branch_decay_start_steps": "--lr-branch-decay-start-iters/-samples",
    "lr_branch_decay_steps": "--lr-branch-decay-iters/-samples",
    "lr_branch_decay_style": "--lr-branch-decay-style",
}


def name_the_flag(message: str) -> str:
    """Prefix a ``field: ...`` message with the flag that sets the field."""
    field, _, rest = message.partition(":")
    flag = FIELD_FLAGS.get(field.strip())
    return f"{flag} ({field}):{rest}" if flag else message


def _settings(args, lr_decay_steps, wsd_decay_steps, warmup_steps, cycles, batch):
    return ScheduleSettings(
        lr_decay_style=args.lr_decay_style,
        max_lr=args.lr,
        min_lr=args.min_lr,
        init_lr=args.lr_warmup_init,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=lr_decay_steps,
        wsd_decay_steps=wsd_decay_steps,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
        seq_length=args.seq_length,
        lr_power_a=args.lr_power_a,
        lr_power_b=args.lr_power_b,
        lr_power_reference_seq_length=args.lr_power_reference_seq_length,
        lr_power_batch_exponent=args.lr_power_batch_exponent,
        lr_decay_half_life_steps=_pick(args, "lr_decay_half_life", batch),
        lr_wsd_cycle_steps=tuple(cycles) if cycles is not None else None,
        lr_branch_decay_start_steps=_pick(args, "lr_branch_decay_start", batch),
        lr_branch_decay_steps=_pick(args, "lr_branch_decay", batch),
        lr_branch_decay_style=args.lr_branch_decay_style,
    )


def batch_size_at(samples: int, global_batch_size: int, rampup: list[int] | None) -> int:
    """Global batch size in force after ``samples``, following Megatron's ramp-up rule."""
    if not rampup:
        return global_batch_size
    start, increment, ramp_samples = rampup
    steps = (global_batch_size - start) // increment
    if steps <= 0:
        return global_batch_size
    samples_per_increment = ramp_samples / steps
    current = start + int(samples // samples_per_increment) * increment
    return min(current, global_batch_size)


def add_mup_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The plugin's muP flags. Prefixed ``--power-mup`` so they never collide with
    megatron-core 0.17+'s own ``--use-mup``/``--mup-*`` flags (using both is refused)."""
    from .mup.rules import RESIDUAL_RULES, ROUTER_RULES, WEIGHT_DECAY_RULES

    group = parser.add_argument_group("megatron-power muP flags")
    group.add_argument("--power-mup", action="store_true", help="Turn the plugin's muP on.")
    group.add_argument("--power-mup-base-hidden-size", type=int, default=None,
                       help="Base width: m = hidden-size / this.")  # fmt: skip
    group.add_argument("--power-mup-embedding-multiplier", type=float, default=1.0)
    group.add_argument("--power-mup-residual-multiplier", type=float, default=1.0)
    group.add_argument("--power-mup-residual-rule", choices=RESIDUAL_RULES, default="constant")
    group.add_argument("--power-mup-base-num-layers", type=int, default=None)
    group.add_argument("--power-mup-base-head-dim", type=int, default=None)
    group.add_argument("--power-mup-attention-scale", type=float, default=None)
    group.add_argument("--power-mup-logits-scale", type=float, default=None)
    group.add_argument("--power-mup-init-std", type=float, default=None)
    group.add_argument("--power-mup-no-depth-scaled-output-init", action="store_true")
    group.add_argument("--power-mup-base-moe-ffn-hidden-size", type=int, default=None)
    group.add_argument("--power-mup-router", choices=ROUTER_RULES, default="hidden")
    group.add_argument("--power-mup-scale-adam-eps", action="store_true")
    group.add_argument("--power-mup-weight-decay", choices=WEIGHT_DECAY_RULES, default="coupled")
    return parser


def mup_from_args(args: argparse.Namespace):
    """The MupConfig the flags describe, or None when ``--power-mup`` is off."""
    from .mup.rules import MupConfig

    if not getattr(args, "power_mup", False):
        return None
    if getattr(args, "use_mup", False):
        raise ValueError(
            "--power-mup and --use-mup: Megatron-Core's own muP is on too; use one of them"
        )
    if args.power_mup_base_hidden_size is None:
        raise ValueError("--power-mup-base-hidden-size: required with --power-mup")
    try:
        return MupConfig(
            base_hidden_size=args.power_mup_base_hidden_size,
            embedding_multiplier=args.power_mup_embedding_multiplier,
            residual_multiplier=args.power_mup_residual_multiplier,
            residual_rule=args.power_mup_residual_rule,
            base_num_layers=args.power_mup_base_num_layers,
            base_head_dim=args.power_mup_base_head_dim,
            attention_scale=args.power_mup_attention_scale,
            logits_scale=args.power_mup_logits_scale,
            init_std=args.power_mup_init_std,
            depth_scaled_output_init=not args.power_mup_no_depth_scaled_output_init,
            base_moe_ffn_hidden_size=args.power_mup_base_moe_ffn_hidden_size,
            router=args.power_mup_router,
            scale_adam_eps=args.power_mup_scale_adam_eps,
            weight_decay=args.power_mup_weight_decay,
        )
    except ValueError as error:
        raise ValueError(name_the_mup_flag(str(error))) from None


def name_the_mup_flag(message: str) -> str:
    """Prefix a MupConfig ``field: ...`` message with its ``--power-mup-*`` flag."""
    field, _, rest = message.partition(":")
    return f"--power-mup-{field.strip().replace('_', '-')} ({field}):{rest}"
