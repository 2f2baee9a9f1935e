"""patches/: one patch per supported Megatron-LM release line, picked from the tree's
version, applied with git and verified, also on a real release tree (megatron_lm_tree fixture)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPLY = REPO / "patches/apply.py"
LINES = [f"core_r0.{minor}" for minor in range(14, 21)]  # 0.20: Megatron-LM main


def run_apply(*args):
    return subprocess.run(
        [sys.executable, str(APPLY), *map(str, args)], capture_output=True, text=True, check=False
    )


def fake_tree(tmp_path, minor, patch):
    """The patch's own pre-image (its context lines) in a tree claiming version 0.<minor>."""
    tree = tmp_path / f"tree{minor}"
    (tree / "megatron/core").mkdir(parents=True)
    (tree / "megatron/training").mkdir(parents=True)
    (tree / "megatron/core/package_info.py").write_text(f"MAJOR = 0\nMINOR = {minor}\nPATCH = 0\n")
    hunk = patch.read_text().split("@@", 2)[2].split("\n", 1)[1]
    start = int(patch.read_text().split("@@")[1].split()[0].split(",")[0][1:])
    before = [line[1:] for line in hunk.splitlines() if line[:1] in (" ", "-")]
    filler = [f"# line {n}" for n in range(1, start)]
    (tree / "megatron/training/__init__.py").write_text("\n".join(filler + before) + "\n")
    return tree


def test_one_patch_per_supported_line():
    assert sorted(p.stem for p in (REPO / "patches").glob("*.patch")) == LINES
    for line in LINES:
        text = (REPO / f"patches/{line}.patch").read_text()
        assert text.startswith("--- a/megatron/training/__init__.py\n")
        assert "+_install_megatron_power()" in text


@pytest.mark.parametrize("minor", range(14, 21))
def test_apply_picks_the_line_and_applies_cleanly(tmp_path, minor):
    tree = fake_tree(tmp_path, minor, REPO / f"patches/core_r0.{minor}.patch")
    result = run_apply(tree, "--check")
    assert result.returncode == 0, result.stderr
    assert f"core_r0.{minor}.patch: applies cleanly" in result.stdout


def test_unknown_line_and_missing_tree_are_refused(tmp_path):
    tree = fake_tree(tmp_path, 16, REPO / "patches/core_r0.16.patch")
    (tree / "megatron/core/package_info.py").write_text("MAJOR = 0\nMINOR = 12\n")
    result = run_apply(tree, "--check")
    assert result.returncode != 0 and "no patch for release line core_r0.12" in result.stderr
    result = run_apply(tmp_path / "nowhere")
    assert result.returncode != 0 and "is not a Megatron-LM tree" in result.stderr


def test_patch_applies_and_verifies_on_a_real_tree(megatron_lm_tree, tmp_path):
    tree = tmp_path / "Megatron-LM"
    shutil.copytree(megatron_lm_tree, tree)
    # A Transformer Engine that breaks on import: verification must not touch it (docker
    # build has no GPU).
    trap = tmp_path / "site" / "transformer_engine"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise RuntimeError('Transformer Engine was imported')\n")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{trap.parent}")
    result = subprocess.run([sys.executable, str(APPLY), str(tree)], capture_output=True,
                            text=True, check=False, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "megatron-power patch verified: power" in result.stdout


def test_a_patch_that_does_not_verify_is_reverted(tmp_path):
    """A tree the patch applies to but whose parser cannot take the flags (here: no
    Megatron-LM code at all) is left exactly as it was."""
    tree = fake_tree(tmp_path, 17, REPO / "patches/core_r0.17.patch")
    target = tree / "megatron/training/__init__.py"
    before = target.read_text()
    result = run_apply(tree)
    assert result.returncode != 0
    assert "core_r0.17.patch was reverted, the tree is as it was" in result.stderr
    assert target.read_text() == before
