"""Decay shapes shared by the Power and WSD schedules.

A decay takes the learning rate from ``start_lr`` to ``min_lr`` over a window of
``length`` units (tokens or samples; the shape does not care which). Every shape ends
at ``min_lr`` exactly when the window ends, so a decayed checkpoint is the same
whatever rounding happened along the way.

    >>> decay_lr("minus_sqrt", start_lr=1.0, min_lr=0.0, elapsed=25, length=100)
    0.5

Shapes (``r = elapsed / length``):

=================  =====================================  ============================
name               coefficient c(r), lr = min + c*(start-min)  origin
=================  =====================================  ============================
``exponential``    ``2 * 0.5**r - 1``                      Megatron-Core WSD
``exponential_e``  ``(e**(1-r) - 1) / (e - 1)``            Power paper / IBM lm-engine
``half_life``      ``lr = max(min, start * 0.5**(t/T))``   MiniCPM (T = half-life)
``linear``         ``1 - r``
``cosine``         ``(1 + cos(pi r)) / 2``
``minus_sqrt``     ``1 - sqrt(r)``                         Hagele et al. 2024
=================  =====================================  ============================
"""

from __future__ import annotations

import math
from enum import StrEnum


class DecayShape(StrEnum):
    """Names match Megatron's ``--lr-wsd-decay-style`` where Megatron has the shape."""

    EXPONENTIAL = "exponential"
    EXPONENTIAL_E = "exponential_e"
    HALF_LIFE = "half_life"
    LINEAR = "linear"
    COSINE = "cosine"
    MINUS_SQRT = "minus_sqrt"

    @classmethod
    def parse(cls, value: str | DecayShape, field: str = "decay_shape") -> DecayShape:
        """Turn a user string into a shape, naming ``field`` when it is unknown."""
        if isinstance(value, DecayShape):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(shape.value for shape in cls)
            raise ValueError(
                f"{field}: unknown decay shape {value!r}; choose one of {names}"
            ) from None


#: Shapes Megatron-Core's own WSD style computes; the others exist only in this plugin.
MEGATRON_WSD_SHAPES = frozenset(
    {DecayShape.EXPONENTIAL, DecayShape.LINEAR, DecayShape.COSINE, DecayShape.MINUS_SQRT}
)

_E = math.e


def decay_coefficient(shape: DecayShape, ratio: float) -> float:
    """Fraction of the way from ``min_lr`` (0) to ``start_lr`` (1) at ``ratio`` in [0, 1].

    Not defined for ``half_life``, whose value depends on absolute elapsed units.
    """
    if shape is DecayShape.EXPONENTIAL:
        return 2.0 * math.pow(0.5, ratio) - 1.0
    if shape is DecayShape.EXPONENTIAL_E:
        return (math.exp(1.0 - ratio) - 1.0) / (_E - 1.0)
    if shape is DecayShape.LINEAR:
        return 1.0 - ratio
    if shape is DecayShape.COSINE:
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if shape is DecayShape.MINUS_SQRT:
        return 1.0 - math.sqrt(ratio)
    raise ValueError(f"decay_shape: {shape.value!r} has no ratio form; use decay_lr")


def decay_lr(
    shape: DecayShape | str,
    *,
    start_lr: float,
    min_lr: float,
    elapsed: float,
    length: float,
    half_life: float | None = None,
) -> float:
    """Learning rate ``elapsed`` units into a decay window of ``length`` units.

    ``half_life`` (same units) is used by the ``half_life`` shape only; when it is None
    the half-life is chosen so the curve reaches ``min_lr`` (or 1/1024 of ``start_lr``
    when ``min_lr`` is 0) exactly at the end of the window.
    """
    shape = DecayShape.parse(shape)
    if elapsed <= 0:
        return start_lr
    if elapsed >= length:
        return min_lr
    if shape is DecayShape.HALF_LIFE:
        half_life = default_half_life(start_lr, min_lr, length) if half_life is None else half_life
        return max(min_lr, start_lr * math.pow(0.5, elapsed / half_life))
    return min_lr + decay_coefficient(shape, elapsed / length) * (start_lr - min_lr)


def default_half_life(start_lr: float, min_lr: float, length: float) -> float:
    """Half-life that brings ``start_lr`` down to ``min_lr`` over ``length`` units.

    With ``min_lr == 0`` (or above ``start_lr``) ten half-lives fit in the window.
    """
    if 0.0 < min_lr < start_lr:
        return length / math.log2(start_lr / min_lr)
    return length / 10.0
