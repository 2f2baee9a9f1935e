"""The package's shape: pure layers import neither torch nor Megatron, docstring examples
run and are right, no import circle, nothing below cli/ imports cli/."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import megatron_power

PACKAGE = Path(megatron_power.__file__).parent
REPO = PACKAGE.parent

#: Made unimportable for the purity check (a meta path finder that refuses them).
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "megatron", "transformer_engine", "apex"):
            raise ImportError(f"blocked for the purity test: {name}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_pure_layers_work_with_torch_and_megatron_unimportable():
    program = (
        BLOCKER
        + """
from megatron_power.schedules import ScheduleSettings, power_schedule, PowerLaw
from megatron_power.mup import MupConfig, ModelShape, ParamRole
from megatron_power.mup.rules import role_of
from megatron_power.megatron import ScheduleSettings as FromAdapters
from megatron_power import arguments, knobs
settings = ScheduleSettings(lr_decay_style="power", max_lr=0.02, lr_decay_steps=1000,
                            wsd_decay_steps=100, seq_length=128)
schedule = settings.build()
assert 0 < schedule.lr(64000.0, max_lr=0.02, min_lr=0.0, batch_tokens=2048) <= 0.02
rules = MupConfig(base_hidden_size=64).resolve(ModelShape(256, 2, 32))
assert rules.lr_mult(ParamRole.HIDDEN) == 0.25
assert role_of("decoder.layers.0.mlp.linear_fc2.weight") is ParamRole.OUTPUT_PROJECTION
assert FromAdapters is ScheduleSettings
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")
assert not any(name.split(".")[0] in ("torch", "megatron") for name in sys.modules)
print("pure")
"""
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=REPO, check=False)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "pure", result.stderr


def test_the_command_starts_without_torch_and_megatron():
    """Every tool's parser, and sweep/fit/mup-tune, run without torch: a SLURM array task or
    a usage error costs a fraction of a second, not the ~10 s of importing Megatron-Core."""
    program = (
        BLOCKER
        + """
from megatron_power.cli.main import build_parser
parser = build_parser()
assert parser.parse_args(["sweep", "--sweep-dir", "s", "--collect"]).tool == "sweep"
print("started")
"""
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=REPO, check=False)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "started", result.stderr


def modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages([str(PACKAGE)], prefix="megatron_power.")
    )


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    names = set(modules())
    for name in names:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in names else base)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {edge for edge in edges if edge in names and edge != name}
    return graph


def test_no_import_circle():
    graph = import_graph()

    # A package's __init__ re-exporting its own modules is not a circle of concerns.
    def edges(module):
        return {t for t in graph[module] if t != module.rsplit(".", 1)[0]}

    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in edges(module):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_nothing_below_cli_imports_cli():
    graph = import_graph()
    offenders = [
        (module, target)
        for module, targets in graph.items()
        if not module.startswith("megatron_power.cli")
        for target in targets
        if target.startswith("megatron_power.cli")
    ]
    assert offenders == []
