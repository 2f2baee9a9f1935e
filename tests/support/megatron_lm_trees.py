"""The real Megatron-LM release trees tests run against: the archives in
../shared/megatron-lm/ (its README's table names the Python line of each), unpacked into a
temporary directory with the dataset helper built for the running interpreter. Their code
is never copied into this repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHIVES = Path(os.environ.get("MEGATRON_LM_ARCHIVES", REPO.parent / "shared" / "megatron-lm"))
LINE = f"{sys.version_info.major}.{sys.version_info.minor}"


def archives_for_this_line() -> list[str]:
    """Archive names whose README row names this Python line, oldest release first."""
    readme = ARCHIVES / "README.md"
    if not readme.is_file():
        return []
    rows = re.findall(
        r"^\| (megatron-lm-\S+\.tar\.gz) \|.*\| (\d+\.\d+) \|$", readme.read_text(), re.M
    )
    return [name for name, python in rows if python == LINE]


def unpack(archive: str, into: Path) -> Path:
    """Unpack ``archive`` under ``into`` and build its dataset helper; the tree's path."""
    with tarfile.open(ARCHIVES / archive) as tar:
        tar.extractall(into, filter="data")
    (tree,) = [p for p in into.iterdir() if p.is_dir()]
    includes = subprocess.run(
        [sys.executable, "-m", "pybind11", "--includes"], capture_output=True, text=True, check=True
    ).stdout.split()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(
        ["g++", "-O3", "-shared", "-std=c++17", "-fPIC", *includes, "helpers.cpp",
         "-o", f"helpers_cpp{suffix}"],
        cwd=tree / "megatron/core/datasets", check=True,
    )  # fmt: skip
    return tree
