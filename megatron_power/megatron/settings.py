"""Scheduler settings in Megatron's vocabulary, turned into a pure :class:`Schedule`.

Megatron counts the scheduler in *samples* (``lr_warmup_steps``, ``lr_decay_steps`` and
``wsd_decay_steps`` are sample counts in Megatron-LM); the plugin converts them to tokens
(``samples * seq_length``) because the Power law is a law of tokens. WSD built here is
therefore the same schedule in samples or in tokens.

This module imports nothing from Megatron, so the CLI and tests can validate and preview
settings anywhere. Every check raises ``ValueError`` naming the offending field.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..schedules.decay import MEGATRON_WSD_SHAPES, DecayShape
from ..schedules.power import PAPER_A, PAPER_B, PAPER_REFERENCE_SEQ_LENGTH, PowerLaw
from ..schedules.schedule import (
    Schedule,
    power_schedule,
    with_branch_decay,
    wsd_s_schedule,
    wsd_schedule,
)

#: Megatron-Core's own ``lr_decay_style`` values.
MEGATRON_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
#: Styles this plugin adds.
PLUGIN_STYLES = ("power",)
ALL_STYLES = MEGATRON_STYLES + PLUGIN_STYLES
#: Styles with a stable phase a branch decay or WSD-S cycles can start from.
STABLE_PHASE_STYLES = ("constant", "WSD", "power")


@dataclass(frozen=True)
class ScheduleSettings:
    """Everything that decides the LR curve. Counts are samples, as in Megatron."""

    lr_decay_style: str
    max_lr: float
    min_lr: float = 0.0
    init_lr: float = 0.0
    lr_warmup_steps: int | float = 0  # Megatron-LM passes a float with --lr-warmup-fraction
    lr_decay_steps: int | None = None
    wsd_decay_steps: int | None = None
    lr_wsd_decay_style: str | None = None
    seq_length: int | None = None
    lr_power_a: float = PAPER_A
    lr_power_b: float = PAPER_B
    lr_power_reference_seq_length: int = PAPER_REFERENCE_SEQ_LENGTH
    lr_power_batch_exponent: float = 1.0
    lr_decay_half_life_steps: int | None = None
    lr_wsd_cycle_steps: tuple[int, ...] | None = None
    lr_branch_decay_start_steps: int | None = None
    lr_branch_decay_steps: int | None = None
    lr_branch_decay_style: str | None = None

    def __post_init__(self) -> None:
        if self.lr_wsd_cycle_steps is not None:
            object.__setattr__(self, "lr_wsd_cycle_steps", tuple(self.lr_wsd_cycle_steps))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first offending field."""
        if self.lr_decay_style not in ALL_STYLES:
            raise ValueError(
                f"lr_decay_style: unknown style {self.lr_decay_style!r}; "
                f"choose one of {', '.join(ALL_STYLES)}"
            )
        if self.min_lr < 0:
            raise ValueError(f"min_lr: must be >= 0, got {self.min_lr}")
        if self.max_lr < self.min_lr:
            raise ValueError(f"max_lr: must be >= min_lr ({self.min_lr}), got {self.max_lr}")
        if not 0 <= self.init_lr <= self.max_lr:
            raise ValueError(f"init_lr: must be in [0, max_lr={self.max_lr}], got {self.init_lr}")
        for name in (
            "lr_warmup_steps",
            "lr_decay_steps",
            "wsd_decay_steps",
            "lr_decay_half_life_steps",
            "lr_branch_decay_start_steps",
            "lr_branch_decay_steps",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")
        if self.seq_length is not None and not self.seq_length > 0:
            raise ValueError(f"seq_length: must be > 0, got {self.seq_length}")
        if self.lr_decay_half_life_steps == 0:
            raise ValueError("lr_decay_half_life_steps: must be > 0")
        for name in ("lr_wsd_decay_style", "lr_branch_decay_style"):
            if getattr(self, name) is not None:
                DecayShape.parse(getattr(self, name), field=name)
        self._validate_lengths()
        self._validate_plugin_options()
        if self.lr_decay_style == "power":
            if self.seq_length is None:
                raise ValueError(
                    "seq_length: the power style counts tokens; pass the sequence length"
                )
            PowerLaw(
                self.lr_power_a,
                self.lr_power_b,
                self.lr_power_reference_seq_length,
                self.lr_power_batch_exponent,
            )

    def _validate_lengths(self) -> None:
        needs_total = self.lr_decay_style != "power" or bool(self.wsd_decay_steps)
        if self.lr_decay_steps is None:
            if needs_total:
                raise ValueError(
                    f"lr_decay_steps: required by lr_decay_style={self.lr_decay_style!r}"
                    + (" with a decay tail" if self.lr_decay_style == "power" else "")
                )
            return
        if not self.lr_decay_steps > self.lr_warmup_steps:  # Megatron's constructor asserts it
            raise ValueError(
                f"lr_warmup_steps: warmup ({self.lr_warmup_steps}) must be shorter than "
                f"the run (lr_decay_steps={self.lr_decay_steps})"
            )
        if self.lr_decay_style == "WSD" and self.wsd_decay_steps is None:
            raise ValueError("wsd_decay_steps: required by lr_decay_style='WSD'")
        if self.lr_decay_style in ("WSD", "power") and self.wsd_decay_steps:
            room = self.lr_decay_steps - self.lr_warmup_steps
            if self.wsd_decay_steps > room:
                raise ValueError(
                    f"wsd_decay_steps: decay ({self.wsd_decay_steps}) is longer than the run "
                    f"after warmup ({room} = lr_decay_steps - lr_warmup_steps)"
                )

    def _validate_plugin_options(self) -> None:
        cycles = self.lr_wsd_cycle_steps
        branching = (self.lr_branch_decay_start_steps, self.lr_branch_decay_steps)
        if (cycles or any(v is not None for v in branching)) and (
            self.lr_decay_style not in STABLE_PHASE_STYLES
        ):
            raise ValueError(
                f"lr_decay_style: {self.lr_decay_style!r} has no stable phase; WSD-S cycles "
                f"and branch decay need one of {', '.join(STABLE_PHASE_STYLES)}"
            )
        if cycles is not None:
            if not cycles:
                raise ValueError("lr_wsd_cycle_steps: give at least one budget")
            if any(budget < 0 for budget in cycles):
                raise ValueError(f"lr_wsd_cycle_steps: budgets must be >= 0, got {list(cycles)}")
            if any(b <= a for a, b in itertools.pairwise(cycles)):
                raise ValueError(
                    f"lr_wsd_cycle_steps: budgets must be strictly increasing, got {list(cycles)}"
                )
            if not self.wsd_decay_steps:
                raise ValueError("wsd_decay_steps: WSD-S cycles need a decay length > 0")
            previous = self.lr_warmup_steps
            for budget in cycles:
                if self.wsd_decay_steps > budget - previous:
                    raise ValueError(
                        f"lr_wsd_cycle_steps: budget {budget} leaves {budget - previous} samples "
                        f"after {previous}, less than wsd_decay_steps={self.wsd_decay_steps}"
                    )
                previous = budget
        if any(v is not None for v in branching):
            if None in branching:
                raise ValueError(
                    "lr_branch_decay_steps: a branch decay needs both "
                    "lr_branch_decay_start_steps and lr_branch_decay_steps"
                )
            if not self.lr_branch_decay_steps:
                raise ValueError("lr_branch_decay_steps: must be > 0")
            if self.lr_branch_decay_start_steps < self.lr_warmup_steps:
                raise ValueError(
                    f"lr_branch_decay_start_steps: {self.lr_branch_decay_start_steps} is inside "
                    f"warmup (lr_warmup_steps={self.lr_warmup_steps})"
                )

    # ------------------------------------------------------------- properties
    @property
    def decay_shape(self) -> DecayShape:
        """Shape of the WSD / Power tail and WSD-S decays (Power defaults to the paper's)."""
        if self.lr_wsd_decay_style is None:
            if self.lr_decay_style == "power":
                return DecayShape.EXPONENTIAL_E
            return DecayShape.EXPONENTIAL
        return DecayShape.parse(self.lr_wsd_decay_style, field="lr_wsd_decay_style")

    @property
    def computed_by_plugin(self) -> bool:
        """False where Megatron-Core's own ``get_lr`` gives exactly this schedule."""
        if self.lr_decay_style == "power":
            return True
        if self.lr_wsd_cycle_steps or self.lr_branch_decay_start_steps is not None:
            return True
        return self.lr_decay_style == "WSD" and self.decay_shape not in MEGATRON_WSD_SHAPES

    @property
    def unit_per_sample(self) -> int:
        """Schedules run in tokens when the sequence length is known, else in samples."""
        return self.seq_length or 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lr_wsd_cycle_steps is not None:
            data["lr_wsd_cycle_steps"] = list(self.lr_wsd_cycle_steps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    # --------------------------------------------------------------- building
    def build(self) -> Schedule | None:
        """The pure schedule (in tokens, or samples without ``seq_length``), or None where
        Megatron's own code applies."""
        if not self.computed_by_plugin:
            return None
        tokens = self.unit_per_sample
        half_life = None
        if self.lr_decay_half_life_steps is not None:
            half_life = self.lr_decay_half_life_steps * tokens
        warmup = self.lr_warmup_steps * tokens
        branching = self.lr_branch_decay_start_steps is not None
        # A branch decay replaces the run's own tail, so the tail is not built then.
        schedule = self._base_schedule(warmup, half_life, with_tail=not branching)
        if branching:
            schedule = with_branch_decay(
                schedule,
                start=self.lr_branch_decay_start_steps * tokens,
                length=self.lr_branch_decay_steps * tokens,
                shape=DecayShape.parse(
                    self.lr_branch_decay_style or self.decay_shape, field="lr_branch_decay_style"
                ),
                half_life=half_life,
            )
        return schedule

    def _base_schedule(self, warmup: float, half_life: float | None, with_tail: bool) -> Schedule:
        tokens = self.unit_per_sample
        law = None
        if self.lr_decay_style == "power":
            law = PowerLaw(
                self.lr_power_a,
                self.lr_power_b,
                self.lr_power_reference_seq_length,
                self.lr_power_batch_exponent,
            )
        if self.lr_wsd_cycle_steps:
            cycles = wsd_s_schedule(
                warmup=warmup,
                budgets=[budget * tokens for budget in self.lr_wsd_cycle_steps],
                decay=self.wsd_decay_steps * tokens,
                shape=self.decay_shape,
                half_life=half_life,
            )
            return Schedule(warmup=warmup, power=law, decays=cycles.decays)
        if not with_tail or self.lr_decay_style == "constant" or not self.wsd_decay_steps:
            return Schedule(warmup=warmup, power=law)
        if law is not None:
            return power_schedule(
                law=law,
                warmup=warmup,
                total=None if self.lr_decay_steps is None else self.lr_decay_steps * tokens,
                decay=(self.wsd_decay_steps or 0) * tokens,
                shape=self.decay_shape,
                half_life=half_life,
            )
        return wsd_schedule(
            warmup=warmup,
            total=self.lr_decay_steps * tokens,
            decay=self.wsd_decay_steps * tokens,
            shape=self.decay_shape,
            half_life=half_life,
        )
