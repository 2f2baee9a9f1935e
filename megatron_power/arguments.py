"""Megatron-LM-style command-line flags, derived from the knob definitions.

Every schedule flag comes from a :class:`ScheduleSettings` field and every muP flag from
a :class:`MupConfig` field (:mod:`megatron_power.knobs`): nothing here lists a knob.

* :func:`add_megatron_scheduler_args`: Megatron-LM's own scheduler and batch flags, for
  tools that run without a Megatron-LM tree (``megatron-power schedule``), so users can
  paste their launch flags.
* :func:`add_power_args` / :func:`add_mup_args`: the flags this plugin adds. The
  Megatron-LM hooks add only these; Megatron-LM defines the first group itself.

:func:`settings_from_args` turns either into :class:`ScheduleSettings` exactly the way
Megatron-LM's ``get_optimizer_param_scheduler`` turns iterations into samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from .knobs import Knob, Unit, default_of, dest_of, flag_naming, knob_of, knobs
from .mup.rules import MupConfig
from .schedules.batch import FLAG as STEP_FLAG
from .schedules.batch import (
    parse_step_batch_schedule,
    rampup_batch_size_at,
    step_batch_size_at,
)
from .schedules.settings import ScheduleSettings, unapplied_power_knob

#: A ScheduleSettings message ``field: ...`` -> ``--flag (field): ...``.
name_the_flag = flag_naming(ScheduleSettings)


def add_knob_argument(
    group: Any,
    item: dataclasses.Field,
    meta: Knob,
    flag: str,
    unit: str | None = None,
    dest: str | None = None,
) -> None:
    """One argparse flag for a knob: type, choices, nargs and help from its definition.

    ``unit`` is what a counted knob's flag counts (iters, samples, tokens, fraction);
    the default is always None (not given), so the knob's own default applies once.
    """
    options: dict[str, Any] = {"default": None, "dest": dest_of(flag)}
    default = default_of(item)
    if isinstance(default, bool):  # a switch: the flag sets the other value
        options.update(action="store_const", const=not default, dest=dest or options["dest"])
        group.add_argument(flag, help=f"{meta.help} [{item.name}]", **options)
        return
    if meta.choices is not None:
        options["choices"] = list(meta.choices)
    elif unit == "fraction":
        options["type"] = float
    elif unit is not None or (meta.check is not None and meta.check.integer):
        options["type"] = int
    else:
        options["type"] = float
    if meta.many:
        options["nargs"] = "+"
    if dest is not None:
        options["dest"] = dest
    shown = f" (default: {default})" if default is not None and unit is None else ""
    counted = f" In {unit}." if unit else ""
    options["help"] = f"{meta.help}{counted}{shown} [{item.name}]"
    group.add_argument(flag, **options)


def _add_knobs(group: Any, cls: Any, megatron_lm_owns: bool) -> None:
    """The flags Megatron-LM itself defines (``megatron_lm_owns``) or the plugin's."""
    for item, meta in knobs(cls):
        for flag in meta.flags():
            if (flag in meta.megatron_lm_flags()) != megatron_lm_owns:
                continue
            unit = flag.rsplit("-", 1)[1] if meta.unit is Unit.SAMPLES else None
            add_knob_argument(group, item, meta, flag, unit)


def add_megatron_scheduler_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM's scheduler and batch flags (for tools without a Megatron-LM tree)."""
    group = parser.add_argument_group("Megatron-LM scheduler flags")
    _add_knobs(group, ScheduleSettings, megatron_lm_owns=True)
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
    group.add_argument(
        STEP_FLAG,
        default=None,
        metavar='"THRESHOLD:BATCH ..."',
        help='Batch size by tokens seen, e.g. "0:768 250B:1536" (Megatron-LM 0.18+; suffixes '
        "K/M/B/T; thresholds in samples without --seq-length). Needs --train-samples.",
    )
    group.add_argument("--override-opt_param-scheduler", action="store_true")
    group.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true")
    return parser


def add_power_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The plugin's schedule flags: every ScheduleSettings knob Megatron-LM lacks."""
    group = parser.add_argument_group("megatron-power scheduler flags")
    _add_knobs(group, ScheduleSettings, megatron_lm_owns=False)
    return parser


def _given(args: argparse.Namespace, dest: str) -> Any:
    return getattr(args, dest, None)


def _meaningful(value: Any) -> bool:
    return value is not None and value != 0 and value != []


def _counted(
    args: argparse.Namespace, meta: Knob, batch: int | None, by_iters: bool, horizon: float
) -> Any:
    """A SAMPLES knob from ``--X-iters`` (x batch), ``--X-samples`` or ``--X-fraction``.

    Megatron-LM's own flags follow its rule: an iteration-based run reads ``-iters``, a
    sample-based one ``-samples`` (it refuses the other). The plugin's take either."""
    iters = _given(args, dest_of(f"{meta.flag}-iters"))
    samples = _given(args, dest_of(f"{meta.flag}-samples"))
    fraction = _given(args, dest_of(f"{meta.flag}-fraction")) if meta.fraction else None
    if fraction is not None:
        if _meaningful(iters) or _meaningful(samples):
            raise ValueError(f"{meta.flag}-fraction: give it or {meta.flag}-iters/-samples")
        if not 0 <= fraction <= 1:
            raise ValueError(f"{meta.flag}-fraction: must be in [0, 1], got {fraction}")
        return fraction_of_run(meta, fraction, horizon, batch)
    if _meaningful(iters) and _meaningful(samples):
        raise ValueError(f"{meta.flag}-iters and {meta.flag}-samples: give one, not both")
    if meta.megatron_lm_owns:
        wrong, flag = (samples, "-samples") if by_iters else (iters, "-iters")
        if _meaningful(wrong):
            mode = "--train-iters" if by_iters else "--train-samples"
            raise ValueError(f"{meta.flag}{flag}: does not go with {mode} (Megatron-LM's rule)")
        use_iters = by_iters
    else:
        use_iters = iters is not None
    if not use_iters:
        return tuple(samples) if meta.many and samples is not None else samples
    if iters is None:
        return None
    if batch is None:
        raise ValueError(f"--global-batch-size: needed to turn {meta.flag}-iters into samples")
    return tuple(item * batch for item in iters) if meta.many else iters * batch


def fraction_of_run(meta: Knob, fraction: float, horizon: float, batch: int | None) -> Any:
    """A fraction of the decay horizon (lr_decay_steps, the run by default). Megatron-LM's
    warmup fraction stays a float of samples, as Megatron computes it; the plugin's
    lengths are whole iterations of the global batch."""
    if meta.fraction_is_megatron_lm_s or not batch:
        return fraction * horizon
    return round(fraction * horizon / batch) * batch


def run_samples(args: argparse.Namespace) -> int:
    """The run's length in samples, from ``--train-iters`` (x batch) or ``--train-samples``."""
    batch = args.global_batch_size
    if batch is not None and batch < 1:
        raise ValueError(f"--global-batch-size: must be an integer >= 1, got {batch}")
    if args.train_iters is not None and args.train_samples is not None:
        raise ValueError("--train-iters and --train-samples: give one, not both")
    if args.train_iters is not None:
        if batch is None:
            raise ValueError("--global-batch-size: needed with --train-iters")
        if args.train_iters < 1:
            raise ValueError(f"--train-iters: must be an integer >= 1, got {args.train_iters}")
        return args.train_iters * batch
    if args.train_samples is not None:
        if args.train_samples < 1:
            raise ValueError(f"--train-samples: must be an integer >= 1, got {args.train_samples}")
        return args.train_samples
    raise ValueError("--train-iters or --train-samples: one is required")


def settings_from_args(args: argparse.Namespace) -> ScheduleSettings:
    """Megatron-LM's ``get_optimizer_param_scheduler`` conversion, plus the plugin's flags."""
    batch = args.global_batch_size
    if args.lr is None:
        raise ValueError("--lr: required")
    run = run_samples(args)
    by_iters = args.train_iters is not None
    horizon_meta = knob_of(ScheduleSettings, "lr_decay_steps")
    horizon = _counted(args, horizon_meta, batch, by_iters, run) or run
    values: dict[str, Any] = {"lr_decay_steps": horizon}
    for item, meta in knobs(ScheduleSettings):
        if item.name == "lr_decay_steps":
            continue
        if meta.unit is Unit.SAMPLES:
            value = _counted(args, meta, batch, by_iters, horizon)
        else:
            value = _given(args, meta.dest)
        if value is not None:
            values[item.name] = value
    if not getattr(args, "megatron_power_wsd_decay_style_given", True):
        values.pop("lr_wsd_decay_style", None)  # Megatron-LM's default, not the user's
    unused = unapplied_power_knob(values)
    if unused is not None:
        flag = knob_of(ScheduleSettings, unused[0]).flag
        raise ValueError(f"{flag}: only applies with --lr-decay-style power, not {unused[1]}")
    try:
        return ScheduleSettings(**values)
    except ValueError as error:
        raise ValueError(_in_the_units_given(args, str(error), batch)) from None


def _in_the_units_given(args: argparse.Namespace, message: str, batch: int | None) -> str:
    """A ScheduleSettings message (counts in samples) for a user who gave iterations: the
    flag they gave, with its value, and what the counts mean."""
    field = message.partition(":")[0].strip()
    meta = next((m for item, m in knobs(ScheduleSettings) if item.name == field), None)
    if meta is None or meta.unit is not Unit.SAMPLES:
        return name_the_flag(message)
    given = [flag for flag in meta.flags() if _meaningful(_given(args, dest_of(flag)))]
    if not given:
        return name_the_flag(message)
    value = _given(args, dest_of(given[0]))
    shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else value
    text = f"{given[0]} {shown} ({field}):{message.partition(':')[2]}"
    if given[0].endswith("-iters") or (args.train_iters is not None and batch):
        text += f" (counts in samples; one iteration is {batch} samples)"
    return text


def check_rampup(rampup: list[int] | None, global_batch_size: int) -> None:
    """Megatron-LM's own conditions on ``--rampup-batch-size START INCREMENT SAMPLES``."""
    if not rampup:
        return
    start, increment, ramp_samples = rampup
    flag = "--rampup-batch-size"
    if start < 1 or increment < 1 or ramp_samples < 0:
        raise ValueError(
            f"{flag}: START and INCREMENT must be >= 1 and RAMPUP_SAMPLES >= 0, got {rampup}"
        )
    if start > global_batch_size:
        raise ValueError(f"{flag}: START {start} is above --global-batch-size {global_batch_size}")
    if (global_batch_size - start) % increment:
        raise ValueError(
            f"{flag}: INCREMENT {increment} does not divide --global-batch-size - START "
            f"({global_batch_size - start}), as Megatron-LM requires"
        )


def batch_schedule_from_args(args: argparse.Namespace) -> Callable[[int], int]:
    """The global batch in force after each number of samples: ``--step-batch-size-schedule``
    (Megatron-LM 0.18's), ``--rampup-batch-size`` or the constant ``--global-batch-size``.
    With a step schedule ``args.global_batch_size`` becomes its last batch, as in Megatron."""
    text = getattr(args, "step_batch_size_schedule", None)
    if text is None:
        if args.global_batch_size is None:
            raise ValueError("--global-batch-size: required to step the scheduler")
        check_rampup(args.rampup_batch_size, args.global_batch_size)
        return lambda samples: rampup_batch_size_at(
            samples, args.global_batch_size, args.rampup_batch_size
        )
    if args.global_batch_size is not None:
        raise ValueError(
            f"{STEP_FLAG}: give it or --global-batch-size, not both (Megatron-LM's rule)"
        )
    if args.rampup_batch_size:
        raise ValueError(f"{STEP_FLAG}: give it or --rampup-batch-size, not both")
    if args.train_samples is None:
        raise ValueError(f"{STEP_FLAG}: needs --train-samples (an iteration has no fixed size)")
    schedule = parse_step_batch_schedule(text, getattr(args, "seq_length", None))
    args.global_batch_size = schedule[-1][1]
    return lambda samples: step_batch_size_at(samples, schedule)


def rampup_as_step_schedule(rampup: list[int], global_batch_size: int, seq_length: int) -> str:
    """The ``--step-batch-size-schedule`` (thresholds in tokens) that gives the batch sizes
    of ``--rampup-batch-size START INCREMENT SAMPLES`` at every step (Megatron's rule:
    START + floor(consumed / (SAMPLES / steps)) * INCREMENT)."""
    start, increment, ramp_samples = rampup
    steps = (global_batch_size - start) // increment
    if steps <= 0:
        return f"0:{global_batch_size}"
    entries = []
    for k in range(steps + 1):
        samples = math.ceil(k * ramp_samples / steps)
        while rampup_batch_size_at(samples, global_batch_size, rampup) < start + k * increment:
            samples += 1  # float division in Megatron's rule: the first sample that reaches k
        entries.append(f"{samples * seq_length}:{start + k * increment}")
    return " ".join(entries)


# ------------------------------------------------------------------------------ muP
#: A MupConfig message ``field: ...`` -> ``--power-mup-<field> (field): ...``.
name_the_mup_flag = flag_naming(MupConfig)


def add_mup_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The plugin's muP flags. Prefixed ``--power-mup`` so they never collide with
    megatron-core 0.17+'s own ``--use-mup``/``--mup-*`` flags (using both is refused)."""
    group = parser.add_argument_group("megatron-power muP flags")
    group.add_argument("--power-mup", action="store_true", help="Turn the plugin's muP on.")
    for item, meta in knobs(MupConfig):
        add_knob_argument(group, item, meta, meta.flag)
    return parser


def mup_from_args(args: argparse.Namespace) -> MupConfig | None:
    """The MupConfig the flags describe, or None when ``--power-mup`` is off."""
    if not getattr(args, "power_mup", False):
        return None
    if getattr(args, "use_mup", False):
        raise ValueError(
            "--power-mup and --use-mup: Megatron-Core's own muP is on too; use one of them"
        )
    values = {
        item.name: _given(args, meta.dest)
        for item, meta in knobs(MupConfig)
        if _given(args, meta.dest) is not None
    }
    if "base_hidden_size" not in values:
        raise ValueError("--power-mup-base-hidden-size: required with --power-mup")
    try:
        return MupConfig(**values)
    except ValueError as error:
        raise ValueError(name_the_mup_flag(str(error))) from None


# --------------------------------------------------------------------------- README
def _allowed(item: dataclasses.Field, meta: Knob) -> str:
    if meta.choices is not None:
        return ", ".join(f"`{choice}`" for choice in meta.choices)
    if meta.check is not None:
        return meta.check.describe()
    return "a switch" if isinstance(default_of(item), bool) else ""


def knob_table() -> str:
    """The README's flag tables, made from the knob definitions (a test keeps them equal)."""
    lines = [
        "| knob | Megatron-LM / `schedule` flags | `pretrain` flag (tokens) | default | allowed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for item, meta in knobs(ScheduleSettings):
        pretrain = " ".join(f"`{flag}`" for flag in meta.pretrain_flags())
        pretrain = pretrain or (f"from `{meta.pretrain_from}`" if meta.pretrain_from else "")
        flags = " ".join(f"`{flag}`" for flag in meta.flags())
        default = default_of(item)
        shown = "required" if item.default is dataclasses.MISSING else f"`{default}`"
        allowed = _allowed(item, meta)
        lines.append(f"| `{item.name}`: {meta.help} | {flags} | {pretrain} | {shown} | {allowed} |")
    lines += [
        "",
        "| muP knob | Megatron-LM flag (with `--power-mup`) | `pretrain` flag | default "
        "| allowed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for item, meta in knobs(MupConfig):
        default = default_of(item)
        shown = "required" if item.default is dataclasses.MISSING else f"`{default}`"
        lines.append(
            f"| `{item.name}`: {meta.help} | `{meta.flag}` | `{meta.pretrain_flag}` | {shown} "
            f"| {_allowed(item, meta)} |"
        )
    return "\n".join(lines)
