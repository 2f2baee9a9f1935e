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
from .settings import ALL_STYLES, MEGATRON_STYLES, PLUGIN_STYLES, ScheduleSettings

__all__ = [
    "ALL_STYLES",
    "MEGATRON_STYLES",
    "PAPER_A",
    "PAPER_B",
    "PAPER_MAX_LR",
    "PAPER_REFERENCE_SEQ_LENGTH",
    "PLUGIN_STYLES",
    "DecayShape",
    "DecayWindow",
    "PowerLaw",
    "Schedule",
    "ScheduleSettings",
    "decay_coefficient",
    "decay_lr",
    "power_schedule",
    "with_branch_decay",
    "wsd_s_schedule",
    "wsd_schedule",
]
