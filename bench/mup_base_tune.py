"""muP with its base multipliers tuned (``megatron-power mup-tune``) vs plain muP vs SP, on text.

muTransfer tunes the base model's own multipliers before widening it. This measures what
that buys on real text the fit never saw (Shakespeare, a 512-piece BPE; bench/quality.py's
data): 2 layers, head dim 32, base width 64, WSD, 200 steps of 16 x 128 tokens.

1. ``megatron-power mup-tune`` at width 64: readout multiplier, embedding multiplier and
   init std, one coordinate pass, each candidate with its own LR sweep;
2. LR sweeps at widths 64, 128, 256 (4x) for standard parameterisation (SP), plain muP
   (every base multiplier 1, init std 0.02) and muP with the tuned base multipliers;
3. the best loss of each at each width (the parabola's LR, the grid's best loss), tuned
   muP - SP, and how far each optimum moves over the widths, in x2 steps.

Prints a table and writes bench/results/mup_base_tune.{md,json,png}; every run is recorded
in --work-dir and reused, so an interrupted benchmark continues where it stopped.

    python bench/mup_base_tune.py     # ~60 min on 2 cores (~80 runs)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from quality import shakespeare_flags

RESULTS = Path(__file__).parent / "results"
BASE = 64
WIDTHS = [64, 128, 256]
BATCH, SEQ, STEPS = 16, 128, 200
TOKENS = BATCH * SEQ * STEPS
MODEL = "--num-layers 2 --head-dim 32"
MUP_LRS = [2.0**-k for k in range(8, 2, -1)]  # 0.0039 .. 0.125
SP_LRS = [2.0**-k for k in range(12, 6, -1)]  # 0.00024 .. 0.0078
CANDIDATES = {
    "--output-multipliers": [0.25, 1, 4],
    "--embedding-multipliers": [1, 4, 16],
    "--init-stds": [0.01, 0.02, 0.04],
}


def megatron_power(*words: str) -> None:
    subprocess.run([sys.executable, "-m", "megatron_power.cli.main", *words], check=True)


def width_sweep(work: Path, name: str, extra: str, lrs: list[float]) -> dict[int, dict]:
    """One LR x width sweep; per width: its LRs, losses, parabola LR and best loss."""
    from megatron_power.sweep.fit import cells_from_results

    directory = work / name
    megatron_power(
        "sweep", "--sweep-dir", str(directory), "--lrs", *map(str, lrs),
        "--hidden-sizes", *map(str, WIDTHS), "--train-tokens", str(TOKENS),
        "--global-batch-sizes", str(BATCH), "--seq-length", str(SEQ), "--extra-args", extra,
    )  # fmt: skip
    records = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]
    return {
        cell.hidden_size: {
            "lrs": cell.lrs,
            "losses": cell.losses,
            "eta_opt": cell.eta_opt,
            "best_loss": cell.best_loss,
            "on_edge": cell.on_edge,
        }
        for cell in cells_from_results(records)
    }


def shift(cells: dict[int, dict]) -> float:
    optima = [cell["eta_opt"] for cell in cells.values()]
    return math.log2(max(optima) / min(optima))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="bench/work/mup_base_tune")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = shakespeare_flags(work)
    common = f"{MODEL} {data}"
    candidates = [word for flag, values in CANDIDATES.items() for word in (flag, *map(str, values))]
    megatron_power(
        "mup-tune", "--tune-dir", str(work / "tune"), "--hidden-size", str(BASE),
        "--lrs", *map(str, MUP_LRS), "--train-tokens", str(TOKENS),
        "--global-batch-size", str(BATCH), "--seq-length", str(SEQ), *candidates,
        "--extra-args", common,
    )  # fmt: skip
    tuned = json.loads((work / "tune" / "tune.json").read_text())
    tuned_lrs = [tuned["best_lr"] * 2.0**k for k in range(-2, 3)]
    table = {
        "SP": width_sweep(work, "sp", f"{common} --no-mup", SP_LRS),
        "muP": width_sweep(work, "mup", f"{common} --mup-base-hidden-size {BASE}", MUP_LRS),
        "muP tuned": width_sweep(work, "mup_tuned", f"{common} {tuned['flags']}", tuned_lrs),
    }
    report(table, tuned)


def report(table: dict[str, dict[int, dict]], tuned: dict) -> None:
    names = list(table)
    lines = [
        f"# muP with tuned base multipliers vs plain muP vs SP (Shakespeare BPE 512; {MODEL}; "
        f"base width {BASE}; WSD, {STEPS} steps of {BATCH}x{SEQ} tokens)",
        "",
        f"mup-tune at width {BASE}: `{tuned['flags']}` (best LR {tuned['best_lr']:.4g}, "
        f"loss {tuned['best_loss']:.4f}; plain muP's multipliers are 1 and init std 0.02)"
        + ("".join(f"; note: {note}" for note in tuned["notes"])),
        "",
        "| width | " + " | ".join(f"{n} LR | {n} loss" for n in names)
        + " | tuned muP - SP | tuned muP - muP |",
        "| ---: |" + " ---: | ---: |" * len(names) + " ---: | ---: |",
    ]  # fmt: skip
    for width in WIDTHS:
        cells = [table[name].get(width) for name in names]
        if any(cell is None for cell in cells):
            continue
        row = " | ".join(f"{c['eta_opt']:.4g}{'*' if c['on_edge'] else ''} | {c['best_loss']:.4f}"
                         for c in cells)  # fmt: skip
        lines.append(f"| {width} | {row} | {cells[2]['best_loss'] - cells[0]['best_loss']:+.4f} | "
                     f"{cells[2]['best_loss'] - cells[1]['best_loss']:+.4f} |")  # fmt: skip
    moves = {name: shift(table[name]) for name in names}
    widest = max(WIDTHS)
    gain = {
        name: table[name][BASE]["best_loss"] - table[name][widest]["best_loss"] for name in names
    }
    lines += [
        "",
        "Optimum LR moves over 4x width (x2 steps): "
        + ", ".join(f"{name} {moves[name]:.2f}" for name in names)
        + f". Loss gained from width {BASE} to {widest}: "
        + ", ".join(f"{name} {gain[name]:.4f}" for name in names)
        + ". * = best LR on the grid's edge.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mup_base_tune.md").write_text(text)
    by_width = {name: {str(width): cell for width, cell in cells.items()}
                for name, cells in table.items()}  # fmt: skip
    result = {"tune": tuned, "table": by_width, "optimum_shift_x2_steps": moves,
              "loss_gain_over_width": gain}  # fmt: skip
    (RESULTS / "mup_base_tune.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(table, RESULTS / "mup_base_tune.png")


def plot(table: dict[str, dict[int, dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), sharey=True)
    for axis, (name, cells) in zip(axes, table.items(), strict=True):
        for index, width in enumerate(WIDTHS):
            if width in cells:
                axis.plot(cells[width]["lrs"], cells[width]["losses"], marker="o",
                          color=f"C{index}", label=str(width))  # fmt: skip
        axis.set(xscale="log", xlabel="LR", title=name)
        axis.legend(title="width", fontsize=8)
    axes[0].set_ylabel("validation loss")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
