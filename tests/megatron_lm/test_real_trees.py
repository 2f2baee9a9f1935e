"""The real ``pretrain_gpt.py`` of every Megatron-LM release tree for this Python line, on
CPU with gloo, through the launcher and through the patch (tests/support/megatron_lm_run.py
records what Megatron applied from its own optimizer and model).

The trees are the archives in ../shared/megatron-lm/ (their README says which Python line
each one runs on); expectations are computed here from the paper's formula and the muP
rules of REFERENCE.md, never from the plugin's code.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.megatron_lm_trees import ARCHIVES, LINE, archives_for_this_line, unpack

REPO = Path(__file__).resolve().parents[2]
TREES = archives_for_this_line()


def test_the_release_trees_are_here():
    """CI has ../shared beside the clone: a missing archive is a failure, not a skip."""
    assert TREES, f"no Megatron-LM archives for Python {LINE} in {ARCHIVES}"
    for name in TREES:
        assert (ARCHIVES / name).is_file(), name


@pytest.fixture(scope="module", params=TREES)
def tree(request, tmp_path_factory) -> Path:
    return unpack(request.param, tmp_path_factory.mktemp("tree"))


CPU = [
    "--distributed-backend", "gloo", "--transformer-impl", "local", "--use-cpu-initialization",
    "--no-gradient-accumulation-fusion", "--no-bias-dropout-fusion", "--no-bias-gelu-fusion",
    "--no-bias-swiglu-fusion", "--no-masked-softmax-fusion", "--no-rope-fusion",
    "--no-persist-layer-norm", "--ckpt-format", "torch", "--num-workers", "0",
]  # fmt: skip
SEQ, BATCH, ITERS, WARMUP = 64, 4, 10, 2
MODEL = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
    "--micro-batch-size", "2", "--global-batch-size", str(BATCH),
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "4096", "--mock-data",
    "--log-interval", "1", "--eval-iters", "0", "--eval-interval", "1000",
    "--attention-dropout", "0", "--hidden-dropout", "0", "--train-iters", str(ITERS),
]  # fmt: skip
A, B = 4.0, -0.51


def power(lr_max: float, lr_warmup_iters: int = WARMUP):
    flags = ["--lr", str(lr_max), "--min-lr", "0.0", "--lr-decay-style", "power",
             "--lr-power-a", str(A), "--lr-power-b", str(B),
             "--lr-warmup-iters", str(lr_warmup_iters)]  # fmt: skip
    return flags


MUP = [
    "--power-mup", "--power-mup-base-hidden-size", "16",
    "--power-mup-embedding-multiplier", "4", "--power-mup-residual-multiplier", "0.5",
]  # fmt: skip
WIDTH_MULT = 64 / 16


def expected_lr(iteration: int, lr_max: float) -> float:
    """REFERENCE.md section 1: the LR in force after ``iteration`` steps (n tokens seen),
    beta = batch tokens / 4096, linear warmup to the law's value at N_warmup."""
    beta = BATCH * SEQ / 4096

    def law(n: float) -> float:
        return min(lr_max, beta * A * n**B)

    n, n_warmup = iteration * BATCH * SEQ, WARMUP * BATCH * SEQ
    return n / n_warmup * law(n_warmup) if n < n_warmup else law(n)


HIDDEN = re.compile(r"(linear_qkv|linear_proj|linear_fc1|linear_fc2)\.weight$")
OUTPUT_PROJECTION = re.compile(r"(linear_proj|linear_fc2)\.weight$")


def mup_lr_ratio(name: str) -> float:
    """muP (REFERENCE.md section 3): hidden matrices get eta / m_width, the rest eta."""
    return 1 / WIDTH_MULT if HIDDEN.search(name) else 1.0


def run_megatron_lm(
    tree: Path,
    record: Path,
    *flags: str,
    route: str = "launcher",
    model: list[str] = MODEL,
    ranks: int = 1,
) -> subprocess.CompletedProcess:
    """The tree's pretrain_gpt.py under the recorder, one process per rank (gloo)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    port = str(20000 + os.getpid() % 20000)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=path)
    if ranks == 1:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)  # fmt: skip
        launcher = [sys.executable]
    else:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                    str(ranks), "--master-port", port]  # fmt: skip
    return subprocess.run(
        [*launcher, str(REPO / "tests/support/megatron_lm_run.py"), str(record), route,
         str(tree / "pretrain_gpt.py"), *CPU, *model, *flags],
        capture_output=True, text=True, env=env, cwd=record.parent, timeout=600,
    )  # fmt: skip


def run(tree: Path, record: Path, *flags: str, route: str = "launcher",
        model: list[str] = MODEL, ranks: int = 1) -> dict:  # fmt: skip
    result = run_megatron_lm(tree, record, *flags, route=route, model=model, ranks=ranks)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = json.loads(record.read_text())
    data["log"] = result.stdout + result.stderr
    return data


def lrs_by_param(row: dict) -> dict[str, float]:
    return {name: group["lr"] for group in row["groups"] for name in group["params"]}


def test_power_and_mup_train_resume_and_override_on_the_real_tree(tree, tmp_path):
    """One tree: train 10 iterations (checkpoint at 5), resume at 5, and resume at 5 with
    --lr doubled under --override-opt_param-scheduler."""
    lr = 0.004  # the cap binds from iteration 2 on: a doubled --lr changes the curve
    full = run(tree, tmp_path / "full.json", *power(lr), *MUP,
               "--save", str(tmp_path / "ckpt"), "--save-interval", "5")  # fmt: skip

    # Megatron applies the Power formula, scaled per parameter by muP, at every iteration.
    assert [row["iteration"] for row in full["rows"]] == list(range(1, ITERS + 1))
    for row in full["rows"]:
        for name, applied in lrs_by_param(row).items():
            assert applied == pytest.approx(
                expected_lr(row["iteration"], lr) * mup_lr_ratio(name), rel=1e-9
            ), (row["iteration"], name)

    # Megatron's own log line shows the run's LR (not a muP-scaled group's), %.6E.
    logged = [float(x) for x in re.findall(r"learning rate: ([\d.E+-]+)", full["log"])]
    assert logged == [float(f"{expected_lr(i, lr):.6E}") for i in range(1, ITERS + 1)]

    # muP on the live model: multipliers measured by calling modules with and without
    # their hooks, init std measured on the weights, attention scale 1/d_head.
    model = full["model"]
    assert "megatron-power: muP applied to GPTModel" in full["log"]
    assert model["multipliers"] == pytest.approx(
        {"embedding": 4.0, "output_layer": 1 / WIDTH_MULT, "mlp": 0.5, "self_attention": 0.5},
        rel=1e-5,
    )
    assert model["softmax_scale"] == pytest.approx(1 / 16)
    for name, std in model["param_std"].items():
        if HIDDEN.search(name):  # init_std / sqrt(m), output projections also / sqrt(2L)
            depth = (2 * 2) ** 0.5 if OUTPUT_PROJECTION.search(name) else 1.0
            want = 0.02 / WIDTH_MULT**0.5 / depth
        elif name.endswith("embeddings.weight"):
            want = 0.02
        else:
            continue
        assert std == pytest.approx(want, rel=0.06), name

    # Resumed at 5: every group's LR equals the uninterrupted run's, the loss within 1e-5
    # (two fresh CPU runs can differ by a float32 ulp: MKL/oneDNN pick kernels at run time).
    resumed = run(tree, tmp_path / "resumed.json", *power(lr), *MUP,
                  "--load", str(tmp_path / "ckpt"), "--ckpt-step", "5")  # fmt: skip
    assert [row["iteration"] for row in resumed["rows"]] == list(range(1, ITERS - 5 + 1))
    for before, after in zip(full["rows"][5:], resumed["rows"], strict=True):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
        assert lrs_by_param(after) == lrs_by_param(before)

    # Resumed at 5 with --lr doubled and the override: the new schedule, muP ratios kept.
    override = run(tree, tmp_path / "override.json", *power(2 * lr), *MUP,
                   "--load", str(tmp_path / "ckpt"), "--ckpt-step", "5",
                   "--override-opt_param-scheduler")  # fmt: skip
    for row in override["rows"]:
        iteration = row["iteration"] + 5
        for name, applied in lrs_by_param(row).items():
            want = expected_lr(iteration, 2 * lr) * mup_lr_ratio(name)
            assert applied == pytest.approx(want, rel=1e-9), (iteration, name)
        assert expected_lr(iteration, 2 * lr) != pytest.approx(expected_lr(iteration, lr))


@pytest.fixture(scope="module")
def patched_tree(tree, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("patched") / tree.name
    shutil.copytree(tree, copy)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "patches/apply.py"), str(copy)],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return copy


def test_the_patched_tree_runs_power_and_mup_without_the_launcher(patched_tree, tmp_path):
    lr = 0.004
    data = run(patched_tree, tmp_path / "patched.json", *power(lr), *MUP, route="patched")
    assert "megatron-power: muP applied to GPTModel" in data["log"]
    assert data["model"]["multipliers"]["embedding"] == pytest.approx(4.0, rel=1e-5)
    for row in data["rows"]:
        for name, applied in lrs_by_param(row).items():
            want = expected_lr(row["iteration"], lr) * mup_lr_ratio(name)
            assert applied == pytest.approx(want, rel=1e-9), (row["iteration"], name)


def without(flags: list[str], *names: str) -> list[str]:
    """``flags`` less each named flag and its value."""
    kept, skip = [], False
    for item in flags:
        if skip:
            skip = False
        elif item in names:
            skip = True
        else:
            kept.append(item)
    return kept


def run_failing(tree: Path, tmp_path: Path, *flags: str, model: list[str] = MODEL):
    result = run_megatron_lm(tree, tmp_path / "refused.json", *flags, model=model)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    return result


def megatron_lm_version(tree: Path) -> tuple[int, int]:
    text = (tree / "megatron/core/package_info.py").read_text()
    major, minor = (re.search(rf"^{k}\s*=\s*(\d+)", text, re.M) for k in ("MAJOR", "MINOR"))
    return int(major.group(1)), int(minor.group(1))


def power_lr_varying_batch(rows: list[dict], lr_max: float, warmup_samples: int,
                           held_batch: int | None = None) -> list[float]:  # fmt: skip
    """REFERENCE.md section 1 with the batch in force at each step: after each step, n is
    the tokens seen so far and beta the batch of that step (or ``held_batch``) in
    sequences of 4096 tokens."""
    expected, samples = [], 0
    for row in rows:
        samples += row["global_batch_size"]
        beta = (held_batch or row["global_batch_size"]) * SEQ / 4096

        def law(n: float, beta: float = beta) -> float:
            return min(lr_max, beta * A * n**B)

        n, n_warmup = samples * SEQ, warmup_samples * SEQ
        expected.append(n / n_warmup * law(n_warmup) if n < n_warmup else law(n))
    return expected


@pytest.mark.parametrize("form", ["step", "ramp", "step-held-batch"])
def test_power_follows_the_batch_size_schedule_at_every_step(tree, tmp_path, form):
    """A step batch schedule in tokens (Megatron-LM 0.18+'s own; followed by the plugin on
    0.14-0.17) and a --rampup-batch-size ramp (0.14-0.17; 0.18+ ignores it): Megatron's
    batch at every step, and Power's LR with that step's beta; with --lr-power-batch-size,
    beta from that batch at every step of the schedule."""
    if form == "ramp" and megatron_lm_version(tree) >= (0, 18):
        # Megatron deprecated the ramp and ignores it: refused, with the same ramp as a step
        # schedule (thresholds in tokens) to give instead.
        ramp = run_failing(tree, tmp_path, *power(0.01), "--global-batch-size", "8",
                           "--rampup-batch-size", "2", "2", "24")  # fmt: skip
        line = ramp.stderr.strip().splitlines()[-1]
        assert line.startswith("megatron-power: error: --rampup-batch-size: this Megatron-LM")
        assert f'--step-batch-size-schedule "0:2 {8 * SEQ}:4 {16 * SEQ}:6 {24 * SEQ}:8"' in line
        return
    lr, warmup = 0.05, 8
    schedule = ["--lr", str(lr), "--min-lr", "0.0", "--lr-decay-style", "power",
                "--lr-power-a", str(A), "--lr-power-b", str(B),
                "--lr-warmup-samples", str(warmup), "--train-samples", "64"]  # fmt: skip
    model = without(MODEL, "--train-iters", "--global-batch-size")
    held_batch = 8 if form == "step-held-batch" else None
    if held_batch:
        schedule += ["--lr-power-batch-size", str(held_batch)]
    if form.startswith("step"):
        batches = ["--step-batch-size-schedule", f"0:2 {8 * SEQ}:4 {16 * SEQ}:8"]
        want = lambda consumed: 2 if consumed < 8 else 4 if consumed < 16 else 8  # noqa: E731
    else:
        batches = ["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "24"]
        want = lambda consumed: min(8, 2 + int(consumed // 8) * 2)  # noqa: E731 (8 = 24 / 3 steps)
    data = run(tree, tmp_path / "ramp.json", *schedule, *batches, model=model)
    consumed, seen = 0, []
    for row in data["rows"]:
        assert row["global_batch_size"] == want(consumed), consumed
        consumed += row["global_batch_size"]
        seen.append(row["global_batch_size"])
    assert len(set(seen)) >= 3 and consumed > 24  # the batch changed, the ramp ended
    if form.startswith("step"):
        assert consumed == 64  # iterations enough for --train-samples (0.18's own rule)
    expected = power_lr_varying_batch(data["rows"], lr, warmup, held_batch)
    if held_batch:  # the held batch changes the LR while the batch in force is smaller
        assert expected != power_lr_varying_batch(data["rows"], lr, warmup)
    for row, want_lr in zip(data["rows"], expected, strict=True):
        for name, applied in lrs_by_param(row).items():
            assert applied == pytest.approx(want_lr, rel=1e-9), (row["iteration"], name)


def test_flags_megatron_would_assert_on_or_ignore_are_refused_in_one_line(tree, tmp_path):
    without_seq = without(MODEL, "--seq-length")
    result = run_failing(tree, tmp_path, *power(0.01), model=without_seq)
    assert result.stderr.strip().splitlines()[-1] == (
        "megatron-power: error: --seq-length: required (the tokens in every sample)"
    )
    no_gbs = without(MODEL, "--global-batch-size", "--train-iters")
    for schedule, message in [
        ("0:2 x:4", "--step-batch-size-schedule: 'x:4' is not THRESHOLD:BATCH_SIZE (K/M/B/T)"),
        ("64:2 128:4", "--step-batch-size-schedule: the first threshold must be 0, got '64:2'"),
        ("0:2 1K:0", "--step-batch-size-schedule: '1K:0': batch sizes must be >= 1"),
    ]:
        bad = run_failing(tree, tmp_path, *power(0.01), "--train-samples", "64",
                          "--step-batch-size-schedule", schedule, model=no_gbs)  # fmt: skip
        assert bad.stderr.strip().splitlines()[-1] == f"megatron-power: error: {message}"


EXPERT_OR_ROUTER = re.compile(r"mlp\.(router\.weight|experts\..*linear_fc[12]\.weight)$")
MOE = ["--num-experts", "4", "--expert-model-parallel-size", "2", "--moe-router-topk", "2",
       "--moe-ffn-hidden-size", "32", "--disable-bias-linear"]  # fmt: skip


def test_moe_with_expert_parallelism_applies_mup_and_resumes(tree, tmp_path):
    """A MoE on two ranks (EP=2, gloo): the router and every expert matrix are hidden
    matrices for muP (LR / m, init std / sqrt(m)); resumed at 5 it equals the full run.
    (MoE with TP > 1 needs sequence parallelism, whose norms need TE or apex: not on CPU.)"""
    lr = 0.004
    full = run(tree, tmp_path / "moe.json", *power(lr), *MUP, *MOE, "--save",
               str(tmp_path / "ckpt"), "--save-interval", "5", ranks=2)  # fmt: skip
    experts = [n for n in full["model"]["param_std"] if EXPERT_OR_ROUTER.search(n)]
    assert len(experts) == 2 * (1 + 2 * 2)  # per layer: router + 2 local experts x fc1, fc2
    for name in experts:
        depth = (2 * 2) ** 0.5 if name.endswith("linear_fc2.weight") else 1.0
        want = 0.02 / WIDTH_MULT**0.5 / depth
        assert full["model"]["param_std"][name] == pytest.approx(want, rel=0.1), name
    for row in full["rows"]:
        lrs = lrs_by_param(row)
        for name in experts:
            want = expected_lr(row["iteration"], lr) / WIDTH_MULT
            assert lrs[name] == pytest.approx(want, rel=1e-9), (row["iteration"], name)
    resumed = run(tree, tmp_path / "moe_resumed.json", *power(lr), *MUP, *MOE, "--load",
                  str(tmp_path / "ckpt"), "--ckpt-step", "5", ranks=2)  # fmt: skip
    for before, after in zip(full["rows"][5:], resumed["rows"], strict=True):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
        assert lrs_by_param(after) == lrs_by_param(before)


def test_tensor_parallel_gpt_gets_the_same_mup(tree, tmp_path):
    """TP=2 on two ranks: every shard's LR, the multipliers on the live (sharded) model and
    the init std are the muP rule's, from global sizes, not shard shapes."""
    lr = 0.004
    eps = ["--power-mup-scale-adam-eps"]
    if megatron_lm_version(tree) < (0, 16):  # one lr_mult, no per-group eps: refused
        refused = run_failing(tree, tmp_path, *power(lr), *MUP, *eps)
        assert refused.stderr.strip().splitlines()[-1].startswith("megatron-power: error:")
        assert "per-group eps" in refused.stderr.strip().splitlines()[-1]
        eps = []
    data = run(tree, tmp_path / "tp.json", *power(lr), *MUP, *eps,
               "--tensor-model-parallel-size", "2", ranks=2)  # fmt: skip
    for group in data["rows"][0]["groups"]:  # Adam eps / m for hidden matrices (0.16+)
        hidden = {HIDDEN.search(name) is not None for name in group["params"]}
        assert len(hidden) == 1, group["params"]
        want = 1e-8 / WIDTH_MULT if eps and hidden == {True} else 1e-8
        assert group["eps"] == pytest.approx(want, rel=1e-12), group["params"]
    assert data["model"]["multipliers"] == pytest.approx(
        {"embedding": 4.0, "output_layer": 1 / WIDTH_MULT, "mlp": 0.5, "self_attention": 0.5},
        rel=1e-5,
    )
    for name, std in data["model"]["param_std"].items():
        if HIDDEN.search(name):
            depth = (2 * 2) ** 0.5 if OUTPUT_PROJECTION.search(name) else 1.0
            assert std == pytest.approx(0.02 / WIDTH_MULT**0.5 / depth, rel=0.1), name
    for row in data["rows"]:
        for name, applied in lrs_by_param(row).items():
            want = expected_lr(row["iteration"], lr) * mup_lr_ratio(name)
            assert applied == pytest.approx(want, rel=1e-9), (row["iteration"], name)


def exponential_e(r: float) -> float:
    """The paper's / IBM's decay coefficient (REFERENCE.md section 1): 1 at r=0, 0 at r=1."""
    return (math.e ** (1 - r) - 1) / (math.e - 1)


def wsd_family_lr(style: str, iteration: int, lr_max: float) -> float:
    """The LR in force after ``iteration`` steps (REFERENCE.md section 2), warmup of WARMUP
    iterations to lr_max, decays of 4 iterations with the exponential_e shape to 0:
    WSD decays over the last 4 of the 10 iterations, WSD-S before iterations 6 and 10
    (then back to the stable LR), a branch decay from iteration 4 (the run ends at 8)."""
    if iteration < WARMUP:
        return lr_max * iteration / WARMUP
    ends = {"WSD": [10], "WSD-S": [6, 10], "branch": [8]}[style]
    for end in ends:
        if end - 4 <= iteration <= end:
            return lr_max * exponential_e((iteration - (end - 4)) / 4)
    return lr_max


WSD_FAMILY = {
    "WSD": ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "4"],
    "WSD-S": ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "4",
              "--lr-wsd-cycle-iters", "6", "10"],
    "branch": ["--lr-decay-style", "constant", "--lr-branch-decay-start-iters", "4",
               "--lr-branch-decay-iters", "4"],
}  # fmt: skip


@pytest.mark.parametrize("style", ["WSD", "WSD-S"])
def test_the_wsd_family_on_the_real_tree(tree, tmp_path, style):
    lr = 0.01
    flags = ["--lr", str(lr), "--min-lr", "0.0", "--lr-warmup-iters", str(WARMUP),
             "--lr-wsd-decay-style", "exponential_e", *WSD_FAMILY[style]]  # fmt: skip
    data = run(tree, tmp_path / f"{style}.json", *flags)
    assert [row["iteration"] for row in data["rows"]] == list(range(1, ITERS + 1))
    for row in data["rows"]:
        want = wsd_family_lr(style, row["iteration"], lr)
        for name, applied in lrs_by_param(row).items():
            assert applied == pytest.approx(want, rel=1e-9, abs=1e-15), (row["iteration"], name)


def test_a_branch_decay_resumes_a_stable_checkpoint(tree, tmp_path):
    """A constant-LR run saved at 4; resumed there with the branch flags and --train-iters 8
    (no override: a branch changes only what is not trained yet), it decays to 0 by 8."""
    lr = 0.01
    common = ["--lr", str(lr), "--min-lr", "0.0", "--lr-warmup-iters", str(WARMUP),
              "--lr-wsd-decay-style", "exponential_e", "--lr-decay-style", "constant"]  # fmt: skip
    run(tree, tmp_path / "stable.json", *common, "--save", str(tmp_path / "ckpt"),
        "--save-interval", "4")  # fmt: skip
    branch = run(tree, tmp_path / "branch.json", *common, *WSD_FAMILY["branch"][2:],
                 "--load", str(tmp_path / "ckpt"), "--ckpt-step", "4",
                 "--train-iters", "8")  # fmt: skip
    assert len(branch["rows"]) == 4
    for row in branch["rows"]:
        iteration = row["iteration"] + 4
        want = wsd_family_lr("branch", iteration, lr)
        for name, applied in lrs_by_param(row).items():
            assert applied == pytest.approx(want, rel=1e-9, abs=1e-15), (iteration, name)
    assert wsd_family_lr("branch", 8, lr) == 0.0
