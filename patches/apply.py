#!/usr/bin/env python3
"""Apply and verify the megatron-power patch that matches a Megatron-LM tree.

    python patches/apply.py /path/to/Megatron-LM            # pick, apply, verify
    python patches/apply.py /path/to/Megatron-LM --check    # would it apply? (no change)
    python patches/apply.py /path/to/Megatron-LM --verify   # is it applied and working?

The release line comes from the tree's megatron/core/package_info.py (MAJOR.MINOR ->
patches/core_r<MAJOR>.<MINOR>.patch). The patch makes ``python pretrain_gpt.py`` accept
the plugin's flags without the launcher; verification parses
``--lr-decay-style power --power-mup ...`` with the tree's own argument parser (without
importing Transformer Engine, so it runs where no GPU is, as in ``docker build``); a patch
that does not verify is reverted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

PATCHES = Path(__file__).resolve().parent
MARKER = "_install_megatron_power()"
TARGET = Path("megatron/training/__init__.py")

VERIFY = """
import sys


class NoTransformerEngine:
    # Verification parses flags only: Transformer Engine (which wants a GPU, absent at
    # image build time) is never imported; Megatron runs without it.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformer_engine", "transformer_engine_torch"):
            raise ModuleNotFoundError(name)
        return None


sys.meta_path.insert(0, NoTransformerEngine())
sys.argv = ["pretrain_gpt.py", "--lr", "0.02", "--lr-decay-style", "power", "--lr-power-a", "4",
            "--lr-power-b", "-0.51", "--power-mup", "--power-mup-base-hidden-size", "64",
            "--num-layers", "2", "--hidden-size", "128", "--num-attention-heads", "4",
            "--seq-length", "128", "--max-position-embeddings", "128", "--train-iters", "10",
            "--micro-batch-size", "1"]
import megatron.training  # the patch installs the hooks here
from megatron.training.arguments import parse_args
args = parse_args()
assert args.lr_decay_style == "power" and args.lr_power_a == 4.0 and args.power_mup
print("megatron-power patch verified:", args.lr_decay_style)
"""


def release_line(tree: Path) -> str:
    info = tree / "megatron/core/package_info.py"
    if not info.is_file():
        raise SystemExit(f"apply.py: error: {tree} is not a Megatron-LM tree (no {info})")
    text = info.read_text()
    major = re.search(r"^MAJOR\s*=\s*(\d+)", text, re.M)
    minor = re.search(r"^MINOR\s*=\s*(\d+)", text, re.M)
    if not (major and minor):
        raise SystemExit(f"apply.py: error: no MAJOR/MINOR version in {info}")
    return f"core_r{major.group(1)}.{minor.group(1)}"


def patch_for(line: str) -> Path:
    patch = PATCHES / f"{line}.patch"
    if not patch.is_file():
        known = ", ".join(sorted(p.stem for p in PATCHES.glob("core_r*.patch")))
        raise SystemExit(f"apply.py: error: no patch for release line {line}; have {known}")
    return patch


def git_apply(tree: Path, patch: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "apply", *options, str(patch)], cwd=tree, capture_output=True, text=True
    )


def verify(tree: Path) -> str | None:
    """Parse the plugin's flags with the tree's own parser; the failure's last lines, or None."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("RANK", "0")
    result = subprocess.run(
        [sys.executable, "-c", VERIFY], cwd=tree, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        return "\n".join(result.stderr.strip().splitlines()[-5:])
    print(result.stdout.strip().splitlines()[-1])
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="Megatron-LM checkout")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check that it applies")
    mode.add_argument("--verify", action="store_true", help="only verify an applied patch")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    line = release_line(tree)
    patch = patch_for(line)
    applied = MARKER in (tree / TARGET).read_text()
    if args.verify:
        if not applied:
            raise SystemExit(f"apply.py: error: {patch.name} is not applied to {tree}")
        failure = verify(tree)
        if failure:
            raise SystemExit(
                f"apply.py: error: the patched tree does not parse the flags:\n{failure}"
            )
        return
    if applied:
        print(f"{patch.name}: already applied to {tree}")
    else:
        check = git_apply(tree, patch, "--check")
        if check.returncode != 0:
            raise SystemExit(f"apply.py: error: {patch.name} does not apply:\n{check.stderr}")
        if args.check:
            print(f"{patch.name}: applies cleanly to {tree}")
            return
        done = git_apply(tree, patch)
        if done.returncode != 0:
            raise SystemExit(f"apply.py: error: applying {patch.name} failed:\n{done.stderr}")
        print(f"{patch.name}: applied to {tree}")
    failure = verify(tree)
    if failure:
        undo = "" if applied else f"; {patch.name} was reverted, the tree is as it was"
        if not applied:
            git_apply(tree, patch, "-R")
        raise SystemExit(
            f"apply.py: error: the patched tree does not parse the flags{undo}:\n{failure}"
        )


if __name__ == "__main__":
    main()
