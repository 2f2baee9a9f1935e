"""Optimal LR vs width under muP and under standard parameterisation (SP).

Two ``megatron-power sweep`` grids (WSD, one token budget, LR x width over an 8x range,
muP base = the smallest width), then the optimum per width from ``megatron-power fit``'s
parabola. Goal: under muP the optimum moves at most one x2 grid step over the range, and
muP's best loss at each width is no worse than SP's. Prints a table and writes
bench/results/width_transfer.{md,json,png}; finished runs in --work-dir are reused.

    python bench/width_transfer.py     # widths 32-256, 6-7 LRs each for muP and SP: ~15 min

Each parameterisation has its own x2 LR grid (SP's optimum falls with width, muP's should
not), wide enough that no width's best LR sits on the edge.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def sweep(work: Path, name: str, args, extra: str, lrs: list[float]) -> list[dict]:
    command = [
        sys.executable, "-m", "megatron_power.cli.main", "sweep", "--sweep-dir", str(work / name),
        "--lrs", *map(str, lrs), "--hidden-sizes", *map(str, args.widths),
        "--train-tokens", str(args.train_tokens), "--global-batch-sizes", "16",
        "--seq-length", "128", "--extra-args", extra, "--threads-per-run", str(args.threads),
    ]  # fmt: skip
    subprocess.run(command, check=False)
    lines = (work / name / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="bench/work/width_transfer")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--mup-lrs", type=float, nargs="+",
                        default=[2.0**-k for k in range(7, 1, -1)])  # fmt: skip
    parser.add_argument("--sp-lrs", type=float, nargs="+",
                        default=[2.0**-k for k in range(11, 4, -1)])  # fmt: skip
    parser.add_argument("--train-tokens", type=int, default=102_400)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from megatron_power.sweep.fit import cells_from_results

    work = Path(args.work_dir)
    base = min(args.widths)
    common = f"--num-layers {args.num_layers} --head-dim 16"
    # The embedded model's multipliers, at this sweep's base width.
    mup_flags = (f"{common} --mup-base-hidden-size {base} --mup-embedding-multiplier 4.0 "
                 "--mup-residual-multiplier 0.5")  # fmt: skip
    table = {}
    for name, extra, lrs in (("mup", mup_flags, args.mup_lrs),
                             ("sp", f"{common} --no-mup", args.sp_lrs)):  # fmt: skip
        cells = cells_from_results(sweep(work, name, args, extra, lrs))
        table[name] = {cell.hidden_size: cell for cell in cells}
    lines = [
        f"# Optimal LR vs width, muP vs SP ({args.num_layers} layers, head_dim 16, "
        f"{args.train_tokens} tokens, WSD; muP base width {base})",
        "",
        "| width | muP eta_opt | muP best loss | SP eta_opt | SP best loss | muP - SP loss |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for width in args.widths:
        mup, sp = table["mup"].get(width), table["sp"].get(width)
        if mup is None or sp is None:
            continue
        edge = lambda cell: "*" if cell.on_edge else ""  # noqa: E731
        lines.append(f"| {width} | {mup.eta_opt:.4g}{edge(mup)} | {mup.best_loss:.4f} | "
                     f"{sp.eta_opt:.4g}{edge(sp)} | {sp.best_loss:.4f} | "
                     f"{mup.best_loss - sp.best_loss:+.4f} |")  # fmt: skip
    shift, sp_shift = (optimum_shift(table[name]) for name in ("mup", "sp"))
    shared = [w for w in args.widths if w in table["mup"] and w in table["sp"]]
    worse = [w for w in shared if table["mup"][w].best_loss > table["sp"][w].best_loss]
    edges = [f"{n} {w}" for n in table for w, cell in table[n].items() if cell.on_edge]
    lines += ["", f"muP optimum moves {shift:.2f} x2-steps over {max(args.widths) // base}x width "
              f"(goal <= 1); SP's moves {sp_shift:.2f}. muP's best loss is "
              + (f"worse than SP's at widths {worse}" if worse else "no worse than SP's at "
                 "every width") + " (goal: no worse). "
              + (f"Best LR on the grid's edge (*): {', '.join(edges)}." if edges
                 else "No best LR on a grid edge.")]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "width_transfer.md").write_text(text)
    plot(table, args.widths, RESULTS / "width_transfer.png")


def optimum_shift(cells: dict) -> float:
    """How far the optimal LR moves over the widths, in x2 grid steps."""
    optima = [cell.eta_opt for cell in cells.values()]
    return math.log2(max(optima) / min(optima)) if optima else float("nan")


def plot(table, widths, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, name in zip(axes, ("mup", "sp"), strict=True):
        for index, width in enumerate(widths):
            cell = table[name].get(width)
            if cell is not None:
                axis.plot(cell.lrs, cell.losses, marker="o", color=f"C{index}", label=f"{width}")
        axis.set(xscale="log", xlabel="LR", title="muP" if name == "mup" else "SP")
        axis.legend(title="width", fontsize=8)
    axes[0].set_ylabel("validation loss")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
