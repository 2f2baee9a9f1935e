"""``megatron-power schedule``: preview an LR schedule with the code training uses.

It drives :class:`PowerOptimizerParamScheduler` exactly as Megatron-LM does (one
``step(global_batch_size)`` per iteration, following ``--step-batch-size-schedule`` or
``--rampup-batch-size``), and prints a chart and a table (with the batch in force), or
CSV, and optionally writes a PNG of the LR and batch curves.

With no flags it shows the paper's PowerLM-3B schedule: Power (a=4, b=-0.51,
lr cap 0.02), batch 1024 x 4096 tokens, 1.25T tokens, an e-based exponential decay over
the last 10%.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..arguments import (
    add_megatron_scheduler_args,
    add_power_args,
    batch_schedule_from_args,
    run_samples,
    settings_from_args,
)
from ..files import atomic_write_text, check_output_file, save_figure_atomically
from ..schedules.settings import ScheduleSettings

#: PowerLM-3B (paper Table 1): 1.25T tokens at 1024 x 4096 tokens per step.
EMBEDDED_DEFAULT = [
    "--lr", "0.02",
    "--min-lr", "0.0",
    "--lr-decay-style", "power",
    "--lr-power-a", "4.0",
    "--lr-power-b", "-0.51",
    "--global-batch-size", "1024",
    "--seq-length", "4096",
    "--train-iters", "298023",
    "--lr-warmup-iters", "250",
    "--lr-wsd-decay-iters", "29802",
    "--lr-wsd-decay-style", "exponential_e",
]  # fmt: skip


@dataclass(frozen=True)
class SchedulePoint:
    iteration: int
    samples: int
    tokens: int
    lr: float
    batch: int  # the global batch of the step that led here (the first one's at 0)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="Preview LR vs tokens with the scheduler training uses.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_megatron_scheduler_args(parser)
    add_power_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=["table", "csv"], default="table")
    out.add_argument("--every", type=int, default=None, help="Keep every Nth iteration.")
    out.add_argument("--png", type=Path, default=None, help="Write LR vs tokens as a PNG.")
    out.add_argument("--output", type=Path, default=None, help="Write the CSV/table here.")
    out.add_argument("--force", action="store_true", help="overwrite existing --png/--output")
    parser.set_defaults(handler=run, embedded_default=EMBEDDED_DEFAULT)


#: The preview steps the scheduler once per iteration: a bound on what it will step.
MAX_PREVIEW_ITERATIONS = 20_000_000


def simulate(
    settings: ScheduleSettings,
    batch_at: Callable[[int], int],
    total: int | None = None,
) -> list[SchedulePoint]:
    """LR after every iteration up to ``total`` samples (the run's; default the decay
    horizon), as the scheduler sets it during training; iteration i takes
    ``batch_at(samples consumed)`` samples."""
    import torch  # here, not at the top: the other tools start without torch and Megatron

    from ..megatron.scheduler import PowerOptimizerParamScheduler

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=settings.max_lr)
    total = settings.lr_decay_steps if total is None else total
    if total is None:
        raise ValueError("--train-iters or --train-samples: needed to know where to stop")
    first = batch_at(0)
    if total / first > MAX_PREVIEW_ITERATIONS:  # the first batch is the smallest of a ramp
        raise ValueError(
            f"--train-iters/--train-samples: {total} samples is more than "
            f"{MAX_PREVIEW_ITERATIONS} iterations of the batch size to preview"
        )
    scheduler = PowerOptimizerParamScheduler.from_settings(optimizer, settings)
    seq_length = settings.seq_length or 0
    points = [SchedulePoint(0, 0, 0, optimizer.param_groups[0]["lr"], first)]
    iteration = 0
    while scheduler.num_steps < total:
        increment = batch_at(scheduler.num_steps)
        scheduler.step(increment)
        iteration += 1
        samples = scheduler.num_steps
        lr = optimizer.param_groups[0]["lr"]
        points.append(SchedulePoint(iteration, samples, samples * seq_length, lr, increment))
    return points


def thin(points: list[SchedulePoint], every: int) -> list[SchedulePoint]:
    kept = points[::every]
    if kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept


def write_csv(points: list[SchedulePoint], stream) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["iteration", "samples", "tokens", "lr", "global_batch_size"])
    for point in points:
        writer.writerow([point.iteration, point.samples, point.tokens, repr(point.lr), point.batch])


def ascii_chart(points: list[SchedulePoint], width: int = 72, height: int = 16) -> str:
    """LR (rows) vs tokens (columns) in plain characters, for a terminal."""
    top = max(point.lr for point in points) or 1.0
    last = points[-1].tokens or points[-1].samples or 1
    columns = [0.0] * width
    for point in points:
        position = point.tokens or point.samples
        column = min(width - 1, int(position / last * (width - 1)))
        columns[column] = max(columns[column], point.lr)
    rows = []
    for row in range(height, 0, -1):
        threshold = top * (row - 0.5) / height
        label = (
            f"{top * row / height:9.2e} |" if row in (height, height // 2, 1) else " " * 10 + "|"
        )
        rows.append(label + "".join("#" if value >= threshold else " " for value in columns))
    unit = "tokens" if points[-1].tokens else "samples"
    rows.append(" " * 10 + "+" + "-" * width)
    rows.append(" " * 11 + f"0{' ' * (width - 12)}{last:.3g} {unit}")
    return "\n".join(rows)


def table(points: list[SchedulePoint], rows: int = 12) -> str:
    step = max(1, len(points) // rows)
    lines = [f"{'iteration':>10} {'samples':>12} {'tokens':>16} {'lr':>12} {'batch':>8}"]
    for point in thin(points, step):
        lines.append(
            f"{point.iteration:>10} {point.samples:>12} {point.tokens:>16} {point.lr:>12.4e} "
            f"{point.batch:>8}"
        )
    return "\n".join(lines)


def write_png(points: list[SchedulePoint], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ValueError("--png: needs matplotlib (pip install 'megatron-power[plots]')") from error
    figure, axis = plt.subplots(figsize=(7, 4))
    use_tokens = bool(points[-1].tokens)
    x = [p.tokens if use_tokens else p.samples for p in points]
    axis.plot(x, [p.lr for p in points], color="tab:blue")
    axis.set_xlabel("tokens" if use_tokens else "samples")
    axis.set_ylabel("learning rate", color="tab:blue")
    if len({p.batch for p in points}) > 1:  # a batch schedule: its curve on a second axis
        batch_axis = axis.twinx()
        batch_axis.step(x, [p.batch for p in points], where="pre", color="tab:orange")
        batch_axis.set_ylabel("global batch size (sequences)", color="tab:orange")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure_atomically(figure, path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    batch_at = batch_schedule_from_args(args)
    settings = settings_from_args(args)
    if args.every is not None and args.every < 1:
        raise ValueError(f"--every: must be >= 1, got {args.every}")
    check_output_file(args.png, "--png", args.force)
    check_output_file(args.output, "--output", args.force)
    if args.png and args.output and args.png.resolve() == args.output.resolve():
        raise ValueError(f"--output: {args.output} is also --png; give them different files")
    points = simulate(settings, batch_at, run_samples(args))
    if args.png is not None:
        write_png(points, args.png, f"lr-decay-style {settings.lr_decay_style}")
    stream = io.StringIO()
    if args.format == "csv":
        write_csv(thin(points, args.every or 1), stream)
    else:
        print(ascii_chart(points), file=stream)
        print(file=stream)
        print(table(thin(points, args.every or 1)), file=stream)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, stream.getvalue())
    else:
        sys.stdout.write(stream.getvalue())
    return 0
