"""Thin adapters between the pure schedules / muP rules and Megatron-Core."""

from .scheduler import PowerOptimizerParamScheduler, ScheduleMismatchError
from .settings import ALL_STYLES, MEGATRON_STYLES, PLUGIN_STYLES, ScheduleSettings

__all__ = [
    "ALL_STYLES",
    "MEGATRON_STYLES",
    "PLUGIN_STYLES",
    "PowerOptimizerParamScheduler",
    "ScheduleMismatchError",
    "ScheduleSettings",
]
