"""megatron_power.launch ends a finished script's process groups itself (pretrain_gpt.py
does not, and gloo's threads can then abort the process at exit), and leaves them to a
script that failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.megatron_lm_trees import archives_for_this_line, unpack

SCRIPT = """
import atexit, sys
import torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
print("ran with", sys.argv[1:], flush=True)
if sys.argv[1] != "end":
    sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The launcher installs its hooks into megatron.training: it needs a real tree (any)."""
    return unpack(archives_for_this_line()[-1], tmp_path_factory.mktemp("tree"))


@pytest.mark.parametrize(("how", "code", "released"), [("end", 0, True), ("0", 0, True),
                                                       ("3", 3, False)])  # fmt: skip
def test_a_clean_end_releases_the_process_group_and_a_failure_keeps_it(
    tree: Path, how: str, code: int, released: bool
):
    script = tree / f"pretrain_like_{how}.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(21000 + os.getpid() % 9000))
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.launch", str(script), how],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == code, result.stderr[-2000:]
    assert f"ran with ['{how}']" in result.stdout
    assert f"initialized at exit: {not released}" in result.stdout
