"""The muP coordinate check: does every activation keep its scale as the model widens?

Train copies of one model at several widths for a few steps at a high LR, record the mean
|activation| of each module at init and after the steps, and fit the slope of
log2(mean |activation|) against log2(width). Under muP the slopes stay near 0; under
standard parameterisation they grow after a few steps. (Yang et al. 2022, Fig. 5;
OLMo-core asserts the same.) This module holds the math; recording activations from a
Megatron model is :func:`megatron_power.megatron.mup.record_activation_scales`.

    >>> round(log2_slope([64, 128, 256], [1.0, 2.0, 4.0]), 6)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Default bounds: |slope| for hidden modules; the logits may shrink at init (a readout
#: not initialised at zero does) and stay within LOGITS_TRAINED_BOUND after the steps.
HIDDEN_BOUND = 0.1
LOGITS_TRAINED_BOUND = 0.15


def log2_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log2(values) against log2(widths)."""
    if len(widths) != len(values) or len(widths) < 2:
        raise ValueError("widths and values: need two or more pairs of equal length")
    xs = [math.log2(w) for w in widths]
    ys = [math.log2(v) for v in values]
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return numerator / sum((x - mean_x) ** 2 for x in xs)


@dataclass(frozen=True)
class ModuleVerdict:
    module: str
    phase: str  # "init" or "trained"
    slope: float
    bound: tuple[float, float]

    @property
    def passed(self) -> bool:
        low, high = self.bound
        return low <= self.slope <= high


def judge(
    widths: Sequence[int],
    means: Mapping[str, Mapping[str, Sequence[float]]],
    hidden_bound: float = HIDDEN_BOUND,
    logits_trained_bound: float = LOGITS_TRAINED_BOUND,
) -> list[ModuleVerdict]:
    """Verdicts for ``means[phase][module]`` (one mean |activation| per width)."""
    verdicts = []
    for phase, modules in means.items():
        for module, values in modules.items():
            if module == "logits":
                if phase == "init":
                    bound = (-math.inf, hidden_bound)  # may shrink, never grow
                else:
                    bound = (-logits_trained_bound, logits_trained_bound)
            else:
                bound = (-hidden_bound, hidden_bound)
            verdicts.append(ModuleVerdict(module, phase, log2_slope(widths, values), bound))
    return verdicts
