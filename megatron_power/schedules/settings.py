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

from ..knobs import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_COUNT, Range, Unit, knob, validate_knobs
from .decay import MEGATRON_WSD_SHAPES, DecayShape
from .power import PAPER_A, PAPER_B, PAPER_REFERENCE_SEQ_LENGTH, PowerLaw
from .schedule import (
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


#: Knobs only the power style reads: given with another style, they would do nothing.
POWER_ONLY = (
    "lr_power_a", "lr_power_b", "lr_power_reference_seq_length", "lr_power_batch_exponent",
    "lr_power_batch_size",
)  # fmt: skip


def unapplied_power_knob(given: dict, style: str | None = None) -> tuple[str, str] | None:
    """``(knob, style)`` for the first power-only knob in ``given`` (the knobs a user set)
    when the run's style (``style``, else ``given``'s, else the default) is not power: a
    flag that would be silently ignored."""
    if style is None:
        default = ScheduleSettings.__dataclass_fields__["lr_decay_style"].default
        style = given.get("lr_decay_style") or default
    if style == "power":
        return None
    name = next((name for name in POWER_ONLY if given.get(name) is not None), None)
    return None if name is None else (name, style)


def default_decay_shape(lr_decay_style: str) -> DecayShape:
    """The decay shape a run gets without ``--lr-wsd-decay-style``, at every entry point.

    Power: ``exponential_e``, the paper's and IBM's tail (PowerLM was trained with it).
    Everything else: ``exponential``, Megatron-LM's own default, so a plain WSD run is
    Megatron's WSD value for value.
    """
    return DecayShape.EXPONENTIAL_E if lr_decay_style == "power" else DecayShape.EXPONENTIAL


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    """Everything that decides the LR curve. Counts are samples, as in Megatron.

    Each field is a knob (:func:`megatron_power.knobs.knob`): its metadata is the one
    definition every entry point's flags, checks and help come from.
    """

    lr_decay_style: str = knob(
        "linear",
        "LR schedule style (Megatron's own, or power).",
        flag="--lr-decay-style",
        choices=ALL_STYLES,
        megatron_lm_owns=True,
        pretrain_flag="--lr-decay-style",
    )
    max_lr: float = knob(
        help="Peak learning rate (Power: the cap).",
        flag="--lr",
        megatron_lm_owns=True,
        check=NON_NEGATIVE,
        pretrain_flag="--lr",
    )
    min_lr: float = knob(
        0.0,
        "Learning rate every decay ends at.",
        flag="--min-lr",
        megatron_lm_owns=True,
        check=NON_NEGATIVE,
        pretrain_flag="--min-lr",
    )
    init_lr: float = knob(
        0.0,
        "Learning rate warmup starts from.",
        flag="--lr-warmup-init",
        megatron_lm_owns=True,
        check=NON_NEGATIVE,
        pretrain_flag="--lr-warmup-init",
    )
    lr_warmup_steps: int | float = knob(
        0,
        "Linear warmup length.",
        flag="--lr-warmup",
        unit=Unit.SAMPLES,
        fraction=True,
        megatron_lm_owns=True,
        check=NON_NEGATIVE,
        pretrain_flag="--warmup-tokens",
    )  # Megatron-LM passes a float with --lr-warmup-fraction
    lr_decay_steps: int | None = knob(
        None,
        "Length of the decay (default: the whole run).",
        flag="--lr-decay",
        unit=Unit.SAMPLES,
        megatron_lm_owns=True,
        check=COUNT,
        pretrain_from="--train-tokens",
    )
    wsd_decay_steps: int | None = knob(
        None,
        "WSD decay / Power tail length (Power: none by default); WSD-S: each decay.",
        flag="--lr-wsd-decay",
        unit=Unit.SAMPLES,
        fraction=True,
        megatron_lm_owns=True,
        plugin_fraction=True,
        check=COUNT,
        pretrain_flag="--decay-tokens",
        pretrain_fraction_flag="--decay-fraction",
    )
    lr_wsd_decay_style: str | None = knob(
        None,
        "Decay shape of the WSD decay, Power tail and WSD-S cycles (default: "
        "exponential_e for power, exponential for WSD).",
        flag="--lr-wsd-decay-style",
        choices=tuple(shape.value for shape in DecayShape),
        megatron_lm_owns=True,
        pretrain_flag="--decay-shape",
    )
    seq_length: int | None = knob(
        None,
        "Tokens per sample (Power counts tokens).",
        flag="--seq-length",
        megatron_lm_owns=True,
        check=POSITIVE_COUNT,
        pretrain_from="--seq-length",
    )
    lr_power_a: float = knob(
        PAPER_A,
        "Power law coefficient a in lr = min(lr, beta**c * a * tokens**b).",
        flag="--lr-power-a",
        check=POSITIVE,
        pretrain_flag="--lr-power-a",
    )
    lr_power_b: float = knob(
        PAPER_B,
        "Power law exponent b (< 0).",
        flag="--lr-power-b",
        check=Range(high=0, high_open=True),
        pretrain_flag="--lr-power-b",
    )
    lr_power_reference_seq_length: int = knob(
        PAPER_REFERENCE_SEQ_LENGTH,
        "beta counts the global batch in sequences of this many tokens.",
        flag="--lr-power-reference-seq-length",
        check=POSITIVE_COUNT,
        pretrain_flag="--lr-power-reference-seq-length",
    )
    lr_power_batch_exponent: float = knob(
        1.0,
        "c in lr = beta**c * a * tokens**b (1: linear in batch size, the paper's).",
        flag="--lr-power-batch-exponent",
        check=POSITIVE,
        pretrain_flag="--lr-power-batch-exponent",
    )
    lr_power_batch_size: int | None = knob(
        None,
        "beta from this global batch size (samples), not the batch in force: under a batch "
        "ramp, give the final batch so the LR does not start low (default: in force).",
        flag="--lr-power-batch-size",
        check=POSITIVE_COUNT,
        pretrain_flag="--lr-power-batch-size",
    )
    lr_decay_half_life_steps: int | None = knob(
        None,
        "Half-life of the half_life decay shape (default fits the window).",
        flag="--lr-decay-half-life",
        unit=Unit.SAMPLES,
        check=Range(low=0, low_open=True),
        pretrain_flag="--decay-half-life-tokens",
    )
    lr_wsd_cycle_steps: tuple[int, ...] | None = knob(
        None,
        "WSD-S: decay to min-lr before each of these points, then return to the stable LR.",
        flag="--lr-wsd-cycle",
        unit=Unit.SAMPLES,
        many=True,
        check=COUNT,
        pretrain_flag="--wsd-cycle-tokens",
    )
    lr_branch_decay_start_steps: int | None = knob(
        None,
        "Branch decay: start decaying here (a stable-phase checkpoint).",
        flag="--lr-branch-decay-start",
        unit=Unit.SAMPLES,
        check=COUNT,
        pretrain_from="--init-from",
    )
    lr_branch_decay_steps: int | None = knob(
        None,
        "Branch decay: decay over this length, then hold min-lr.",
        flag="--lr-branch-decay",
        unit=Unit.SAMPLES,
        check=Range(low=0, low_open=True),
        pretrain_flag="--branch-decay-tokens",
    )
    lr_branch_decay_style: str | None = knob(
        None,
        "Branch decay shape (default: the run's decay shape).",
        flag="--lr-branch-decay-style",
        choices=tuple(shape.value for shape in DecayShape),
        pretrain_flag="--branch-decay-shape",
    )

    def __post_init__(self) -> None:
        if self.lr_wsd_cycle_steps is not None:
            object.__setattr__(self, "lr_wsd_cycle_steps", tuple(self.lr_wsd_cycle_steps))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first offending field."""
        validate_knobs(self)  # each field's own range and choices, from its knob
        if self.max_lr < self.min_lr:
            raise ValueError(f"max_lr: must be >= min_lr ({self.min_lr}), got {self.max_lr}")
        if not self.init_lr <= self.max_lr:
            raise ValueError(f"init_lr: must be in [0, max_lr={self.max_lr}], got {self.init_lr}")
        self._validate_lengths()
        self._validate_plugin_options()
        if self.lr_decay_style == "power" and self.seq_length is None:
            raise ValueError("seq_length: the power style counts tokens; pass the sequence length")

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
        if (
            self.wsd_decay_steps
            and self.lr_decay_style not in ("WSD", "power")
            and not self.lr_wsd_cycle_steps
        ):
            raise ValueError(
                f"wsd_decay_steps: not applied by lr_decay_style={self.lr_decay_style!r} "
                "(a decay length is WSD's, Power's tail or WSD-S's)"
            )
        if self.lr_decay_style == "WSD" and self.wsd_decay_steps is None:
            raise ValueError("wsd_decay_steps: required by lr_decay_style='WSD'")
        branching = self.lr_branch_decay_start_steps is not None  # replaces the run's tail
        if self.lr_decay_style in ("WSD", "power") and self.wsd_decay_steps and not branching:
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
            if self.lr_decay_steps is not None and cycles[-1] > self.lr_decay_steps:
                raise ValueError(
                    f"lr_wsd_cycle_steps: budget {cycles[-1]} is past the end of the run "
                    f"(lr_decay_steps={self.lr_decay_steps}); it would never be reached"
                )
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
        """Shape of the WSD / Power tail and WSD-S decays (unset: the style's default)."""
        if self.lr_wsd_decay_style is None:
            return default_decay_shape(self.lr_decay_style)
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

    @property
    def power_law(self) -> PowerLaw:
        return PowerLaw(
            self.lr_power_a,
            self.lr_power_b,
            self.lr_power_reference_seq_length,
            self.lr_power_batch_exponent,
            held_batch_tokens=(
                None
                if self.lr_power_batch_size is None
                else self.lr_power_batch_size * self.unit_per_sample
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lr_wsd_cycle_steps is not None:
            data["lr_wsd_cycle_steps"] = list(self.lr_wsd_cycle_steps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def decay_windows(self) -> list[tuple[float, float, bool]]:
        """Every decay of the run as (start, end, final) in samples: the WSD or Power tail
        (final: the LR stays at min_lr after it) and the WSD-S cycles."""
        if self.lr_decay_style not in STABLE_PHASE_STYLES:
            end = self.lr_decay_steps or self.lr_warmup_steps
            return [(float(self.lr_warmup_steps), float(end), True)]
        unit = self.unit_per_sample
        schedule = self._base_schedule(self.lr_warmup_steps * unit, None, with_tail=True)
        return [(w.start / unit, w.end / unit, w.final) for w in schedule.decays]

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
        law = self.power_law if self.lr_decay_style == "power" else None
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
