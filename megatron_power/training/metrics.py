"""Rank 0's record of a run: metrics.jsonl, the progress bar, the summary and the plot."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ..files import atomic_write_text
from .config import PretrainConfig
from .rundir import RunDir


class Progress:
    """metrics.jsonl rows and a tqdm bar. Rows past the checkpoint a run resumes from are
    dropped: the resumed run recomputes them identically."""

    def __init__(self, run: RunDir, config: PretrainConfig, start: int, meta: dict) -> None:
        from tqdm import tqdm

        self.run = run
        self.config = config
        self.floor = meta.get("entropy_rate")
        kept = []
        if run.metrics.exists():
            kept = [line for line in run.metrics.read_text().splitlines()
                    if json.loads(line)["iteration"] <= start]  # fmt: skip
        run.metrics.write_text("".join(line + "\n" for line in kept))
        self.bar = tqdm(total=config.train_iters, initial=start, unit="it", file=sys.stderr,
                        dynamic_ncols=True, disable=None)  # fmt: skip
        if self.floor is not None:
            self.bar.write(
                f"loss floor (entropy rate of the source): {self.floor:.4f} nats/token; "
                f"unigram entropy {meta['unigram_entropy']:.4f}"
            )
        self.tick = time.perf_counter()

    def record(self, iteration: int, tokens: int, loss: float, lr: float, grad_norm: float,
               batch: int) -> None:  # fmt: skip
        """One step: ``tokens`` seen after it, the LR it used, its global ``batch``."""
        now = time.perf_counter()
        row = {"iteration": iteration, "tokens": tokens, "loss": loss, "lr": lr,
               "grad_norm": grad_norm}  # fmt: skip
        if self.config.step_batch_size_schedule is not None:
            row["global_batch_size"] = batch
        with self.run.metrics.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.bar.update(1)
        self.bar.set_postfix(
            tokens=f"{tokens:.3g}", loss=f"{loss:.4f}", lr=f"{lr:.2e}",
            tok_s=f"{batch * self.config.seq_length / max(now - self.tick, 1e-9):.0f}",
        )  # fmt: skip
        self.tick = now

    def stopped(self, iteration: int) -> None:
        self.bar.close()
        print(f"exit interval reached: checkpoint at iteration {iteration}; "
              f"continue with --resume {self.run.path}")  # fmt: skip

    def finished(self, summary: dict[str, Any]) -> None:
        from .plots import plot_run

        self.bar.close()
        atomic_write_text(self.run.summary, json.dumps(summary, indent=2) + "\n")
        plot_run(self.run.metrics, self.run.plot, floor=self.floor)
