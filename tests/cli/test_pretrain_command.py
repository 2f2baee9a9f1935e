"""``megatron-power pretrain`` end to end on CPU: real Megatron-Core, real datasets."""

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--train-tokens", "40960", "--warmup-tokens", "8192"]  # 20 steps of 16 x 128 tokens


def pretrain(*args, check=True, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "pretrain", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=900, cwd=cwd,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(ours: list[dict], reference: list[dict]) -> None:
    """The same training, step for step: iteration, tokens and LR exactly; loss and grad norm
    within 1e-5. Not bit for bit: two fresh runs on one CI machine (torch 2.14 CPU, MKL and
    oneDNN picking kernels at run time) differed by one float32 ulp in the first step's grad
    norm, before any resume. A resume that lost the data position, the optimiser state or the
    schedule moves the loss by 1e-3 or more."""
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        exact = {key: value for key, value in theirs.items() if key not in ("loss", "grad_norm")}
        assert {key: mine[key] for key in exact} == exact, mine["iteration"]
        assert mine.keys() == theirs.keys()
        for key in ("loss", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine["iteration"], key)


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "trunk"
    pretrain("--run-dir", run_dir, *SMALL)
    return run_dir


def test_loss_falls_well_below_the_unigram_entropy(trunk):
    summary = json.loads((trunk / "summary.json").read_text())
    rows = metrics(trunk)
    assert len(rows) == 20 and rows[-1]["tokens"] == 40960
    last = sum(row["loss"] for row in rows[-5:]) / 5
    assert rows[0]["loss"] > summary["unigram_entropy"] - 0.2  # starts near uniform
    assert last < summary["unigram_entropy"] - 1.0  # learned the transitions
    assert summary["valid_loss"] < summary["unigram_entropy"] - 1.0
    assert summary["valid_loss"] > summary["entropy_rate"] - 0.05  # the floor holds
    config = json.loads((trunk / "config.json").read_text())
    assert config["schedule"]["lr_decay_style"] == "power"
    assert config["mup"]["base_hidden_size"] == 64  # the embedded model's muP


def test_run_directory_has_a_valid_png_and_checkpoint(trunk):
    from matplotlib.image import imread

    image = imread(trunk / "loss_lr.png")
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert (trunk / "checkpoints" / "latest").read_text().strip() == "20"
    assert (trunk / "checkpoints" / "iter_0000020" / "rank000.pt").is_file()


def test_resumed_run_equals_the_uninterrupted_one(trunk, tmp_path):
    interrupted = tmp_path / "interrupted"
    stopped = pretrain("--run-dir", interrupted, *SMALL, "--exit-interval", "8")
    assert "continue with --resume" in stopped.stdout
    assert len(metrics(interrupted)) == 8
    pretrain("--resume", interrupted)
    assert_same_run(metrics(interrupted), metrics(trunk))


def test_step_batch_size_schedule_gives_powers_beta_and_resumes(tmp_path):
    """--step-batch-size-schedule (Megatron-LM 0.18's, thresholds in tokens): each step's
    batch follows it, the LR is REFERENCE.md's Power formula with that step's beta, and a
    run stopped and resumed mid-schedule equals the uninterrupted one."""
    seq, a, b, cap, warmup = 128, 4.0, -0.51, 0.02, 2048
    flags = ["--train-tokens", "40960", "--seq-length", seq, "--lr-decay-style", "power",
             "--lr", cap, "--lr-power-a", a,
             "--lr-power-b", b, "--warmup-tokens", warmup, "--decay-tokens", 0,
             "--step-batch-size-schedule", "0:4 4K:8 16K:16"]  # fmt: skip
    full = tmp_path / "full"
    pretrain("--run-dir", full, *flags)
    rows = metrics(full)
    samples, previous = 0, None
    for row in rows:
        batch = 4 if samples < 4000 // seq else 8 if samples < 16000 // seq else 16
        assert row["global_batch_size"] == batch, samples
        # The LR a step uses was set after the step before it (Megatron-LM's loop), with
        # that step's batch as beta; the first step's is the warmup's start, 0.
        want = 0.0
        if previous is not None:
            beta = previous * seq / 4096

            def law(n, beta=beta):
                return min(cap, beta * a * n**b)

            n = samples * seq
            want = n / warmup * law(warmup) if n < warmup else law(n)
        assert row["lr"] == pytest.approx(want, rel=1e-12), samples
        samples, previous = samples + batch, batch
        assert row["tokens"] == samples * seq
    assert {row["global_batch_size"] for row in rows} == {4, 8, 16}
    assert samples * seq <= 40960 < (samples + 16) * seq  # whole steps within the budget

    stopped = tmp_path / "stopped"
    pretrain("--run-dir", stopped, *flags, "--exit-interval", "10")  # inside the 8 phase
    pretrain("--resume", stopped)
    assert metrics(stopped) == rows

    both = pretrain("--run-dir", tmp_path / "both", *flags, "--global-batch-size", "16",
                    check=False)  # fmt: skip
    assert both.returncode == 2
    assert (
        both.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "--step-batch-size-schedule: give it or --global-batch-size, not both "
            "(Megatron's rule: the schedule's last batch is the run's)"
        )
    )


def test_branch_decay_turns_a_checkpoint_into_a_budget_model(trunk, tmp_path):
    stable = tmp_path / "stable"  # the trunk's tail is its last fifth: stop before it
    pretrain("--run-dir", stable, *SMALL, "--exit-interval", "10")
    branch = tmp_path / "branch"
    pretrain("--init-from", stable / "checkpoints/iter_0000010", "--run-dir", branch,
             "--branch-decay-tokens", "20480", "--decay-shape", "linear")  # fmt: skip
    rows = metrics(branch)
    assert [row["iteration"] for row in rows] == list(range(11, 21))
    assert rows[0]["lr"] == metrics(trunk)[10]["lr"]  # starts from the stable curve
    lrs = [row["lr"] for row in rows]
    assert all(b < a for a, b in itertools.pairwise(lrs))  # decaying throughout
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["final_lr"] == 0.0  # min_lr exactly at the end of the branch


def test_a_branch_stops_at_its_exit_interval(tmp_path):
    stable = tmp_path / "stable"
    pretrain("--run-dir", stable, *SMALL, "--exit-interval", "10")
    branch = tmp_path / "branch"
    stopped = pretrain("--init-from", stable / "checkpoints/iter_0000010", "--run-dir", branch,
                       "--branch-decay-tokens", "20480", "--exit-interval", "3")  # fmt: skip
    assert "checkpoint at iteration 13" in stopped.stdout
    assert [row["iteration"] for row in metrics(branch)] == [11, 12, 13]
    pretrain("--resume", branch)
    assert [row["iteration"] for row in metrics(branch)] == list(range(11, 21))


def test_resume_with_a_new_schedule_needs_the_override_and_then_follows_it(tmp_path):
    from megatron_power.training.config import PretrainConfig
    from megatron_power.training.resume import lr_curve

    run_dir = tmp_path / "run"
    pretrain("--run-dir", run_dir, *SMALL, "--exit-interval", "10")
    trained = PretrainConfig.load(run_dir / "config.json")
    refused = pretrain("--resume", run_dir, "--lr", "0.01", "--lr-power-a", "0.3", check=False)
    assert refused.returncode == 2
    assert "--lr 0.02 -> 0.01, --lr-power-a 0.6308 -> 0.3" in refused.stderr
    assert len(metrics(run_dir)) == 10  # nothing ran
    accepted = pretrain("--resume", run_dir, "--lr", "0.01", "--lr-power-a", "0.3",
                        "--override-opt-param-scheduler")  # fmt: skip
    assert "continuing with the new schedule: --lr 0.02 -> 0.01" in accepted.stdout
    asked = PretrainConfig.load(run_dir / "config.json")
    assert asked.schedule["max_lr"] == 0.01 and asked.schedule["lr_power_a"] == 0.3
    logged = [row["lr"] for row in metrics(run_dir)]
    assert logged[:10] == lr_curve(trained, 10)  # the step's LR: base group, old schedule
    assert logged[10:] == lr_curve(asked, 20)[10:]  # every step after: the new one
    assert logged[10] != lr_curve(trained, 11)[10]  # (which differs from the old)


def test_a_branch_from_inside_the_trunks_decay_is_refused(trunk, tmp_path):
    branch = tmp_path / "branch"
    result = pretrain("--init-from", trunk / "checkpoints/iter_0000020", "--run-dir", branch,
                      "--branch-decay-tokens", "20480", check=False)  # fmt: skip
    assert result.returncode == 2
    assert "lies inside the trunk's decay (tokens 32768-40960)" in result.stderr
    assert not branch.exists()


def test_wsd_s_cycles_end_to_end(tmp_path):
    run_dir = tmp_path / "wsds"
    pretrain("--run-dir", run_dir, *SMALL, "--lr-decay-style", "WSD", "--lr", "0.01",
             "--decay-tokens", "4096", "--wsd-cycle-tokens", "20480", "40960",
             "--decay-shape", "linear")  # fmt: skip
    lr_by_tokens = {row["tokens"]: row["lr"] for row in metrics(run_dir)}
    # Logged LR is the one each step used: the step ending at 20480 tokens ran at the
    # LR after 18432 tokens (half-way down), the next one at the bottom, then back up.
    assert lr_by_tokens[18432] == 0.01
    assert lr_by_tokens[20480] == pytest.approx(0.005)
    assert lr_by_tokens[22528] == 0.0
    assert lr_by_tokens[24576] == 0.01
    assert json.loads((run_dir / "summary.json").read_text())["final_lr"] == 0.0


def test_tensor_parallel_run_equals_one_rank(trunk, tmp_path):
    run_dir = tmp_path / "tp2"
    pretrain("--run-dir", run_dir, *SMALL, "--nproc", "2", "--tp", "2")
    for ours, reference in zip(metrics(run_dir), metrics(trunk), strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert ours["lr"] == reference["lr"]


def test_moe_with_expert_parallelism_learns(tmp_path):
    run_dir = tmp_path / "moe"
    pretrain("--run-dir", run_dir, *SMALL, "--model", "moe", "--nproc", "2", "--ep", "2")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["valid_loss"] < summary["unigram_entropy"] - 1.0


def test_text_data_is_tokenized_with_sentencepiece(tmp_path):
    words = "the cat sat on a mat while dogs ran far from home and birds sang".split()  # noqa: SIM905
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(40))})
             for i in range(300)]  # fmt: skip
    corpus.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "text"
    pretrain("--run-dir", run_dir, "--data", corpus, "--vocab-size", "100", *SMALL)
    meta = json.loads((run_dir / "data/tokens.json").read_text())
    assert (run_dir / "tokenizer.model").is_file() and meta["num_tokens"] > 300 * 10
    rows = metrics(run_dir)
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--nproc", "2", "--tp", "3"], "--nproc"),
        (["--lr-power-b", "0.3"], "--lr-power-b"),
        (["--data", "/no/such/file.txt"], "--data"),
        (["--ep", "2", "--nproc", "2"], "--ep"),
        (["--mup-base-hidden-size", "48"], "--mup-base-hidden-size"),
        (["--branch-decay-tokens", "100"], "--branch-decay-tokens"),
        (["--resume", "/no/such/run"], "--resume"),
        (["--model", "gpt5"], "--model"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, flag, tmp_path):
    result = pretrain("--run-dir", tmp_path / "bad", *args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize(("mup", "code"), [(True, 0), (False, 1)], ids=["mup", "standard"])
def test_coord_check_command(tmp_path, mup, code):
    png = tmp_path / "coord.png"
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "coord-check", "--png", png,
         "--widths", "128", "256", "512", "1024", *([] if mup else ["--no-mup"])],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == code, result.stderr[-2000:]
    verdicts = [
        line.split() for line in result.stdout.splitlines() if line.startswith(("init", "trained"))
    ]
    assert {(v[0], v[1]) for v in verdicts} >= {("trained", "layer2"), ("trained", "logits")}
    if mup:
        assert all(v[-1] == "pass" for v in verdicts)
    else:
        assert any(v[1] == "layer2" and v[-1] == "FAIL" for v in verdicts)
    from matplotlib.image import imread

    assert imread(png).shape[0] > 100


def test_resume_falls_back_past_an_unreadable_checkpoint_and_ignores_partial_ones(trunk, tmp_path):
    """A killed save can leave a truncated file (older versions) or a partial directory;
    resume takes the newest checkpoint every rank can read, says so, and the run still
    equals the uninterrupted one."""
    run_dir = tmp_path / "crashed"
    pretrain("--run-dir", run_dir, *SMALL, "--exit-interval", "4")
    pretrain("--resume", run_dir, "--exit-interval", "4")
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "8\n"
    (checkpoints / "iter_0000008" / "rank000.pt").write_bytes(b"")  # truncated by a crash
    junk = checkpoints / "iter_0000012.partial"
    junk.mkdir()
    (junk / "rank000.pt").write_bytes(b"half written")
    result = pretrain("--resume", run_dir)
    assert "resuming from" in result.stdout and "iter_0000004" in result.stdout
    assert "iter_0000008 unreadable" in result.stdout
    assert_same_run(metrics(run_dir), metrics(trunk))
    assert not junk.exists()  # the next save clears partial directories
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "iter_0000004", "iter_0000008", "iter_0000020", "latest"
    ]  # fmt: skip


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_checkpoint(tmp_path):
    """--lr 1e30: iteration 1 uses the warmup's initial LR 0 (checkpointed), later ones
    blow the weights up; the run stops at the first non-finite loss, before saving."""
    run_dir = tmp_path / "diverging"
    flags = ["--lr", "1e30", "--lr-decay-style", "constant", *SMALL]
    pretrain("--run-dir", run_dir, *flags, "--exit-interval", "1")
    before = (run_dir / "checkpoints" / "iter_0000001" / "rank000.pt").read_bytes()
    result = pretrain("--resume", run_dir, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megatron-power pretrain: stopped: loss is")
    assert "training diverged" in last and "Traceback" not in result.stderr
    stopped_at = int(last.split(" at iteration ")[1].split(":")[0])
    rows = metrics(run_dir)  # every logged step before the stop had a finite loss
    assert stopped_at > 1 and len(rows) == stopped_at - 1
    assert all(math.isfinite(row["loss"]) for row in rows)
    assert (run_dir / "checkpoints" / "latest").read_text() == "1\n"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_0000001", "latest"]
    assert (run_dir / "checkpoints" / "iter_0000001" / "rank000.pt").read_bytes() == before


def test_a_new_run_or_branch_never_writes_over_a_run(trunk, tmp_path):
    before = {p: p.read_bytes() for p in trunk.rglob("*") if p.is_file()}
    stable = tmp_path / "stable"  # a checkpoint a branch may start from (before the tail)
    pretrain("--run-dir", stable, *SMALL, "--exit-interval", "10")
    fresh = pretrain("--run-dir", trunk, *SMALL, check=False)
    branch = pretrain("--init-from", stable / "checkpoints/iter_0000010", "--run-dir", trunk,
                      "--branch-decay-tokens", "20480", check=False)  # fmt: skip
    for result in (fresh, branch):
        assert result.returncode == 2
        assert (
            f"--run-dir: {trunk} already holds a run; continue it with --resume"
            in (result.stderr.strip().splitlines()[-1])
        )
    assert {p: p.read_bytes() for p in trunk.rglob("*") if p.is_file()} == before


def test_a_copied_run_directory_resumes_where_it_now_is(trunk, tmp_path):
    """A run directory records no path to itself: a copy, resumed by its absolute path
    from another working directory, trains on in the copy and leaves the original alone."""
    original = tmp_path / "original"
    pretrain("--run-dir", original, *SMALL, "--exit-interval", "8")
    recorded = (original / "config.json").read_text()
    assert str(original) not in recorded and '"run_dir"' not in recorded
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(original, elsewhere / "copy")
    pretrain("--resume", (elsewhere / "copy").resolve(), cwd=elsewhere.parent.parent)
    assert_same_run(metrics(elsewhere / "copy"), metrics(trunk))
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
