"""The paper's whole claim: Power's a, b, c fitted once on small muP proxies, then used
unchanged at 4x and 8x the width, 4-10x the budget, an unseen batch size and batch-size
schedules, dense and MoE, against cosine and WSD tuned in each of those cells.

1. fit (per model): a WSD sweep of the proxies (width 32 = the muP base width, LRs x two
   batch sizes x three budgets) through the sweep runner, then ``megatron-power fit``;
2. held-out cells (per model): widths 128 and 256, budgets 4x and 10x the largest proxy
   budget, batch 8 (not in the fit), a Megatron-style batch ramp and a step schedule in
   tokens (Megatron-LM 0.18's), and the 8x-width cell on Shakespeare (a BPE text the fit
   never saw). In each cell cosine and WSD are tuned: an LR grid (x2 steps around the
   fit's prediction, grown while the best LR is on its edge), then WSD's decay length and
   shape at its best LR (lengths grown while the best is on the edge), then the LR grid
   for that tail, alternating until the LR stays (at most 3 rounds); the best of each
   reruns with seeds 1 and 2.
   Power takes the fitted flags as they are (with the fit's 20% tail, the proxies'
   fitted tail and an 80% tail), and a second fit on longer proxies (51,200-204,800
   tokens) with the fitted tail and with the 80% tail (``--phases long-fit``); the
   paper's a=4, b=-0.51, cap 0.02 is a reported row; all with seeds 0-2 (0-5 on text,
   whose seed spread is larger). A probe scales the fitted-tail Power's whole LR (x0.25,
   x0.5, x2, seed 0), to tell a wrong LR level from a wrong shape;
   2b. the fix the cells point to, a tail fitted per data set at the target budget: each
   cell's width-32 copy (its data, budget, batch or schedule) runs Power with the fitted
   a, b, c and the tails that have a row (20%, the fitted tail, 80%; 3 seeds, 6 on text);
   the tail it prefers picks that cell's reported row, then Power's LR x0.5 or x2 at that
   tail is tried the same way (``--phases proxy-tail``; no held-out run is looked at);
   2c. the fix the width tables point to (muP's optimum moves in the step from the 32-wide
   base): the fit, then each cell's tail and LR scale choice (as in 2b), on 64-wide
   proxies (``--phases wide-proxies``), then Power with that fit, tail and scale in the
   held-out cells;
   2d. a diagnosis where that row misses the worst-cell target (``--phases wide-probe``,
   which looks at the held-out cell): its fit at two tails x LR scales 1, 2, 4;
   2e. the fix that points to (``--phases fit-choice``): the fit, too, chosen on the
   64-wide copies, between the 32- and 64-wide fits, each at its best tail and LR scale;
   2f. the fix the batch-rule cause points to (``--phases batch-rule``): in the cells with
   a batch schedule, that row with beta held at the final batch (Power's LR otherwise runs
   low through a ramp), the rule chosen on the same copies;
   2g. the fix the text cells point to (``--phases tail-shape``; tuned WSD's best tail
   there is linear, Power's exponential_e): that row's tail shape chosen on the copies;
3. muP at width (per model, on the Markov source and on Shakespeare): standard
   parameterisation, plain muP and muP with its base multipliers tuned by
   ``megatron-power mup-tune`` at the base width (each candidate list grown while the
   tune's choice is on its edge), each LR-tuned at widths 32, 128, 256
   (grid grown until interior, best LR with seeds 0-2): tuned muP - tuned SP with its
   spread, and how far each optimum moves over 8x width;
   3b. plain muP also at widths 64 and 512 (``--phases width-more``):
   its move over 8x width from 64 beside that from 32, and between neighbouring widths;
   3c. the fix for tuned muP's drift (``--phases width-base``): mup-tune at a 64-wide
   base, then that muP LR-tuned at widths 64-512, against tuned SP where it was measured;
   3d. how finely 3c's optimum is measured (``--phases width-fine``): seeds 0-2 also at
   x2**(+-1/2) around each width's best LR, and the optimum on that grid (every drift
   table also says what each span's move costs: the wide width's loss at the narrow
   width's optimum LR above its own);
   3e. that muP also at width 1024 (``--phases width-widest``): the span from twice its
   base, 128 -> 1024;
   3f. which of the base's multipliers moves the optimum (``--phases width-knobs``): every
   setting 3c's tune tried, LR-tuned at its base and twice it (the step holding most drift);
   3g. the fix 3f points to (``--phases width-zero-readout``): 3c's muP with its readout
   initialised to zero (``--mup-readout-init-std 0``), LR-tuned at widths 64-512;
   3h. the same with the multipliers tuned for a zero readout (``--phases
   width-zero-readout-tuned``): mup-tune at the 64-wide base with it, then widths 64-512;
4. report per cell and overall: loss ratio Power / best tuned (mean of 3 seeds, spread)
   and, on the Markov source whose entropy rate H is known, the excess-loss ratio
   (loss - H) / (best tuned - H).

Every run's record is kept in bench/results/joint_transfer/runs/ (committed), so the
benchmark resumes across sessions and machines; the run directories live in --work-dir.
``--models``, ``--cells``, ``--phases`` and ``--width-data`` choose what to run now; the
report covers what has finished and names what has not; ``--dry-run`` lists the first runs
a resume would queue (or refuse), and runs none. JOINT_TRANSFER_SCALE=gpu runs the
same protocol 8x wider (bench/joint_transfer_gpu.sh), with its own store under
bench/results/gpu/.

    python bench/joint_transfer.py                         # everything (hours on 2 cores)
    python bench/joint_transfer.py --models dense --cells w128-b8   # one cell
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from quality import Pool, diverged, shakespeare_flags

from megatron_power.files import atomic_write_text
from megatron_power.schedules.power import PowerLaw
from megatron_power.sweep.runner import (
    PRETRAIN_TEMPLATE,
    SweepDir,
    SweepSpec,
    flag_values,
    run_id,
)

#: The protocol's size, from the environment variable JOINT_TRANSFER_SCALE: "cpu" (proxies
#: 32 wide, cells 128 and 256; hours on 2 CPU cores) or "gpu" (the same protocol 8x wider:
#: proxies 256 wide, cells 1024 and 2048; bench/joint_transfer_gpu.sh), each with its own
#: store and report. The base width is the only thing that changes.
SCALES = {"cpu": 32, "gpu": 256}
SCALE = os.environ.get("JOINT_TRANSFER_SCALE", "cpu")
if SCALE not in SCALES:
    raise SystemExit(f"JOINT_TRANSFER_SCALE: {SCALE!r} is not a scale; one of {', '.join(SCALES)}")
RESULTS = Path(__file__).parent / "results" / ("gpu" if SCALE == "gpu" else "")
STORE = RESULTS / "joint_transfer" / "runs"
MODELS = {
    "dense": "--num-layers 2 --head-dim 16",
    "moe": "--model moe --num-experts 8 --num-layers 2 --head-dim 16",  # top-2 routing
}
#: Shakespeare's corpus and tokenizer, relative to where the runs start (the repository
#: root), whatever --work-dir is: a recorded text sweep's flags name the same files from a
#: checkout at any path, so it resumes there.
TEXT_DATA = Path("bench/work/joint_transfer")
BASE = SCALES[SCALE]  # the proxies' width and the muP base width
SEQ = 64
# The embedded model's base multipliers (pretrain's default muP), at this base width.
MUP = f"--mup-base-hidden-size {BASE} --mup-embedding-multiplier 4 --mup-residual-multiplier 0.5"
FIT_LRS = [2.0**-k for k in range(9, 1, -1)]  # 0.002 .. 0.25
FIT_BATCHES = [4, 16]
FIT_TOKENS = [25_600, 51_200, 102_400]
#: A second fit, reported beside the first: proxies up to half the 4x cells' budget (the
#: first fit's 25,600-token runs at batch 16 are 25 updates, mostly warmup).
LONG_FIT_TOKENS = [51_200, 102_400, 204_800]
SEEDS = [0, 1, 2]
#: Text cells' rows: their seed spread (0.005-0.027 nats at 3 seeds on Shakespeare, against
#: 0.001 on the Markov source) is larger than the differences the targets ask about.
TEXT_SEEDS = [0, 1, 2, 3, 4, 5]
PAPER = {"a": 4.0, "b": -0.51, "cap": 0.02}
WSD_LENGTHS = [0.1, 0.2, 0.4]  # decay fraction; grown to 0.6 and 0.8 while 0.4 is best
WSD_SHAPES = ["exponential_e", "linear", "minus_sqrt", "cosine"]
PROBE_SCALES = [0.25, 0.5, 2.0]  # the diagnosis: Power's whole LR scaled (1 = as fitted)
#: A Power row with this tail fraction (same a, b, c): tuned WSD's best length in the cells
#: (minus_sqrt 80% at w128-b8), longer than the proxies' fitted tail.
LONG_TAIL = 0.8


@dataclass(frozen=True)
class Cell:
    """A held-out cell: width, budget, and a constant batch or a schedule."""

    name: str
    width: int
    tokens: int
    batch: int  # the constant batch, or the schedule's last (Megatron's rule)
    schedule: str | None = None  # --step-batch-size-schedule, thresholds in tokens
    data: str = "markov"


def ramp(start: int, increment: int, samples: int, end: int) -> str:
    """Megatron's ``--rampup-batch-size START INCREMENT SAMPLES`` (to batch END) written as
    the step schedule that gives the same batch after every consumed sample count: batch
    START + k INCREMENT from ceil(k SAMPLES / increments) samples on (checked below)."""
    from megatron_power.schedules.batch import (
        parse_step_batch_schedule,
        rampup_batch_size_at,
        step_batch_size_at,
    )

    increments = (end - start) // increment
    thresholds = [math.ceil(k * samples / increments) for k in range(increments + 1)]
    text = " ".join(f"{t * SEQ}:{start + k * increment}" for k, t in enumerate(thresholds))
    steps = parse_step_batch_schedule(text, SEQ)
    for consumed in range(2 * samples):
        ramped = rampup_batch_size_at(consumed, end, [start, increment, samples])
        assert step_batch_size_at(consumed, steps) == ramped, consumed
    return text


LARGEST = FIT_TOKENS[-1]
CELLS = [
    Cell(f"w{4 * BASE}-b8", 4 * BASE, 4 * LARGEST, 8),
    Cell(f"w{8 * BASE}-b8", 8 * BASE, 4 * LARGEST, 8),
    Cell(f"w{4 * BASE}-b16-10x", 4 * BASE, 10 * LARGEST, 16),
    Cell(f"w{4 * BASE}-ramp", 4 * BASE, 4 * LARGEST, 16, ramp(4, 4, 2400, 16)),
    Cell(f"w{4 * BASE}-step", 4 * BASE, 4 * LARGEST, 16, f"0:4 {2 * LARGEST}:16"),
    Cell(f"w{8 * BASE}-b8-text", 8 * BASE, 4 * LARGEST, 8, data="text"),
]


# ------------------------------------------------------------------ runs and the store
def template(style: str, cell: Cell | None) -> str:
    """The pretrain command of one schedule family in one cell."""
    text = PRETRAIN_TEMPLATE
    if cell is not None and cell.schedule is not None:
        text = text.replace("--global-batch-size {global_batch_size}",
                            f"--step-batch-size-schedule '{cell.schedule}'")  # fmt: skip
    if style == "cosine":
        text = text.replace("--lr-decay-style WSD", "--lr-decay-style cosine")
        text = text.replace(" --decay-tokens {decay_tokens} --decay-shape {decay_shape}", "")
    elif style == "power":
        text = text.replace("--lr-decay-style WSD", "--lr-decay-style power")
    return text


def make_spec(style, cell, lrs, extra, seeds=(0,), fraction=0.2, shape="exponential_e",
              tokens=tuple(FIT_TOKENS), proxy_width=BASE):  # fmt: skip
    batch = cell.batch if cell is not None else None
    return SweepSpec(
        lrs=sorted(lrs), global_batch_sizes=[batch] if batch else FIT_BATCHES,
        train_tokens=[cell.tokens] if cell else list(tokens),
        hidden_sizes=[cell.width if cell else proxy_width], seeds=list(seeds), seq_length=SEQ,
        decay_fraction=fraction, decay_shape=shape, template=template(style, cell),
        extra_args=" ".join(extra.split()),
    )  # fmt: skip


class Store:
    """Sweep directories in --work-dir whose run records are mirrored in STORE."""

    def __init__(self, work: Path, pool: Pool) -> None:
        self.work, self.pool, self.added = work, pool, set()

    def restore(self, name: str) -> None:
        """Every sweep recorded under STORE/name that the work dir lacks, records only."""
        for spec_file in (STORE / name).rglob("sweep.json") if (STORE / name).is_dir() else []:
            kept = spec_file.parent
            sweep = SweepDir(self.work / kept.relative_to(STORE))
            (sweep.path / "results").mkdir(parents=True, exist_ok=True)
            if not sweep.spec_file.is_file():
                shutil.copy2(spec_file, sweep.spec_file)
            for record in sorted((kept / "results").glob("*.json")):
                if not (sweep.path / "results" / record.name).is_file():
                    shutil.copy2(record, sweep.path / "results" / record.name)

    def save(self, name: str) -> None:
        """Every sweep's records under work/name into the store (changed files only)."""
        for spec_file in (self.work / name).rglob("sweep.json"):
            sweep = spec_file.parent
            kept = STORE / sweep.relative_to(self.work)
            (kept / "results").mkdir(parents=True, exist_ok=True)
            atomic_write_text(kept / "sweep.json", spec_file.read_text())
            for record in (sweep / "results").glob("*.json"):
                target = kept / "results" / record.name
                if not target.is_file() or target.read_bytes() != record.read_bytes():
                    atomic_write_text(target, record.read_text())

    def add(self, name: str, spec: SweepSpec) -> SweepDir:
        self.restore(name)
        self.pool.add(self.work / name, spec)
        self.added.add(name)
        return SweepDir(self.work / name)

    def run(self, what: str) -> None:
        self.pool.run(what)
        for name in sorted(self.added):
            self.save(name)

    def losses(self, name: str, spec: SweepSpec, diverged_ok: bool = False) -> dict:
        """{(lr, seed): validation loss}; a diverged run is infinite where ``diverged_ok``
        (a grid's too-large LR); any other failure is an error."""
        sweep, out = SweepDir(self.work / name), {}
        for run in spec.runs():
            record = sweep.result(run)
            if record is not None and record["status"] == "ok":
                out[run["lr"], run["seed"]] = record["valid_loss"]
            elif diverged_ok and diverged(record):
                out[run["lr"], run["seed"]] = math.inf
            else:
                raise SystemExit(f"{sweep.path}: run {run_id(run)} did not finish: {record}")
        return out


# ---------------------------------------------------------------------------- phases
def fit(store: Store, model: str, name: str = "fit", tokens=tuple(FIT_TOKENS),
        width: int = BASE) -> dict:  # fmt: skip
    """Phase 1: the proxies' WSD sweep (``width`` wide) and ``megatron-power fit`` on it."""
    spec = make_spec("wsd", None, FIT_LRS, f"{MODELS[model]} {MUP}", tokens=tokens,
                     proxy_width=width)  # fmt: skip
    store.add(f"{model}/{name}", spec)
    store.run(f"{model}: {name} sweep")
    sweep = SweepDir(store.work / model / name)
    sweep.collect()
    out = STORE / model / f"{name}.json"
    subprocess.run([sys.executable, "-m", "megatron_power.cli.main", "fit", str(sweep.path),
                    "--json", str(out), "--png", str(STORE / model / f"{name}.png"), "--force"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    report = json.loads(out.read_text())[0]
    if not report["flags"]:
        raise SystemExit(f"{model}: the fit found no power law: {report['notes']}")
    return report


TAIL_FRACTIONS = [0.2, 0.4, 0.6, 0.8]  # 0.2: the fit sweep's own


def fit_tail(store: Store, model: str, report: dict) -> dict:
    """Phase 1b, the tail the held-out data asked for: in every proxy cell, at its best grid
    LR, the exponential_e tail over 40-80% of the run beside the fit's 20%; the length
    whose loss, relative to the 20% tail, is lowest on average transfers as a fraction."""
    extra = f"{MODELS[model]} {MUP}"
    jobs = []
    for entry in report["cells"]:
        lrs, losses = entry["lrs"], entry["losses"]
        lr = lrs[losses.index(min(losses))]
        proxy = Cell("proxy", BASE, entry["train_tokens"], entry["global_batch_size"])
        for fraction in TAIL_FRACTIONS[1:]:
            name = f"{model}/tail/f{fraction:g}-t{proxy.tokens}-b{proxy.batch}"
            spec = make_spec("wsd", proxy, [lr], extra, fraction=fraction)
            store.add(name, spec)
            jobs.append((entry, lr, fraction, name, spec))
    store.run(f"{model}: tail length")
    relative = {fraction: [] for fraction in TAIL_FRACTIONS}
    cells = []
    for entry in report["cells"]:
        lr = entry["lrs"][entry["losses"].index(min(entry["losses"]))]
        row = {"batch": entry["global_batch_size"], "tokens": entry["train_tokens"], "lr": lr,
               "losses": {"0.2": min(entry["losses"])}}  # fmt: skip
        for job_entry, _, fraction, name, spec in jobs:
            if job_entry is entry:
                row["losses"][f"{fraction:g}"] = store.losses(name, spec)[lr, 0]
        for fraction in TAIL_FRACTIONS:
            relative[fraction].append(row["losses"][f"{fraction:g}"] / row["losses"]["0.2"])
        cells.append(row)
    mean = {f"{f:g}": statistics.fmean(v) for f, v in relative.items()}
    chosen = float(min(mean, key=mean.get))
    result = {"cells": cells, "mean_relative": mean, "fraction": chosen}
    atomic_write_text(STORE / model / "tail.json", json.dumps(result, indent=2) + "\n")
    return result


def power_flags(report: dict, scale: float = 1.0) -> tuple[float, str, PowerLaw]:
    """(cap, the fitted flags but --lr, the fitted law) from ``megatron-power fit``; with
    ``scale``, Power's whole LR (a and the cap) times it."""
    flags = report["flags"]
    values = dict(zip(flags[::2], flags[1::2], strict=True))
    cap = float(values.pop("--lr")) * scale
    if scale != 1.0:
        values["--lr-power-a"] = f"{float(values['--lr-power-a']) * scale:.6g}"
    law = PowerLaw(a=float(values["--lr-power-a"]), b=float(values["--lr-power-b"]),
                   batch_exponent=float(values.get("--lr-power-batch-exponent", 1.0)))  # fmt: skip
    values.pop("--lr-decay-style")
    return cap, " ".join(f"{k} {v}" for k, v in values.items()), law


def grow(store: Store, name: str, make, lrs: list[float], what: str) -> dict[float, float]:
    """Seed-0 losses of an LR grid, grown by x2 while its best LR is on an edge."""
    for _ in range(6):
        store.add(name, make(lrs))
        store.run(what)
        found = store.losses(name, make(lrs), diverged_ok=True)
        losses = {lr: found[lr, 0] for lr in lrs}
        best = min(losses, key=losses.get)
        if best == lrs[0]:
            lrs = [lrs[0] / 2, *lrs]
        elif best == lrs[-1]:
            lrs = [*lrs, lrs[-1] * 2]
        else:
            return losses
    return losses


def cell_seeds(cell: Cell) -> list[int]:
    """A cell's seeds: 0-5 on text (its larger seed spread), 0-2 otherwise."""
    return TEXT_SEEDS if cell.data == "text" else SEEDS


def tune_cell(store: Store, model: str, cell: Cell, report: dict, tail: dict | None,
              data_flags: str, long_fit: dict | None = None) -> dict:  # fmt: skip
    """Phase 2 in one cell: cosine and WSD tuned, Power fitted and the paper's, 3 seeds (6 on
    text)."""
    cap, fitted, law = power_flags(report)
    seeds = cell_seeds(cell)
    extra = f"{MODELS[model]} {MUP} {data_flags}"
    root = f"{model}/{cell.name}"
    mean_batch = cell.batch if cell.schedule is None else cell.batch / 2
    guess = law.lr(tokens=cell.tokens, batch_tokens=mean_batch * SEQ, max_lr=math.inf)
    centre = 2.0 ** round(math.log2(guess))
    start = [centre * 2.0**k for k in (-1, 0, 1, 2)]
    rows: dict[str, dict] = {}

    def cosine(lrs, seeds=(0,)):
        return make_spec("cosine", cell, lrs, extra, seeds)

    grid = grow(store, f"{root}/cosine", cosine, list(start), f"{root}: cosine LR")
    best_lr = min(grid, key=grid.get)
    rows["cosine"] = {"lr": best_lr, "grid": grid, "name": f"{root}/cosine",
                      "spec": cosine([best_lr], seeds)}  # fmt: skip

    def wsd(fraction, shape):
        return lambda lrs, seeds=(0,): make_spec("wsd", cell, lrs, extra, seeds, fraction, shape)

    def wsd_name(fraction, shape):
        return f"{root}/wsd-{shape}-{fraction:g}"

    def tail_at(lr: float) -> dict[tuple[float, str], float]:
        """Seed-0 losses at ``lr``: exponential_e tail lengths (grown while the longest is
        best), then the other shapes at the best length."""
        tried, lengths = {}, list(WSD_LENGTHS)
        while True:
            for fraction in lengths:
                store.add(wsd_name(fraction, "exponential_e"), wsd(fraction, "exponential_e")([lr]))
            store.run(f"{root}: WSD decay length at {lr:g}")
            for fraction in lengths:
                spec = wsd(fraction, "exponential_e")([lr])
                tried[fraction, "exponential_e"] = store.losses(
                    wsd_name(fraction, "exponential_e"), spec, diverged_ok=True)[lr, 0]  # fmt: skip
            best_length = min(lengths, key=lambda f: tried[f, "exponential_e"])
            if best_length != lengths[-1] or lengths[-1] >= 0.8:
                break
            lengths.append(round(lengths[-1] + 0.2, 1))
        for shape in WSD_SHAPES[1:]:
            store.add(wsd_name(best_length, shape), wsd(best_length, shape)([lr]))
        store.run(f"{root}: WSD decay shape at {lr:g}")
        for shape in WSD_SHAPES[1:]:
            tried[best_length, shape] = store.losses(
                wsd_name(best_length, shape), wsd(best_length, shape)([lr]), diverged_ok=True
            )[lr, 0]
        return tried

    # Coordinate search: the LR (20% exponential_e tail), then the tail at that LR, then
    # the LR for that tail, ... until the LR stays (at most 3 rounds).
    grid = grow(store, wsd_name(0.2, "exponential_e"), wsd(0.2, "exponential_e"), list(start),
                f"{root}: WSD LR")  # fmt: skip
    wsd_lr = min(grid, key=grid.get)
    variants: dict[str, float] = {}
    for _ in range(3):
        tried = tail_at(wsd_lr)
        variants.update({f"{s} {f:g} @ {wsd_lr:g}": v for (f, s), v in tried.items()})
        fraction, shape = min(tried, key=tried.get)
        around = [wsd_lr * 2.0**k for k in (-1, 0, 1, 2)]
        grid = grow(store, wsd_name(fraction, shape), wsd(fraction, shape), around,
                    f"{root}: WSD LR for {shape} {fraction:g}")  # fmt: skip
        best_lr = min(grid, key=grid.get)
        variants[f"{shape} {fraction:g} @ {best_lr:g}"] = grid[best_lr]
        if best_lr == wsd_lr:
            break
        wsd_lr = best_lr
    rows["wsd"] = {"lr": wsd_lr, "grid": grid, "fraction": fraction, "shape": shape,
                   "variants": variants, "name": wsd_name(fraction, shape),
                   "spec": wsd(fraction, shape)([wsd_lr], seeds)}  # fmt: skip
    power = make_spec("power", cell, [cap], f"{extra} {fitted}", seeds)
    rows["power"] = {"lr": cap, "name": f"{root}/power", "spec": power}
    if tail is not None and tail["fraction"] != 0.2:  # the fitted tail length, same a, b, c
        spec = make_spec("power", cell, [cap], f"{extra} {fitted}", seeds, tail["fraction"])
        rows["power-tail"] = {"lr": cap, "fraction": tail["fraction"], "spec": spec,
                              "name": f"{root}/power-tail-{tail['fraction']:g}"}  # fmt: skip
    if (tail or {}).get("fraction") != LONG_TAIL:  # the tail the tuned WSD cells prefer
        spec = make_spec("power", cell, [cap], f"{extra} {fitted}", seeds, LONG_TAIL)
        rows["power-long"] = {"lr": cap, "fraction": LONG_TAIL, "spec": spec,
                              "name": f"{root}/power-tail-{LONG_TAIL:g}"}  # fmt: skip
    if long_fit is not None:  # the second fit's a, b, c, with the same tail as power-tail
        long_cap, long_flags, _ = power_flags(long_fit)
        fraction = (tail or {}).get("fraction", 0.2)
        spec = make_spec("power", cell, [long_cap], f"{extra} {long_flags}", seeds, fraction)
        rows["power-longfit"] = {"lr": long_cap, "fraction": fraction, "spec": spec,
                                 "name": f"{root}/power-longfit-{fraction:g}"}  # fmt: skip
        if fraction != LONG_TAIL:  # both fixes the cells point to: longer proxies, long tail
            spec = make_spec("power", cell, [long_cap], f"{extra} {long_flags}", seeds, LONG_TAIL)
            name = f"{root}/power-longfit-{LONG_TAIL:g}"
            rows["power-longfit-long"] = {"lr": long_cap, "fraction": LONG_TAIL, "spec": spec,
                                          "name": name}  # fmt: skip
    paper = f"{extra} --lr-power-a {PAPER['a']} --lr-power-b {PAPER['b']}"
    rows["paper"] = {"lr": PAPER["cap"], "name": f"{root}/paper",
                     "spec": make_spec("power", cell, [PAPER["cap"]], paper, seeds)}  # fmt: skip
    # Diagnosis, not a tuned row: the fitted-tail Power with its whole LR (a and the cap)
    # scaled, seed 0. A best scale of 1 puts the gap on the shape; another, on the level
    # that the fit and muP's transfer gave this cell.
    tail_key = "power-tail" if "power-tail" in rows else "power"
    fraction = rows[tail_key].get("fraction", 0.2)
    probes = {}
    for scale in PROBE_SCALES:
        scaled_cap, scaled, _ = power_flags(report, scale)
        spec = make_spec("power", cell, [scaled_cap], f"{extra} {scaled}", fraction=fraction)
        probes[scale] = (f"{root}/probe-x{scale:g}", spec, scaled_cap)
        store.add(*probes[scale][:2])
    for row in rows.values():
        store.add(row["name"], row["spec"])
    store.run(f"{root}: seeds")
    result = {"cell": vars(cell)}
    for key, row in rows.items():
        found = store.losses(row["name"], row.pop("spec"))
        row["losses"] = [found[row["lr"], seed] for seed in seeds]
        row["mean"] = statistics.fmean(row["losses"])
        row["sd"] = statistics.stdev(row["losses"])
        row["grid"] = {f"{lr:g}": v for lr, v in row.get("grid", {}).items()}
        row["lr_curve"] = lr_curve(store.work / row["name"] / "runs", row["lr"])
        result[key] = row
    probe = {"1": result[tail_key]["losses"][0]}
    for scale, (name, spec, scaled_cap) in probes.items():
        probe[f"{scale:g}"] = store.losses(name, spec, diverged_ok=True)[scaled_cap, 0]
    result["probe"] = {"row": tail_key, "seed0_loss_by_scale": probe}
    result["entropy_rate"] = entropy_rate(store.work / rows["power"]["name"] / "runs", cell)
    earlier = STORE / root / "cell.json"  # what another machine's run dirs gave
    if earlier.is_file():
        before = json.loads(earlier.read_text())
        # Rows this call did not run (the second fit's, without --phases long-fit) stay.
        result = {**{key: result.get(key, row) for key, row in before.items()}, **result}
        for key in rows:
            result[key]["lr_curve"] = result[key]["lr_curve"] or before.get(key, {}).get(
                "lr_curve", []
            )
        if result["entropy_rate"] is None:
            result["entropy_rate"] = before["entropy_rate"]
    atomic_write_text(STORE / root / "cell.json", json.dumps(result, indent=2) + "\n")
    return result


#: Then Power's whole LR (a and the cap) scaled at that tail: the probe found the fitted
#: level 2x off in some cells; x1 is the tail step's own run.
PROXY_SCALES = [0.5, 1.0, 2.0]


def scaled_power(model: str, cell: Cell, report: dict, data_flags: str, fraction: float,
                 scale: float, shape: str = "exponential_e",
                 ) -> tuple[SweepSpec, float]:  # fmt: skip
    """Power with the fitted a, b, c, its whole LR x ``scale`` and a tail of ``fraction``
    (of ``shape``) in ``cell`` with the cell's seeds; and its cap (the spec's one LR)."""
    cap, flags, _ = power_flags(report, scale)
    extra = f"{MODELS[model]} {MUP} {data_flags} {flags}"
    return make_spec("power", cell, [cap], extra, cell_seeds(cell), fraction, shape), cap


def proxy_fractions(tail: dict) -> list[float]:
    """The tails a cell's width-32 proxies choose among: those with a Power row in every
    cell (the fit's 20%, the proxies' fitted tail, the long tail), so the choice costs no
    held-out run."""
    return sorted({0.2, tail["fraction"], LONG_TAIL})


def proxy_tail(store: Store, model: str, cell: Cell, report: dict, tail: dict,
               data_flags: str, width: int = BASE, fit_tag: str = "") -> dict:  # fmt: skip
    """Phase 2b, the fix the cells point to (a tail fitted per data set at the target
    budget): Power with the fitted a, b, c on a width-32 copy of the cell (its data, budget
    and batch or schedule; seeds as the cell's), each tail of ``proxy_fractions``; the tail
    with the lowest mean loss is the cell's choice; then at that tail each LR scale in
    PROXY_SCALES, chosen the same way. The held-out cell is not looked at. ``width``: the
    copies' width (the fit's proxies'); ``fit_tag``: names the runs of a fit from proxies
    of another width."""
    seeds = cell_seeds(cell)
    proxy = replace(cell, width=width)
    # Named without the width: cells that differ only by width share their proxies.
    key = cell.name.removeprefix(f"w{cell.width}-")
    kept = ("" if width == BASE else f"-w{width}") + fit_tag

    def mean_losses(specs: dict) -> tuple[dict, dict]:
        for name, spec, _ in specs.values():
            store.add(name, spec)
        store.run(f"{model}/{cell.name}: width-{width} proxies")
        losses = {}
        for value, (name, spec, cap) in specs.items():
            found = store.losses(name, spec)
            losses[f"{value:g}"] = [found[cap, seed] for seed in seeds]
        return losses, {f: statistics.fmean(v) for f, v in losses.items()}

    def power(fraction: float, scale: float, name: str) -> tuple[str, SweepSpec, float]:
        return name, *scaled_power(model, proxy, report, data_flags, fraction, scale)

    losses, means = mean_losses({f: power(f, 1.0, f"{model}/proxy-tail{kept}/{key}/f{f:g}")
                                 for f in proxy_fractions(tail)})  # fmt: skip
    fraction = float(min(means, key=means.get))
    specs = {scale: power(fraction, scale,
                          f"{model}/proxy-scale{kept}/{key}/f{fraction:g}-x{scale:g}")
             for scale in PROXY_SCALES if scale != 1.0}  # fmt: skip
    scale_losses, scale_means = mean_losses(specs)
    scale_losses["1"], scale_means["1"] = losses[f"{fraction:g}"], means[f"{fraction:g}"]
    scale = float(min(scale_means, key=scale_means.get))
    return {"losses": losses, "means": means, "fraction": fraction,
            "scale": {"losses": scale_losses, "means": scale_means, "chosen": scale}}  # fmt: skip


def proxy_tuned(store: Store, model: str, cell: Cell, report: dict, data_flags: str,
                choice: dict) -> dict | None:  # fmt: skip
    """The held-out cell's Power at the tail and LR scale its proxies chose (its seeds);
    None at scale 1, where the cell's row of that tail is this run."""
    scale, fraction = choice["scale"]["chosen"], choice["fraction"]
    if scale == 1.0:
        return None
    spec, cap = scaled_power(model, cell, report, data_flags, fraction, scale)
    name = f"{model}/{cell.name}/power-x{scale:g}-tail-{fraction:g}"
    store.add(name, spec)
    store.run(f"{model}/{cell.name}: Power x{scale:g}, tail {fraction:g}")
    found = store.losses(name, spec)
    losses = [found[cap, seed] for seed in cell_seeds(cell)]
    return {"lr": cap, "fraction": fraction, "scale": scale, "losses": losses,
            "mean": statistics.fmean(losses), "sd": statistics.stdev(losses)}  # fmt: skip


def proxy_tails(store: Store, model: str, cells: list[Cell], report: dict, tail: dict,
                text_flags) -> dict:  # fmt: skip
    """proxy_tail for ``cells`` (all proxies first: they are cheap), then each cell's
    proxy_tuned run; kept beside the earlier cells' choices."""
    path = STORE / model / "proxy-tail.json"
    out = stored(model, "proxy-tail")
    for cell in cells:
        data_flags = text_flags() if cell.data == "text" else ""
        out[cell.name] = proxy_tail(store, model, cell, report, tail, data_flags)
        write_phase(path, out)
    for cell in cells:
        data_flags = text_flags() if cell.data == "text" else ""
        out[cell.name]["held_out"] = proxy_tuned(store, model, cell, report, data_flags,
                                                 out[cell.name])  # fmt: skip
        write_phase(path, out)
    return out


#: The fix the width tables point to (muP's optimum moves in the step from the 32-wide base
#: and little beyond): the fit and each cell's tail and LR scale on proxies twice as wide.
WIDE_PROXY = 2 * BASE


def wide_proxies(store: Store, model: str, cells: list[Cell], tail: dict, text_flags) -> dict:
    """Phase 2c: ``fit`` on WIDE_PROXY-wide proxies (the same grid), each cell's tail and
    then LR scale chosen on WIDE_PROXY-wide copies of it (proxy_tail), then Power with that
    fit, tail and scale in the held-out cell."""
    report = fit(store, model, f"fit-w{WIDE_PROXY}", width=WIDE_PROXY)
    path = STORE / model / "wide-proxies.json"
    out = stored(model, "wide-proxies") or {"cells": {}}
    out["flags"] = report["flags"]
    for cell in cells:
        data_flags = text_flags() if cell.data == "text" else ""
        choice = proxy_tail(store, model, cell, report, tail, data_flags, WIDE_PROXY)
        out["cells"].setdefault(cell.name, {})["choice"] = choice
        write_phase(path, out)
    specs = {}
    for cell in cells:
        choice = out["cells"][cell.name]["choice"]
        fraction, scale = choice["fraction"], choice["scale"]["chosen"]
        data_flags = text_flags() if cell.data == "text" else ""
        spec, cap = scaled_power(model, cell, report, data_flags, fraction, scale)
        scaled = "" if scale == 1.0 else f"-x{scale:g}"
        name = f"{model}/{cell.name}/power-fit-w{WIDE_PROXY}{scaled}-tail-{fraction:g}"
        specs[cell.name] = (name, spec, cap, fraction, scale)
        store.add(name, spec)
    store.run(f"{model}: held-out cells, fit on width-{WIDE_PROXY} proxies")
    for cell in cells:
        name, spec, cap, fraction, scale = specs[cell.name]
        found = store.losses(name, spec)
        losses = [found[cap, seed] for seed in cell_seeds(cell)]
        out["cells"][cell.name]["held_out"] = {
            "lr": cap, "fraction": fraction, "scale": scale, "losses": losses,
            "mean": statistics.fmean(losses), "sd": statistics.stdev(losses),
            "lr_curve": lr_curve(store.work / name / "runs", cap),
        }  # fmt: skip
    write_phase(path, out)
    return out


#: Phase 2d, a diagnosis of the width-64 row where it misses the worst-cell target (the
#: held-out cell is looked at, so nothing here is a choice): Power with the width-64 fit
#: at these LR scales and at the copies' tail and the proxies' fitted tail, the cell's seeds.
WIDE_PROBE_SCALES = [1.0, 2.0, 4.0]


def worst_target(model: str) -> float:
    """The issue's worst-cell target for the ratio Power / best tuned."""
    return 1.005 if model == "dense" else 1.01


def wide_probe(store: Store, model: str, cells: list[Cell], tail: dict, text_flags) -> dict:
    """Phase 2d: in each of ``cells`` whose width-64 row misses worst_target, that row's
    fit with each tail (the copies' choice, the proxies' fitted tail) x WIDE_PROBE_SCALES:
    whether the miss is the LR level or the tail."""
    out = stored(model, "wide-proxies")
    if "flags" not in out:
        raise SystemExit("--phases wide-probe: run --phases wide-proxies first")
    report = json.loads((STORE / model / f"fit-w{WIDE_PROXY}.json").read_text())[0]
    specs = {}
    for cell in cells:
        result = cell_result(model, cell, {}, out, {})
        if result is None or "power-wide" not in result:
            continue
        if ratios(result)["power-wide"] <= worst_target(model):
            continue
        data_flags = text_flags() if cell.data == "text" else ""
        held_out = result["power-wide"]
        for fraction in sorted({held_out["fraction"], tail["fraction"]}):
            for scale in WIDE_PROBE_SCALES:
                if (fraction, scale) == (held_out["fraction"], held_out["scale"]):
                    continue  # the row itself
                spec, cap = scaled_power(model, cell, report, data_flags, fraction, scale)
                name = f"{model}/{cell.name}/probe-fit-w{WIDE_PROXY}-x{scale:g}-tail-{fraction:g}"
                specs[cell, fraction, scale] = (name, spec, cap)
                store.add(name, spec)
    store.run(f"{model}: width-{WIDE_PROXY} row, LR scale x tail")
    for (cell, fraction, scale), (name, spec, cap) in specs.items():
        found = store.losses(name, spec, diverged_ok=True)
        losses = [found[cap, seed] for seed in cell_seeds(cell)]
        held_out = out["cells"][cell.name]["held_out"]
        probe = out["cells"][cell.name].setdefault("probe", {
            f"tail {held_out['fraction']:g} x{held_out['scale']:g}": {
                key: held_out[key] for key in ("fraction", "scale", "losses", "mean", "sd")},
        })  # fmt: skip
        diverged_seeds = sum(not math.isfinite(loss) for loss in losses)  # a too-large LR
        probe[f"tail {fraction:g} x{scale:g}"] = {
            "fraction": fraction, "scale": scale, "diverged": diverged_seeds,
            "losses": [loss if math.isfinite(loss) else None for loss in losses],
            "mean": None if diverged_seeds else statistics.fmean(losses),
            "sd": None if diverged_seeds else statistics.stdev(losses),
        }  # fmt: skip
    write_phase(STORE / model / "wide-proxies.json", out)
    return out


#: Phase 2e, the fix the wide probe points to (on Shakespeare neither the LR level nor the
#: tail recovers what the 64-wide fit's steeper b costs): the fit, too, chosen on the
#: width-64 copies of each cell, between the fits on 32- and 64-wide proxies.
def fit_choice(store: Store, model: str, cells: list[Cell], fitted: dict, tail: dict,
               text_flags) -> dict:  # fmt: skip
    """Phase 2e: on each cell's WIDE_PROXY-wide copies, the width-32 fit at each tail and
    then LR scale (proxy_tail) beside the width-64 fit's (wide_proxies' choice); the fit
    whose best tail (x1) has the lower mean loss, with its tail and scale, runs in the
    held-out cell. Nothing held out is looked at."""
    wide = stored(model, "wide-proxies")
    if "flags" not in wide:
        raise SystemExit("--phases fit-choice: run --phases wide-proxies first")
    path = STORE / model / "fit-choice.json"
    out = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    for cell in cells:
        data_flags = text_flags() if cell.data == "text" else ""
        narrow = proxy_tail(store, model, cell, fitted, tail, data_flags, WIDE_PROXY,
                            f"-fit-w{BASE}")  # fmt: skip
        wide_choice = wide["cells"][cell.name]["choice"]
        best = {BASE: min(narrow["means"].values()), WIDE_PROXY: min(wide_choice["means"].values())}
        chosen = min(best, key=best.get)
        entry = {"best_mean_by_fit_width": best, "fit_width": chosen, "choice": narrow}
        if chosen == WIDE_PROXY:
            entry["held_out"] = wide["cells"][cell.name]["held_out"]
        else:  # the width-32 fit's row of that tail in the cell, or its scaled run
            entry["held_out"] = proxy_tuned(store, model, cell, fitted, data_flags, narrow)
            if entry["held_out"] is None:  # x1: the cell's Power row of that tail
                result = with_proxy_tail(cell_result(model, cell, {}, {}, {}), narrow)
                entry["held_out"] = {**result["power-proxytail"], "scale": 1.0}
        out["cells"][cell.name] = entry
        write_phase(path, out)
    return out


@dataclass(frozen=True)
class ChosenRow:
    """The fit-choice row of one cell: its fit's report, tail, LR scale, the name part of
    its runs, and its copies' losses (the seeds of the chosen fit, tail and scale)."""

    report: dict
    fraction: float
    scale: float
    tag: str
    copies_losses: list[float]


def chosen_rows(model: str, fitted: dict) -> dict[str, ChosenRow]:
    """{cell name: its fit-choice row} for the cells ``--phases fit-choice`` has run."""
    fits, wide = stored(model, "fit-choice").get("cells", {}), stored(model, "wide-proxies")
    wide_file = STORE / model / f"fit-w{WIDE_PROXY}.json"
    wide_fit = json.loads(wide_file.read_text())[0] if wide_file.is_file() else None
    rows = {}
    for name, entry in fits.items():
        width, fraction = entry["fit_width"], entry["held_out"]["fraction"]
        scale = entry["held_out"]["scale"]
        if width == WIDE_PROXY:
            choice, report = wide["cells"][name]["choice"], wide_fit
        else:
            choice, report = entry["choice"], fitted
        tag = f"fit-w{width}{'' if scale == 1.0 else f'-x{scale:g}'}-tail-{fraction:g}"
        losses = choice["scale"]["losses"][f"{scale:g}"]
        rows[name] = ChosenRow(report, fraction, scale, tag, losses)
    return rows


#: Phase 2f, the fix the batch-rule cause points to: under a batch schedule Power's beta
#: follows the small early batch, so its LR runs low through the ramp while tuned cosine and
#: WSD keep one LR. The alternative holds beta at the schedule's final batch
#: (``--lr-power-batch-size``); the width-64 copies choose between the two.
def batch_rule(store: Store, model: str, cells: list[Cell], fitted: dict, text_flags) -> dict:
    """Phase 2f: in each cell with a batch schedule, the fit-choice row (its fit, tail and
    LR scale) with beta held at the final batch, on the cell's WIDE_PROXY-wide copies and in
    the held-out cell; the copies' mean loss against the in-force rule's (the fit choice's
    own copies) picks the cell's rule. Nothing held out is looked at."""
    rows_of = chosen_rows(model, fitted)
    if not rows_of:
        raise SystemExit("--phases batch-rule: run --phases fit-choice first")
    path = STORE / model / "batch-rule.json"
    out = stored(model, "batch-rule") or {"cells": {}}
    specs = {}
    for cell in cells:
        if cell.schedule is None or cell.name not in rows_of:
            continue  # a constant batch is its own final batch: the rules are one
        row = rows_of[cell.name]
        held = f"--lr-power-batch-size {cell.batch}"
        data_flags = f"{text_flags() if cell.data == 'text' else ''} {held}"
        key = cell.name.removeprefix(f"w{cell.width}-")
        copy = replace(cell, width=WIDE_PROXY)
        specs[cell.name] = {
            "copies": (f"{model}/batch-rule-w{WIDE_PROXY}/{key}/{row.tag}-held-batch",
                       *scaled_power(model, copy, row.report, data_flags, row.fraction,
                                     row.scale)),
            "held_out": (f"{model}/{cell.name}/power-{row.tag}-held-batch",
                         *scaled_power(model, cell, row.report, data_flags, row.fraction,
                                       row.scale)),
        }  # fmt: skip
        for name, spec, _ in specs[cell.name].values():
            store.add(name, spec)
    store.run(f"{model}: Power with beta held at the final batch")
    for cell in cells:
        if cell.name not in specs:
            continue
        row, in_force = rows_of[cell.name], rows_of[cell.name].copies_losses
        rows = {}
        for where, (name, spec, cap) in specs[cell.name].items():
            found = store.losses(name, spec)
            losses = [found[cap, seed] for seed in cell_seeds(cell)]
            rows[where] = {"lr": cap, "fraction": row.fraction, "scale": row.scale,
                           "losses": losses, "mean": statistics.fmean(losses),
                           "sd": statistics.stdev(losses)}  # fmt: skip
        rows["held_out"]["lr_curve"] = lr_curve(store.work / specs[cell.name]["held_out"][0]
                                                / "runs", rows["held_out"]["lr"])  # fmt: skip
        copies = {"in force": {"losses": in_force, "mean": statistics.fmean(in_force),
                               "sd": statistics.stdev(in_force)},
                  "final": rows["copies"]}  # fmt: skip
        rule = min(copies, key=lambda k: copies[k]["mean"])
        out["cells"][cell.name] = {"batch": cell.batch, "copies": copies, "rule": rule,
                                   "held_out": rows["held_out"]}  # fmt: skip
        write_phase(path, out)
    return out


#: Phase 2g, the fix the text cells point to: there tuned WSD's best tail is linear, while
#: Power's is exponential_e (the paper's). The copies choose the tail's shape too.
def tail_shape(store: Store, model: str, cells: list[Cell], fitted: dict, text_flags) -> dict:
    """Phase 2g: on each cell's WIDE_PROXY-wide copies, the batch-rule row (its fit, tail,
    LR scale and batch rule) with each other shape of WSD_SHAPES; the shape with the lowest
    mean loss runs in the held-out cell. Nothing held out is looked at."""
    rows_of, rules = chosen_rows(model, fitted), stored(model, "batch-rule")
    if not rows_of or not rules.get("cells"):
        raise SystemExit("--phases tail-shape: run --phases fit-choice and batch-rule first")
    path = STORE / model / "tail-shape.json"
    out = stored(model, "tail-shape") or {"cells": {}}
    plans = {}
    for cell in cells:
        if cell.name not in rows_of:
            continue
        row, rule = rows_of[cell.name], rules["cells"].get(cell.name, {})
        held = rule.get("rule") == "final"
        data_flags = (text_flags() if cell.data == "text" else "") + (
            f" --lr-power-batch-size {cell.batch}" if held else "")  # fmt: skip
        own = rule["copies"]["final"]["losses"] if held else row.copies_losses
        key = cell.name.removeprefix(f"w{cell.width}-")
        tag = row.tag + ("-held-batch" if held else "")
        copy = replace(cell, width=WIDE_PROXY)
        copies = {shape: (f"{model}/tail-shape-w{WIDE_PROXY}/{key}/{tag}-{shape}",
                          *scaled_power(model, copy, row.report, data_flags, row.fraction,
                                        row.scale, shape))
                  for shape in WSD_SHAPES[1:]}  # fmt: skip
        for name, spec, _ in copies.values():
            store.add(name, spec)
        plans[cell.name] = (cell, row, data_flags, tag, own, copies)
    store.run(f"{model}: Power's tail shape on width-{WIDE_PROXY} copies")
    held_out = {}
    for name, (cell, row, data_flags, tag, own, copies) in plans.items():
        losses = {WSD_SHAPES[0]: own}
        for shape, (run_name, spec, cap) in copies.items():
            found = store.losses(run_name, spec)
            losses[shape] = [found[cap, seed] for seed in cell_seeds(cell)]
        rows = {shape: {"losses": v, "mean": statistics.fmean(v), "sd": statistics.stdev(v)}
                for shape, v in losses.items()}  # fmt: skip
        chosen = min(rows, key=lambda shape: rows[shape]["mean"])
        out["cells"][name] = {"copies": rows, "shape": chosen, "held_out": None}
        if chosen != WSD_SHAPES[0]:
            spec, cap = scaled_power(model, cell, row.report, data_flags, row.fraction,
                                     row.scale, chosen)  # fmt: skip
            held_out[name] = (f"{model}/{name}/power-{tag}-{chosen}", spec, cap, cell, row)
            store.add(*held_out[name][:2])
    store.run(f"{model}: held-out cells, Power's tail shape chosen on the copies")
    for name, (run_name, spec, cap, cell, row) in held_out.items():
        found = store.losses(run_name, spec)
        losses = [found[cap, seed] for seed in cell_seeds(cell)]
        out["cells"][name]["held_out"] = {
            "lr": cap, "fraction": row.fraction, "scale": row.scale,
            "shape": out["cells"][name]["shape"],
            "losses": losses, "mean": statistics.fmean(losses), "sd": statistics.stdev(losses),
            "lr_curve": lr_curve(store.work / run_name / "runs", cap),
        }  # fmt: skip
    write_phase(path, out)
    return out


#: The phases whose choices give a cell its chosen rows, in cell_result's order.
CHOICE_PHASES = ("proxy-tail", "wide-proxies", "fit-choice", "batch-rule", "tail-shape")


def write_phase(path: Path, out: dict) -> None:
    """A phase's results file. An LR curve this machine could not read (its run directory
    is on the machine that ran it; the store keeps records only) stays as recorded."""
    if path.is_file():
        keep_curves(out, json.loads(path.read_text()))
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")


def keep_curves(new: dict, old: object) -> None:
    """Where ``new`` has an empty "lr_curve" and ``old`` at the same place a recorded one,
    take the recorded one (in place, at every depth)."""
    if not isinstance(old, dict):
        return
    if new.get("lr_curve") == [] and old.get("lr_curve"):
        new["lr_curve"] = old["lr_curve"]
    for key, value in new.items():
        if isinstance(value, dict):
            keep_curves(value, old.get(key))


def stored(model: str, phase: str) -> dict:
    """A phase's choices file under the model's store (fit-choice, batch-rule, tail-shape,
    wide-proxies, proxy-tail); empty before the phase has run."""
    path = STORE / model / f"{phase}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


WIDTHS = [BASE, 4 * BASE, 8 * BASE]
WIDTH_DATA = ["markov", "text"]
WIDTH_TOKENS, WIDTH_BATCH = 2 * LARGEST, 8
TUNE_CANDIDATES = {"--output-multipliers": [0.25, 1, 4], "--embedding-multipliers": [1, 4, 16],
                   "--init-stds": [0.01, 0.02, 0.04]}  # fmt: skip
TUNE_FIELDS = {
    "--output-multipliers": "output_multiplier",
    "--embedding-multipliers": "embedding_multiplier",
    "--init-stds": "init_std",
}


def grow_at_edge(values: list[float], chosen: float) -> bool:
    """Extend the sorted ``values`` by one step past the end ``chosen`` sits on (the
    LRs' best may lie beyond it); whether they grew."""
    step = values[-1] / values[-2]
    if chosen <= values[0]:
        values.insert(0, values[0] / step)
    elif chosen >= values[-1]:
        values.append(values[-1] * step)
    else:
        return False
    return True


#: A multiplier on its list's edge grows the list only where it beat its inner neighbour
#: by more than this (nats at the base width, a tenth of the Markov source's seed spread
#: there): the embedding multiplier's loss flattens out (dense, Markov: 1.5e-4 nats from
#: 64 to 256, 6e-5 from 256 to 1024), and growing a flat list only walks the plateau.
FLAT_GAIN = 1e-4


def edge_gain(tried: list[dict], field: str, values: list[float], chosen: float) -> float:
    """How much the tune's ``chosen`` value of ``field``, on an end of ``values``, beat its
    inner neighbour (the largest gain over settings that agree on the other fields);
    infinite where that neighbour was not tried, 0 for an interior choice."""
    if chosen not in (values[0], values[-1]) or len(values) < 2:
        return 0.0
    inner = values[1] if chosen == values[0] else values[-2]
    gains = [
        neighbour["best_loss"] - edge["best_loss"]
        for edge in tried
        if edge["values"][field] == chosen
        for neighbour in tried
        if neighbour["values"] == {**edge["values"], field: inner}
    ]
    return max(gains, default=math.inf)


def tuned_mup(store: Store, model: str, data: str, data_flags: str, base: int = BASE,
              readout: str = "") -> dict:  # fmt: skip
    """``megatron-power mup-tune`` at the base width ``base`` (``readout``: ZERO_READOUT or
    nothing): the base model's own multipliers, each candidate list, and the LRs, grown by
    one step while the tune's choice sits on its edge (a large readout multiplier moves the
    best LR below the first list) and, for a multiplier, beat its neighbour there by more
    than FLAT_GAIN."""
    name = f"{model}/mup-tune-{data}" + ("" if base == BASE else f"-w{base}")
    name += "-zero-readout" if readout else ""
    extra = f"{MODELS[model]} --mup-residual-multiplier 0.5 {data_flags}".strip()
    extra += f" {readout}" if readout else ""
    if store.pool.dry_run:
        return finished_tune(name, extra)
    store.restore(name)
    lrs = [2.0**-k for k in range(9, 2, -1)]
    candidates = {flag: list(values) for flag, values in TUNE_CANDIDATES.items()}
    for _ in range(8):
        subprocess.run(
            [sys.executable, "-m", "megatron_power.cli.main", "mup-tune",
             "--tune-dir", str(store.work / name), "--hidden-size", str(base),
             "--lrs", *map(str, lrs), "--train-tokens", str(LARGEST),
             "--global-batch-size", str(WIDTH_BATCH), "--seq-length", str(SEQ),
             "--extra-args", extra,
             *(str(word) for flag, values in candidates.items() for word in (flag, *values))],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        store.save(name)
        tune = json.loads((store.work / name / "tune.json").read_text())
        grown = grow_at_edge(lrs, tune["best_lr"])
        for flag, field in TUNE_FIELDS.items():
            chosen = tune["chosen"][field]
            if edge_gain(tune["tried"], field, candidates[flag], chosen) > FLAT_GAIN:
                grown |= grow_at_edge(candidates[flag], chosen)
        if not grown:
            break
    tune["candidates"] = candidates
    tune["lrs"] = lrs
    atomic_write_text(STORE / name / "tune.json", json.dumps(tune, indent=2) + "\n")
    return tune


def finished_tune(name: str, extra: str) -> dict:
    """--dry-run's view of a tune (mup-tune runs outside the Pool): its recorded result,
    or a stop naming what a real resume would run or refuse."""
    for spec_file in sorted((STORE / name).rglob("sweep.json")):
        sweep = SweepDir(spec_file.parent)
        spec = sweep.load_spec()
        if not spec.extra_args.startswith(extra):
            raise SystemExit(f"--dry-run: {sweep.path} was recorded with other flags "
                             f"({spec.extra_args!r}); mup-tune would refuse it")  # fmt: skip
        if pending := sweep.pending(spec, retry_failed=False):
            raise SystemExit(f"--dry-run: mup-tune would queue {len(pending)} runs in {sweep.path}")
    if not (STORE / name / "tune.json").is_file():
        raise SystemExit(f"--dry-run: mup-tune would run {name} (no tune.json yet)")
    return json.loads((STORE / name / "tune.json").read_text())


def sweep_name(name: str, extra: str) -> str:
    """``name``, or beside it a name with a digest of ``extra`` when the sweep recorded
    there ran other flags (a re-tuned muP): a changed grid never mixes with old runs."""
    import hashlib

    recorded = STORE / name / "sweep.json"
    ran = json.loads(recorded.read_text())["extra_args"] if recorded.is_file() else None
    if ran is None or ran.split() == extra.split():
        return name
    return f"{name}-{hashlib.sha256(extra.encode()).hexdigest()[:8]}"


def width_sweep(model: str, data: str, param: str, extra: str, width: int):
    """(sweep name, spec maker) of ``param``'s LR grid at ``width`` in the width phases."""
    cell = Cell(f"w{width}", width, WIDTH_TOKENS, WIDTH_BATCH)

    def make(lrs, seeds=(0,)):
        return make_spec("wsd", cell, lrs, extra, seeds)

    return sweep_name(f"{model}/width-{data}/{param.replace(' ', '-')}/w{width}", extra), make


def width_row(store: Store, model: str, data: str, param: str, extra: str, centre: float,
              width: int) -> dict:  # fmt: skip
    """One parameterisation LR-tuned at one width: the seed-0 grid (5 LRs around ``centre``,
    grown until interior), its best LR and neighbours with seeds 0-2, the optimum from
    their means."""
    from megatron_power.sweep.fit import optimum

    name, make = width_sweep(model, data, param, extra, width)
    what = f"{model} {data} {param} w{width}"
    grid = grow(store, name, make, [centre * 2.0**k for k in range(-2, 3)], what)
    means, sds = seed_means(store, name, make, grid, what)
    best = min(means, key=means.get)
    eta_opt, on_edge = optimum(list(means), list(means.values()))
    finite = {lr: v for lr, v in grid.items() if math.isfinite(v)}
    found = store.losses(name, make([best], SEEDS))
    losses = [found[best, seed] for seed in SEEDS]
    return {
        "grid": {f"{lr:g}": v for lr, v in grid.items()}, "best_lr": best,
        "seed_means": {f"{lr:g}": v for lr, v in means.items()},
        "seed_sds": {f"{lr:g}": v for lr, v in sds.items()},
        "eta_opt": eta_opt, "on_edge": on_edge,
        "eta_opt_seed0": optimum(list(finite), list(finite.values()))[0],
        "losses": losses, "mean": statistics.fmean(losses), "sd": statistics.stdev(losses),
    }  # fmt: skip


def merged_flags(text: str) -> str:
    """``text``'s flags, each once: a later value replaces an earlier one in its place
    (pretrain refuses a flag given twice with different values)."""
    flags = dict(flag_values(text.split()))
    return " ".join(" ".join([flag, *values]) for flag, values in flags.items())


def param_flags(tune: dict) -> dict[str, str]:
    """The width phases' parameterisations and their flags; ``tune``: mup-tune's result
    (its multipliers replace the embedded model's)."""
    tuned = tune["flags"].replace(f"--mup-base-hidden-size {BASE}", "").strip()
    return {"SP": "--no-mup", "muP": MUP, "muP tuned": merged_flags(f"{MUP} {tuned}")}


def width_phase(store: Store, model: str, data: str, data_flags: str) -> dict:
    """Phase 3: SP, plain muP and muP with its base multipliers tuned, each LR-tuned at
    every width (seed-0 grid grown until interior; its best LR and neighbours with seeds
    0-2, the optimum from their means)."""
    tune = tuned_mup(store, model, data, data_flags)
    # Where each grid starts (x2 steps; grown while the best is on an edge): muP's optimum
    # should stay put, SP's falls about as 1/width (Adam).
    centres = {"SP": lambda width: 2.0**-6 * BASE / width}
    out = {"tune": tune, "widths": WIDTHS, "data": data, "params": {}}
    for param, flags in param_flags(tune).items():
        centre = centres.get(param, lambda width: 2.0**-6)
        extra = f"{MODELS[model]} {flags} {data_flags}"
        rows = {w: width_row(store, model, data, param, extra, centre(w), w) for w in WIDTHS}
        optima = [rows[w]["eta_opt"] for w in WIDTHS]
        seed0 = [rows[w]["eta_opt_seed0"] for w in WIDTHS]
        out["params"][param] = {
            "rows": {str(w): r for w, r in rows.items()},
            "shift_x2_steps": math.log2(max(optima) / min(optima)),
            "shift_x2_steps_interval": shift_interval(rows),
            "shift_x2_steps_seed0": math.log2(max(seed0) / min(seed0)),
        }
    atomic_write_text(STORE / model / f"width-{data}.json", json.dumps(out, indent=2) + "\n")
    return out


#: Phase 3b, where muP's drift sits: plain muP (the embedded multipliers) LR-tuned at two
#: more widths, so that its move over 8x width is measured from 64 (64 -> 512) beside
#: 32 -> 256. muP's rules are asymptotic; a 32-wide base (2 heads of 16) may be too narrow.
MORE_WIDTHS = [2 * BASE, 16 * BASE]
#: The parameterisations phase 3b widens, and the file of each (beside width-<data>.json).
MORE_PARAMS = {"muP": "more", "muP tuned": "more-tuned"}


def more_widths(store: Store, model: str, data: str, data_flags: str, param: str) -> dict:
    """Phase 3b: the width phase's rows of ``param`` and MORE_WIDTHS' (same flags and
    grids); the optimum's move over every 8x span of widths, and between neighbours."""
    earlier = STORE / model / f"width-{data}.json"
    if not earlier.is_file():
        raise SystemExit(f"--phases width-more: {earlier} is missing; run --phases width first")
    phase = json.loads(earlier.read_text())
    rows = {int(w): r for w, r in phase["params"][param]["rows"].items()}
    extra = f"{MODELS[model]} {param_flags(phase['tune'])[param]} {data_flags}"
    for width in MORE_WIDTHS:
        rows[width] = width_row(store, model, data, param, extra, 2.0**-6, width)
    out = drift(param, extra, data, rows)
    write_phase(STORE / model / f"width-{data}-{MORE_PARAMS[param]}.json", out)
    return out


def drift(param: str, extra: str, data: str, rows: dict[int, dict]) -> dict:
    """``param``'s rows by width and the optimum's move over every 8x span of them."""
    rows = dict(sorted(rows.items()))
    spans = {}
    for low in rows:
        if 8 * low in rows:
            span = {w: r for w, r in rows.items() if low <= w <= 8 * low}
            optima = [r["eta_opt"] for r in span.values()]
            spans[f"{low}-{8 * low}"] = {
                "shift_x2_steps": math.log2(max(optima) / min(optima)),
                "shift_x2_steps_interval": shift_interval(span),
            }
    return {"param": param, "extra_args": " ".join(extra.split()), "data": data,
            "widths": list(rows), "rows": {str(w): r for w, r in rows.items()},
            "spans": spans}  # fmt: skip


#: Phase 3c, the fix the tuned-muP drift points to: mup-tune at a base twice as wide
#: (muTransfer tunes the multipliers at the base and trusts them only above it; the
#: 32-wide base is two heads of 16, where the step to 64 holds most of the drift), then
#: that muP LR-tuned from its base to 8x it.
WIDE_BASE = 2 * BASE
WIDE_BASE_WIDTHS = [WIDE_BASE * 2**k for k in range(4)]
WIDE_BASE_FILE = f"tuned-w{WIDE_BASE}"  # width-<data>-<this>.json
FINE_FILE = f"{WIDE_BASE_FILE}-fine"  # phase 3d's (below)
WIDEST = 16 * WIDE_BASE
WIDEST_FILE = f"{WIDE_BASE_FILE}-w{WIDEST}"  # phase 3e's (below)
ZERO_READOUT_FILE = f"{WIDE_BASE_FILE}-zero-readout"  # phase 3g's (below)
ZERO_READOUT_TUNED_FILE = f"{ZERO_READOUT_FILE}-tuned"  # phase 3h's (below)
#: Phases 3b-3e's files (width-<data>-<key>.json): their table's heading, and their
#: line in the optimum-vs-width plot (label, linestyle, marker).
DRIFT_FILES = {
    MORE_PARAMS["muP"]: ("plain muP, the width phase's",
                         (f"muP, widths {BASE}-{16 * BASE}", "--", "x")),
    MORE_PARAMS["muP tuned"]: ("muP with mup-tune's multipliers, the width phase's",
                               (f"muP tuned, widths {BASE}-{16 * BASE}", "--", "x")),
    WIDE_BASE_FILE: (f"muP with mup-tune's multipliers at a {WIDE_BASE}-wide base, "
                     "`--phases width-base`:", (f"muP tuned at base {WIDE_BASE}", ":", "s")),
    FINE_FILE: (f"the same muP at a {WIDE_BASE}-wide base, seeds 0-2 also at x2**(+-1/2) "
                "around each best LR, `--phases width-fine`:",
                (f"muP tuned at base {WIDE_BASE}, x2**0.5 grid", "-.", "d")),
    WIDEST_FILE: (f"the same muP at a {WIDE_BASE}-wide base, also LR-tuned at width {WIDEST}, "
                  "`--phases width-widest`:", (f"muP tuned at base {WIDE_BASE}, to {WIDEST}",
                                               ":", "^")),
    ZERO_READOUT_FILE: (f"the same muP at a {WIDE_BASE}-wide base with its readout initialised "
                        "to zero, `--phases width-zero-readout`:",
                        (f"muP tuned at base {WIDE_BASE}, zero readout", "-", "*")),
    ZERO_READOUT_TUNED_FILE: (f"muP with its readout initialised to zero and mup-tune's "
                              f"multipliers for it at a {WIDE_BASE}-wide base, `--phases "
                              "width-zero-readout-tuned`:",
                              (f"muP tuned for a zero readout at base {WIDE_BASE}", "-", "P")),
}  # fmt: skip


def wide_base(store: Store, model: str, data: str, data_flags: str, readout: str = "") -> dict:
    """Phase 3c: mup-tune at WIDE_BASE, then its muP's optimum at WIDE_BASE_WIDTHS (each
    grid centred on the tune's best LR, grown until interior; seeds 0-2 around the best).
    Phase 3h with ``readout`` ZERO_READOUT: the tune, too, with a zero readout (its
    multipliers chosen for it, as muTransfer tunes them)."""
    tune = tuned_mup(store, model, data, data_flags, WIDE_BASE, readout)
    param = f"muP tuned w{WIDE_BASE}" + (" zero readout retuned" if readout else "")
    extra = merged_flags(f"{MODELS[model]} {MUP} {tune['flags']} {data_flags} {readout}")
    centre = 2.0 ** round(math.log2(tune["best_lr"]))
    rows = {w: width_row(store, model, data, param, extra, centre, w) for w in WIDE_BASE_WIDTHS}
    out = {**drift(param, extra, data, rows), "tune": tune}
    file = ZERO_READOUT_TUNED_FILE if readout else WIDE_BASE_FILE
    write_phase(STORE / model / f"width-{data}-{file}.json", out)
    return out


#: Phase 3d, how finely 3c's optimum is measured: on its x2 grid the parabola runs through
#: LRs a factor 2 apart, so a loss curve whose asymmetry changes with width moves the vertex
#: while the best LR stays (MoE on the Markov source: the best grid LR the same at every
#: width, the vertex 0.70 x2-steps apart). Seeds 0-2 at the best mean's LR x 2**(+-1/2)
#: put the three points around the optimum a factor sqrt(2) apart.
FINE_STEPS = [-0.5, 0.5]


def wide_base_result(model: str, data: str, phase: str) -> dict:
    """Phase 3c's results file, which ``phase`` builds on."""
    path = STORE / model / f"width-{data}-{WIDE_BASE_FILE}.json"
    if not path.is_file():
        raise SystemExit(f"--phases {phase}: {path} is missing; run --phases width-base first")
    return json.loads(path.read_text())


def power_of_two(key: str) -> float:
    """The LR a results file's key (printed to 6 digits) names on a grid of powers of 2."""
    exact = 2.0 ** round(math.log2(float(key)))
    if abs(exact / float(key) - 1) > 1e-5:
        raise SystemExit(f"LR {key} is not a power of 2; the grids' LRs are")
    return exact


def fine_drift(store: Store, model: str, data: str) -> dict:
    """Phase 3d: 3c's rows with seeds 0-2 at FINE_STEPS around each width's best mean; the
    optimum from the means on that finer grid and its move over width."""
    from megatron_power.sweep.fit import optimum

    phase = wide_base_result(model, data, "width-fine")
    param, extra = phase["param"], phase["extra_args"]
    rows = {}
    for width in map(int, phase["rows"]):
        coarse = phase["rows"][str(width)]
        name, make = width_sweep(model, data, param, extra, width)
        seeded = sorted({power_of_two(lr) for lr in coarse["seed_means"]} | {
            coarse["best_lr"] * 2.0**step for step in FINE_STEPS})  # fmt: skip
        store.add(name, make(seeded, SEEDS))
        store.run(f"{model} {data} {param} w{width}: x2**0.5 grid")
        found = store.losses(name, make(seeded, SEEDS), diverged_ok=True)
        means = {lr: statistics.fmean(found[lr, seed] for seed in SEEDS) for lr in seeded}
        best = min(means, key=means.get)
        eta_opt, on_edge = optimum(list(means), list(means.values()))
        losses = [found[best, seed] for seed in SEEDS]
        rows[width] = {
            "best_lr": best, "eta_opt": eta_opt, "on_edge": on_edge,
            "seed_means": {f"{lr:g}": v for lr, v in means.items()},
            "seed_sds": {f"{lr:g}": statistics.stdev(found[lr, seed] for seed in SEEDS)
                         for lr in seeded},
            "losses": losses, "mean": statistics.fmean(losses), "sd": statistics.stdev(losses),
        }  # fmt: skip
    out = drift(f"{param}, x2**0.5 grid", extra, data, rows)
    write_phase(STORE / model / f"width-{data}-{FINE_FILE}.json", out)
    return out


def transfer_cost(base: dict, top: dict, draws: int = 2000) -> dict | None:
    """What the optimum's move costs at the wider width (row ``top``): its loss at the
    narrower one's (``base``) optimum LR above its own optimum, from a quadratic in log2 LR
    through its 3-seed means (the 16th-84th percentile with each mean redrawn within its
    standard error); None where that LR lies outside the LRs with seeds there."""
    import numpy as np

    from megatron_power.sweep.fit import optimum

    base_lrs = [float(lr) for lr in base["seed_means"]]
    x = np.log2([float(lr) for lr in top["seed_means"]])

    def cost(base_means: list[float], top_means: list[float]) -> float:
        at = math.log2(optimum(base_lrs, base_means)[0])
        curvature, slope, intercept = np.polyfit(x, top_means, 2)
        if curvature <= 0 or not x.min() <= at <= x.max():
            return math.nan
        return float(np.polyval([curvature, slope, intercept], at)
                     - (intercept - slope**2 / (4 * curvature)))  # fmt: skip

    measured = cost(list(base["seed_means"].values()), list(top["seed_means"].values()))
    if not math.isfinite(measured):
        return None
    generator = np.random.default_rng(0)
    drawn = [
        cost(redrawn_means(base, generator), redrawn_means(top, generator)) for _ in range(draws)
    ]
    return {"lr": base["eta_opt"], "cost": measured,
            "interval": [float(v) for v in np.nanpercentile(drawn, [16, 84])]}  # fmt: skip


def widest(store: Store, model: str, data: str) -> dict:
    """Phase 3e: 3c's rows and that muP LR-tuned at WIDEST (same flags; its grid centred
    on 3c's best LR at the widest width it ran); the move over every 8x span. The drift of
    the 64-wide-base tune sits just above its base (Markov: -0.36, -0.24, -0.10 x2-steps
    per doubling), so README's advice (tune the LR at twice the base) spans 128 -> 1024."""
    phase = wide_base_result(model, data, "width-widest")
    rows = {int(w): r for w, r in phase["rows"].items()}
    centre = 2.0 ** round(math.log2(rows[max(rows)]["best_lr"]))
    rows[WIDEST] = width_row(store, model, data, phase["param"], phase["extra_args"], centre,
                             WIDEST)  # fmt: skip
    out = drift(phase["param"], phase["extra_args"], data, rows)
    write_phase(STORE / model / f"width-{data}-{WIDEST_FILE}.json", out)
    return out


#: Phase 3f, which of the base's multipliers moves the optimum: every setting mup-tune tried
#: at the 64-wide base (its coordinate path: the readout, then the embedding multiplier,
#: then the init std, one at a time), LR-tuned at the base and twice it, the step that
#: holds half of 3c's drift on the Markov source (-0.36 of 0.70 x2-steps).
KNOB_WIDTHS = [WIDE_BASE, 2 * WIDE_BASE]
KNOBS_FILE = f"{WIDE_BASE_FILE}-knobs"
KNOB_FLAGS = {"output_multiplier": "--mup-output-multiplier",
              "embedding_multiplier": "--mup-embedding-multiplier",
              "init_std": "--mup-init-std"}  # fmt: skip


def knob_drift(store: Store, model: str, data: str, data_flags: str) -> dict:
    """Phase 3f: each of 3c's tune's candidates LR-tuned at KNOB_WIDTHS (as width_row; the
    chosen one's rows are 3c's own) and its optimum's step between them."""
    phase = wide_base_result(model, data, "width-knobs")
    tune = phase["tune"]
    candidates = []
    for tried in tune["tried"]:
        flags = f"--mup-base-hidden-size {WIDE_BASE} " + " ".join(
            f"{flag} {tried['values'][field]:g}" for field, flag in KNOB_FLAGS.items()
        )
        extra = merged_flags(f"{MODELS[model]} {MUP} {flags} {data_flags}")
        if extra.split() == phase["extra_args"].split():
            rows = {w: phase["rows"][str(w)] for w in KNOB_WIDTHS}
        else:
            param = "muP tuned w{} knobs/{}".format(
                WIDE_BASE, ",".join(f"{field}={tried['values'][field]:g}" for field in KNOB_FLAGS)
            )
            centre = 2.0 ** round(math.log2(tried["best_lr"]))
            rows = {w: width_row(store, model, data, param, extra, centre, w)
                    for w in KNOB_WIDTHS}  # fmt: skip
        low, high = (rows[w] for w in KNOB_WIDTHS)
        candidates.append({
            "values": tried["values"], "tune_loss": tried["best_loss"], "extra_args": extra,
            "rows": {str(w): r for w, r in rows.items()},
            "step_x2_steps": math.log2(high["eta_opt"] / low["eta_opt"]),
            "step_x2_steps_interval": shift_interval(rows),
        })  # fmt: skip
    out = {"data": data, "widths": KNOB_WIDTHS, "chosen": tune["chosen"],
           "candidates": candidates}  # fmt: skip
    write_phase(STORE / model / f"width-{data}-{KNOBS_FILE}.json", out)
    return out


#: Phase 3g, the fix 3f points to. The step from the base grows with the readout
#: multiplier (dense Markov, 64 -> 128: -0.02, -0.16, -0.30, -0.68 x2-steps at readout 0.25,
#: 1, 4, 16), and a random readout's logits at init scale as readout x init std / sqrt(m):
#: noise the narrow base is tuned against and wide models lack. muTransfer initialises the
#: readout to zero (Yang et al. 2022, appendix D.2), which removes that term at every width.
ZERO_READOUT = "--mup-readout-init-std 0"


def zero_readout(store: Store, model: str, data: str) -> dict:
    """Phase 3g: 3c's muP with ZERO_READOUT, LR-tuned at WIDE_BASE_WIDTHS (grids centred on
    3c's best LR at the base); its optimum's move over width."""
    phase = wide_base_result(model, data, "width-zero-readout")
    param = f"{phase['param']} zero readout"
    extra = merged_flags(f"{phase['extra_args']} {ZERO_READOUT}")
    centre = 2.0 ** round(math.log2(phase["rows"][str(WIDE_BASE)]["best_lr"]))
    rows = {w: width_row(store, model, data, param, extra, centre, w) for w in WIDE_BASE_WIDTHS}
    out = drift(param, extra, data, rows)
    write_phase(STORE / model / f"width-{data}-{ZERO_READOUT_FILE}.json", out)
    return out


def seed_means(store: Store, name: str, make, grid: dict[float, float], what: str):
    """({LR: mean loss of seeds 0-2}, {LR: their sd}) at the seed-0 grid's best LR and its
    neighbours, widened while the mean's best sits at an end of the LRs with seeds: one
    seed's grid has a flat bottom within its noise (its optimum moved up to 0.9 x2-steps
    over width on text where the 3-seed means agree better)."""
    lrs = sorted(lr for lr, v in grid.items() if math.isfinite(v))
    at = lrs.index(min(grid, key=grid.get))
    low, high = max(0, at - 1), min(len(lrs) - 1, at + 1)
    while True:
        chosen = lrs[low : high + 1]
        store.add(name, make(chosen, SEEDS))
        store.run(f"{what}: seeds")
        found = store.losses(name, make(chosen, SEEDS), diverged_ok=True)
        means = {lr: statistics.fmean(found[lr, seed] for seed in SEEDS) for lr in chosen}
        sds = {lr: statistics.stdev(found[lr, seed] for seed in SEEDS) for lr in chosen}
        best = min(means, key=means.get)
        if best == chosen[0] and low > 0:
            low -= 1
        elif best == chosen[-1] and high < len(lrs) - 1:
            high += 1
        else:
            return means, sds


def redrawn_means(row: dict, generator) -> list[float]:
    """A width row's 3-seed means, each redrawn within its standard error."""
    return [mean + generator.normal() * row["seed_sds"][lr] / math.sqrt(len(SEEDS))
            for lr, mean in row["seed_means"].items()]  # fmt: skip


def shift_interval(rows: dict[int, dict], draws: int = 2000) -> list[float]:
    """The 16th-84th percentile of the optimum's move over width (x2 steps) when each seed
    mean is redrawn within its standard error: how far the measured move can be trusted."""
    import numpy as np

    from megatron_power.sweep.fit import optimum

    generator = np.random.default_rng(0)
    shifts = []
    for _ in range(draws):
        optima = []
        for row in rows.values():
            lrs = [float(lr) for lr in row["seed_means"]]
            optima.append(optimum(lrs, redrawn_means(row, generator))[0])
        shifts.append(math.log2(max(optima) / min(optima)))
    return [float(v) for v in np.percentile(shifts, [16, 84])]


def lr_curve(runs: Path, lr: float, points: int = 100) -> list[tuple[int, float]]:
    """(tokens, LR) of the seed-0 run, thinned to about ``points`` entries (for the plot);
    empty when its run directory is on another machine (the store keeps the records only)."""
    from megatron_power.sweep.runner import lr_label

    run = next(runs.glob(f"*-lr{lr_label(lr)}-s0"), None)
    if run is None or not (run / "metrics.jsonl").is_file():
        return []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    every = max(1, len(rows) // points)
    return [(r["tokens"], r["lr"]) for r in rows[::every]]


def entropy_rate(runs: Path, cell: Cell) -> float | None:
    """The Markov source's entropy rate, as its runs' summary.json records it."""
    if cell.data != "markov":
        return None
    summary = next(runs.glob("*/summary.json"), None)
    return json.loads(summary.read_text()).get("entropy_rate") if summary else None


# --------------------------------------------------------------------------- report
#: The compared rows: (key in cell.json, label); the tuned ones set "best tuned".
POWER_ROWS = (("power", "Power (fitted)"), ("power-tail", "Power (fitted tail)"),
              ("power-long", f"Power ({LONG_TAIL:.0%} tail)"),
              ("power-longfit", f"Power (fit to {LONG_FIT_TOKENS[-1]:,} tokens, fitted tail)"),
              ("power-longfit-long",
               f"Power (fit to {LONG_FIT_TOKENS[-1]:,} tokens, {LONG_TAIL:.0%} tail)"),
              ("power-proxytail", f"Power (tail chosen on width-{BASE} proxies of the cell)"),
              ("power-proxytuned", f"Power (tail and LR scale chosen on width-{BASE} proxies)"),
              ("power-wide", f"Power (fit, tail and LR scale on width-{WIDE_PROXY} proxies)"),
              ("power-fitchoice", f"Power (the {BASE}- or {WIDE_PROXY}-wide fit, tail and LR "
                                  f"scale chosen on width-{WIDE_PROXY} copies)"),
              ("power-heldbatch", "Power (that row, beta held at the schedule's final batch)"),
              ("power-batchrule", f"Power (that row, batch rule chosen on width-{WIDE_PROXY} "
                                  "copies)"),
              ("power-shape", f"Power (that row, tail shape chosen on width-{WIDE_PROXY} "
                              "copies)"),
              ("paper", "paper a=4 b=-0.51"))  # fmt: skip


def with_proxy_tail(result: dict, choice: dict | None) -> dict:
    """The cell's result with a "power-proxytail" row: the existing Power row (same a, b,
    c) whose tail the cell's width-32 proxies chose; and "power-proxytuned": that row, or
    its run with the LR scale they chose."""
    if choice is None:
        return result
    by_fraction = {result[key].get("fraction", 0.2): key
                   for key in ("power", "power-tail", "power-long") if key in result}  # fmt: skip
    key = by_fraction.get(choice["fraction"])
    if key is None:
        return result
    out = {**result, "power-proxytail": {**result[key], "fraction": choice["fraction"]}}
    if choice.get("held_out"):
        out["power-proxytuned"] = choice["held_out"]
    elif choice.get("scale", {}).get("chosen") == 1.0:
        out["power-proxytuned"] = out["power-proxytail"]
    return out


def cell_result(model: str, cell: Cell, choices: dict, wide: dict, fits: dict,
                rules: dict | None = None, shapes: dict | None = None) -> dict | None:  # fmt: skip
    """The cell's stored result with the proxy-chosen rows that ``choices`` (the model's
    proxy-tail file), ``wide`` (its wide-proxies), ``fits`` (its fit-choice), ``rules``
    (its batch-rule) and ``shapes`` (its tail-shape; CHOICE_PHASES, in order) give it; None
    before the cell has run."""
    file = STORE / model / cell.name / "cell.json"
    if not file.is_file():
        return None
    result = with_proxy_tail(json.loads(file.read_text()), choices.get(cell.name))
    held_out = wide.get("cells", {}).get(cell.name, {}).get("held_out")
    if held_out:
        result = {**result, "power-wide": held_out}
    chosen = fits.get("cells", {}).get(cell.name, {}).get("held_out")
    if not chosen:
        return result
    result = {**result, "power-fitchoice": chosen}
    if not (rules or {}).get("cells"):
        return result
    rule = rules["cells"].get(cell.name)
    if rule is None:  # a constant batch: both rules are the fit choice's row
        if cell.schedule is not None:
            return result
        result = {**result, "power-batchrule": chosen}
    else:
        held = rule["held_out"]
        result = {**result, "power-heldbatch": held,
                  "power-batchrule": held if rule["rule"] == "final" else chosen}  # fmt: skip
    shape = (shapes or {}).get("cells", {}).get(cell.name)
    if shape is None:
        return result
    return {**result, "power-shape": shape["held_out"] or result["power-batchrule"]}


def proxy_choice_text(name: str, choice: dict) -> str:
    """One cell's proxy choices: each tail's and each scale's mean loss ± seed sd."""

    def listed(losses: dict) -> str:
        ordered = sorted(losses, key=float)
        return ", ".join(
            f"{k}: {statistics.fmean(losses[k]):.4f} ± {statistics.stdev(losses[k]):.4f}"
            for k in ordered
        )

    text = f"{name} tail {choice['fraction']:g} ({listed(choice['losses'])})"
    if "scale" in choice:
        scale = choice["scale"]
        text += f", LR x{scale['chosen']:g} ({listed(scale['losses'])})"
    return text


def ratios(result: dict) -> dict:
    """Each Power row's loss / best tuned, and (known entropy H) its excess-loss ratio."""
    best = min(result["wsd"]["mean"], result["cosine"]["mean"])
    floor = result.get("entropy_rate")
    out = {"best": best}
    for key, _ in POWER_ROWS:
        if key in result:
            out[key] = result[key]["mean"] / best
            if floor is not None:
                out[f"{key} excess"] = (result[key]["mean"] - floor) / (best - floor)
    return out


def report(models: list[str]) -> str:
    lines = [
        f"# Joint transfer: Power fitted once on width-{BASE} proxies, used unchanged",
        "",
        f"Proxies: GPT {BASE} wide (= muP base width, the embedded model's multipliers: "
        f"embedding 4, residual 0.5), 2 layers, head dim 16, seq {SEQ}; MoE: 8 experts, "
        f"top-2. Fit: WSD (exponential_e tail over 20%) sweeps of {len(FIT_LRS)} LRs x batch "
        f"{FIT_BATCHES} x tokens {FIT_TOKENS}, then `megatron-power fit`; the fitted tail: "
        "the tail length (20-80%) that the proxies preferred at their best LR. Held-out "
        "cells: loss = mean of seeds 0-2 (0-5 in text cells) ± sd; cosine and WSD tuned in "
        "the cell (LR grid, then WSD's decay length and shape at its best LR, then the LR "
        "for that tail, alternating until the LR stays); ratio = row / best tuned. Data: "
        "the synthetic Markov source (entropy rate H known; excess = (loss - H) / (best "
        "tuned - H)) unless the cell says text (Shakespeare, 512-piece BPE). The LR scale "
        "probe (a diagnosis, seed 0): the fitted-tail Power with its whole LR (a and the cap) "
        "x0.25, x0.5, x2; a best scale other than 1 puts the gap on the LR level that the fit "
        "and muP's transfer gave the cell, x1 on the schedule's shape. "
        f"The width-{WIDE_PROXY} row: the fit, the tail and the LR scale all chosen on "
        f"{WIDE_PROXY}-wide proxies instead (`--phases wide-proxies`).",
        "",
    ]  # fmt: skip
    overall = {}
    for model in models:
        fit_file = STORE / model / "fit.json"
        lines.append(f"## {model}")
        if not fit_file.is_file():
            lines += ["", "fit not yet run.", *width_report(model, overall), ""]
            continue
        fitted = json.loads(fit_file.read_text())[0]
        tail_file = STORE / model / "tail.json"
        tail = json.loads(tail_file.read_text()) if tail_file.is_file() else None
        lines += ["", f"Fitted flags: `{' '.join(fitted['flags'])}`"
                  + (f"; fitted tail: {tail['fraction']:g} of the run (mean loss relative to "
                     "the 20% tail: " + ", ".join(f"{f} {v:.4f}" for f, v in
                                                    tail["mean_relative"].items()) + ")"
                     if tail else ""), ""]  # fmt: skip
        long_file = STORE / model / "fit-long.json"
        if long_file.is_file():
            long_fit = json.loads(long_file.read_text())[0]
            lines += [f"Second fit (proxies of {LONG_FIT_TOKENS} tokens): "
                      f"`{' '.join(long_fit['flags'])}`", ""]  # fmt: skip
        header = ["cell", "width", "tokens", "batch", "cosine (tuned)", "WSD (tuned)"]
        header += [label for _, label in POWER_ROWS]
        header += [f"{label} ratio (excess)" for _, label in POWER_ROWS]
        header += ["Power LR scale probe: best x (loss / x1)"]
        lines += ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
        found, by_cell = [], {}
        proxy_choice, wide, fits, rules, shapes = (stored(model, p) for p in CHOICE_PHASES)
        for cell in CELLS:
            result = cell_result(model, cell, proxy_choice, wide, fits, rules, shapes)
            start = f"| {cell.name}{' (text)' if cell.data == 'text' else ''} | {cell.width} | "
            start += f"{cell.tokens:,} | {cell.schedule or cell.batch} | "
            if result is None:
                lines.append(start + "not yet run |" + " |" * (len(header) - 5))
                continue
            r = ratios(result)
            found.append(r)
            by_cell[cell.name] = result
            wsd = result["wsd"]
            values = [fmt(result[k]) if k in result else "-" for k, _ in POWER_ROWS]
            values += [ratio_text(r, k) for k, _ in POWER_ROWS]
            values.append(probe_text(result))
            lines.append(start + f"{fmt(result['cosine'])} @ {result['cosine']['lr']:.3g} | "
                         f"{fmt(wsd)} @ {wsd['lr']:.3g} {wsd['shape']} {wsd['fraction']:g} | "
                         + " | ".join(values) + " |")  # fmt: skip
        if proxy_choice:
            lines += ["", f"Tail chosen on width-{BASE} proxies of each cell (Power with the "
                      "fitted a, b, c in the cell's data, budget and batch schedule; mean loss "
                      "± seed sd per tail fraction, then per LR scale at that tail): "
                      + "; ".join(proxy_choice_text(name, c) for name, c in
                                  proxy_choice.items()) + "."]  # fmt: skip
            levels = [f"{name} x{c['scale']['chosen']:g} / x{best_probe(by_cell[name])}"
                      for name, c in proxy_choice.items()
                      if "scale" in c and "probe" in by_cell.get(name, {})]  # fmt: skip
            if levels:
                lines += ["", f"LR level at width {BASE} and held out (the proxies' best scale / "
                          "the held-out probe's best, seed 0, at the fitted tail): "
                          + ", ".join(levels) + ". Where they differ at one data set, budget "
                          "and batch, the level moved with the width (muP's transfer), not "
                          "with the budget (the fit)."]  # fmt: skip
        if wide:
            lines += ["", f"Fit on width-{WIDE_PROXY} proxies (the same grid): "
                      f"`{' '.join(wide['flags'])}`; the tail, then Power's LR scale at it, "
                      f"chosen on width-{WIDE_PROXY} copies of each cell: " + "; ".join(
                          proxy_choice_text(name, entry["choice"])
                          for name, entry in wide["cells"].items()) + "."]  # fmt: skip
        chosen_fits = fits.get("cells", {})
        if chosen_fits:
            lines += ["", f"The fit, too, chosen on width-{WIDE_PROXY} copies (`--phases "
                      f"fit-choice`: the {BASE}-wide fit's tails and LR scale on the same "
                      f"copies; the fit whose best tail has the lower mean loss): " + "; ".join(
                          f"{name} the {entry['fit_width']}-wide fit (best tail's mean: "
                          + ", ".join(f"fit w{w} {v:.4f}" for w, v in
                                      entry["best_mean_by_fit_width"].items())
                          + f"; tail {entry['held_out']['fraction']:g}, "
                          f"x{entry['held_out']['scale']:g})"
                          for name, entry in chosen_fits.items()) + "."]  # fmt: skip
        if rules.get("cells"):
            lines += ["", "Batch rule chosen on the same copies (`--phases batch-rule`: that "
                      "row with beta held at the schedule's final batch, "
                      "`--lr-power-batch-size`, against beta from the batch in force; mean "
                      "loss ± seed sd): " + "; ".join(
                          f"{name} {entry['rule']} (" + ", ".join(
                              f"{rule} {fmt(row)}" for rule, row in entry["copies"].items())
                          + ")" for name, entry in rules["cells"].items()) + "."]  # fmt: skip
        if shapes.get("cells"):
            lines += ["", "Tail shape chosen on the same copies (`--phases tail-shape`: that "
                      "row with each decay shape; mean loss ± seed sd): " + "; ".join(
                          f"{name} {entry['shape']} (" + ", ".join(
                              f"{shape} {fmt(row)}" for shape, row in entry["copies"].items())
                          + ")" for name, entry in shapes["cells"].items()) + "."]  # fmt: skip
        for name, entry in wide.get("cells", {}).items():
            if "probe" in entry and name in by_cell:
                best = ratios(by_cell[name])["best"]
                lines += ["", f"Why the width-{WIDE_PROXY} row misses in {name} (`--phases "
                          "wide-probe`, a diagnosis that looks at the held-out cell: its fit "
                          "at each tail and LR scale; mean ± seed sd, ratio to the best tuned): "
                          + ", ".join(f"{key} {fmt(row)} ({row['mean'] / best:.4f})"
                                      if row["mean"] is not None else
                                      f"{key} diverged in {row['diverged']} of "
                                      f"{len(row['losses'])} seeds"
                                      for key, row in sorted(entry["probe"].items()))
                          + "."]  # fmt: skip
        target = worst_target(model)
        overall[model] = {"cells": len(found), "of": len(CELLS)}
        for key, label in POWER_ROWS:
            values = [r[key] for r in found if key in r]
            if not values:
                continue
            excess = [r[f"{key} excess"] for r in found if f"{key} excess" in r]
            markov = [r[key] for r in found if f"{key} excess" in r]  # entropy known
            summary = {"mean": statistics.fmean(values), "worst": max(values),
                       "markov_mean": statistics.fmean(markov) if markov else None,
                       "markov_worst": max(markov) if markov else None,
                       "excess_mean": statistics.fmean(excess) if excess else None,
                       "excess_worst": max(excess) if excess else None}  # fmt: skip
            overall[model][key] = summary
            lines += ["", f"{label} / best tuned over {len(values)} of {len(CELLS)} cells: "
                      f"mean {summary['mean']:.4f}, worst {summary['worst']:.4f} (targets: "
                      f"mean <= 1.000, worst <= {target})"
                      + (f"; the {len(markov)} Markov cells alone: mean "
                         f"{summary['markov_mean']:.4f}, worst {summary['markov_worst']:.4f}, "
                         f"excess ratio mean {summary['excess_mean']:.3f}, worst "
                         f"{summary['excess_worst']:.3f} (target <= 1.00)" if excess else "")
                      + "."]  # fmt: skip
        lines += diagnosis(by_cell, overall[model])
        lines += width_report(model, overall)
        lines.append("")
    return "\n".join(lines) + "\n", overall


#: The causes read off two cells: (cause, the cell, the cell it differs from by that cause
#: alone). Every comparison is at one budget and batch unless the cause says otherwise; the
#: tail and the fit are read as row differences within each cell (``diagnosis``).
CAUSES = (
    ("muP at width (8x vs 4x the proxies' width)", "w256-b8", "w128-b8"),
    ("batch rule: Megatron ramp 4 -> 16 (vs constant batch 8)", "w128-ramp", "w128-b8"),
    ("batch rule: step schedule 4 -> 16 in tokens (vs batch 8)", "w128-step", "w128-b8"),
    ("batch rule + budget: unseen batch 16 at 10x (vs batch 8 at 4x)", "w128-b16-10x",
     "w128-b8"),
    ("data: Shakespeare at 8x width (vs the Markov source)", "w256-b8-text", "w256-b8"),
)  # fmt: skip
DIAGNOSED = (("power-tail", "fitted tail"), ("power-long", f"{LONG_TAIL:.0%} tail"))


def ratio_noise(result: dict, key: str) -> float:
    """One seed-sd of the ratio row / best tuned (both means of their seeds)."""
    best = min(result["wsd"], result["cosine"], key=lambda row: row["mean"])
    spread = math.hypot(result[key]["sd"] / math.sqrt(len(result[key]["losses"])),
                        best["sd"] / math.sqrt(len(best["losses"])))  # fmt: skip
    return spread / best["mean"]


def diagnosis(cells: dict[str, dict], summary: dict) -> list[str]:
    """Where Power's gap to the best tuned schedule comes from, read off the cells: the
    tail, the fit (its proxies' budget), muP at width, the batch rule and the data, each as
    a change of the ratio in percentage points between rows or cells that differ by that
    one cause (± its seed sd), and the LR level from the probe."""
    if not cells:
        return []
    ratio = {name: ratios(result) for name, result in cells.items()}
    lines = ["", "Where the gap comes from (change of the ratio Power / best tuned, in "
             "percentage points ± seed sd; + = the cause costs Power; a change within twice "
             "its sd is not a cause):", "",
             "| cause | " + " | ".join(f"Power ({label})" for _, label in DIAGNOSED) + " |",
             "| --- |" + " ---: |" * len(DIAGNOSED)]  # fmt: skip
    causes: dict[str, dict[str, list[float]]] = {}

    def row(cause: str, pairs: dict[str, list[tuple[str, str, str, str]]]) -> None:
        """pairs[key]: (cell, row, cell, row) differences, averaged over the list."""
        shown, causes[cause] = [], {}
        for key, _ in DIAGNOSED:
            usable = [(c1, r1, c2, r2) for c1, r1, c2, r2 in pairs[key]
                      if r1 in ratio.get(c1, {}) and r2 in ratio.get(c2, {})]  # fmt: skip
            if not usable:
                shown.append("-")
                continue
            change = statistics.fmean(ratio[c1][r1] - ratio[c2][r2] for c1, r1, c2, r2 in usable)
            sd = math.sqrt(sum(ratio_noise(cells[c1], r1) ** 2 + ratio_noise(cells[c2], r2) ** 2
                               for c1, r1, c2, r2 in usable)) / len(usable)  # fmt: skip
            causes[cause][key] = [change, sd]
            shown.append(f"{100 * change:+.2f} ± {100 * sd:.2f}")
        lines.append(f"| {cause} | " + " | ".join(shown) + " |")

    row(
        "tail: the fit's 20% instead of this row's (mean over cells)",
        {key: [(n, "power", n, key) for n in cells] for key, _ in DIAGNOSED},
    )
    longfit = {"power-tail": "power-longfit", "power-long": "power-longfit-long"}
    row(
        "fit: proxies of 51k-205k tokens instead of 26k-102k (mean over cells)",
        {key: [(n, longfit[key], n, key) for n in cells] for key, _ in DIAGNOSED},
    )
    for cause, cell, reference in CAUSES:
        row(cause, {key: [(cell, key, reference, key)] for key, _ in DIAGNOSED})
    gains = {}
    for name, result in cells.items():
        if "probe" in result:
            losses = result["probe"]["seed0_loss_by_scale"]
            best = min(losses, key=losses.get)
            gains[name] = (best, losses[best] / losses["1"] - 1)
    lines += ["", "LR level (the probe: the fitted-tail Power's whole LR scaled, seed 0; "
              "the best scale and its change of the loss, in %): "
              + ", ".join(f"{name} x{best} ({100 * gain:+.2f})"
                          for name, (best, gain) in gains.items()) + "."]  # fmt: skip
    probes = {name: {"scale": best, "gain": gain} for name, (best, gain) in gains.items()}
    summary["diagnosis"] = {"causes_points": causes, "probe": probes}
    wide = {name: [ratio[name]["power-wide"] - ratio[name]["power-proxytuned"],
                   math.hypot(ratio_noise(cells[name], "power-wide"),
                              ratio_noise(cells[name], "power-proxytuned"))]
            for name in cells
            if {"power-wide", "power-proxytuned"} <= set(ratio[name])}  # fmt: skip
    if wide:
        summary["diagnosis"]["wide_proxies_points"] = wide
        lines += ["", f"Proxies {WIDE_PROXY} wide instead of {BASE} (the fit, tail and LR "
                  "scale all chosen at that width; change of the ratio in percentage points "
                  "± seed sd, - = the wider proxies helped): "
                  + ", ".join(f"{name} {100 * change:+.2f} ± {100 * sd:.2f}"
                              for name, (change, sd) in wide.items()) + "."]  # fmt: skip
    return lines


def best_probe(result: dict) -> str:
    """The scale of Power's LR that did best in the cell's probe (seed 0)."""
    losses = result["probe"]["seed0_loss_by_scale"]
    return min(losses, key=losses.get)


def probe_text(result: dict) -> str:
    """The scale of Power's LR that did best at seed 0, and its loss relative to x1."""
    if "probe" not in result:
        return "-"
    losses = result["probe"]["seed0_loss_by_scale"]
    best = best_probe(result)
    return f"x{best} ({losses[best] / losses['1']:.4f})"


def ratio_text(r: dict, key: str) -> str:
    if key not in r:
        return "-"
    excess = r.get(f"{key} excess")
    return f"{r[key]:.4f}" + (f" ({excess:.3f})" if excess is not None else "")


def fmt(entry: dict) -> str:
    return f"{entry['mean']:.4f} ± {entry['sd']:.4f}"


def width_report(model: str, overall: dict) -> list[str]:
    """Phase 3's tables, one per data set, and phase 3b's."""
    lines = []
    for data in WIDTH_DATA:
        lines += width_table(model, data, overall)
        phase3 = STORE / model / f"width-{data}.json"
        sp = json.loads(phase3.read_text())["params"]["SP"]["rows"] if phase3.is_file() else {}
        for suffix, (what, _) in DRIFT_FILES.items():
            lines += drift_table(model, data, suffix, what, sp, overall)
        lines += knob_table(model, data, overall)
    return lines


def knob_table(model: str, data: str, overall: dict) -> list[str]:
    """Phase 3f: each multiplier setting mup-tune tried, its optimum at the base and twice
    the base, and the step between them; a line saying so before the phase has run."""
    file = STORE / model / f"width-{data}-{KNOBS_FILE}.json"
    what = f"mup-tune's candidates at the {WIDE_BASE}-wide base, `--phases width-knobs`"
    if not file.is_file():
        return ["", f"Which multiplier moves the optimum ({model}, {data}; {what}): not yet run."]
    result = json.loads(file.read_text())
    low, high = map(str, result["widths"])
    lines = ["", f"### Which multiplier moves the optimum ({model}, {data}; {what}: each "
             f"LR-tuned at widths {low} and {high})", "",
             f"| readout | embedding | init std | loss at {low} | optimum {low} | "
             f"loss at {high} | optimum {high} | step (x2 steps) [16-84% of its size] |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    steps = {}
    for candidate in result["candidates"]:
        values, rows = candidate["values"], candidate["rows"]
        mark = " (chosen)" if values == result["chosen"] else ""
        interval = candidate["step_x2_steps_interval"]
        key = ",".join(f"{values[field]:g}" for field in KNOB_FLAGS)
        steps[key] = candidate["step_x2_steps"]
        lines.append(
            f"| {values['output_multiplier']:g} | {values['embedding_multiplier']:g} | "
            f"{values['init_std']:g}{mark} | {fmt(rows[low])} | "
            f"{rows[low]['eta_opt']:.4g}{'*' if rows[low]['on_edge'] else ''} | "
            f"{fmt(rows[high])} | {rows[high]['eta_opt']:.4g}"
            f"{'*' if rows[high]['on_edge'] else ''} | {candidate['step_x2_steps']:+.2f} "
            f"[{interval[0]:.2f}, {interval[1]:.2f}] |"
        )  # fmt: skip
    overall.setdefault(model, {})[f"width-{data}-{KNOBS_FILE}"] = {
        "step_x2_steps (readout,embedding,init_std)": steps
    }
    return lines


def drift_table(model: str, data: str, suffix: str, what: str, sp: dict,
                overall: dict) -> list[str]:  # fmt: skip
    """Phases 3b-3e: one muP's optimum at every width, its move over each 8x span and
    between neighbouring widths, and its loss against tuned SP (``sp``: the width phase's
    rows) where SP ran at that width; a line saying so before its phase has run."""
    file = STORE / model / f"width-{data}-{suffix}.json"
    if not file.is_file():
        return ["", f"Where muP's drift sits ({model}, {data}; {what.rstrip(':')}): not yet run."]
    result = json.loads(file.read_text())
    rows = {int(w): r for w, r in result["rows"].items()}
    lines = ["", f"### Where muP's drift sits ({model}, {data}; {what} grids at {len(rows)} "
             f"widths: `{result['extra_args']}`)", "",
             "| width | optimum LR | best grid LR | loss at it | - tuned SP (± sd) |",
             "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for width, row in rows.items():
        edge = "*" if row["on_edge"] else ""
        versus = "no SP row"
        if str(width) in sp:
            other = sp[str(width)]
            spread = math.hypot(row["sd"], other["sd"]) / math.sqrt(len(SEEDS))
            versus = f"{row['mean'] - other['mean']:+.4f} ± {spread:.4f}"
        lines.append(f"| {width} | {row['eta_opt']:.4g}{edge} | {row['best_lr']:.4g} | "
                     f"{fmt(row)} | {versus} |")  # fmt: skip
    widths = list(rows)
    steps = {f"{a}->{b}": math.log2(rows[b]["eta_opt"] / rows[a]["eta_opt"])
             for a, b in itertools.pairwise(widths)}  # fmt: skip
    spans = result["spans"]
    costs = {span: transfer_cost(*(rows[int(w)] for w in span.split("-"))) for span in spans}
    overall.setdefault(model, {})[f"width-{data}-{suffix}"] = {
        "optimum": {str(w): r["eta_opt"] for w, r in rows.items()},
        "span_shift_x2_steps": {k: v["shift_x2_steps"] for k, v in spans.items()},
        "span_cost_nats": costs,
        "step_x2_steps": steps,
    }

    def cost(span: str) -> str:
        if costs[span] is None:
            return "cost not measured: the narrow optimum is outside the wide LRs with seeds"
        low, high = costs[span]["interval"]
        return f"costing {costs[span]['cost']:+.4f} nats [{low:+.4f}, {high:+.4f}]"

    lines += ["", "Optimum LR's move over 8x width (x2 steps, over every width measured in "
              "the span; target <= 0.5; [16-84% range]), and what it costs (the wide width's "
              "loss at the narrow one's optimum LR above its own, from a quadratic in log2 LR "
              "through its 3-seed means): "
              + ", ".join(f"{k.replace('-', ' -> ')}: {v['shift_x2_steps']:.2f} "
                          f"[{v['shift_x2_steps_interval'][0]:.2f}, "
                          f"{v['shift_x2_steps_interval'][1]:.2f}], {cost(k)}"
                          for k, v in spans.items())
              + ". Between neighbouring widths (signed, + = the optimum rises): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in steps.items()) + "."]  # fmt: skip
    return lines


def width_table(model: str, data: str, overall: dict) -> list[str]:
    """Each parameterisation's tuned loss and optimal LR per width, on one data set."""
    file = STORE / model / f"width-{data}.json"
    if not file.is_file():
        return ["", f"muP at width ({model}, {data}): not yet run."]
    result = json.loads(file.read_text())
    params = result["params"]
    names = list(params)
    lines = ["", f"### muP at width ({model}, {data}; WSD, {WIDTH_TOKENS:,} tokens, "
             f"batch {WIDTH_BATCH}; mup-tune at width {BASE}: `{result['tune']['flags']}`)", "",
             "| width | " + " | ".join(f"{n} LR | {n} loss" for n in names)
             + " | muP tuned - SP (± sd) |", "|" + " ---: |" * (2 * len(names) + 2)]  # fmt: skip
    worse = []
    for width in map(str, result["widths"]):
        rows = [params[n]["rows"][width] for n in names]
        cells = " | ".join(f"{r['eta_opt']:.4g}{'*' if r['on_edge'] else ''} | {fmt(r)}"
                           for r in rows)  # fmt: skip
        tuned, sp = params["muP tuned"]["rows"][width], params["SP"]["rows"][width]
        gap = tuned["mean"] - sp["mean"]
        spread = math.hypot(tuned["sd"], sp["sd"]) / math.sqrt(len(SEEDS))
        if gap > 0:
            worse.append(width)
        lines.append(f"| {width} | {cells} | {gap:+.4f} ± {spread:.4f} |")
    shifts = {n: params[n]["shift_x2_steps"] for n in names}
    # The move between the two largest widths alone: muP's rules are asymptotic, so a drift
    # confined to the step from the base width is a finite-width effect of the base.
    wide = [str(w) for w in result["widths"][-2:]]
    wide_shifts = {}
    for n in names:
        rows = params[n]["rows"]
        wide_shifts[n] = abs(math.log2(rows[wide[1]]["eta_opt"] / rows[wide[0]]["eta_opt"]))
    overall.setdefault(model, {})[f"width-{data}"] = {
        "shift_x2_steps": shifts,
        f"shift_x2_steps_{wide[0]}_to_{wide[1]}": wide_shifts,
        "tuned_muP_worse_at": worse,
    }
    lines += ["", "Optimum LR moves over 8x width (x2 steps; target <= 0.5 for muP; the "
              "optimum: the parabola vertex of the 3-seed means around the best LR, [16-84% "
              "range with each mean redrawn within its standard error], and what seed 0's grid "
              "alone gave): "
              + ", ".join(f"{n} {v:.2f}" + shift_detail(params[n]) for n, v in shifts.items())
              + f"; from width {wide[0]} to {wide[1]} alone: "
              + ", ".join(f"{n} {v:.2f}" for n, v in wide_shifts.items())
              + ". Tuned muP is " + (f"worse than tuned SP at widths {worse}" if worse
                                     else "no worse than tuned SP at every width")
              + " (target: never worse). * = best LR on the grid's edge."]  # fmt: skip
    return lines


def shift_detail(entry: dict) -> str:
    """' [low, high] (seed 0: x)' where the width phase measured them."""
    if "shift_x2_steps_interval" not in entry:
        return " (seed 0's grid only: measured before the 3-seed means)"
    low, high = entry["shift_x2_steps_interval"]
    return f" [{low:.2f}, {high:.2f}] (seed 0: {entry['shift_x2_steps_seed0']:.2f})"


def plot(models: list[str], data: str, png: Path) -> None:
    """One figure per data set: Power / best tuned per cell, each cell's LR curves of the
    compared schedules, and the optimal LR against width (none until something has run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = {m: [stored(m, phase) for phase in CHOICE_PHASES] for m in models}
    results = {(m, c.name): r for m in models for c in CELLS
               if c.data == data and (r := cell_result(m, c, *choices[m])) is not None}  # fmt: skip
    widths = {m: json.loads(f.read_text()) for m in models
              if (f := STORE / m / f"width-{data}.json").is_file()}  # fmt: skip
    if not results and not widths:
        return
    panels = 1 + len(results) + len(widths)
    columns = min(4, panels)
    lines = math.ceil(panels / columns)
    legend_height = 1.3  # inches under the panels for the schedules' legend
    figure, grid = plt.subplots(lines, columns, squeeze=False,
                                figsize=(4.2 * columns, 3.6 * lines + legend_height))  # fmt: skip
    axes = list(grid.flat)
    for spare in axes[panels:]:
        spare.set_visible(False)
    names = [f"{m} {c}" for m, c in results]
    # One colour per schedule in every panel, named once in a legend under the panels.
    labelled = (("cosine", "cosine (tuned)"), ("wsd", "WSD (tuned)"), *POWER_ROWS)
    palette = plt.get_cmap("tab20").colors
    colour = {key: palette[i % len(palette)] for i, (key, _) in enumerate(labelled)}
    keys = [key for key, _ in POWER_ROWS if key != "paper"]
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        axes[0].bar([i + width * (offset - (len(keys) - 1) / 2) for i in range(len(names))],
                    [ratios(r).get(key, math.nan) for r in results.values()], width=width,
                    color=colour[key])  # fmt: skip
    axes[0].set_xticks(range(len(names)), names)
    axes[0].axhline(1.0, color="grey", linestyle=":")
    axes[0].set(title=f"{data}: Power / best tuned", ylim=(0.98, 1.03))
    axes[0].tick_params(axis="x", rotation=60, labelsize=7)
    panel = 1
    for (model, name), result in results.items():
        axis = axes[panel]
        panel += 1
        for key, _ in labelled:
            if not result.get(key, {}).get("lr_curve"):
                continue
            tokens, lrs = zip(*result[key]["lr_curve"], strict=True)
            axis.plot(tokens, lrs, color=colour[key])
        axis.set(title=f"{model} {name}", xlabel="tokens", ylabel="LR")
    for model, result in widths.items():
        axis = axes[panel]
        panel += 1
        for param, entry in result["params"].items():
            rows = entry["rows"]
            axis.plot(result["widths"], [rows[str(w)]["eta_opt"] for w in result["widths"]],
                      marker="o", label=param)  # fmt: skip
        for suffix, (_, (label, linestyle, marker)) in DRIFT_FILES.items():  # 3b-3e
            more = STORE / model / f"width-{data}-{suffix}.json"
            if more.is_file():
                rows = json.loads(more.read_text())["rows"]
                axis.plot([int(w) for w in rows], [r["eta_opt"] for r in rows.values()],
                          linestyle=linestyle, marker=marker, label=label)  # fmt: skip
        axis.set(xscale="log", yscale="log", xlabel="width", ylabel="optimal LR",
                 title=f"{model}: optimal LR vs width")  # fmt: skip
        axis.legend(fontsize=7)
    from matplotlib.patches import Patch

    figure.legend(handles=[Patch(color=colour[key], label=label) for key, label in labelled],
                  loc="lower center", ncol=3, fontsize=8)  # fmt: skip
    figure.tight_layout(rect=(0, legend_height / (3.6 * lines + legend_height), 1, 1))
    figure.savefig(png, dpi=100)
    plt.close(figure)


def run_phases(store: Store, args: argparse.Namespace) -> None:
    """The phases, models and cells the command line chose, in order."""
    text: list[str] = []

    def text_flags() -> str:
        """Shakespeare's data flags, tokenised on first use."""
        if not text:
            text.append(shakespeare_flags(TEXT_DATA))
        return text[0]

    cells = [c for c in CELLS if c.name in args.cells]
    for model in args.models:
        for data in args.width_data if "width" in args.phases else []:
            width_phase(store, model, data, text_flags() if data == "text" else "")
        for data in args.width_data if "width-more" in args.phases else []:
            for param in MORE_PARAMS:
                more_widths(store, model, data, text_flags() if data == "text" else "", param)
        for data in args.width_data if "width-base" in args.phases else []:
            wide_base(store, model, data, text_flags() if data == "text" else "")
        for data in args.width_data if "width-fine" in args.phases else []:
            fine_drift(store, model, data)
        for data in args.width_data if "width-widest" in args.phases else []:
            widest(store, model, data)
        for data in args.width_data if "width-knobs" in args.phases else []:
            knob_drift(store, model, data, text_flags() if data == "text" else "")
        for data in args.width_data if "width-zero-readout" in args.phases else []:
            zero_readout(store, model, data)
        for data in args.width_data if "width-zero-readout-tuned" in args.phases else []:
            wide_base(store, model, data, text_flags() if data == "text" else "", ZERO_READOUT)
        if not {"cells", "proxy-tail", "wide-proxies", "wide-probe", "fit-choice",
                "batch-rule", "tail-shape"} & set(args.phases):  # fmt: skip
            continue
        fitted = fit(store, model)
        tail = fit_tail(store, model, fitted)
        if "proxy-tail" in args.phases:
            proxy_tails(store, model, cells, fitted, tail, text_flags)
        if "wide-proxies" in args.phases:
            wide_proxies(store, model, cells, tail, text_flags)
        if "wide-probe" in args.phases:
            wide_probe(store, model, cells, tail, text_flags)
        if "fit-choice" in args.phases:
            fit_choice(store, model, cells, fitted, tail, text_flags)
        if "batch-rule" in args.phases:
            batch_rule(store, model, cells, fitted, text_flags)
        if "tail-shape" in args.phases:
            tail_shape(store, model, cells, fitted, text_flags)
        if "cells" not in args.phases:
            continue
        long_fit = None
        if "long-fit" in args.phases:
            long_fit = fit(store, model, "fit-long", tuple(LONG_FIT_TOKENS))
        for cell in cells:
            data_flags = text_flags() if cell.data == "text" else ""
            tune_cell(store, model, cell, fitted, tail, data_flags, long_fit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="bench/work/joint_transfer"
                        + ("" if SCALE == "cpu" else f"-{SCALE}"))  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--cells", nargs="+", choices=[c.name for c in CELLS],
                        default=[c.name for c in CELLS])  # fmt: skip
    phases = ["cells", "long-fit", "proxy-tail", "wide-proxies", "wide-probe", "fit-choice",
              "batch-rule", "tail-shape", "width", "width-more", "width-base",
              "width-fine", "width-widest", "width-knobs", "width-zero-readout",
              "width-zero-readout-tuned"]  # fmt: skip
    parser.add_argument("--phases", nargs="+", choices=phases, default=phases)
    parser.add_argument("--width-data", nargs="+", choices=WIDTH_DATA, default=WIDTH_DATA,
                        help="the data sets of the width phases")  # fmt: skip
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="concurrent runs (default: one per CPU core, or per GPU)",
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing")
    parser.add_argument("--dry-run", action="store_true",
                        help="run nothing; stop at the first runs the phases would "
                        "queue and list them (if none, report as --report-only)")  # fmt: skip
    args = parser.parse_args()
    if "long-fit" in args.phases and "cells" not in args.phases:
        parser.error("--phases long-fit: adds the second fit's rows to the cells; give cells too")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs: must be >= 1, got {args.jobs}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        store = Store(work, Pool(args.jobs, dry_run=args.dry_run))
        # A stop (a time limit's SIGTERM, Ctrl-C) keeps every finished run in the store.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
        try:
            run_phases(store, args)
        finally:
            # A dry run's work dir holds only specs it recorded, nothing the store lacks.
            for model in [] if args.dry_run else args.models:
                store.save(model)
    markdown, overall = report(list(MODELS))
    print(markdown)
    atomic_write_text(RESULTS / "joint_transfer.md", markdown)
    atomic_write_text(RESULTS / "joint_transfer.json", json.dumps(overall, indent=2) + "\n")
    for data in WIDTH_DATA:
        plot(list(MODELS), data, RESULTS / f"joint_transfer_{data}.png")


if __name__ == "__main__":
    main()
