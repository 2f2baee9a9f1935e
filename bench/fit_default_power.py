"""Fit the Power law's a and b for ``megatron-power pretrain``'s embedded default.

The paper's method in miniature: WSD runs of the default model on the default Markov
data over an LR grid at several token budgets; per budget the optimal LR is the minimum
of a parabola fitted to (log2 LR, validation loss) around the grid's best point; then
log(eta_opt / beta) = log a + b log T is fitted by least squares (beta = batch tokens /
4096). Prints a table and writes bench/results/fit_default_power.{md,json}.

    python bench/fit_default_power.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
BATCH_TOKENS = 16 * 128  # the default global batch x sequence length
REFERENCE = 4096


def run(run_dir: Path, lr: float, tokens: int) -> float:
    command = [
        sys.executable, "-m", "megatron_power.cli.main", "pretrain", "--run-dir", str(run_dir),
        "--lr-decay-style", "WSD", "--lr", str(lr), "--train-tokens", str(tokens),
        "--warmup-tokens", "8192", "--decay-tokens", str(tokens // 5),
        "--decay-shape", "exponential_e",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads((run_dir / "summary.json").read_text())["valid_loss"]


def optimum(lrs: list[float], losses: list[float]) -> float:
    """LR at the minimum of a parabola through the best grid point and its neighbours."""
    best = int(np.argmin(losses))
    window = slice(max(0, best - 1), min(len(lrs), best + 2))
    x = np.log2(lrs[window])
    y = np.asarray(losses[window])
    if len(x) < 3:
        return lrs[best]
    curvature, slope, _ = np.polyfit(x, y, 2)
    if curvature <= 0:
        return lrs[best]
    return float(2 ** np.clip(-slope / (2 * curvature), x.min(), x.max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.0025, 0.005, 0.01, 0.02, 0.04])
    parser.add_argument("--budgets", type=int, nargs="+", default=[102_400, 204_800, 409_600])
    args = parser.parse_args()
    lrs = np.asarray(sorted(args.lrs))
    grid, optima = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in args.budgets:
            losses = [run(Path(tmp) / f"t{tokens}-lr{lr}", lr, tokens) for lr in lrs]
            grid[tokens] = losses
            optima[tokens] = optimum(lrs, losses)
            print(
                f"T={tokens}: "
                + ", ".join(f"{lr:g}:{loss:.4f}" for lr, loss in zip(lrs, losses, strict=True))
                + f" -> eta_opt {optima[tokens]:.4g}"
            )
    beta = BATCH_TOKENS / REFERENCE
    log_t = np.log(list(optima))
    log_gamma = np.log(np.asarray(list(optima.values())) / beta)
    b, log_a = np.polyfit(log_t, log_gamma, 1)
    a = math.exp(log_a)
    lines = ["| tokens | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | eta_opt |",
             "| ---: | " + " | ".join("---:" for _ in lrs) + " | ---: |"]  # fmt: skip
    for tokens, losses in grid.items():
        cells = " | ".join(f"{loss:.4f}" for loss in losses)
        lines.append(f"| {tokens} | {cells} | {optima[tokens]:.4g} |")
    table = "\n".join(lines)
    verdict = f"fit: eta_opt / beta = {a:.4g} * T^{b:.4f}  (beta = {beta:g})"
    print(table)
    print(verdict)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_default_power.md").write_text(
        "# Power a, b for the embedded default (WSD sweep, validation loss)\n\n"
        f"{table}\n\n{verdict}\n"
    )
    (RESULTS / "fit_default_power.json").write_text(
        json.dumps(
            {
                "a": a,
                "b": b,
                "beta": beta,
                "optima": optima,
                "grid": {str(k): v for k, v in grid.items()},
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
