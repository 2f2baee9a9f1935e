"""``PowerOptimizerParamScheduler``: Megatron-Core's scheduler with the Power and WSD family.

Drop-in for ``megatron.core.optimizer_param_scheduler.OptimizerParamScheduler``: the same
constructor, plus keyword-only options. Megatron's own styles go to Megatron's code
unchanged; ``power``, the extra decay shapes, WSD-S cycles and branch decay are computed
by the pure functions in :mod:`megatron_power.schedules`.

    from megatron_power.megatron import PowerOptimizerParamScheduler

    scheduler = PowerOptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=0.02, min_lr=0.0,
        lr_warmup_steps=warmup_samples, lr_decay_steps=train_samples,
        lr_decay_style="power", start_wd=0.1, end_wd=0.1,
        wd_incr_steps=train_samples, wd_incr_style="constant",
        seq_length=4096, lr_power_a=4.0, lr_power_b=-0.51,
    )
    scheduler.step(increment=global_batch_size)   # samples, as in Megatron-LM

``step(increment)`` counts samples like Megatron; ``increment`` is also the global batch
size in force, which the Power law uses (so a batch-size ramp gets the paper's LR at
every step). Each param group's ``max_lr``/``min_lr`` (0.16+) and ``lr_mult`` (up to
0.15, applied by Megatron's ``step``) scale the schedule, so muP's per-group ratios hold.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from ..schedules.schedule import LRPoint, Schedule
from ..schedules.settings import ScheduleSettings

logger = logging.getLogger(__name__)

#: Key under which the plugin's schedule and counters live in the scheduler state dict.
STATE_KEY = "megatron_power"

#: Megatron's older state-dict key names, newest last.
_LEGACY_KEYS = {
    "max_lr": ("start_lr",),
    "lr_warmup_steps": ("warmup_iter", "warmup_steps"),
    "lr_decay_steps": ("end_iter", "decay_steps"),
    "lr_decay_style": ("decay_style",),
    "num_steps": ("num_iters",),
}

#: Fields that only shape the end of the run, which a branch decay replaces.
_TAIL_FIELDS = frozenset(
    {"lr_decay_steps", "wsd_decay_steps", "lr_wsd_decay_style", "lr_decay_half_life_steps"}
)
_BRANCH_FIELDS = frozenset(
    {"lr_branch_decay_start_steps", "lr_branch_decay_steps", "lr_branch_decay_style"}
)
#: Options a plain Megatron checkpoint cannot have had.
_PLUGIN_ONLY_FIELDS = _BRANCH_FIELDS | {"lr_wsd_cycle_steps", "lr_decay_half_life_steps"}


class ScheduleMismatchError(ValueError):
    """A checkpoint's schedule differs from the one asked for."""


class PowerOptimizerParamScheduler(OptimizerParamScheduler):
    """OptimizerParamScheduler with ``power``, WSD-S, branch decay and more decay shapes."""

    def __init__(
        self,
        optimizer: Any,
        init_lr: float,
        max_lr: float,
        min_lr: float,
        lr_warmup_steps: int,
        lr_decay_steps: int | None,
        lr_decay_style: str,
        start_wd: float,
        end_wd: float,
        wd_incr_steps: int,
        wd_incr_style: str,
        use_checkpoint_opt_param_scheduler: bool | None = False,
        override_opt_param_scheduler: bool | None = False,
        wsd_decay_steps: int | None = None,
        lr_wsd_decay_style: str | None = None,
        *,
        global_batch_size: int | None = None,
        **plugin_options: Any,
    ) -> None:
        """Megatron's arguments, then the plugin's ScheduleSettings fields by keyword
        (``seq_length``, ``lr_power_a`` ...); each defaults as ScheduleSettings says.

        Unlike Megatron's constructor, ``use_checkpoint_opt_param_scheduler`` defaults to
        False (as Megatron-LM's flag does): a checkpoint whose schedule differs is refused
        rather than silently replacing the values given here."""
        unknown = set(plugin_options) - {f.name for f in dataclasses.fields(ScheduleSettings)}
        if unknown:
            raise TypeError(f"PowerOptimizerParamScheduler: unknown option {sorted(unknown)[0]!r}")
        settings = ScheduleSettings(
            lr_decay_style=lr_decay_style,
            max_lr=float(max_lr),
            min_lr=min_lr,
            init_lr=init_lr,
            lr_warmup_steps=lr_warmup_steps,
            lr_decay_steps=lr_decay_steps,
            wsd_decay_steps=wsd_decay_steps,
            lr_wsd_decay_style=lr_wsd_decay_style,
            **plugin_options,
        )
        if global_batch_size is not None and not global_batch_size > 0:
            raise ValueError(f"global_batch_size: must be > 0, got {global_batch_size}")
        self._use_settings(settings)
        self.tokens_seen = 0
        self.batch_samples = global_batch_size
        if lr_decay_steps is None:
            # Power without a tail needs no budget; Megatron's constructor still asserts one.
            lr_decay_steps = lr_warmup_steps + 1
        super().__init__(
            optimizer,
            init_lr,
            max_lr,
            min_lr,
            lr_warmup_steps,
            lr_decay_steps,
            lr_decay_style,
            start_wd,
            end_wd,
            wd_incr_steps,
            wd_incr_style,
            use_checkpoint_opt_param_scheduler,
            override_opt_param_scheduler,
            wsd_decay_steps,
            settings.decay_shape.value,  # Megatron's WSD reads its shape; None is the default
        )

    @classmethod
    def from_settings(
        cls,
        optimizer: Any,
        settings: ScheduleSettings,
        *,
        start_wd: float = 0.0,
        end_wd: float = 0.0,
        wd_incr_steps: int | None = None,
        wd_incr_style: str = "constant",
        **options: Any,
    ) -> PowerOptimizerParamScheduler:
        """Build from :class:`ScheduleSettings` (its fields are this constructor's names)."""
        if wd_incr_steps is None:
            wd_incr_steps = settings.lr_decay_steps or settings.lr_warmup_steps + 1
        return cls(
            optimizer,
            **settings.to_dict(),
            start_wd=start_wd,
            end_wd=end_wd,
            wd_incr_steps=wd_incr_steps,
            wd_incr_style=wd_incr_style,
            **options,
        )

    # ----------------------------------------------------------------- schedule
    def _use_settings(self, settings: ScheduleSettings) -> None:
        self.settings = settings
        self.schedule: Schedule | None = settings.build()
        self._point: LRPoint | None = None

    def get_lr(self, param_group: dict) -> float:
        """Megatron's value for its own styles; the plugin's schedule otherwise."""
        point = self._point
        if point is None:
            if self.schedule is None:
                return OptimizerParamScheduler.get_lr(self, param_group)
            point = self._point = self._compute_point()
        return point.lr(
            param_group.get("max_lr", self.max_lr),
            param_group.get("min_lr", self.min_lr),
            self.init_lr,
        )

    def _compute_point(self) -> LRPoint:
        """The schedule at the current position; computed once per step for all groups."""
        if self.batch_samples is None and self.power_law_active and self.tokens_seen > 0:
            raise ValueError(
                "global_batch_size: the power style needs the batch size in force; "
                "call step(increment=global_batch_size) or pass global_batch_size"
            )
        position = self.tokens_seen if self.settings.seq_length else self.num_steps
        return self.schedule.point(
            float(position),
            max_lr=self.max_lr,
            min_lr=self.min_lr,
            batch_tokens=(self.batch_samples or 0) * self.settings.unit_per_sample,
        )

    def step(self, increment: int) -> None:
        """Advance by ``increment`` samples (the global batch size in force) and set LRs."""
        if increment < 0:
            raise ValueError(f"increment: must be >= 0, got {increment}")
        if increment > 0:
            self.batch_samples = increment
            self.tokens_seen += increment * (self.settings.seq_length or 0)
        self._point = None  # the position moved: recompute once, for every group
        super().step(increment)

    @property
    def power_law_active(self) -> bool:
        return self.schedule is not None and self.schedule.power is not None

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Megatron's state dict plus every plugin schedule parameter and counter."""
        state = super().state_dict()
        state[STATE_KEY] = {
            "settings": self.settings.to_dict(),
            "samples_seen": self.num_steps,
            "tokens_seen": self.tokens_seen,
            "batch_samples": self.batch_samples,
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore counters; refuse a changed schedule unless asked to override or reuse.

        ``override_opt_param_scheduler`` keeps the constructor's values,
        ``use_checkpoint_opt_param_scheduler`` takes the checkpoint's; otherwise every
        field must match, with one exception: a branch decay may be added at or after the
        checkpoint's position (with the run's end moved to suit), which leaves the trained
        part of the curve unchanged.
        """
        state = _normalise_legacy_keys(state_dict)
        plugin_state = state.get(STATE_KEY)
        if plugin_state is None:
            # A plain Megatron checkpoint: it had none of the plugin's options.
            saved = {name: None for name in _PLUGIN_ONLY_FIELDS}
        else:
            saved = dict(plugin_state["settings"])
        for key in ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_style"):
            saved.setdefault(key, state[key])
        saved.setdefault("lr_decay_steps", state["lr_decay_steps"])
        num_steps = state["num_steps"]

        settings = self._resolve_settings(saved, num_steps)
        self._use_settings(settings)
        self.max_lr = settings.max_lr
        self.min_lr = settings.min_lr
        self.init_lr = settings.init_lr
        self.lr_warmup_steps = settings.lr_warmup_steps
        self.lr_decay_style = settings.lr_decay_style
        self.lr_decay_steps = (
            settings.lr_decay_steps
            if settings.lr_decay_steps is not None
            else settings.lr_warmup_steps + 1
        )
        self.wsd_decay_steps = settings.wsd_decay_steps
        self.lr_wsd_decay_style = settings.decay_shape.value
        branching = self.settings.lr_branch_decay_start_steps is not None
        for name in ("start_wd", "end_wd", "wd_incr_steps", "wd_incr_style"):
            if name == "wd_incr_steps" and branching:
                continue  # the run's length, which a branch decay changes
            if name in state:
                setattr(self, name, self._check_field(name, getattr(self, name), state[name]))

        self.num_steps = num_steps
        if plugin_state is None:
            self.tokens_seen = num_steps * (settings.seq_length or 0)
        else:
            self.tokens_seen = plugin_state["tokens_seen"]
            self.batch_samples = plugin_state["batch_samples"]
        self._point = None
        super().step(0)

    def _resolve_settings(self, saved: dict[str, Any], num_steps: int) -> ScheduleSettings:
        """The settings to continue with, per Megatron's override / use-checkpoint switches."""
        if self.override_opt_param_scheduler:
            return self.settings
        if self.use_checkpoint_opt_param_scheduler:
            mine = self.settings.to_dict()
            replaced = [f"{name} {mine[name]!r} -> {saved[name]!r}" for name in sorted(saved)
                        if name in mine and saved[name] != mine[name]]  # fmt: skip
            if replaced:
                warnings.warn(
                    "use_checkpoint_opt_param_scheduler: continuing with the checkpoint's "
                    "schedule, not the one given: " + ", ".join(replaced),
                    stacklevel=3,
                )
            return ScheduleSettings.from_dict({**mine, **saved})
        exempt: frozenset[str] = frozenset()
        branch_start = self.settings.lr_branch_decay_start_steps
        new_branch = branch_start is not None and any(  # not a resume of the branch itself
            saved.get(name) != getattr(self.settings, name) for name in _BRANCH_FIELDS
        )
        if new_branch:
            if branch_start < num_steps:
                raise ScheduleMismatchError(
                    f"lr_branch_decay_start_steps: the branch starts at sample {branch_start}, "
                    f"before the checkpoint's {num_steps}; it would rewrite trained history"
                )
            exempt = _TAIL_FIELDS | _BRANCH_FIELDS
        for name, value in self.settings.to_dict().items():
            if name in saved and name not in exempt:
                self._check_field(name, value, saved[name])
        return self.settings

    def _check_field(self, name: str, ours: Any, theirs: Any) -> Any:
        if self.override_opt_param_scheduler:
            return ours
        if self.use_checkpoint_opt_param_scheduler:
            return theirs
        if ours != theirs:
            raise ScheduleMismatchError(
                f"{name}: the checkpoint has {theirs!r} but this run asks for {ours!r}. Pass "
                "--override-opt_param-scheduler (override_opt_param_scheduler=True) to use "
                "this run's value, or --use-checkpoint-opt_param-scheduler "
                "(use_checkpoint_opt_param_scheduler=True) to keep the checkpoint's."
            )
        return theirs


def _normalise_legacy_keys(state_dict: dict) -> dict:
    state = dict(state_dict)
    for current, legacy in _LEGACY_KEYS.items():
        for old in legacy:
            if old in state:
                state.setdefault(current, state[old])
    return state
