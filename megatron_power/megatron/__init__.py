"""Thin adapters between the pure schedules / muP rules and Megatron-Core.

Names are resolved on first use, so importing this package (or the pure settings it
re-exports) does not import Megatron-Core.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PowerOptimizerParamScheduler": ".scheduler",
    "ScheduleMismatchError": ".scheduler",
    "ScheduleSettings": "..schedules.settings",
    "ALL_STYLES": "..schedules.settings",
    "MEGATRON_STYLES": "..schedules.settings",
    "PLUGIN_STYLES": "..schedules.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
