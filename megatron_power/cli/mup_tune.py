"""``megatron-power mup-tune``: the base model's own muP multipliers, tuned at the base width.

    megatron-power mup-tune --tune-dir tunes/base --hidden-size 64 \\
        --lrs 0.004 0.008 0.016 0.032 0.064 --train-tokens 409600 --global-batch-size 16 \\
        --output-multipliers 0.25 1 4 --embedding-multipliers 1 4 16 --init-stds 0.01 0.02 0.04

muTransfer (Yang et al. 2022) tunes the multipliers of the base model (readout, embedding,
init std) at the base width and then widens it; muP keeps them right at every width, but
only if they were right at the base. This searches them one at a time (coordinate search,
``--rounds`` passes), each candidate with its own LR sweep at ``--hidden-size`` (the muP
base width, so the multipliers act as given), through the sweep runner: finished runs are
reused, so an interrupted tune continues. Prints every candidate's best loss and LR and
the flags to train with; writes ``<tune-dir>/tune.json``. A best value on the edge of its
candidates (with its gain over the next value: a flat plateau is not worth widening), or a
best LR on the edge of ``--lrs``, is said: widen that list.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..files import DirectoryLock, atomic_write_text
from ..sweep.fit import cells_from_results
from ..sweep.runner import SweepDir, SweepSpec
from .sweep import add_proxy_schedule_arguments

#: The searched knobs, in search order: (MupConfig field, pretrain flag, list flag, default).
#: The readout first: it sets the scale of the logits every other knob is judged through.
SEARCHED = (
    ("output_multiplier", "--mup-output-multiplier", "--output-multipliers", 1.0),
    ("embedding_multiplier", "--mup-embedding-multiplier", "--embedding-multipliers", 1.0),
    ("init_std", "--mup-init-std", "--init-stds", 0.02),
)
#: Flags the tune sets itself; in --extra-args they would be overridden or contradicted.
OWN_FLAGS = ("--hidden-size", "--lr", "--train-tokens", "--global-batch-size", "--seed",
             "--seq-length", "--run-dir", "--no-mup", "--mup-base-hidden-size",
             "--mup-logits-scale", *(flag for _, flag, _, _ in SEARCHED))  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """One setting of the searched multipliers and its LR sweep's outcome."""

    values: dict[str, float]
    best_loss: float
    best_lr: float
    lr_on_edge: bool


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mup-tune",
        help="Tune the base model's muP multipliers (readout, embedding, init std) at the "
        "base width.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tune-dir", default="tunes/default")
    parser.add_argument("--hidden-size", type=int, default=64, help="the muP base width")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04, 0.08])
    parser.add_argument("--train-tokens", type=int, default=409_600)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_proxy_schedule_arguments(parser)
    for field, _, list_flag, default in SEARCHED:
        parser.add_argument(list_flag, type=float, nargs="+", default=None, dest=field,
                            help=f"candidates (not searched if absent: {default:g})")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="passes over the knobs")
    parser.add_argument("--extra-args", default="", help="pretrain flags for every run")
    parser.add_argument("--jobs", type=int, default=None, help="concurrent runs (auto)")
    parser.add_argument("--threads-per-run", type=int, default=1)
    parser.set_defaults(handler=run)


def check_args(args: argparse.Namespace) -> dict[str, list[float]]:
    """The candidate lists; every mistake named before any run starts."""
    candidates = {}
    for field, _, list_flag, _ in SEARCHED:
        values = getattr(args, field)
        if values is None:
            continue
        for value in values:
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{list_flag}: values must be finite and > 0, got {value}")
        if len(set(values)) != len(values):
            raise ValueError(f"{list_flag}: a value is given twice (each candidate once)")
        candidates[field] = sorted(values)
    if not candidates:
        flags = ", ".join(list_flag for _, _, list_flag, _ in SEARCHED)
        raise ValueError(f"mup-tune: give at least one of {flags}")
    for flag in ("--rounds", "--jobs", "--threads-per-run"):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None and value < 1:
            raise ValueError(f"{flag}: must be >= 1, got {value}")
    try:
        extra = shlex.split(args.extra_args)
    except ValueError as error:
        raise ValueError(f"--extra-args: {error}") from None
    for word in extra:
        if word.split("=")[0] in OWN_FLAGS:
            raise ValueError(
                f"--extra-args: {word.split('=')[0]} is set by mup-tune itself "
                f"(its own flags: {', '.join(OWN_FLAGS)})"
            )
    return candidates


def start_values(candidates: dict[str, list[float]]) -> dict[str, float]:
    """Each searched knob starts at the candidate nearest its default (in log scale)."""
    return {
        field: min(candidates[field], key=lambda value: abs(math.log(value / default)))
        for field, _, _, default in SEARCHED
        if field in candidates
    }


def label(values: dict[str, float]) -> str:
    """A candidate's sweep directory name, e.g. ``output_multiplier=1,init_std=0.02``."""
    return ",".join(f"{field}={values[field]!r}" for field, *_ in SEARCHED if field in values)


def spec_for(args: argparse.Namespace, values: dict[str, float]) -> SweepSpec:
    flags = {flag: values[field] for field, flag, _, _ in SEARCHED if field in values}
    mup = f"--mup-base-hidden-size {args.hidden_size} " + " ".join(
        f"{flag} {value!r}" for flag, value in flags.items()
    )
    spec = SweepSpec(
        lrs=sorted(args.lrs), global_batch_sizes=[args.global_batch_size],
        train_tokens=[args.train_tokens], hidden_sizes=[args.hidden_size], seeds=args.seeds,
        seq_length=args.seq_length, warmup_fraction=args.warmup_fraction,
        decay_fraction=args.decay_fraction, extra_args=f"{args.extra_args} {mup}".strip(),
    )  # fmt: skip
    spec.validate()
    return spec


def run(args: argparse.Namespace) -> int:
    if args.tune_dir == "":  # an unset shell variable; Path("") would be the working dir
        raise ValueError("--tune-dir: needs a directory, got ''")
    candidates = check_args(args)
    spec_for(args, start_values(candidates))  # the grid's own checks, before any run
    tune_dir = Path(args.tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(tune_dir, "--tune-dir"):
        return tune(args, tune_dir, candidates)


def evaluate(args, tune_dir: Path, settings: list[dict[str, float]]) -> list[Candidate]:
    """Every setting's LR sweep (runs not yet recorded, all settings at once)."""
    from tqdm import tqdm

    from ..sweep.runner import default_slots, run_jobs

    jobs, sweeps = [], []
    for values in settings:
        sweep, spec = SweepDir(tune_dir / label(values)), spec_for(args, values)
        sweep.record_spec(spec)  # another grid in the same directory is refused
        sweeps.append((sweep, spec))
        jobs += [(sweep, spec, index) for index in sweep.pending(spec, retry_failed=False)]
    slots = default_slots(args.threads_per_run, args.jobs)
    if jobs:
        with tqdm(total=len(jobs), unit="run", desc="mup-tune") as progress:
            run_jobs(jobs, slots, lambda record: progress.update(1))
    results = []
    for values, (sweep, spec) in zip(settings, sweeps, strict=True):
        records = [sweep.result(run) for run in spec.runs()]
        cells = cells_from_results([record for record in records if record is not None])
        if not cells:
            raise ValueError(
                f"--lrs: every run of {label(values)} failed (logs in {sweep.path / 'logs'}); "
                "lower the LRs or check --extra-args"
            )
        cell = cells[0]
        results.append(Candidate(values, cell.best_loss, cell.eta_opt, cell.on_edge))
    return results


def tune(args, tune_dir: Path, candidates: dict[str, list[float]]) -> int:
    current = start_values(candidates)
    tried: dict[str, Candidate] = {}
    notes: list[str] = []
    for round_index in range(args.rounds):
        for field, flag, list_flag, _ in SEARCHED:
            if field not in candidates:
                continue
            settings = [{**current, field: value} for value in candidates[field]]
            for candidate in evaluate(args, tune_dir, settings):
                tried[label(candidate.values)] = candidate
            best = min(settings, key=lambda values: tried[label(values)].best_loss)
            current = best
            values = candidates[field]
            if len(values) > 1 and best[field] in (values[0], values[-1]):
                # The gain over the inner neighbour tells a real edge from a flat plateau.
                inner = values[1] if best[field] == values[0] else values[-2]
                gain = tried[label({**best, field: inner})].best_loss - tried[label(best)].best_loss
                notes.append(f"round {round_index + 1}: {flag} {best[field]:g} is on the edge "
                             f"of {list_flag} ({gain:.2g} nats better than {inner:g}); "
                             "widen it unless that gain is within your seed noise")  # fmt: skip
    chosen = tried[label(current)]
    if chosen.lr_on_edge:
        notes.append(f"the best LR {chosen.best_lr:g} is on the edge of --lrs; widen them")
    flags = [f"--mup-base-hidden-size {args.hidden_size}"] + [
        f"{flag} {current[field]:g}" for field, flag, _, _ in SEARCHED if field in current
    ]
    print(f"{'setting':<60} {'best loss':>10} {'best LR':>10}")
    for name, candidate in sorted(tried.items(), key=lambda item: item[1].best_loss):
        edge = " (LR on edge)" if candidate.lr_on_edge else ""
        print(f"{name:<60} {candidate.best_loss:>10.4f} {candidate.best_lr:>10.4g}{edge}")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"tuned at width {args.hidden_size}: {' '.join(flags)} (best LR {chosen.best_lr:.4g} "
          f"at {args.train_tokens} tokens, loss {chosen.best_loss:.4f})")  # fmt: skip
    result = {
        "base_hidden_size": args.hidden_size,
        "chosen": current,
        "flags": " ".join(flags),
        "best_lr": chosen.best_lr,
        "best_loss": chosen.best_loss,
        "notes": list(dict.fromkeys(notes)),
        "tried": [vars(candidate) for candidate in tried.values()],
    }
    atomic_write_text(tune_dir / "tune.json", json.dumps(result, indent=2) + "\n")
    return 0
