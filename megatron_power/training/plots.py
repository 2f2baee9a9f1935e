"""The run's PNG: loss and learning rate against tokens."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import save_figure_atomically


def plot_run(metrics: Path, out: Path, floor: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tokens = [row["tokens"] for row in rows]
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    loss_axis.plot(tokens, [row["loss"] for row in rows], label="training loss")
    if floor is not None:
        loss_axis.axhline(floor, color="grey", linestyle="--", label="entropy rate (floor)")
    loss_axis.set_ylabel("loss (nats/token)")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    lr_axis.plot(tokens, [row["lr"] for row in rows], color="tab:orange")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("tokens")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure_atomically(figure, out)
    plt.close(figure)
