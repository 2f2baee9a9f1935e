"""``megatron-power predict`` validated on runs the fit never saw.

1. fit runs (seed 0): the proxy of bench/quality.py (GPT 64 wide, 2 layers, head_dim 16,
   seq 64, muP, the Markov source) for 153,600 tokens: constant and cosine at LR 0.01 and
   batch 8, cosine at 0.005, WSD at 0.02, and constant + WSD at batch 16;
2. held-out runs (seeds 0-2): other decay shapes and lengths, 2-4x longer horizons, a
   batch size the fit never saw (12), a step batch-size schedule (8 -> 16), WSD-S cycles,
   Power with its tail (the flags bench/quality.py fitted), a peak LR not in the fit;
3. ``megatron-power predict --fit`` (each law) predicts every held-out schedule from the
   same Megatron-LM flags a user would give; the predicted LR sequence must equal the one
   the run logged. Reported: relative error of the final loss (validation loss, mean of
   3 seeds) and of the curve (train loss, 3 seeds averaged and smoothed over windows),
   and the ranking of the held-out schedules of one budget;
4. ``megatron-power predict --optimize`` at 307,200 tokens, batch 8: the proposal is
   trained (3 seeds) beside WSD tuned in that cell (LR x decay length x shape, best of
   seed 0 rerun with seeds 1-2) and the fitted Power.

Every run is recorded in --work-dir and reused, so an interrupted benchmark continues
where it stopped. Prints a table and writes bench/results/predict.{md,json,png}.

    python bench/predict.py            # ~35 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from quality import HIDDEN, MODEL_FLAGS, SEQ, Pool

from megatron_power.sweep.runner import SweepDir, SweepSpec, run_id

RESULTS = Path(__file__).parent / "results"
BATCH = 32  # sequences of 64 tokens: 2,048 tokens per step
WARMUP_TOKENS = 20_480
FIT_TOKENS = 614_400  # 300 steps at batch 32
BUDGET = 2 * FIT_TOKENS  # the optimised cell
SEEDS = [0, 1, 2]
#: bench/quality.py's fitted Power (its bench/results/quality_markov.json), unchanged.
FITTED_POWER = ("--lr-decay-style power --lr-power-batch-exponent 0.639 --lr-power-a 2.758 "
                "--lr-power-b -0.3834")  # fmt: skip
FITTED_POWER_CAP = 0.0205
TEMPLATE = (
    "{python} -m megatron_power.cli.main pretrain --run-dir {run_dir} --lr {lr} "
    "--train-tokens {train_tokens} --seq-length {seq_length} --hidden-size {hidden_size} "
    "--seed {seed} --warmup-tokens " + str(WARMUP_TOKENS)
)
@dataclass(frozen=True)
class Case:
    """One schedule trained by ``megatron-power pretrain`` (``pretrain``: its schedule
    flags, in tokens) and described to ``megatron-power predict`` (``megatron``: the same
    schedule in Megatron-LM's flags, counts in samples)."""

    name: str
    lr: float
    batch: int  # the last batch of a step schedule
    tokens: int
    pretrain: str
    megatron: str
    step_schedule: str | None = None

    @property
    def samples(self) -> int:
        return self.tokens // SEQ


def wsd(name, lr, batch, tokens, shape, decay_fraction, cycles=()) -> Case:
    decay = round(tokens * decay_fraction / (batch * SEQ)) * batch * SEQ
    pretrain = f"--lr-decay-style WSD --decay-tokens {decay} --decay-shape {shape}"
    megatron = (f"--lr-decay-style WSD --lr-wsd-decay-samples {decay // SEQ} "
                f"--lr-wsd-decay-style {shape}")  # fmt: skip
    if cycles:
        pretrain += " --wsd-cycle-tokens " + " ".join(map(str, cycles))
        megatron += " --lr-wsd-cycle-samples " + " ".join(str(c // SEQ) for c in cycles)
    return Case(name, lr, batch, tokens, pretrain, megatron)


def plain(name, style, lr, batch, tokens) -> Case:
    return Case(name, lr, batch, tokens, f"--lr-decay-style {style}", f"--lr-decay-style {style}")


def power(name, batch, tokens, decay_fraction=0.2) -> Case:
    decay = round(tokens * decay_fraction / (batch * SEQ)) * batch * SEQ
    tail = f"--lr-wsd-decay-style exponential_e --lr-wsd-decay-samples {decay // SEQ}"
    return Case(name, FITTED_POWER_CAP, batch, tokens,
                f"{FITTED_POWER} --decay-tokens {decay} --decay-shape exponential_e",
                f"{FITTED_POWER} {tail}")  # fmt: skip


FIT = [
    plain("constant lr 0.011", "constant", 0.011, BATCH, FIT_TOKENS),
    plain("cosine lr 0.011", "cosine", 0.011, BATCH, FIT_TOKENS),
    plain("cosine lr 0.022", "cosine", 0.022, BATCH, FIT_TOKENS),
    wsd("WSD lr 0.0055 exp_e 20%", 0.0055, BATCH, FIT_TOKENS, "exponential_e", 0.2),
    plain("constant lr 0.011 b16", "constant", 0.011, 16, FIT_TOKENS),
    wsd("WSD lr 0.011 linear 20% b16", 0.011, 16, FIT_TOKENS, "linear", 0.2),
]
STEP_SCHEDULE = f"0:16 {FIT_TOKENS}:32"
HELD_OUT = [
    wsd("WSD minus_sqrt 20%", 0.011, BATCH, BUDGET, "minus_sqrt", 0.2),
    wsd("WSD linear 40%", 0.011, BATCH, BUDGET, "linear", 0.4),
    plain("cosine lr 0.0156", "cosine", 0.0156, BATCH, BUDGET),
    power("Power (fitted) + exp_e 20%", BATCH, BUDGET),
    wsd("WSD exp_e 20% batch 24", 0.011, 24, BUDGET, "exponential_e", 0.2),
    Case("WSD exp_e 20%, batch 16 -> 32", 0.011, 32, BUDGET,
         "--lr-decay-style WSD --decay-tokens 245760 --decay-shape exponential_e",
         "--lr-decay-style WSD --lr-wsd-decay-samples 3840 --lr-wsd-decay-style exponential_e",
         STEP_SCHEDULE),  # fmt: skip
    wsd("WSD-S, 3 cycles, linear 10%", 0.011, BATCH, 3 * FIT_TOKENS, "linear", 0.1 / 3,
        cycles=(FIT_TOKENS, 2 * FIT_TOKENS, 3 * FIT_TOKENS)),
    plain("cosine 4x", "cosine", 0.011, BATCH, 4 * FIT_TOKENS),
    wsd("WSD exp_e 10% 4x", 0.011, BATCH, 4 * FIT_TOKENS, "exponential_e", 0.1),
]
TUNE_LRS = [0.0055, 0.0078, 0.011, 0.0156, 0.022]
TUNE_FRACTIONS = [0.1, 0.2, 0.4]
TUNE_SHAPES = ["linear", "exponential_e", "minus_sqrt", "cosine"]


def tuned_cases() -> list[Case]:
    return [wsd(f"WSD lr {lr} {shape} {fraction:.0%}", lr, BATCH, BUDGET, shape, fraction)
            for lr in TUNE_LRS for fraction in TUNE_FRACTIONS for shape in TUNE_SHAPES]  # fmt: skip


# ----------------------------------------------------------------------------- runs
def case_dir(work: Path, case: Case) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in case.name)
    return work / "runs" / f"t{case.tokens}-b{case.batch}-{slug}"


def case_spec(case: Case, seeds) -> SweepSpec:
    template = TEMPLATE + (
        f" --step-batch-size-schedule '{case.step_schedule}'"
        if case.step_schedule
        else " --global-batch-size {global_batch_size}"
    )
    return SweepSpec(lrs=[case.lr], global_batch_sizes=[case.batch], train_tokens=[case.tokens],
                     hidden_sizes=[HIDDEN], seeds=list(seeds), seq_length=SEQ,
                     template=template, extra_args=f"{MODEL_FLAGS} {case.pretrain}")  # fmt: skip


def train(work: Path, cases: list[Case], seeds, pool: Pool, what: str) -> None:
    for case in cases:
        pool.add(case_dir(work, case), case_spec(case, seeds))
    pool.run(what)


def run_dirs(work: Path, case: Case, seeds) -> list[Path]:
    """The finished runs of ``case`` (an unfinished one is an error, never dropped)."""
    sweep, found = SweepDir(case_dir(work, case)), []
    for run in case_spec(case, seeds).runs():
        record = sweep.result(run)
        if record is None or record["status"] != "ok":
            raise SystemExit(f"{case.name}: run {run_id(run)} did not finish: {record}")
        found.append(sweep.path / "runs" / run_id(run))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="bench/work/predict")
    parser.add_argument("--train-only", action="store_true", help="phases 1-2 and the tuning")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pool = Pool()
    train(work, FIT, SEEDS, pool, "fit runs")
    train(work, HELD_OUT, SEEDS, pool, "held-out runs")
    train(work, tuned_cases(), [0], pool, "WSD tuning grid")
    if args.train_only:
        return


if __name__ == "__main__":
    main()
