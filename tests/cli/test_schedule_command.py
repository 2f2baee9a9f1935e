"""``megatron-power schedule`` end to end: CSV equals the scheduler, errors are one line."""

import csv
import io
import subprocess
import sys

import pytest
import torch

from megatron_power.cli.main import main
from megatron_power.megatron import PowerOptimizerParamScheduler

FLAGS = [
    "--lr", "0.02", "--min-lr", "0.0002", "--lr-decay-style", "power",
    "--lr-power-a", "4", "--lr-power-b", "-0.51",
    "--global-batch-size", "16", "--seq-length", "128",
    "--train-iters", "400", "--lr-warmup-iters", "20",
    "--lr-wsd-decay-iters", "40", "--lr-wsd-decay-style", "minus_sqrt",
    "--rampup-batch-size", "4", "4", "1600",
]  # fmt: skip


def replaced(flags: list[str], extra: list[str]) -> list[str]:
    """``flags`` with each flag of ``extra`` (and its values) replaced by ``extra``'s: a
    flag given twice is refused, so a test's changed value must replace the first."""
    changed = {word for word in extra if word.startswith("--")}
    kept, skipping = [], False
    for word in flags:
        if word.startswith("--"):
            skipping = word in changed
        if not skipping:
            kept.append(word)
    return kept + extra


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_matches_the_scheduler_step_by_step(capsys):
    code, out, _ = run_cli(["schedule", *FLAGS, "--format", "csv"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))

    # Independent replay: Megatron-LM's loop with its batch ramp written out by hand.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    scheduler = PowerOptimizerParamScheduler(
        optimizer, 0.0, 0.02, 0.0002, 20 * 16, 400 * 16, "power", 0.0, 0.0, 6400, "constant",
        wsd_decay_steps=40 * 16, lr_wsd_decay_style="minus_sqrt", seq_length=128,
    )  # fmt: skip
    expected = [(0, 0, 0.0)]
    while scheduler.num_steps < 6400:
        # ramp 4 -> 16 in steps of 4 over 1600 samples: +4 every 1600/3 samples
        batch = min(16, 4 + 4 * int(scheduler.num_steps // (1600 / 3)))
        scheduler.step(batch)
        expected.append(
            (scheduler.num_steps, scheduler.num_steps * 128, optimizer.param_groups[0]["lr"])
        )
    assert [(int(r["samples"]), int(r["tokens"]), float(r["lr"])) for r in rows] == expected
    assert [int(r["iteration"]) for r in rows] == list(range(len(expected)))
    assert float(rows[-1]["lr"]) == 0.0002  # the tail ends at --min-lr


def test_step_batch_schedule_gives_powers_beta_at_every_step(capsys):
    """--step-batch-size-schedule (Megatron-LM 0.18's, thresholds in tokens): the batch
    column follows it and the LR is REFERENCE.md's formula with each step's beta."""
    seq, a, b, cap = 128, 4.0, -0.51, 0.02
    code, out, _ = run_cli(
        ["schedule", "--lr", str(cap), "--min-lr", "0", "--lr-decay-style", "power",
         "--lr-power-a", str(a), "--lr-power-b", str(b), "--seq-length", str(seq),
         "--train-samples", "3000", "--lr-warmup-samples", "64",
         "--step-batch-size-schedule", "0:8 64K:32 192K:64", "--format", "csv"],
        capsys,
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))[1:]
    samples = 0
    for row in rows:
        batch = 8 if samples < 64_000 // seq else 32 if samples < 192_000 // seq else 64
        assert int(row["global_batch_size"]) == batch, samples
        samples += batch
        n, beta = samples * seq, batch * seq / 4096
        law = min(cap, beta * a * n**b)
        if samples < 64:
            law = samples / 64 * min(cap, beta * a * (64 * seq) ** b)
        assert float(row["lr"]) == pytest.approx(law, rel=1e-12), samples
    assert samples >= 3000 and {int(r["global_batch_size"]) for r in rows} == {8, 32, 64}


def test_csv_every_keeps_the_last_row(capsys):
    _, full, _ = run_cli(["schedule", *FLAGS, "--format", "csv"], capsys)
    _, thinned, _ = run_cli(["schedule", *FLAGS, "--format", "csv", "--every", "50"], capsys)
    header, *data = full.strip().splitlines()
    expected = data[::50] + ([data[-1]] if (len(data) - 1) % 50 else [])
    assert thinned.strip().splitlines() == [header, *expected]


def test_png_is_a_valid_image(tmp_path, capsys):
    png = tmp_path / "lr.png"
    code, out, _ = run_cli(["schedule", *FLAGS, "--png", str(png)], capsys)
    assert code == 0 and "iteration" in out
    from matplotlib.image import imread

    image = imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_existing_outputs_are_kept_unless_forced(tmp_path, capsys):
    """Someone's file at --output/--png survives a run without --force; with it, the
    new CSV (the same as on stdout) and a PNG replace them, and no temporary is left."""
    output, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    output.write_text("someone's table\n")
    png.write_text("someone's picture\n")
    code, _, err = run_cli(["schedule", *FLAGS, "--format", "csv", "--output", str(output),
                            "--png", str(png)], capsys)  # fmt: skip
    assert code == 2 and "exists (--force overwrites it)" in err
    assert output.read_text() == "someone's table\n" and png.read_text() == "someone's picture\n"

    _, stdout, _ = run_cli(["schedule", *FLAGS, "--format", "csv"], capsys)
    code, _, _ = run_cli(["schedule", *FLAGS, "--format", "csv", "--output", str(output),
                          "--png", str(png), "--force"], capsys)  # fmt: skip
    assert code == 0
    assert output.read_text() == stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.csv", "lr.png"]


def test_embedded_default_is_the_papers_schedule(capsys):
    code, out, _ = run_cli(["schedule", "--format", "csv", "--every", "1000"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    by_tokens = {int(r["tokens"]): float(r["lr"]) for r in rows}
    near_1t = min(by_tokens, key=lambda tokens: abs(tokens - 1e12))
    assert by_tokens[near_1t] == pytest.approx(3.1e-3, rel=0.03)
    assert float(rows[-1]["lr"]) == 0.0
    assert int(rows[-1]["tokens"]) == pytest.approx(1.25e12, rel=1e-4)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--lr-power-b", "0.2"], "--lr-power-b"),
        (["--lr-power-a", "-1"], "--lr-power-a"),
        (["--lr-wsd-decay-iters", "900"], "--lr-wsd-decay-iters"),
        (["--lr-wsd-decay-style", "cubic"], "--lr-wsd-decay-style"),
        (["--every", "0"], "--every"),
        (["--lr-wsd-cycle-iters", "300", "200"], "--lr-wsd-cycle-iters"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(extra, flag):
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "schedule", *replaced(FLAGS, extra)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert flag in lines[0]


def test_a_flag_repeated_with_its_own_value_is_the_flag_given_once(capsys):
    """Scripts that compose flags may repeat one; only a changed value is refused."""
    once = run_cli(["schedule", *FLAGS, "--format", "csv"], capsys)
    twice = run_cli(["schedule", *FLAGS, "--lr-power-a", "4", "--format", "csv"], capsys)
    assert once[0] == twice[0] == 0 and once[1] == twice[1]
    with pytest.raises(SystemExit) as refused:  # a usage error, as argparse's own
        main(["schedule", *FLAGS, "--lr-power-a", "5", "--format", "csv"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "megatron-power schedule: error: --lr-power-a: given twice "
        "(--lr-power-a 4.0, then --lr-power-a 5.0); give it once"
    )
