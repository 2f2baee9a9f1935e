"""``megatron-power sweep`` and ``megatron-power fit``: the paper's method for a and b.

    megatron-power sweep --sweep-dir sweeps/a --lrs 0.005 0.01 0.02 0.04 \\
        --global-batch-sizes 8 16 32 --train-tokens 100000 200000 400000
    megatron-power fit sweeps/a                   # optimal LR per cell, a, b, c, flags, plot

Each proxy is ``megatron-power pretrain`` (WSD) unless ``--command`` gives your own
launch as a template, e.g. ``--command "bash train.sh --lr {lr} --global-batch-size
{global_batch_size} --train-samples {train_samples} --lr-wsd-decay-samples
{decay_samples} --save {run_dir}"``; the final validation loss is read from Megatron's
log line. ``--launcher slurm`` submits the grid as a job array instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import asdict, fields
from pathlib import Path

from ..arguments import add_knob_argument
from ..files import DirectoryLock, atomic_write_text, check_output_file, save_figure_atomically
from ..knobs import fields_by_name, knob_of
from ..schedules.settings import ScheduleSettings
from ..sweep.runner import PRETRAIN_TEMPLATE, SweepDir, SweepSpec, command, runs_pretrain


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="Proxy LR sweeps (LR x batch x tokens x width) with WSD, locally or on SLURM.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("--sweep-dir", default="sweeps/default")
    grid = sweep.add_argument_group("grid")
    grid.add_argument("--lrs", type=float, nargs="+", default=[0.0025, 0.005, 0.01, 0.02, 0.04])
    grid.add_argument("--global-batch-sizes", type=int, nargs="+", default=[16])
    grid.add_argument("--train-tokens", type=int, nargs="+", default=[102_400, 204_800, 409_600])
    grid.add_argument("--hidden-sizes", type=int, nargs="+", default=[128])
    grid.add_argument("--seeds", type=int, nargs="+", default=[0])
    grid.add_argument("--seq-length", type=int, default=128)
    add_proxy_schedule_arguments(grid)
    shape = knob_of(ScheduleSettings, "lr_wsd_decay_style")
    add_knob_argument(grid, fields_by_name(ScheduleSettings)["lr_wsd_decay_style"], shape,
                      shape.pretrain_flag)  # fmt: skip
    how = sweep.add_argument_group("running")
    how.add_argument(
        "--command",
        default=None,
        help="a command template with {lr} {global_batch_size} {train_tokens} "
        "{train_samples} {train_iters} {warmup_*} {decay_*} {seq_length} {hidden_size} "
        "{seed} {run_dir} {id} {python}; default: megatron-power pretrain with WSD",
    )
    how.add_argument("--extra-args", default="", help="appended to every command")
    how.add_argument("--jobs", type=int, default=None, help="concurrent local runs (auto)")
    how.add_argument("--threads-per-run", type=int, default=1, help="CPU threads per run")
    how.add_argument("--retry-failed", action="store_true", help="rerun runs that failed")
    how.add_argument("--launcher", choices=["local", "slurm"], default="local")
    how.add_argument("--dry-run", action="store_true", help="slurm: write the script only")
    how.add_argument("--sbatch-option", action="append", default=[],
                     help="an #SBATCH line, e.g. --sbatch-option=--partition=gpu")  # fmt: skip
    how.add_argument("--max-parallel", type=int, default=None, help="slurm: array %% limit")
    how.add_argument("--setup", default="", help="slurm: shell lines before each task")
    how.add_argument("--task-index", type=int, default=None, help=argparse.SUPPRESS)
    how.add_argument("--collect", action="store_true", help="gather results.jsonl and report")
    sweep.set_defaults(handler=run_sweep)

    fit = subparsers.add_parser(
        "fit",
        help="Fit eta_opt = a * beta**c * T**b to sweep results; print the Power flags.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("results", metavar="RESULTS", help="a sweep directory or its results.jsonl")
    fit.add_argument("--hidden-size", type=int, default=None, help="fit this width only")
    fit.add_argument(
        "--png",
        type=Path,
        default=None,
        help="plot (default RESULTS dir/fit.png, replaced on every fit)",
    )
    fit.add_argument("--json", type=Path, default=None, help="write the fit here")
    fit.add_argument("--force", action="store_true", help="overwrite existing --png/--json")
    fit.set_defaults(handler=run_fit)


def add_proxy_schedule_arguments(group) -> None:
    """The proxies' WSD warmup and decay shares (SweepSpec's fields), for sweep and
    mup-tune: a share of each run, so every budget in a grid gets the same shape."""
    defaults = {item.name: item.default for item in fields(SweepSpec)}
    group.add_argument("--warmup-fraction", type=float, default=defaults["warmup_fraction"],
                       help="warmup share of each run")  # fmt: skip
    group.add_argument("--decay-fraction", type=float, default=defaults["decay_fraction"],
                       help="WSD decay share of each run")  # fmt: skip


# -------------------------------------------------------------------------- sweep
def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    spec = SweepSpec(
        lrs=args.lrs, global_batch_sizes=args.global_batch_sizes, train_tokens=args.train_tokens,
        hidden_sizes=args.hidden_sizes, seeds=args.seeds, seq_length=args.seq_length,
        warmup_fraction=args.warmup_fraction, decay_fraction=args.decay_fraction,
        **({} if args.decay_shape is None else {"decay_shape": args.decay_shape}),
        template=args.command or PRETRAIN_TEMPLATE, extra_args=args.extra_args,
    )  # fmt: skip
    spec.validate()
    if runs_pretrain(spec.template):
        check_pretrain_flags(spec)
    return spec


def check_pretrain_flags(spec: SweepSpec) -> None:
    """Every run is ``megatron-power pretrain``: its flags are parsed now, so a mistyped
    --extra-args is one line before the sweep instead of a failed record per run."""
    import shlex

    from . import pretrain as pretrain_command

    def refuse(message: str) -> None:
        raise ValueError(f"--extra-args: pretrain would refuse it: {message}")

    parser = argparse.ArgumentParser(prog="megatron-power")
    pretrain_command.add_parser(parser.add_subparsers(dest="tool"))
    parser._subparsers._group_actions[0].choices["pretrain"].error = refuse  # type: ignore
    words = shlex.split(command(spec, spec.runs()[0], Path("RUN_DIR")))
    _, unknown = parser.parse_known_args(words[words.index("pretrain") :])
    if unknown:
        refuse(f"unrecognized arguments: {' '.join(unknown)}")


def run_sweep(args: argparse.Namespace) -> int:
    if args.sweep_dir == "":  # an unset shell variable; Path("") would be the working dir
        raise ValueError("--sweep-dir: needs a directory, got ''")
    sweep = SweepDir(Path(args.sweep_dir))
    for flag in ("--jobs", "--threads-per-run", "--max-parallel"):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None and value < 1:
            raise ValueError(f"{flag}: must be >= 1, got {value}")
    if args.task_index is not None or args.collect:
        spec = sweep.load_spec()
        if args.task_index is not None:
            return run_task(sweep, spec, args.task_index)
        return report(sweep, spec)
    spec = spec_from_args(args)
    with DirectoryLock(sweep.path, "--sweep-dir"):
        return start_sweep(sweep, spec, args)


def start_sweep(sweep: SweepDir, spec: SweepSpec, args: argparse.Namespace) -> int:
    """Check the directory's sweep against this one, record it, and run what is left."""
    sweep.record_spec(spec)
    todo = sweep.pending(spec, args.retry_failed)
    if args.launcher == "slurm":
        return submit_slurm(sweep, todo, args)
    return run_locally(sweep, spec, todo, args)


def run_task(sweep: SweepDir, spec: SweepSpec, index: int) -> int:
    from ..sweep.runner import run_one

    runs = spec.runs()
    if not 0 <= index < len(runs):
        raise ValueError(f"--task-index: {index} is outside the grid (0..{len(runs) - 1})")
    if (result := sweep.result(runs[index])) is not None and result["status"] == "ok":
        print(f"{result['id']}: already done (valid loss {result['valid_loss']:.4f})")
        return 0
    record = run_one(sweep, spec, index)
    print(f"{record['id']}: {record['status']} (valid loss {record['valid_loss']})")
    return 0 if record["status"] == "ok" else 1


def run_locally(sweep: SweepDir, spec: SweepSpec, todo: list[int], args) -> int:
    from tqdm import tqdm

    from ..sweep.runner import default_slots, run_local

    total = len(spec.runs())
    slots = default_slots(args.threads_per_run, args.jobs)
    print(f"{total} runs, {total - len(todo)} already done, {len(todo)} to run, "
          f"{len(slots)} at a time; {sweep.path}")  # fmt: skip
    with tqdm(total=total, initial=total - len(todo), unit="run") as progress:

        def done(record: dict) -> None:
            loss = record["valid_loss"]
            progress.set_postfix(
                last=record["id"], loss="failed" if loss is None else f"{loss:.4f}"
            )
            progress.update(1)

        run_local(sweep, spec, todo, slots, done)
    return report(sweep, spec)


def report(sweep: SweepDir, spec: SweepSpec) -> int:
    sweep.collect()
    latest = [sweep.result(run) for run in spec.runs()]
    failed = [r for r in latest if r is not None and r["status"] != "ok"]
    missing = sum(r is None for r in latest)
    print(f"results: {sweep.path / 'results.jsonl'} ({len(latest) - missing - len(failed)} ok, "
          f"{len(failed)} failed, {missing} not run)")  # fmt: skip
    for record in failed:
        print(f"  {record['status']} {record['id']}: {record['error'].splitlines()[0][:200]} "
              f"(log {record['log']})")  # fmt: skip
    return 1 if failed else 0


def submit_slurm(sweep: SweepDir, todo: list[int], args) -> int:
    from ..sweep.runner import sbatch_script

    if not todo:
        print("every run is done; nothing to submit")
        return report(sweep, sweep.load_spec())
    script = sweep.path / "sweep.sbatch"
    atomic_write_text(
        script, sbatch_script(sweep, todo, args.max_parallel, args.sbatch_option, args.setup)
    )
    script.chmod(0o755)
    if args.dry_run:
        print(f"wrote {script} ({len(todo)} array tasks); submit with: sbatch {script}")
        return 0
    if shutil.which("sbatch") is None:
        raise ValueError(
            "--launcher slurm: sbatch not found here (use --dry-run to write the script)"
        )
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    print(f"submitted job array {job} ({len(todo)} tasks); when it ends: "
          f"megatron-power sweep --sweep-dir {sweep.path} --collect")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------- fit
def load_records(path: Path) -> list[dict]:
    file = path / "results.jsonl" if path.is_dir() else path
    if path.is_dir() and (path / "sweep.json").is_file():
        SweepDir(path).collect()
    if not file.is_file():
        raise ValueError(f"RESULTS: {file} does not exist")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def run_fit(args: argparse.Namespace) -> int:
    from ..sweep.fit import cells_from_results, fit_report, recommended_flags

    path = Path(args.results)
    records = load_records(path)
    cells = cells_from_results(records)
    widths = sorted({cell.hidden_size for cell in cells}, key=lambda w: -1 if w is None else w)
    if args.hidden_size is not None:
        widths = [args.hidden_size]
    if not cells:
        raise ValueError(f"RESULTS: {path} holds no successful runs")

    def png_for(width: int | None) -> Path:
        png = args.png or (path if path.is_dir() else path.parent) / "fit.png"
        return png.with_name(f"{png.stem}-h{width}{png.suffix}") if len(widths) > 1 else png

    for width in widths if args.png else []:  # the default fit.png is the fit's own
        check_output_file(png_for(width), "--png", args.force)
    check_output_file(args.json, "--json", args.force)
    output = []
    unidentified = []
    for width in widths:
        report = fit_report([cell for cell in cells if cell.hidden_size == width])
        if report.paper is None:
            unidentified.append(width)
        print_report(width, report)
        output.append({"hidden_size": width, "cells": [asdict(c) for c in report.cells],
                       "paper": asdict(report.paper) if report.paper else None,
                       "free_c": asdict(report.free_c) if report.free_c else None,
                       "c_is_one": report.c_is_one, "flags": recommended_flags(report),
                       "notes": report.notes})  # fmt: skip
        png = png_for(width)
        if report.paper is not None:
            plot_fit(report, png)
            print(f"plot: {png}")
    if args.json:
        atomic_write_text(args.json, json.dumps(output, indent=2) + "\n")
    if unidentified:
        raise ValueError(
            f"RESULTS: no fit for width(s) {', '.join(map(str, unidentified))}: a and b need "
            "at least 3 cells with an interior optimum over 2 or more token budgets (see notes)"
        )
    return 0


def print_report(width, report) -> None:
    from ..sweep.fit import recommended_flags

    print(f"\nwidth {width}: optimal LR per cell (parabola in log2 LR around the best point)")
    print(f"  {'batch':>6} {'tokens':>10} {'eta_opt':>9} {'best loss':>9}  grid")
    for cell in report.cells:
        edge = "  (on the grid's edge)" if cell.on_edge else ""
        print(f"  {cell.global_batch_size:>6} {cell.train_tokens:>10} {cell.eta_opt:>9.4g} "
              f"{cell.best_loss:>9.4f}  {len(cell.lrs)} LRs{edge}")  # fmt: skip
    for name, fit in (("paper form, c = 1", report.paper), ("batch exponent free", report.free_c)):
        if fit is None:
            continue
        c = "" if fit.c is None else f", c = {fit.c.value:.3f} [{fit.c.low:.3f}, {fit.c.high:.3f}]"
        print(f"  {name}: a = {fit.a.value:.4g} [{fit.a.low:.4g}, {fit.a.high:.4g}], "
              f"b = {fit.b.value:.4f} [{fit.b.low:.4f}, {fit.b.high:.4f}]{c}; "
              f"{fit.cells} cells, rms log residual {fit.rms_log_residual:.3f}")  # fmt: skip
    if report.c_is_one is not None:
        verdict = "supports" if report.c_is_one else "rejects"
        print(f"  the data {verdict} c = 1 (linear LR scaling with batch size) at 95%")
    for note in report.notes:
        print(f"  note: {note}")
    if flags := recommended_flags(report):
        print("  Power flags: " + " ".join(flags))


def plot_fit(report, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    batches = sorted({cell.global_batch_size for cell in report.cells})
    for index, batch in enumerate(batches):
        color = f"C{index}"
        mine = [cell for cell in report.cells if cell.global_batch_size == batch]
        tokens = [cell.train_tokens for cell in mine]
        axis.scatter(tokens, [cell.eta_opt for cell in mine], color=color,
                     facecolors=["none" if cell.on_edge else color for cell in mine],
                     label=f"batch {batch} (optimum)")  # fmt: skip
        line = np.geomspace(min(tokens), max(tokens), 50)
        fit = report.free_c or report.paper
        beta = mine[0].beta
        axis.plot(line, [fit.predict(beta, t) for t in line], color=color)
        if report.free_c is not None:
            axis.plot(line, [report.paper.predict(beta, t) for t in line], color=color, ls=":")
    axis.set(xscale="log", yscale="log", xlabel="tokens T", ylabel="optimal LR",
             title="eta_opt = a beta^c T^b (solid: fitted c; dotted: c = 1)")  # fmt: skip
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomically(figure, png)
    plt.close(figure)
