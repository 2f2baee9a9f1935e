"""The run's optimizer (AdamW on Megatron's param groups, muP's per-group overrides) and
the plugin's scheduler built from the config's schedule knobs."""

from __future__ import annotations

from typing import Any

import torch

from ..megatron.mup import mup_config_overrides
from ..megatron.scheduler import PowerOptimizerParamScheduler
from ..mup.rules import MupConfig
from .config import PretrainConfig


def build_optimizer(
    config: PretrainConfig, model: Any, mup: MupConfig | None, override_schedule: bool = False
) -> tuple[torch.optim.Optimizer, PowerOptimizerParamScheduler]:
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    settings = config.schedule_settings()
    optimizer_config = OptimizerConfig(
        optimizer="adam",
        lr=settings.max_lr,
        min_lr=settings.min_lr,
        weight_decay=config.weight_decay,
    )
    groups = _get_param_groups(
        [model], optimizer_config, mup_config_overrides(model.config, mup, optimizer_config)
    )
    optimizer = torch.optim.AdamW(groups, lr=settings.max_lr, betas=(0.9, config.adam_beta2))
    scheduler = PowerOptimizerParamScheduler.from_settings(
        optimizer,
        settings,
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=override_schedule,
    )
    return optimizer, scheduler
