"""One definition per knob: a dataclass field whose metadata says how every entry point
spells it, what it defaults to and which values it accepts.

A knob is declared once, on the dataclass that carries it (:class:`ScheduleSettings`,
:class:`MupConfig`)::

    lr_power_a: float = knob(4.0, "Power law coefficient a.", flag="--lr-power-a",
                             check=Range(low=0, low_open=True))

From that one field come the Megatron-LM flags (``megatron_power.arguments``), the
``megatron-power pretrain`` flags (tokens instead of samples), the launcher hooks' copy to
the scheduler, config.json, the error messages and the README's flag table. Pure: no torch
or Megatron import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

KNOB = "megatron_power_knob"


class Unit(StrEnum):
    """How a knob's value is counted."""

    VALUE = "value"  # a number or a choice, the same at every entry point
    SAMPLES = "samples"  # a position or length in the run: iters/samples in Megatron-LM's
    # flags (times the global batch), tokens in ``pretrain`` (divided by the sequence length)


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: finite, within bounds, integer where counted."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        kind = "an integer" if self.integer else "a finite number"
        return kind + (" " + " and ".join(parts) if parts else "")

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError('name: must be ..., got value')`` for a value out of range."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and self.integer:
            ok = float(value).is_integer()
        if ok:
            ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ValueError(f"{name}: must be {self.describe()}, got {value!r}")


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
COUNT = Range(low=0, integer=True)
POSITIVE_COUNT = Range(low=1, integer=True)


@dataclass(frozen=True)
class Knob:
    """Everything an entry point needs to know about one field.

    ``flag`` is Megatron-LM's spelling; for a :attr:`Unit.SAMPLES` knob it is the stem that
    ``-iters`` and ``-samples`` complete (and ``-fraction`` when ``fraction``).
    ``megatron_lm_owns`` marks flags that Megatron-LM itself defines (the plugin adds the
    others). ``pretrain_flag`` is ``megatron-power pretrain``'s spelling (tokens for a
    SAMPLES knob); ``pretrain_from`` names what pretrain derives it from instead.
    """

    help: str
    flag: str
    unit: Unit = Unit.VALUE
    check: Range | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False
    fraction: bool = False
    megatron_lm_owns: bool = False
    plugin_fraction: bool = False  # Megatron-LM owns the flag but not its -fraction form
    pretrain_flag: str | None = None
    pretrain_from: str | None = None
    pretrain_fraction_flag: str | None = None

    @property
    def dest(self) -> str:
        return dest_of(self.flag)

    @property
    def fraction_is_megatron_lm_s(self) -> bool:
        """Megatron-LM's own ``-fraction`` (warmup): a float of samples, as Megatron keeps
        it; the plugin's are whole iterations."""
        return self.fraction and self.megatron_lm_owns and not self.plugin_fraction

    def flags(self) -> list[str]:
        """Every Megatron-LM flag that sets this knob."""
        if self.unit is Unit.SAMPLES:
            return [f"{self.flag}-iters", f"{self.flag}-samples"] + (
                [f"{self.flag}-fraction"] if self.fraction else []
            )
        return [self.flag]

    def megatron_lm_flags(self) -> list[str]:
        """The flags a Megatron-LM tree defines itself (the plugin adds the rest)."""
        if not self.megatron_lm_owns:
            return []
        if self.plugin_fraction:
            return [flag for flag in self.flags() if not flag.endswith("-fraction")]
        return self.flags()

    def pretrain_flags(self) -> list[str]:
        flags = [self.pretrain_flag] if self.pretrain_flag else []
        return flags + ([self.pretrain_fraction_flag] if self.pretrain_fraction_flag else [])

    def validate(self, name: str, value: Any) -> None:
        """The per-field check: choices and range (None means "not set" and passes)."""
        if value is None:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(self.choices)}")
            return
        if self.check is not None:
            for item in value if self.many else (value,):
                self.check.check(name, item)


def dest_of(flag: str) -> str:
    """argparse's attribute for a flag (``--lr-power-a`` -> ``lr_power_a``)."""
    return flag.removeprefix("--").replace("-", "_")


def knob(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field carrying its :class:`Knob` metadata."""
    return dataclasses.field(default=default, metadata={KNOB: Knob(help=help, **meta)})


def knobs(cls_or_instance: Any) -> Iterator[tuple[dataclasses.Field, Knob]]:
    """The (field, knob) pairs of a dataclass, in declaration order."""
    for item in dataclasses.fields(cls_or_instance):
        if KNOB in item.metadata:
            yield item, item.metadata[KNOB]


def fields_by_name(cls: Any) -> dict[str, dataclasses.Field]:
    return {item.name: item for item, _ in knobs(cls)}


def knob_of(cls: Any, name: str) -> Knob:
    for item, meta in knobs(cls):
        if item.name == name:
            return meta
    raise KeyError(name)


def default_of(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def validate_knobs(instance: Any) -> None:
    """Run every knob's own check on a dataclass instance."""
    for item, meta in knobs(instance):
        meta.validate(item.name, getattr(instance, item.name))


def flag_naming(cls: Any, pretrain: bool = False) -> Callable[[str], str]:
    """A function that prefixes a ``field: ...`` message with the flag(s) that set it."""
    names = {}
    for item, meta in knobs(cls):
        flags = meta.pretrain_flags() if pretrain else meta.flags()
        if pretrain and not flags and meta.pretrain_from:
            flags = [meta.pretrain_from]
        if flags:
            names[item.name] = "/".join(flags)

    def name_the_flag(message: str) -> str:
        field, sep, rest = message.partition(":")
        flag = names.get(field.strip())
        return f"{flag} ({field.strip()}):{rest}" if flag and sep else message

    return name_the_flag
