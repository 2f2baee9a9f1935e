"""``megatron-power predict``: the loss curve of a schedule, from a few runs, before training it.

Fits a loss law (the multi-power law, Luo et al. 2025, arXiv 2503.12811, or the annealing
law, Tissue et al. 2024, arXiv 2408.11029) to the loss curves of runs of one model on one
data set, then predicts the curve and final loss of the schedule the flags describe
(Megatron-LM's flags, as ``megatron-power schedule`` takes them; the LR of every step comes
from the scheduler training uses). ``--optimize`` searches WSD (decay start, length,
shape), WSD-S (cycle points) and Power (a, b, tail) for the lowest predicted final loss at
the flags' budget.

The fit needs at least two runs with different schedules, one of which decays its LR
(a constant and a cosine run is the papers' minimum); runs of one schedule with several
seeds are averaged. Predicting another batch size needs runs at two batch sizes (three
let the fit see how progress and noise change with the batch).

    megatron-power predict --fit runs/const runs/cosine --lr 0.01 --lr-decay-style WSD \\
        --lr-wsd-decay-style linear --lr-wsd-decay-iters 200 --train-iters 1000 \\
        --global-batch-size 32 --seq-length 64 --lr-warmup-iters 10 --png predicted.png
    megatron-power predict --fit runs/* --optimize --train-iters 1000 \\
        --global-batch-size 32 --seq-length 64 --lr-warmup-iters 10
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..arguments import (
    add_megatron_scheduler_args,
    add_power_args,
    batch_schedule_from_args,
    run_samples,
    settings_from_args,
)
from ..files import atomic_write_text, check_output_file, save_figure_atomically
from ..knobs import dest_of, knobs
from ..schedules.loss_laws import (
    FIRST_FRACTION,
    LAWS,
    Curve,
    Fit,
    Trajectory,
    check_fit_from,
    check_fit_inputs,
    fit,
)
from ..schedules.power import PowerLaw
from ..schedules.settings import ScheduleSettings
from ..training.rundir import RunDir, finished_runs
from .schedule import SchedulePoint, simulate

#: config.json fields that belong to one run, not to the model and data a law describes.
RUN_FIELDS = {
    "schedule", "train_tokens", "global_batch_size", "step_batch_size_schedule", "seed",
    "run_dir", "exit_interval", "checkpoint_interval_tokens", "nproc", "device",
    "tensor_model_parallel_size", "expert_model_parallel_size", "data_dir", "eval_tokens",
    "imported_from", "extra",
}  # fmt: skip
#: A prediction further than this many times the longest fitted run is flagged.
TRUSTED_HORIZON = 4.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="Predict a schedule's loss curve from a few runs (multi-power / annealing law).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fit", nargs="+", type=Path, required=True, metavar="RUN",
                        help="run directories of megatron-power pretrain, sweep directories "
                        "(their finished runs), or one FILE.json of --save-fit")  # fmt: skip
    parser.add_argument("--law", choices=sorted(LAWS), default="multi-power")
    parser.add_argument("--fit-from", type=float, default=FIRST_FRACTION, metavar="FRACTION",
                        help="fit each run past this fraction of it (%(default)s)")  # fmt: skip
    parser.add_argument("--save-fit", type=Path, default=None, metavar="FILE.json",
                        help="save the fit (--fit FILE.json reuses it)")  # fmt: skip
    parser.add_argument("--optimize", action="store_true",
                        help="search the schedule family for the lowest predicted final "
                        "loss at the flags' budget (--lr, if given, is kept)")  # fmt: skip
    parser.add_argument(
        "--families",
        default="wsd,wsd-s,power",
        help="with --optimize: comma-separated, from wsd, wsd-s, power",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="RUN",
        help="runs of the predicted schedule: report the prediction's error",
    )
    add_megatron_scheduler_args(parser)
    add_power_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=["table", "csv"], default="table")
    out.add_argument("--every", type=int, default=None, help="Keep every Nth iteration.")
    out.add_argument("--png", type=Path, default=None, help="Predicted vs observed curves.")
    out.add_argument("--json", type=Path, default=None, help="Everything, as JSON.")
    out.add_argument(
        "--force", action="store_true", help="overwrite existing --png/--json/--save-fit"
    )
    parser.set_defaults(handler=run)


# ------------------------------------------------------------------------ the runs
@dataclass
class Observed:
    """Runs of one schedule (seeds averaged): the curve, final validation losses, config."""

    name: str
    curve: Curve
    config: dict
    valid_losses: list[float] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    #: the sequences its final losses were measured on (None: not recorded, older runs)
    valid_set: dict | None = None


def read_run(
    path: Path, flag: str
) -> tuple[Trajectory, np.ndarray, np.ndarray, dict, float | None, dict | None]:
    """(trajectory, update counts, losses, config, final validation loss, its validation
    set) of one run. Row i of metrics.jsonl is update i: its LR and batch, and the loss
    before it."""
    run = RunDir(path)
    try:
        config = json.loads(run.config.read_text())
        rows = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"{flag}: {path}: unreadable config.json or metrics.jsonl ({error})"
        ) from None
    rows = sorted(rows, key=lambda row: row["iteration"])
    if len(rows) < 10 or [r["iteration"] for r in rows] != list(range(1, len(rows) + 1)):
        raise ValueError(f"{flag}: {path}: needs at least 10 consecutive logged steps from 1")
    lrs = np.array([row["lr"] for row in rows], dtype=float)
    batches = np.array([row.get("global_batch_size", config["global_batch_size"]) for row in rows])
    losses = np.array([row["loss"] for row in rows], dtype=float)
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"{flag}: {path}: a logged loss is not finite (the run diverged)")
    valid = valid_set = None
    if run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        if summary.get("iterations") == len(rows):
            valid, valid_set = summary.get("valid_loss"), summary.get("valid_set")
    at = np.arange(len(rows))  # the loss of row i was computed after i - 1 updates
    return Trajectory(lrs, batches), at, losses, config, valid, valid_set


def model_of(config: dict) -> dict:
    """The config.json fields a law depends on: the model, the data, the optimiser."""
    return {k: v for k, v in config.items() if k not in RUN_FIELDS}


def read_runs(
    paths: list[Path], flag: str = "--fit", reference: tuple[str, dict] | None = None
) -> list[Observed]:
    """Every run, those with the same LR and batch sequence (seeds) averaged into one;
    all of one model and data (``reference``'s, when given: the fit's), their final losses
    measured on one validation set."""
    groups: dict[tuple, Observed] = {}
    valid_sets: dict[str, Path] = {}  # each validation set seen: its first run
    for path in finished_runs(paths, flag):
        trajectory, at, losses, config, valid, valid_set = read_run(path, flag)
        if valid is not None:
            valid_sets.setdefault(json.dumps(valid_set, sort_keys=True), path)
            check_one_validation_set(valid_sets, flag)
        model = model_of(config)
        if reference is None:
            reference = (str(path), model)
        else:
            differs = sorted(k for k in model.keys() | reference[1].keys()
                             if model.get(k) != reference[1].get(k))  # fmt: skip
            if differs:
                name = differs[0]
                raise ValueError(
                    f"{flag}: {path} and {reference[0]} differ in {name} "
                    f"({model.get(name)!r} vs {reference[1].get(name)!r}); a law is fitted "
                    "to one model on one data set"
                )
        key = (trajectory.lrs.tobytes(), trajectory.batches.tobytes())
        group = groups.get(key)
        if group is None:
            groups[key] = Observed(path.name, Curve(str(path), trajectory, at, losses), config,
                                   [] if valid is None else [valid], [path])  # fmt: skip
            continue
        count = len(group.runs)
        mean = (group.curve.losses * count + losses) / (count + 1)
        group.curve = Curve(group.curve.name, trajectory, at, mean)
        group.runs.append(path)
        if valid is not None:
            group.valid_losses.append(valid)
    valid_set = json.loads(next(iter(valid_sets))) if valid_sets else None
    names = distinct_names([group.runs[0] for group in groups.values()])
    for group, name in zip(groups.values(), names, strict=True):
        group.valid_set = valid_set
        group.name = name if len(group.runs) == 1 else f"{name} (+{len(group.runs) - 1} runs)"
        final = float(np.mean(group.valid_losses)) if group.valid_losses else None
        group.curve = Curve(group.name, group.curve.trajectory, group.curve.at,
                            group.curve.losses, final)  # fmt: skip
    return list(groups.values())


def distinct_names(paths: list[Path]) -> list[str]:
    """Each path's shortest tail that no other path shares: sweeps of different schedules
    name their runs alike (``runs/t614400-b32-h64-lr0.011-s0``), and a report keyed by the
    last part alone would merge them."""
    depth = 1
    while True:
        names = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def check_one_validation_set(valid_sets: dict[str, Path], flag: str) -> None:
    """Final losses measured on different sequences differ by the sequences' own
    difficulty (~0.5% between two sets of 16k tokens): no law can predict that."""
    if len(valid_sets) > 1:
        (one, first), (other, second) = list(valid_sets.items())[:2]
        raise ValueError(
            f"{flag}: {first} and {second} were evaluated on different validation sets "
            f"({describe_valid_set(one)} vs {describe_valid_set(other)}), so their final "
            "losses do not compare; `megatron-power evaluate RUNS` evaluates each on its "
            "data's fixed validation set"
        )


def describe_valid_set(key: str) -> str:
    found = json.loads(key)
    return "not recorded" if found is None else f"{found['sequences']} sequences {found['sha256']}"


UNRECORDED_VALID_SET = (
    "the runs do not record their validation set (trained before pretrain fixed it): runs "
    "of other lengths or seeds were evaluated on other sequences, which moves a final loss "
    "by ~0.5%; `megatron-power evaluate RUNS` evaluates them on one set"
)


@dataclass(frozen=True)
class Scope:
    """What a fit has seen: the sequence length, batch sizes, peak LRs, longest run, and
    the validation set of its final losses."""

    seq_length: int
    batches: list[float]
    peak_lrs: list[float]
    longest: int
    model: dict
    valid_set: dict | None = None

    @classmethod
    def of(cls, observed: list[Observed]) -> Scope:
        return cls(
            seq_length=observed[0].config["seq_length"],
            batches=sorted({float(b) for o in observed for b in o.curve.trajectory.batches}),
            peak_lrs=sorted({o.curve.trajectory.peak_lr for o in observed}),
            longest=max(o.curve.trajectory.steps for o in observed),
            model=model_of(observed[0].config),
            valid_set=observed[0].valid_set,
        )


# ------------------------------------------------------------------- saved fits
FIT_FORMAT = "megatron-power predict fit, version 2"  # 2: the progress batch term mu


def save_fit(path: Path, fitted: Fit, scope: Scope, runs: list[str]) -> None:
    data = {"format": FIT_FORMAT, "law": fitted.law.name, "values": fitted.values,
            "reference_batch": fitted.reference_batch, "scaled": fitted.scaled.tolist(),
            "covariance": fitted.covariance.tolist(),
            "rms_relative_error": fitted.rms_relative_error, "scope": asdict(scope),
            "validation_offset": fitted.validation_offset, "fit_from": fitted.fit_from,
            "runs": runs}  # fmt: skip
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_fit(path: Path, law_flag_given: bool, law: str) -> tuple[Fit, Scope]:
    """A fit saved by --save-fit (given as the one --fit argument)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FIT_FORMAT:
            raise ValueError("not a saved fit")
        scope = Scope(**data["scope"])
        saved_law = LAWS[data["law"]]
        fitted = Fit(saved_law, data["values"], data["reference_batch"],
                     np.array(data["scaled"]), np.array(data["covariance"]),
                     data["rms_relative_error"], tuple(data["validation_offset"]),
                     data["fit_from"])  # fmt: skip
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--fit: {path} is not a fit saved by --save-fit ({error})") from None
    if law_flag_given and law != saved_law.name:
        raise ValueError(f"--law {law}: {path} holds a {saved_law.name} fit")
    return fitted, scope


# ---------------------------------------------------------------------- the target
@dataclass(frozen=True)
class Target:
    points: list[SchedulePoint]
    trajectory: Trajectory


def target_of(args: argparse.Namespace) -> Target:
    """The LR and batch of every update of the schedule the flags describe, from the
    scheduler training uses (``megatron-power schedule``'s simulation)."""
    batch_at = batch_schedule_from_args(args)
    settings = settings_from_args(args)
    points = simulate(settings, batch_at, run_samples(args))
    if len(points) < 3:
        raise ValueError("--train-iters/--train-samples: the schedule has fewer than 2 updates")
    lrs = np.array([p.lr for p in points[:-1]])
    batches = np.array([p.batch for p in points[1:]])
    return Target(points, Trajectory(lrs, batches))


def check_target(
    args: argparse.Namespace,
    scope: Scope,
    target: Target,
    warn: Callable[[str], None],
    check_lr: bool = True,
) -> None:
    """Refuse what the fit cannot say; name what it can only extrapolate."""
    seq = scope.seq_length
    if args.seq_length is None:
        raise ValueError(f"--seq-length: required (the fitted runs use {seq})")
    if args.seq_length != seq:
        raise ValueError(
            f"--seq-length {args.seq_length}: the fitted runs use {seq}; the law is fitted "
            "per sequence length"
        )
    batches = sorted(set(target.trajectory.batches.tolist()))
    unseen = [b for b in batches if b not in scope.batches]
    if unseen and len(scope.batches) == 1:
        raise ValueError(
            f"--global-batch-size: batch {unseen[0]:g} was not in the fit, whose runs all use "
            f"{scope.batches[0]:g}; predicting another batch size needs fitted runs at two "
            "batch sizes"
        )
    low, high = scope.batches[0], scope.batches[-1]
    if any(b < low or b > high for b in batches):
        warn(f"batch sizes {batches} reach outside the fitted {low:g}-{high:g}: extrapolated")
    peak = float(np.max(target.trajectory.lrs))
    peaks = scope.peak_lrs
    if check_lr and (peak > max(peaks) * 1.0001 or peak < min(peaks) / 1.0001):
        warn(
            f"peak LR {peak:.4g} is outside the fitted runs' peaks "
            f"{min(peaks):.4g}-{max(peaks):.4g}: extrapolated"
        )
    ratio = target.trajectory.steps / scope.longest
    if ratio > TRUSTED_HORIZON:
        warn(
            f"{target.trajectory.steps} iterations is {ratio:.1f}x the longest fitted run "
            f"({scope.longest}); predictions beyond {TRUSTED_HORIZON:g}x are untested"
        )


def check_followed(compared: list[Observed], target: Target) -> None:
    """--compare runs must be runs of the predicted schedule, LR for LR."""
    for group in compared:
        lrs, expected = group.curve.trajectory.lrs, target.trajectory.lrs
        if len(lrs) == len(expected) and np.allclose(lrs, expected, rtol=1e-9, atol=1e-15):
            if not group.valid_losses:
                raise ValueError(f"--compare: {group.runs[0]} has no final validation loss")
            continue
        if len(lrs) != len(expected):
            where = f"{len(lrs)} iterations, the flags' schedule {len(expected)}"
        else:
            i = int(np.flatnonzero(~np.isclose(lrs, expected, rtol=1e-9, atol=1e-15))[0])
            where = f"iteration {i + 1}: LR {lrs[i]:.6g}, the flags' {expected[i]:.6g}"
        raise ValueError(f"--compare: {group.runs[0]} did not follow these flags ({where})")


# ------------------------------------------------------------------ predicting
def evaluation_steps(trajectory: Trajectory, every: int | None, fit_from: float) -> np.ndarray:
    """Update counts to predict at: from where the law holds (past warmup and the fraction
    of the run the fit skipped) every one (or every Nth, at most ~2000), and the end."""
    steps = trajectory.steps
    first = max(trajectory.warmup_steps + 1, math.ceil(fit_from * steps))
    stride = every or max(1, math.ceil((steps - first) / 2000))
    at = np.arange(first, steps + 1, stride)
    return at if len(at) and at[-1] == steps else np.append(at, steps)


def run(args: argparse.Namespace) -> int:
    check_fit_from(args.fit_from)
    if args.every is not None and args.every < 1:
        raise ValueError(f"--every: must be >= 1, got {args.every}")
    check_output_file(args.png, "--png", args.force)
    check_output_file(args.json, "--json", args.force)
    check_output_file(args.save_fit, "--save-fit", args.force)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"--families: {args.families!r}; choose from {', '.join(FAMILIES)}")
    if args.optimize and args.compare:
        raise ValueError("--compare: give it without --optimize (compare a schedule you name)")
    # Everything the flags say is checked before the fit (which takes seconds).
    saved = len(args.fit) == 1 and args.fit[0].suffix == ".json" and args.fit[0].is_file()
    observed: list[Observed] = []
    if saved:
        fitted, scope = load_fit(args.fit[0], "law" in getattr(args, "given", ()), args.law)
    else:
        observed = read_runs(args.fit)
        check_fit_inputs([o.curve for o in observed])
        scope = Scope.of(observed)
    compared = []
    warnings: list[str] = []
    if args.compare:
        compared = read_runs(args.compare, "--compare", (f"the fit ({args.fit[0]})", scope.model))
        if any(o.valid_losses for o in compared):
            sets = {json.dumps(scope.valid_set, sort_keys=True): Path(f"the fit ({args.fit[0]})")}
            sets.setdefault(json.dumps(compared[0].valid_set, sort_keys=True), compared[0].runs[0])
            check_one_validation_set(sets, "--compare")
    if scope.valid_set is None:
        warnings.append(UNRECORDED_VALID_SET)
    base = budget_args(args) if args.optimize else args
    target = target_of(base)
    check_target(args, scope, target, warnings.append, check_lr=not args.optimize)
    check_followed(compared, target)
    if not saved:
        fitted = fit(LAWS[args.law], [o.curve for o in observed], fit_from=args.fit_from)
        if args.save_fit is not None:
            save_fit(args.save_fit, fitted, scope, [str(p) for o in observed for p in o.runs])
    law = fitted.law
    report = {"law": law.name, "citation": law.citation, "values": fitted.values,
              "fit_rms_relative_error": fitted.rms_relative_error,
              "fitted_runs": [str(p) for o in observed for p in o.runs]}  # fmt: skip
    print(describe_fit(fitted, scope, len(observed)))
    if args.optimize:
        best = optimize(args, base, fitted, scope, families)
        report["optimized"] = best
        args = best.pop("args")
        target = target_of(args)
        check_target(args, scope, target, warnings.append)
    at = evaluation_steps(target.trajectory, args.every, fitted.fit_from)
    loss, spread = fitted.predict_with_spread(target.trajectory, at)
    offset, offset_sd, offset_runs = fitted.validation_offset
    final_train = float(loss[-1])
    final = final_train + offset
    final_sd = math.hypot(float(spread[-1]), offset_sd)
    curve = [{"iteration": int(t), "tokens": target.points[t].tokens,
              "samples": target.points[t].samples, "lr": target.points[t - 1].lr,
              "batch": target.points[t].batch, "loss": float(v), "sd": float(s)}
             for t, v, s in zip(at, loss, spread, strict=True)]  # fmt: skip
    report.update(final_loss=final, final_sd=final_sd, final_training_loss=final_train,
                  validation_offset={"mean": offset, "sd": offset_sd, "runs": offset_runs},
                  curve=curve, warnings=warnings)  # fmt: skip
    if compared:
        report["compared"] = compare(compared, target, fitted, offset)
    emit(args, curve, report, warnings)
    if args.png is not None:
        plot(args.png, fitted, observed, target, at, loss, spread, compared)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=2, default=float) + "\n")
    return 0


def describe_fit(fitted: Fit, scope: Scope, schedules: int) -> str:
    values = "  ".join(f"{k} {v:.4g}" for k, v in fitted.values.items())
    worst = max(fitted.rms_relative_error.values())
    where = f"{schedules} schedules" if schedules else "a saved fit"
    return (
        f"fit: {fitted.law.name} law ({fitted.law.citation}) on {where} (batch "
        f"{', '.join(f'{b:g}' for b in scope.batches)}; peak LR {min(scope.peak_lrs):.4g}-"
        f"{max(scope.peak_lrs):.4g}; longest {scope.longest} iterations)\n  {values}\n"
        f"  fit error: worst run {worst:.2%} rms of window means"
    )


def emit(args, curve: list[dict], report: dict,
         warnings: list[str]) -> None:  # fmt: skip
    for line in warnings:
        print(f"megatron-power predict: note: {line}", file=sys.stderr)
    if args.format == "csv":
        print("iteration,samples,tokens,lr,global_batch_size,loss,sd")
        for row in curve:
            print(f"{row['iteration']},{row['samples']},{row['tokens']},{row['lr']!r},"
                  f"{row['batch']},{row['loss']:.6f},{row['sd']:.6f}")  # fmt: skip
    else:
        step = max(1, len(curve) // 12)
        rows = curve[::step] if curve[::step][-1] is curve[-1] else [*curve[::step], curve[-1]]
        print(f"{'iteration':>10} {'tokens':>14} {'lr':>11} {'batch':>6} {'loss':>8} {'±':>7}")
        for row in rows:
            print(f"{row['iteration']:>10} {row['tokens']:>14} {row['lr']:>11.4e} "
                  f"{row['batch']:>6} {row['loss']:>8.4f} {row['sd']:>7.4f}")  # fmt: skip
    offset = report["validation_offset"]
    if offset["runs"]:
        print(f"predicted final validation loss: {report['final_loss']:.4f} ± "
              f"{report['final_sd']:.4f} (1 sd): the law's training loss "
              f"{report['final_training_loss']:.4f} + {offset['mean']:.4f} ± {offset['sd']:.4f},"
              f" where the {offset['runs']} fitted schedules' validation losses sit")  # fmt: skip
    else:
        print(f"predicted final loss: {report['final_loss']:.4f} ± {report['final_sd']:.4f} "
              "(1 sd; training loss: the fitted runs have no final validation loss)")  # fmt: skip
    for item in report.get("compared", []):
        print(f"observed ({item['runs']} runs): final validation loss {item['observed_final']:.4f}"
              f" -> error {item['final_error']:+.2%}; curve error {item['curve_error']:.2%} "
              "(rms over windows)")  # fmt: skip
    if "optimized" in report:
        best = report["optimized"]
        print(f"optimised ({best['family']}): megatron-power predict/schedule/pretrain_gpt.py "
              f"flags:\n  {' '.join(best['flags'])}")  # fmt: skip


def compare(compared: list[Observed], target: Target, fitted: Fit, offset: float) -> list[dict]:
    """The prediction's error on runs of the predicted schedule (checked to be it): the
    final validation loss, and the training-loss curve window by window."""
    end = np.array([target.trajectory.steps])
    final = float(fitted.predict(target.trajectory, end)[0]) + offset
    out = []
    for group in compared:
        observed = float(np.mean(group.valid_losses))
        errors = fitted.window_errors(group.curve)
        seed_sd = float(np.std(group.valid_losses, ddof=1)) if len(group.valid_losses) > 1 else None
        out.append({"runs": len(group.runs), "observed_final": observed, "seed_sd": seed_sd,
                    "final_error": (final - observed) / observed,
                    "curve_error": float(np.sqrt(np.mean(np.square(errors)))),
                    "worst_window_error": float(np.max(np.abs(errors)))})  # fmt: skip
    return out


# -------------------------------------------------------------------- optimising
FAMILIES = ("wsd", "wsd-s", "power")
SHAPES = ("linear", "cosine", "exponential", "exponential_e", "minus_sqrt")
#: Power's b is searched within these limits (the paper's -0.51 inside).
POWER_B_RANGE = (-0.8, -0.1)
#: The schedule knobs --optimize keeps as given: the budget (LRs, warmup, sequence) and
#: Power's token unit. It chooses every other one, so giving one beside it is refused.
BUDGET_KNOBS = {"max_lr", "min_lr", "init_lr", "lr_warmup_steps", "seq_length",
                "lr_power_reference_seq_length"}  # fmt: skip
SCHEDULE_DESTS = tuple(
    dest_of(flag)
    for item, knob in knobs(ScheduleSettings)
    if item.name not in BUDGET_KNOBS
    for flag in knob.flags()
)


def budget_args(args: argparse.Namespace) -> argparse.Namespace:
    """The budget of --optimize (run length, batch, warmup, min LR): a constant schedule at
    --lr, or at a placeholder LR when the search chooses it."""
    shaped = [d for d in SCHEDULE_DESTS if getattr(args, d, None) not in (None, [], ())]
    shaped += ["lr_decay_style"] if "lr_decay_style" in getattr(args, "given", ()) else []
    if shaped:
        flag = "--" + shaped[0].replace("_", "-")
        raise ValueError(f"{flag}: --optimize chooses the schedule; give only the budget "
                         "(--train-iters/--train-samples, batch, --seq-length, warmup, --lr, "
                         "--min-lr)")  # fmt: skip
    base = copy.copy(args)
    base.lr_decay_style = "constant"
    if base.lr is None:
        base.lr = 1.0  # replaced by every candidate
    return base


def optimize(args, base, fitted: Fit, scope: Scope, families: list[str]) -> dict:
    """The family's lowest predicted final loss (Nelder-Mead from the best of a grid, per
    family and decay shape); the LR stays within the fitted runs' peaks unless --lr."""
    from scipy.optimize import minimize

    total = run_samples(base)
    batch_at = batch_schedule_from_args(copy.copy(base))
    first = batch_at(0)
    fixed_lr = args.lr
    lr_low, lr_high = min(scope.peak_lrs), max(scope.peak_lrs)
    seq = base.seq_length

    def lr_of(u: float) -> float:
        return fixed_lr if fixed_lr is not None else lr_low * (lr_high / lr_low) ** u

    def samples(fraction: float) -> int:
        return max(first, round(fraction * total / first) * first)

    def candidate(family: str, shape: str, x: np.ndarray) -> argparse.Namespace:
        x = np.clip(x, 0.0, 1.0)
        ns = copy.copy(base)
        ns.lr = lr_of(x[0])
        ns.lr_wsd_decay_style = shape
        ns.megatron_power_wsd_decay_style_given = True
        decay_fraction = 0.02 + 0.93 * x[1]
        if base.train_iters is not None:
            ns.lr_wsd_decay_iters = max(1, round(decay_fraction * base.train_iters))
        else:
            ns.lr_wsd_decay_samples = samples(decay_fraction)
        if family == "wsd":
            ns.lr_decay_style = "WSD"
        elif family == "wsd-s":
            ns.lr_decay_style = "WSD"
            cycle = 0.15 + 0.7 * x[2]
            if base.train_iters is not None:
                ns.lr_wsd_cycle_iters = [round(cycle * base.train_iters), base.train_iters]
                ns.lr_wsd_decay_iters = max(1, round(decay_fraction * cycle * base.train_iters))
            else:
                ns.lr_wsd_cycle_samples = [samples(cycle), total]
                ns.lr_wsd_decay_samples = samples(decay_fraction * cycle)
        else:  # power: b, and a from the LR at the decay start (a fraction of the cap)
            ns.lr_decay_style = "power"
            b = POWER_B_RANGE[0] + (POWER_B_RANGE[1] - POWER_B_RANGE[0]) * x[2]
            ratio = 0.2 + 0.8 * x[3]
            start_tokens = max(1, (total - samples(decay_fraction)) * seq)
            unit = PowerLaw(a=1.0, b=b).lr(tokens=start_tokens, batch_tokens=first * seq,
                                           max_lr=math.inf)  # fmt: skip
            ns.lr_power_a = float(f"{ratio * ns.lr / unit:.6g}")
            ns.lr_power_b = float(f"{b:.4f}")
        return ns

    def predicted(ns) -> float:
        try:
            trajectory = target_of(ns).trajectory
        except ValueError:
            return math.inf
        return float(fitted.predict(trajectory, np.array([trajectory.steps]))[0])

    dims = {"wsd": 2, "wsd-s": 3, "power": 4}
    results = []
    for family in families:
        for shape in SHAPES:
            grid = [np.array(p) for p in _grid(dims[family], fixed_lr is not None)]
            scored = sorted(
                ((predicted(candidate(family, shape, x)), i) for i, x in enumerate(grid))
            )
            start = grid[scored[0][1]]
            best = minimize(lambda x, f=family, s=shape: predicted(candidate(f, s, x)), start,
                            method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6,
                                                          "maxfev": 120})  # fmt: skip
            x = best.x if best.fun <= scored[0][0] else start
            ns = candidate(family, shape, x)
            results.append((predicted(ns), family, shape, ns))
    results.sort(key=lambda item: item[0])
    print(f"{'family':>7} {'shape':>14} {'predicted final loss':>21}  flags")
    for loss, family, shape, ns in results:
        print(f"{family:>7} {shape:>14} {loss:>21.4f}  {' '.join(flags_of(ns))}")
    loss, family, shape, ns = results[0]
    return {"family": family, "shape": shape, "predicted": loss, "flags": flags_of(ns),
            "args": ns, "all": [{"family": f, "shape": s, "predicted": v, "flags": flags_of(n)}
                                for v, f, s, n in results]}  # fmt: skip


def _grid(dims: int, lr_fixed: bool) -> list[tuple[float, ...]]:
    axes = [[0.5] if lr_fixed else [0.0, 0.5, 1.0]] + [[0.1, 0.4, 0.8]] * (dims - 1)
    return list(itertools.product(*axes))


def flags_of(ns: argparse.Namespace) -> list[str]:
    """A candidate as Megatron-LM flags (the schedule part; the budget flags are yours)."""
    out = ["--lr-decay-style", ns.lr_decay_style, "--lr", f"{ns.lr:.6g}"]
    for dest in ("lr_wsd_decay_style", "lr_wsd_decay_iters", "lr_wsd_decay_samples",
                 "lr_wsd_cycle_iters", "lr_wsd_cycle_samples",
                 "lr_power_a", "lr_power_b"):  # fmt: skip
        value = getattr(ns, dest, None)
        if value in (None, [], ()):
            continue
        flag = "--" + dest.replace("_", "-")
        out += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return out


# --------------------------------------------------------------------------- plot
def plot(path: Path, fitted: Fit, observed: list[Observed], target: Target, at, loss, spread,
         compared: list[Observed]) -> None:  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ValueError("--png: needs matplotlib (pip install 'megatron-power[plots]')") from error
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, group in enumerate(observed):
        color = f"C{index % 10}"
        parts = group.curve.windows(skip=fitted.fit_from)
        left.plot([p.mean() for p, _ in parts], [m for _, m in parts], "o", ms=3, color=color,
                  label=group.name[:40])  # fmt: skip
        steps = np.arange(1, group.curve.trajectory.steps + 1)
        first = parts[0][0][0] if parts else 1
        shown = steps[steps >= first]
        left.plot(shown, fitted.predict(group.curve.trajectory, shown), color=color, lw=1)
    left.set(xlabel="iteration", ylabel="loss", title=f"fit: {fitted.law.name} law (lines) vs runs")
    if observed:
        left.legend(fontsize=6)
    else:
        left.text(0.5, 0.5, "a saved fit: its runs are not at hand", ha="center",
                  transform=left.transAxes)  # fmt: skip
    right.plot(at, loss, color="black", label="predicted")
    right.fill_between(at, loss - 2 * spread, loss + 2 * spread, color="grey", alpha=0.3,
                       label="± 2 sd")  # fmt: skip
    for index, group in enumerate(compared):
        parts = group.curve.windows(skip=fitted.fit_from)
        right.plot([p.mean() for p, _ in parts], [m for _, m in parts], "o", ms=3,
                   color=f"C{index}", label=f"observed: {group.name[:40]}")  # fmt: skip
    skip = max(1, int(0.1 * len(at)))
    right.set_ylim(float(np.min(loss)) - 0.05, float(loss[skip]) + 0.05)
    right.set(xlabel="iteration", ylabel="loss", title="predicted schedule")
    lr_axis = right.twinx()
    lr_axis.plot(np.arange(1, target.trajectory.steps + 1), target.trajectory.lrs,
                 color="tab:blue", lw=0.8, alpha=0.6)  # fmt: skip
    lr_axis.set_ylabel("learning rate", color="tab:blue")
    right.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    save_figure_atomically(figure, path)
    plt.close(figure)
