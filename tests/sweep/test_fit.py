"""The power-law fit against synthetic sweeps made from a known law (and noise)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from megatron_power.sweep.fit import cells_from_results, fit_report, optimum, recommended_flags

SEQ = 128


def synthetic_records(a, b, c, noise, seed=0, batches=(8, 16, 32), budgets=(1e5, 2e5, 4e5, 8e5)):
    """Loss = floor(T) + k (log2 lr - log2 eta_opt)^2 + noise, eta_opt = a beta^c T^b."""
    rng = np.random.default_rng(seed)
    lrs = [1e-4 * 2**i for i in range(12)]
    records = []
    for batch in batches:
        beta = batch * SEQ / 4096
        for tokens in budgets:
            eta = a * beta**c * tokens**b
            for lr in lrs:
                loss = 2.0 + 50 / math.sqrt(tokens) + 0.04 * (math.log2(lr / eta)) ** 2
                loss += rng.normal(0, noise)
                params = {"lr": lr, "global_batch_size": batch, "seq_length": SEQ,
                          "train_tokens": int(tokens), "hidden_size": 128, "seed": 0}  # fmt: skip
                records.append({"status": "ok", "valid_loss": loss, "params": params})
    return records


def test_optimum_is_the_parabola_vertex_between_grid_points():
    lrs = [0.001, 0.002, 0.004, 0.008]
    losses = [(math.log2(lr) - math.log2(0.003)) ** 2 for lr in lrs]
    eta, edge = optimum(lrs, losses)
    assert not edge and eta == pytest.approx(0.003, rel=1e-9)
    assert optimum(lrs, [1, 2, 3, 4]) == (0.001, True)  # best at the edge: flagged


@pytest.mark.parametrize("true_c", [1.0, 0.5])
def test_fit_recovers_a_b_and_the_batch_exponent(true_c):
    a, b = 2.5, -0.4
    report = fit_report(cells_from_results(synthetic_records(a, b, true_c, noise=3e-4)))
    fit = report.free_c
    assert fit.a.value == pytest.approx(a, rel=0.1) and fit.a.contains(a)
    assert fit.b.value == pytest.approx(b, abs=0.02) and fit.b.contains(b)
    assert fit.c.value == pytest.approx(true_c, abs=0.05) and fit.c.contains(true_c)
    assert report.c_is_one is (true_c == 1.0)
    flags = recommended_flags(report)
    assert ("--lr-power-batch-exponent" in flags) is (true_c != 1.0)
    if true_c == 1.0:  # the paper's form fits just as well
        assert report.paper.a.value == pytest.approx(a, rel=0.1)
        assert report.paper.b.value == pytest.approx(b, abs=0.02)


def test_failed_runs_and_edge_cells_stay_out_of_the_fit():
    records = synthetic_records(2.5, -0.4, 1.0, noise=0.0, batches=(16,))
    records.append({"status": "failed", "valid_loss": None, "params": records[0]["params"]})
    edge = [r for r in synthetic_records(500.0, -0.4, 1.0, noise=0.0, budgets=(1.6e6,))
            if r["params"]["global_batch_size"] == 16]  # fmt: skip
    report = fit_report(cells_from_results(records + edge))
    assert len(report.cells) == 5 and report.paper.cells == 4
    assert report.free_c is None  # one batch size: c cannot be fitted
    assert any("edge" in note for note in report.notes)
    assert report.paper.a.value == pytest.approx(2.5, rel=1e-6)


def test_fit_command_prints_flags_and_writes_a_plot(tmp_path):
    results = tmp_path / "results.jsonl"
    lines = [json.dumps(r) for r in synthetic_records(2.5, -0.4, 1.0, noise=3e-4)]
    results.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "fit", str(results),
         "--json", str(tmp_path / "fit.json")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Power flags: --lr-decay-style power --lr-power-a 2." in out
    assert "the data supports c = 1" in out
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fit = json.loads((tmp_path / "fit.json").read_text())[0]
    assert fit["paper"]["b"]["value"] == pytest.approx(-0.4, abs=0.02)


def test_a_second_fit_replaces_its_own_plot_but_keeps_a_named_json_unless_forced(tmp_path):
    results = tmp_path / "results.jsonl"
    lines = [json.dumps(r) for r in synthetic_records(2.5, -0.4, 1.0, noise=3e-4)]
    results.write_text("\n".join(lines) + "\n")
    fit = [sys.executable, "-m", "megatron_power.cli.main", "fit", str(results)]
    (tmp_path / "fit.png").write_text("an old plot of this fit")
    (tmp_path / "kept.json").write_text("someone's fit\n")
    refused = subprocess.run([*fit, "--json", str(tmp_path / "kept.json")],
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"megatron-power fit: error: --json: {tmp_path / 'kept.json'} exists "
        "(--force overwrites it)")  # fmt: skip
    assert (tmp_path / "kept.json").read_text() == "someone's fit\n"
    assert (tmp_path / "fit.png").read_text() == "an old plot of this fit"  # refused first

    subprocess.run([*fit, "--json", str(tmp_path / "kept.json"), "--force"], check=True,
                   capture_output=True)  # fmt: skip
    assert json.loads((tmp_path / "kept.json").read_text())[0]["paper"]["b"]["value"] < 0
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_fit_exits_non_zero_when_a_and_b_are_not_identified(tmp_path):
    """Two cells with an interior optimum give a and b without a residual (infinite
    confidence intervals): no flags, a non-zero exit saying what is needed."""
    records = synthetic_records(2.5, -0.4, 1.0, noise=0.0, batches=(16,), budgets=(1e5, 2e5))
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "fit", str(results)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Power flags" not in result.stdout
    assert "not identified: 2 cell(s)" in result.stdout
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "megatron-power fit: error: RESULTS: no fit for width(s) 128: a and b need at least 3"
        )
    )


def test_fit_refuses_records_that_are_not_sweep_records(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"status": "ok", "valid_loss": 2.5, "id": "x"}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "fit", str(results)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "record 'x' has no params with lr" in result.stderr
