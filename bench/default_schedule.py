"""The embedded default's schedule against tuned WSD and cosine, at the default 2M tokens.

Every run is ``megatron-power pretrain`` with the default model and data, changing only
the schedule: the shipped default (Power with a=0.63, b=-0.27 fitted by
bench/fit_default_power.py, cap 0.02, and an exponential_e tail over the last fifth), the
paper's a=4, b=-0.51 with that tail and without (the previous default), and WSD (a fifth
decaying) and cosine each over an LR grid. Prints a table and writes
bench/results/default_schedule_2m.{md,json}; finished runs in --work-dir are reused.

    python bench/default_schedule.py                 # about 45 min on 2 CPU cores
    python bench/default_schedule.py --seeds 0 1     # the spread between seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FITTED = ["--lr-power-a", "0.6308", "--lr-power-b", "-0.2696"]  # fit_default_power.md
#: The embedded default's warmup, spelled out where --lr replaces the embedded schedule.
WARMUP = ["--warmup-tokens", "32768"]

RUNS: dict[str, tuple[str, list[str]]] = {
    "ppaper20": (
        "Power a=4, b=-0.51 (the paper's), tail 20%",
        ["--decay-tokens", "400000", "--lr-power-a", "4", "--lr-power-b", "-0.51"],
    ),
    "ppaper0": (
        "Power a=4, b=-0.51, no tail (the old default)",
        ["--decay-tokens", "0", "--lr-power-a", "4", "--lr-power-b", "-0.51"],
    ),
    "pfit20": (
        "Power a=0.63, b=-0.27, tail 20% (the default)",
        [*FITTED, "--decay-tokens", "400000"],
    ),
    "pfit10": ("Power fitted a=0.63, b=-0.27, tail 10%", [*FITTED, "--decay-tokens", "200000"]),
    **{
        f"wsd{tag}": (
            f"WSD lr {lr}, decay 20%",
            ["--lr-decay-style", "WSD", "--lr", lr, "--decay-tokens", "400000", *WARMUP],
        )
        for tag, lr in (("0025", "0.0025"), ("005", "0.005"), ("01", "0.01"), ("02", "0.02"))
    },
    **{
        f"cos{tag}": (f"cosine lr {lr}", ["--lr-decay-style", "cosine", "--lr", lr, *WARMUP])
        for tag, lr in (("005", "0.005"), ("01", "0.01"), ("02", "0.02"))
    },
}


def run(work: Path, name: str, flags: list[str], seed: int) -> float:
    run_dir = work / (name if seed == 0 else f"{name}s{seed}")
    summary = run_dir / "summary.json"
    if not summary.is_file():
        command = [sys.executable, "-m", "megatron_power.cli.main", "pretrain",
                   "--run-dir", str(run_dir), "--seed", str(seed), *flags]  # fmt: skip
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists without summary.json; remove it to rerun")
        subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(summary.read_text())["valid_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="bench/work/default_schedule")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", default=None, help="run names (default all)")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    args = parser.parse_args()
    work = Path(args.work_dir)
    rows = {}
    for name, (label, flags) in RUNS.items():
        if args.only and name not in args.only:
            continue
        losses = [run(work, name, flags, seed) for seed in args.seeds]
        rows[name] = {"label": label, "losses": losses, "mean": statistics.fmean(losses)}
        print(f"{label:45s} " + " ".join(f"{x:.4f}" for x in losses), flush=True)
    floor = 2.3906  # the Markov source's entropy rate (printed by pretrain)
    best_wsd = min((r["mean"] for n, r in rows.items() if n.startswith("wsd")), default=None)
    best_cos = min((r["mean"] for n, r in rows.items() if n.startswith("cos")), default=None)
    best = min(x for x in (best_wsd, best_cos) if x is not None)
    lines = [
        "# The embedded default's schedule vs tuned WSD and cosine (2M tokens, "
        f"seeds {' '.join(map(str, args.seeds))})",
        "",
        "Validation loss in nats/token; the source's entropy rate (the floor) is 2.3906.",
        "",
        "| schedule | loss per seed | mean | excess over floor | / best tuned in this table |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        per_seed = " ".join(f"{x:.4f}" for x in row["losses"])
        lines.append(f"| {row['label']} | {per_seed} | {row['mean']:.4f} | "
                     f"{row['mean'] - floor:.4f} | {row['mean'] / best:.4f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"default_schedule_2m{args.tag}.md").write_text(text)
    (RESULTS / f"default_schedule_2m{args.tag}.json").write_text(
        json.dumps({"seeds": args.seeds, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
