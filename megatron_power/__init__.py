"""megatron-power: the Power LR scheduler, the WSD family and muP for Megatron-Core.

The pure math lives in :mod:`megatron_power.schedules`; the Megatron-Core scheduler in
:mod:`megatron_power.megatron` (imported lazily so the math works without Megatron).
"""

__version__ = "0.1.0"
