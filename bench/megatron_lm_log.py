"""Read Megatron-LM training logs (plain.log, plugin.log, resumed.log in one folder) and
report iteration time with and without megatron-power, and resumed vs uninterrupted loss.

    python bench/megatron_lm_log.py OUT_DIR RESUME_ITERATION
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

LINE = re.compile(
    r"iteration\s+(\d+)/\s*\d+ .*?elapsed time per iteration \(ms\): ([\d.]+) \| "
    r"learning rate: ([\dE.+-]+) .*?lm loss: ([\dE.+-]+)"
)


def read(log: Path) -> dict[int, dict[str, float]]:
    rows = {}
    if not log.is_file():
        return rows
    for match in LINE.finditer(log.read_text(errors="replace")):
        iteration, ms, lr, loss = match.groups()
        rows[int(iteration)] = {"ms": float(ms), "lr": float(lr), "loss": float(loss)}
    return rows


def main() -> None:
    out, resume_at = Path(sys.argv[1]), int(sys.argv[2])
    runs = {name: read(out / f"{name}.log") for name in ("plain", "plugin", "resumed")}
    timed = {
        name: statistics.median(r["ms"] for i, r in rows.items() if i > max(rows) // 6)
        if rows
        else None
        for name, rows in runs.items()
    }
    shared = sorted(set(runs["plugin"]) & set(runs["resumed"]))
    shared = [i for i in shared if i > resume_at]
    result = {
        "iterations_logged": {name: len(rows) for name, rows in runs.items()},
        "median_ms_per_iteration_after_warmup": timed,
        "ratio_plugin_over_plain": (
            timed["plugin"] / timed["plain"] if timed["plugin"] and timed["plain"] else None
        ),
        "resume_compared_iterations": shared,
        "max_abs_loss_difference_resumed_vs_uninterrupted": max(
            (abs(runs["plugin"][i]["loss"] - runs["resumed"][i]["loss"]) for i in shared),
            default=None,
        ),
        "lr_equal_at_every_compared_iteration": all(
            runs["plugin"][i]["lr"] == runs["resumed"][i]["lr"] for i in shared
        ),
        "muP_applied_line": next(
            (
                line
                for line in (out / "plugin.log").read_text(errors="replace").splitlines()
                if "megatron-power: muP applied" in line
            ),
            None,
        )
        if (out / "plugin.log").is_file()
        else None,
        "final_loss": {
            name: rows[max(rows)]["loss"] if rows else None for name, rows in runs.items()
        },
    }
    (out / "megatron_lm_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print("| run | median ms/iteration (after the first sixth) | final lm loss |")
    print("| --- | --- | --- |")
    for name in runs:
        print(f"| {name} | {timed[name]} | {result['final_loss'][name]} |")
    print()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
