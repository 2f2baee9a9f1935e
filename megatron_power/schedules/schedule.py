"""A learning-rate schedule as warmup, a stable curve, and decay windows.

Every schedule the plugin offers is one composition:

* **warmup**: linear from ``init_lr`` to the stable curve's value at the end of warmup;
* **stable curve**: ``max_lr`` (WSD) or the Power law (:mod:`.power`);
* **decay windows**: stretches where the LR decays from the stable curve to ``min_lr``
  with one of the :mod:`.decay` shapes. A *final* window holds ``min_lr`` after it ends
  (the end of a WSD or Power run, or a branch decay); a *cycle* window returns to the
  stable curve after it (WSD-S: the next cycle continues from the decayed weights).

Positions are counted in one unit for the whole schedule. The Power law needs tokens;
WSD works in samples or tokens alike. Builders:

    >>> s = wsd_schedule(warmup=100, total=1000, decay=200, shape="linear")
    >>> s.lr(900, max_lr=1.0, min_lr=0.0)
    0.5
    >>> cycles = wsd_s_schedule(warmup=100, budgets=[1000, 2000], decay=200, shape="linear")
    >>> cycles.lr(1000, max_lr=1.0, min_lr=0.0), cycles.lr(1001, max_lr=1.0, min_lr=0.0)
    (0.0, 1.0)
    >>> branched = with_branch_decay(s, start=500, length=100, shape="linear")
    >>> branched.lr(550, max_lr=1.0, min_lr=0.0), branched.lr(700, max_lr=1.0, min_lr=0.0)
    (0.5, 0.0)

Per-parameter-group LRs compose: the schedule is evaluated once for the base
``max_lr``/``min_lr`` (:meth:`Schedule.point`), then applied to each group's own
``max_lr``/``min_lr`` (:meth:`LRPoint.lr`): the stable curve scales with the group's
``max_lr`` and decays end at the group's ``min_lr``. A group whose ``max_lr``/``min_lr``
are k times the base values gets k times the base LR at every position.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .decay import DecayShape, decay_coefficient, default_half_life
from .power import PowerLaw


@dataclass(frozen=True)
class DecayWindow:
    """Decay from the stable curve to ``min_lr`` over ``[start, start + length]``."""

    start: float
    length: float
    shape: DecayShape = DecayShape.MINUS_SQRT
    half_life: float | None = None
    final: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", DecayShape.parse(self.shape))
        if self.start < 0:
            raise ValueError(f"decay start: must be >= 0, got {self.start}")
        if not self.length > 0:
            raise ValueError(f"decay length: must be > 0, got {self.length}")
        if self.half_life is not None and not self.half_life > 0:
            raise ValueError(f"decay half_life: must be > 0, got {self.half_life}")

    @property
    def end(self) -> float:
        return self.start + self.length


@dataclass(frozen=True)
class Schedule:
    """Warmup, a stable curve (constant when ``power`` is None) and decay windows."""

    warmup: float = 0.0
    power: PowerLaw | None = None
    decays: tuple[DecayWindow, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decays", tuple(self.decays))
        if self.warmup < 0:
            raise ValueError(f"warmup: must be >= 0, got {self.warmup}")
        previous_end = self.warmup
        for index, window in enumerate(self.decays):
            if window.start < previous_end:
                where = "warmup" if index == 0 else f"decay window {index - 1}"
                raise ValueError(
                    f"decay window {index} starts at {window.start}, before the end of "
                    f"{where} at {previous_end}: windows must follow warmup and each other"
                )
            if window.final and index != len(self.decays) - 1:
                raise ValueError(f"decay window {index} is final but other windows follow it")
            previous_end = window.end

    def stable_lr(self, position: float, batch_tokens: float, max_lr: float) -> float:
        """The stable curve for the base group, whose cap is ``max_lr``."""
        if self.power is None:
            return max_lr
        return self.power.lr(position, batch_tokens, max_lr)

    def point(
        self,
        position: float,
        *,
        max_lr: float,
        min_lr: float,
        batch_tokens: float = 0.0,
    ) -> LRPoint:
        """Where the schedule is at ``position``, for the base ``max_lr``/``min_lr``.

        The expensive part (the law, the window search, the decay shape) happens here
        once; :meth:`LRPoint.lr` then gives any param group's LR with a few flops.
        """
        if position < 0:
            raise ValueError(f"position: must be >= 0, got {position}")
        constant = self.power is None
        if self.warmup > 0 and position <= self.warmup:
            if position == 0:
                return InitPoint(0.0, max_lr, constant)
            target = self.stable_lr(self.warmup, batch_tokens, max_lr)
            return WarmupPoint(target, max_lr, constant, position / self.warmup)
        for window in self.decays:
            if position < window.start:
                break
            if position <= window.end:
                start_lr = self.stable_lr(window.start, batch_tokens, max_lr)
                elapsed = position - window.start
                if elapsed <= 0:
                    return LRPoint(start_lr, max_lr, constant)
                if elapsed >= window.length:
                    return MinPoint(0.0, max_lr, constant)
                if window.shape is DecayShape.HALF_LIFE:
                    half_life = window.half_life
                    if half_life is None:
                        half_life = default_half_life(start_lr, min_lr, window.length)
                    factor = math.pow(0.5, elapsed / half_life)
                    return HalfLifePoint(start_lr, max_lr, constant, factor)
                factor = decay_coefficient(window.shape, elapsed / window.length)
                return DecayPoint(start_lr, max_lr, constant, factor)
            if window.final:
                return MinPoint(0.0, max_lr, constant)
        return LRPoint(self.stable_lr(position, batch_tokens, max_lr), max_lr, constant)

    def lr(
        self,
        position: float,
        *,
        max_lr: float,
        min_lr: float,
        batch_tokens: float = 0.0,
        init_lr: float = 0.0,
        base_max_lr: float | None = None,
        base_min_lr: float | None = None,
    ) -> float:
        """LR at ``position`` for a group with ``max_lr``/``min_lr``.

        ``base_max_lr``/``base_min_lr`` (default: the group's own) are the values the
        schedule is defined for: the law's cap and the half-life's default.
        """
        base_max = max_lr if base_max_lr is None else base_max_lr
        base_min = min_lr if base_min_lr is None else base_min_lr
        point = self.point(position, max_lr=base_max, min_lr=base_min, batch_tokens=batch_tokens)
        return point.lr(max_lr, min_lr, init_lr)


class LRPoint:
    """One position of a schedule, ready to give any param group's LR.

    ``stable_lr`` is the base group's stable curve where the phase needs it (at the end of
    warmup, at the start of a decay, or now); a group with ``max_lr`` scales it by
    ``max_lr / base_max_lr`` (exactly 1 for the base group), except that a constant stable
    phase is the group's own ``max_lr``. ``factor`` is the warmup ratio, the decay
    coefficient or the half-life multiplier. One subclass per phase, so the per-group
    call (made for every param group at every step) has no branching on the phase.
    """

    __slots__ = ("base_max_lr", "constant", "factor", "stable_lr")
    phase = "stable"

    def __init__(
        self, stable_lr: float, base_max_lr: float, constant: bool, factor: float = 0.0
    ) -> None:
        self.stable_lr = stable_lr
        self.base_max_lr = base_max_lr
        self.constant = constant
        self.factor = factor

    def stable_for(self, max_lr: float) -> float:
        if self.constant:
            return max_lr
        if max_lr == self.base_max_lr:
            return self.stable_lr
        if self.base_max_lr == 0:
            return 0.0
        return self.stable_lr * (max_lr / self.base_max_lr)

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return self.stable_for(max_lr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stable_lr={self.stable_lr}, factor={self.factor})"


class InitPoint(LRPoint):
    __slots__ = ()
    phase = "init"

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return init_lr


class WarmupPoint(LRPoint):
    __slots__ = ()
    phase = "warmup"

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return init_lr + (self.stable_for(max_lr) - init_lr) * self.factor


class DecayPoint(LRPoint):
    __slots__ = ()
    phase = "decay"

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return min_lr + self.factor * (self.stable_for(max_lr) - min_lr)


class HalfLifePoint(LRPoint):
    __slots__ = ()
    phase = "half_life"

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return max(min_lr, self.stable_for(max_lr) * self.factor)


class MinPoint(LRPoint):
    __slots__ = ()
    phase = "min"

    def lr(self, max_lr: float, min_lr: float, init_lr: float = 0.0) -> float:
        return min_lr


def _check_warmup_and_total(warmup: float, total: float) -> None:
    if warmup < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup}")
    if not total > warmup:
        raise ValueError(f"total: must be longer than warmup ({warmup}), got {total}")


def wsd_schedule(
    *,
    warmup: float,
    total: float,
    decay: float,
    shape: DecayShape | str = DecayShape.MINUS_SQRT,
    half_life: float | None = None,
) -> Schedule:
    """Warmup-stable-decay: constant ``max_lr`` until ``total - decay``, then decay to ``total``."""
    _check_warmup_and_total(warmup, total)
    if not 0 < decay <= total - warmup:
        raise ValueError(
            f"decay: must be > 0 and fit between warmup and total ({total - warmup}), got {decay}"
        )
    window = DecayWindow(start=total - decay, length=decay, shape=shape, half_life=half_life)
    return Schedule(warmup=warmup, decays=(window,))


def wsd_s_schedule(
    *,
    warmup: float,
    budgets: Iterable[float],
    decay: float,
    shape: DecayShape | str = DecayShape.MINUS_SQRT,
    half_life: float | None = None,
) -> Schedule:
    """WSD-S: decay to ``min_lr`` at every budget, then return to ``max_lr`` (Wen et al. 2024).

    The checkpoint taken at each budget is the model for that budget; the next cycle
    trains on from those decayed weights.
    """
    budgets = tuple(budgets)
    if not budgets:
        raise ValueError("budgets: give at least one budget")
    if any(later <= earlier for earlier, later in itertools.pairwise(budgets)):
        raise ValueError(f"budgets: must be strictly increasing, got {list(budgets)}")
    windows = []
    previous = warmup
    for budget in budgets:
        if not 0 < decay <= budget - previous:
            raise ValueError(f"decay: {decay} does not fit between {previous} and budget {budget}")
        windows.append(
            DecayWindow(budget - decay, decay, shape=shape, half_life=half_life, final=False)
        )
        previous = budget
    return Schedule(warmup=warmup, decays=tuple(windows))


def power_schedule(
    *,
    law: PowerLaw,
    warmup: float,
    total: float | None = None,
    decay: float = 0.0,
    shape: DecayShape | str = DecayShape.EXPONENTIAL_E,
    half_life: float | None = None,
) -> Schedule:
    """The Power schedule: warmup to the law, the law, and an optional decay tail.

    Positions are tokens. Without a tail (``decay == 0``) no ``total`` is needed.
    """
    if decay < 0:
        raise ValueError(f"decay: must be >= 0, got {decay}")
    if not decay:
        return Schedule(warmup=warmup, power=law)
    if total is None:
        raise ValueError("total: a decay tail needs the total token count it ends at")
    _check_warmup_and_total(warmup, total)
    if decay > total - warmup:
        raise ValueError(
            f"decay: must fit between warmup and total ({total - warmup}), got {decay}"
        )
    window = DecayWindow(start=total - decay, length=decay, shape=shape, half_life=half_life)
    return Schedule(warmup=warmup, power=law, decays=(window,))


def with_branch_decay(
    schedule: Schedule,
    *,
    start: float,
    length: float,
    shape: DecayShape | str = DecayShape.MINUS_SQRT,
    half_life: float | None = None,
) -> Schedule:
    """Branch a decay off the stable phase: decay from ``start`` over ``length``, then hold.

    Windows of ``schedule`` that would begin at or after ``start`` (its own tail, later
    WSD-S cycles) are dropped; everything before ``start`` is unchanged, so a checkpoint
    saved at or before ``start`` resumes onto this schedule without a jump.
    """
    if start < schedule.warmup:
        raise ValueError(
            f"branch decay start: {start} is inside warmup (ends at {schedule.warmup})"
        )
    for window in schedule.decays:
        if window.start < start < window.end:
            raise ValueError(
                f"branch decay start: {start} falls inside a decay window "
                f"[{window.start}, {window.end}]; branch from the stable phase"
            )
    kept = tuple(window for window in schedule.decays if window.end <= start)
    if kept and kept[-1].final:
        raise ValueError(f"branch decay start: {start} is after the schedule's final decay")
    branch = DecayWindow(start, length, shape=shape, half_life=half_life, final=True)
    return replace(schedule, decays=(*kept, branch))
