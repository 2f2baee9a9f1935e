"""muP: pure rules (:mod:`.rules`); the Megatron-Core adapter is
:mod:`megatron_power.megatron.mup`."""

from .rules import ModelShape, MupConfig, MupRules, ParamRole

__all__ = ["ModelShape", "MupConfig", "MupRules", "ParamRole"]
