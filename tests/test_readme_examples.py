"""Every ``megatron-power`` example in README.md runs as written, in README order, in one
directory (as a user pasting them would), at tiny size: a training command gets
``--exit-interval 2`` unless it has its own (a stop with a checkpoint; the runs' math is
the README's), and the sweep writes its SLURM array instead of running 45 proxies.

The few that cannot run here are listed in NOT_RUN with the reason, and the test fails if
one of them disappears from the README (so the list cannot rot).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: Examples that need what a CI machine has not, and where they are covered instead.
NOT_RUN = {
    "megatron-power fit sweeps/a": "needs the 45 proxies of the sweep above; fit on real "
    "sweep results: tests/sweep/test_sweep_command.py",
    "megatron-power import-hf ibm/PowerLM-3B-local-copy runs/p3b --tp 2 --megatron-lm-dir "
    "ckpt/p3b": "a local copy of a 3B public checkpoint; the same import on models built by "
    "transformers: tests/hf",
    **{
        command: "needs finished runs of two schedules (the README's pretrain examples stop "
        "after 2 steps here); the same commands on real runs: tests/cli/test_predict_command.py"
        for command in (
            "megatron-power predict --fit runs/constant",
            "megatron-power predict --fit fit.json",
        )
    },
    "megatron-power evaluate runs/a runs/b sweeps/grid": "needs finished runs (the README's "
    "pretrain examples stop after 2 steps here); the same command on real runs, older ones "
    "included: tests/cli/test_evaluate_command.py",
    **{
        f"megatron-power import-hf hf/{name}": "a download of the public checkpoint; its exact "
        "config through import-hf's checks at these layouts, and a shrunk copy through import "
        "and export: tests/hf/test_public_checkpoints.py"
        for name in ("PowerLM-3b", "PowerMoE-3b", "granite-3.0-2b-base")
    },
}


def readme_commands() -> list[str]:
    """The megatron-power command lines of README.md's bash blocks, continuation lines
    joined, comments and redirections dropped, optional ``[...]`` parts removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["megatron-power"]:
                continue
            text = re.sub(r"\s*\[[^\]]*\]", "", " ".join(words)).split(" > ")[0].strip()
            commands.append(text)
    return commands


def tiny(command: str, previous: list[str]) -> list[str]:
    """The command as run here (see the module docstring)."""
    words = shlex.split(command)
    if words[1] == "schedule" and "..." in words:  # '...': the flags of the line above
        words = [*shlex.split(previous[-1]), *words[words.index("...") + 1 :]]
        words = [word for word in words if word != "--png" and not word.endswith(".png")]
    if words[1] == "pretrain" and "--exit-interval" not in words:
        words += ["--exit-interval", "2"]
    if words[1] == "sweep":
        words += ["--launcher", "slurm", "--dry-run"]
    return [sys.executable, "-m", "megatron_power.cli.main", *words[1:]]


COMMANDS = readme_commands()
RUN = [i for i, c in enumerate(COMMANDS) if not any(c.startswith(s) for s in NOT_RUN)]


def test_the_readme_has_the_examples_this_test_runs():
    assert len(RUN) >= 14
    for skipped in NOT_RUN:
        assert any(command.startswith(skipped) for command in COMMANDS), skipped


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for all examples, with the user's own text file the README names."""
    root = tmp_path_factory.mktemp("readme")
    words = [
        "the",
        "model",
        "learns",
        "a",
        "language",
        "from",
        "text",
        "and",
        "a",
        "schedule",
        "decays",
        "its",
        "rate",
    ]
    documents = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(documents))
    return root


@pytest.mark.parametrize("index", RUN, ids=[COMMANDS[i][:60] for i in RUN])
def test_readme_example_runs(index, workdir):
    command = COMMANDS[index]
    result = subprocess.run(
        tiny(command, COMMANDS[:index]), cwd=workdir, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
