"""What a ``pretrain --resume`` would change: the run as trained against the run as asked.

Each difference is named by the flag that sets it, with its old and new value, so that a
resume never silently continues with other settings than the ones asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..knobs import default_of, fields_by_name, knob_of
from ..mup.rules import MupConfig
from ..schedules.settings import ScheduleSettings
from .config import PretrainConfig, settings_of

#: Fields that are not the run's math: where it lives, and this invocation's stop.
NOT_COMPARED = {"run_dir", "exit_interval"}


@dataclass(frozen=True)
class Change:
    """One setting that differs; ``schedule``: Megatron's override switch may accept it."""

    flag: str
    old: Any
    new: Any
    schedule: bool = False
    field: str = ""

    def __str__(self) -> str:
        return f"{self.flag} {self.old!r} -> {self.new!r}"


def _dict_changes(cls: Any, old: dict, new: dict, prefix: str, schedule: bool) -> list[Change]:
    known = fields_by_name(cls)
    changes = []
    given = set(old) | set(new)  # in the knobs' declared order (the --help order)
    for name in [n for n in known if n in given] + sorted(given - set(known)):
        default = default_of(known[name]) if name in known else None
        before, after = old.get(name, default), new.get(name, default)
        if isinstance(before, list):
            before = tuple(before)
        if isinstance(after, list):
            after = tuple(after)
        if before != after:
            meta = knob_of(cls, name) if name in known else None
            flag = (meta.pretrain_flag if meta else None) or f"config.json {prefix}.{name}"
            changes.append(Change(flag, before, after, schedule, f"{prefix}.{name}"))
    return changes


def config_changes(trained: PretrainConfig, asked: PretrainConfig) -> list[Change]:
    """Every difference between two configs of one run, named by its flag."""
    settings = settings_of(PretrainConfig)
    changes: list[Change] = []
    for item in fields(PretrainConfig):
        name = item.name
        if name in NOT_COMPARED:
            continue
        before, after = getattr(trained, name), getattr(asked, name)
        if name == "schedule":
            changes += _dict_changes(ScheduleSettings, before, after, "schedule", True)
        elif name == "mup":
            if (before is None) != (after is None):
                changes.append(Change("--no-mup", before is None, after is None, field=name))
            elif before is not None:
                changes += _dict_changes(MupConfig, before, after, "mup", False)
        elif before != after:
            flag = settings[name].flag or f"config.json {name}"
            changes.append(Change(flag, before, after, name == "train_tokens", name))
    return changes


def lr_curve(config: PretrainConfig, iterations: int) -> list[float]:
    """The LR of the first ``iterations`` steps, from the scheduler training uses."""
    import torch

    from ..megatron.scheduler import PowerOptimizerParamScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    scheduler = PowerOptimizerParamScheduler.from_settings(optimizer, config.schedule_settings())
    curve = []
    for batch in config.batches(iterations):
        curve.append(optimizer.param_groups[0]["lr"])
        scheduler.step(batch)
    return curve


def same_lr_curve(trained: PretrainConfig, asked: PretrainConfig) -> bool:
    """Whether ``asked`` (e.g. a longer run) keeps every LR of the run as trained."""
    if trained.batches(trained.train_iters) != asked.batches(trained.train_iters):
        return False
    return lr_curve(trained, trained.train_iters) == lr_curve(asked, trained.train_iters)
