"""``megatron-power mup-tune`` on real pretrain runs: it finds a multiplier that is known to
be right, its flags train the model it names, and a second call reuses every run."""

from __future__ import annotations

import json
import subprocess
import sys

TINY = ["--hidden-size", "32", "--lrs", "0.01", "0.03", "--train-tokens", "8192",
        "--global-batch-size", "8", "--seq-length", "64", "--warmup-fraction", "0.125",
        "--extra-args", "--num-layers 1 --head-dim 16"]  # fmt: skip


def mup_tune(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "mup-tune", *map(str, args)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def test_tune_picks_the_multipliers_that_train_and_reuses_its_runs(tmp_path):
    tune_dir = tmp_path / "tune"
    # A readout multiplier of 1e-3 keeps the logits near zero (loss near log(vocab)) and an
    # init std of 3 starts the model far off: the tune must reject both.
    args = ["--tune-dir", tune_dir, *TINY, "--output-multipliers", "0.001", "1",
            "--init-stds", "0.02", "3"]  # fmt: skip
    first = mup_tune(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tune_dir / "tune.json").read_text())
    assert result["chosen"] == {"output_multiplier": 1.0, "init_std": 0.02}
    assert result["flags"] == (
        "--mup-base-hidden-size 32 --mup-output-multiplier 1 --mup-init-std 0.02"
    )
    # Each candidate's best loss is its own sweep's lowest validation loss.
    tried = {tuple(sorted(t["values"].items())): t["best_loss"] for t in result["tried"]}
    assert len(tried) == 3  # the start (1, 0.02) once, then 0.001 and 3
    for values, best in tried.items():
        name = ",".join(
            f"{k}={v!r}" for k, v in sorted(values, key=lambda kv: kv[0] != "output_multiplier")
        )
        losses = [json.loads(f.read_text())["valid_loss"]
                  for f in (tune_dir / name / "results").glob("*.json")]  # fmt: skip
        assert len(losses) == 2 and best == min(losses)
    assert result["best_loss"] < min(b for v, b in tried.items() if dict(v) != result["chosen"])
    # The readout's 1 is on the edge of its list: the note says by how much it beat 0.001,
    # so that a user can tell a real edge from a flat plateau.
    gain = tried[("init_std", 0.02), ("output_multiplier", 0.001)] - result["best_loss"]
    assert (f"--mup-output-multiplier 1 is on the edge of --output-multipliers "
            f"({gain:.2g} nats better than 0.001)") in first.stdout  # fmt: skip

    # The printed flags reach the model: config.json of a run with them holds the values.
    run_dir = tmp_path / "run"
    flags = result["flags"].split()
    train = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "pretrain", "--run-dir", run_dir,
         "--hidden-size", "64", "--num-layers", "1", "--head-dim", "16", "--seq-length", "64",
         "--global-batch-size", "8", "--train-tokens", "1024", "--warmup-tokens", "512",
         *flags],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    from megatron_power.mup.rules import MupConfig

    mup = MupConfig.from_dict(json.loads((run_dir / "config.json").read_text())["mup"])
    assert (mup.base_hidden_size, mup.output_multiplier, mup.init_std) == (32, 1.0, 0.02)

    # Again: nothing is rerun (every result file untouched) and the same choice is printed.
    stamps = {f: f.stat().st_mtime_ns for f in tune_dir.glob("*/results/*.json")}
    second = mup_tune(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {f: f.stat().st_mtime_ns for f in tune_dir.glob("*/results/*.json")} == stamps
    assert result["flags"] in second.stdout
