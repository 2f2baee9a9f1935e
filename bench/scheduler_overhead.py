"""Microseconds per ``step()``: the plugin's styles vs Megatron-Core's own cosine and WSD.

One torch optimizer with 10 param groups (each with its own max_lr/min_lr, as muP makes
them), one scheduler per style, all timed side by side in this one run, interleaved
round by round so machine noise hits every style alike. Prints a table and writes
bench/results/scheduler_overhead_mcore<version>.{md,json}.

    python bench/scheduler_overhead.py [--steps 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

import megatron.core  # noqa: E402
import torch  # noqa: E402
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # noqa: E402

from megatron_power.megatron import PowerOptimizerParamScheduler  # noqa: E402

GROUPS = 10
BATCH = 256
SEQ = 4096
RESULTS = Path(__file__).parent / "results"

COMMON = dict(
    init_lr=0.0,
    max_lr=0.02,
    min_lr=0.0002,
    lr_warmup_steps=100 * BATCH,
    lr_decay_steps=10**9,
    start_wd=0.1,
    end_wd=0.1,
    wd_incr_steps=10**9,
    wd_incr_style="constant",
)
TAIL = dict(wsd_decay_steps=10**8)
LONG_DECAY = dict(wsd_decay_steps=10**9 - 100 * BATCH)
POWER = dict(seq_length=SEQ, lr_power_a=4.0, lr_power_b=-0.51)

#: name -> (scheduler class, constructor overrides, is Megatron's own)
CASES = {
    "megatron cosine": (OptimizerParamScheduler, dict(lr_decay_style="cosine")),
    "megatron WSD (exponential)": (
        OptimizerParamScheduler,
        dict(lr_decay_style="WSD", lr_wsd_decay_style="exponential", **TAIL),
    ),
    "plugin: megatron cosine (pass-through)": (
        PowerOptimizerParamScheduler,
        dict(lr_decay_style="cosine"),
    ),
    "plugin: power": (PowerOptimizerParamScheduler, dict(lr_decay_style="power", **POWER)),
    "plugin: power + tail": (
        PowerOptimizerParamScheduler,
        dict(lr_decay_style="power", lr_wsd_decay_style="exponential_e", **TAIL, **POWER),
    ),
    "plugin: WSD half_life": (
        PowerOptimizerParamScheduler,
        dict(lr_decay_style="WSD", lr_wsd_decay_style="half_life", seq_length=SEQ, **TAIL),
    ),
    "plugin: WSD-S (8 cycles)": (
        PowerOptimizerParamScheduler,
        dict(
            lr_decay_style="WSD",
            lr_wsd_decay_style="minus_sqrt",
            seq_length=SEQ,
            lr_wsd_cycle_steps=[k * 10**8 for k in range(1, 9)],
            wsd_decay_steps=10**7,
        ),
    ),
    # Decaying for the whole run, so every timed step is inside a decay window.
    "megatron WSD in decay (minus_sqrt)": (
        OptimizerParamScheduler,
        dict(lr_decay_style="WSD", lr_wsd_decay_style="minus_sqrt", **LONG_DECAY),
    ),
    "plugin: WSD in decay (exponential_e)": (
        PowerOptimizerParamScheduler,
        dict(
            lr_decay_style="WSD", lr_wsd_decay_style="exponential_e", seq_length=SEQ, **LONG_DECAY
        ),
    ),
    "plugin: power in its decay tail": (
        PowerOptimizerParamScheduler,
        dict(lr_decay_style="power", lr_wsd_decay_style="exponential_e", **LONG_DECAY, **POWER),
    ),
}
BASELINES = {"megatron cosine", "megatron WSD (exponential)", "megatron WSD in decay (minus_sqrt)"}


def make_optimizer() -> torch.optim.Optimizer:
    groups = [
        {
            "params": [torch.nn.Parameter(torch.zeros(4))],
            "max_lr": 0.02 / (k + 1),
            "min_lr": 0.0002 / (k + 1),
        }
        for k in range(GROUPS)
    ]
    return torch.optim.AdamW(groups, lr=0.02)


def time_round(scheduler, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        scheduler.step(BATCH)
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    schedulers = {
        name: cls(make_optimizer(), **COMMON, **overrides)
        for name, (cls, overrides) in CASES.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, scheduler in schedulers.items():
            samples[name].append(time_round(scheduler, args.steps))
    median = {name: statistics.median(values) for name, values in samples.items()}

    rows = []
    for name in CASES:
        reference = "megatron cosine"
        if "decay" in name and name not in BASELINES:
            reference = "megatron WSD in decay (minus_sqrt)"
        elif "WSD" in name and name not in BASELINES:
            reference = "megatron WSD (exponential)"
        rows.append(
            {
                "style": name,
                "us_per_step": round(median[name], 2),
                "vs": reference,
                "ratio": round(median[name] / median[reference], 2),
            }
        )
    header = "| style | us/step (10 groups) | compared with | ratio |\n| --- | ---: | --- | ---: |"
    lines = [header] + [
        f"| {r['style']} | {r['us_per_step']:.2f} | {r['vs']} | {r['ratio']:.2f}x |" for r in rows
    ]
    environment = (
        f"Python {platform.python_version()}, torch {torch.__version__}, megatron-core "
        f"{megatron.core.__version__}, {platform.machine()}; median of {args.rounds} rounds "
        f"x {args.steps} steps, interleaved."
    )
    table = "\n".join(lines)
    print(table)
    print()
    print(environment)
    RESULTS.mkdir(exist_ok=True)
    stem = f"scheduler_overhead_mcore{megatron.core.__version__}"
    (RESULTS / f"{stem}.md").write_text(
        f"# Scheduler step() overhead\n\n{table}\n\n{environment}\n\n"
        "Target: the plugin's styles at most 1.5x Megatron's own.\n"
    )
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
