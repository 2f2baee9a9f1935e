"""Pure learning-rate math: the Power law, WSD, WSD-S, branch decay and decay shapes.

Nothing here imports torch or Megatron; positions are plain numbers (tokens for Power).
"""

from .decay import DecayShape, decay_coefficient, decay_lr
from .power import PAPER_A, PAPER_B, PAPER_MAX_LR, PAPER_REFERENCE_SEQ_LENGTH, PowerLaw
from .schedule import (
    DecayWindow,
    Schedule,
    power_schedule,
    with_branch_decay,
    wsd_s_schedule,
    wsd_schedule,
)

__all__ = [
    "PAPER_A",
    "PAPER_B",
    "PAPER_MAX_LR",
    "PAPER_REFERENCE_SEQ_LENGTH",
    "DecayShape",
    "DecayWindow",
    "PowerLaw",
    "Schedule",
    "decay_coefficient",
    "decay_lr",
    "power_schedule",
    "with_branch_decay",
    "wsd_s_schedule",
    "wsd_schedule",
]
