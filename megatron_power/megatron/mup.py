"""muP on Megatron-Core GPT and MoE models: config, forward multipliers, init, param groups.

Three calls, around the usual model and optimizer construction:

    from megatron_power.megatron.mup import MupConfig, mup_transformer_config, apply_mup, \\
        mup_config_overrides

    mup = MupConfig(base_hidden_size=256, embedding_multiplier=12, residual_multiplier=0.22)
    config = mup_transformer_config(config, mup)           # attention scale, init methods
    model = GPTModel(config=config, ...)                    # any GPT / MoE layer spec
    apply_mup(model, mup)                                   # multipliers, readout/expert init
    overrides = mup_config_overrides(config, mup, optimizer_config)   # per-group LR, eps, wd
    optimizer = get_megatron_optimizer(optimizer_config, [model], config_overrides=overrides)

Ratios come from the TransformerConfig's global sizes, never from shard shapes, so the
same model is built under any tensor, pipeline, expert or sequence parallelism. The
multipliers are forward hooks on modules every layer spec has (``embedding``,
``self_attention``, ``mlp`` - dense or MoE - and ``output_layer``), so local and
Transformer Engine specs are served alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import init_method_normal

from ..mup.rules import ModelShape, MupConfig, MupRules, ParamRole, role_of

__all__ = [
    "MupConfig",
    "ParamRole",
    "apply_mup",
    "classify_parameter",
    "mup_config_overrides",
    "mup_rules",
    "mup_scale_lr_cond",
    "mup_transformer_config",
]

_APPLIED = "_megatron_power_mup"
GROUP_ROLE_KEY = "megatron_power_role"
"""Param-group field naming the muP role of a group muP overrides. Megatron 0.16-0.18
match a checkpoint's groups by (wd_mult, lr_mult, expert, decoupled), which cannot tell
the hidden group (LR/m) from the embedding group; this field can."""
#: The two residual branches of every transformer layer, dense or MoE, local or TE spec.
_RESIDUAL_BRANCH = re.compile(r"(^|\.)layers\.\d+\.(self_attention|mlp)$")


def model_shape(config: TransformerConfig) -> ModelShape:
    """Global sizes from the config (never a shard's)."""
    return ModelShape(
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        head_dim=config.kv_channels,
        moe_ffn_hidden_size=getattr(config, "moe_ffn_hidden_size", None)
        if config.num_moe_experts
        else None,
    )


def _refuse_upstream_mup(config: TransformerConfig) -> None:
    if getattr(config, "use_mup", False):
        raise ValueError(
            "use_mup: Megatron-Core's own muP is on; megatron-power's muP would apply the "
            "same multipliers twice. Use one: drop use_mup (the plugin covers it and adds "
            "the residual multiplier and expert width), or drop the plugin's muP."
        )


def mup_rules(config: TransformerConfig, mup: MupConfig) -> MupRules:
    return mup.resolve(model_shape(config), init_method_std=config.init_method_std)


def mup_transformer_config(config: TransformerConfig, mup: MupConfig | None) -> TransformerConfig:
    """A copy of ``config`` with muP's attention scale and init methods (``config`` itself
    when ``mup`` is None: muP off changes nothing)."""
    if mup is None:
        return config
    _refuse_upstream_mup(config)
    if config.softmax_scale is not None:
        raise ValueError(
            "softmax_scale: already set on the TransformerConfig; muP sets it from "
            "base_head_dim / attention_scale - set it there instead"
        )
    rules = mup_rules(config, mup)
    return dataclasses.replace(
        config,
        softmax_scale=rules.softmax_scale,
        init_method=init_method_normal(rules.init_std_for(ParamRole.HIDDEN)),
        output_layer_init_method=init_method_normal(
            rules.init_std_for(ParamRole.OUTPUT_PROJECTION)
        ),
        embedding_init_method=init_method_normal(rules.init_std_for(ParamRole.EMBEDDING)),
    )


def classify_parameter(name: str, param: torch.nn.Parameter) -> ParamRole:
    """The muP role of a Megatron-Core parameter: a tied readout copy (flagged by Megatron)
    is the embedding; every other parameter by the explicit table (unknown: an error)."""
    if getattr(param, "shared_embedding", False):
        return ParamRole.EMBEDDING
    return role_of(name)


def _built_init_std(role: ParamRole, rules: MupRules) -> float | None:
    """The std ``mup_transformer_config``'s init methods gave this role at build time."""
    if role in (ParamRole.OUTPUT_PROJECTION, ParamRole.EXPERT_FC2):
        return rules.init_std_for(ParamRole.OUTPUT_PROJECTION)
    if role in (ParamRole.HIDDEN, ParamRole.EXPERT_FC1, ParamRole.ROUTER, ParamRole.READOUT):
        return rules.init_std_for(ParamRole.HIDDEN)
    if role is ParamRole.EMBEDDING:
        return rules.init_std_for(ParamRole.EMBEDDING)
    return None


def _scale_output(factor: float) -> Callable:
    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return tuple(None if part is None else part * factor for part in output)
        return output * factor

    return hook


def apply_mup(model: torch.nn.Module, mup: MupConfig | None) -> torch.nn.Module:
    """Install muP's forward multipliers and fix the init Megatron's builders cannot express.

    ``model`` is a GPTModel (any stage of a pipeline) built from a config returned by
    :func:`mup_transformer_config`. Call once per model chunk; a no-op when ``mup`` is None.
    """
    if mup is None:
        return model
    if getattr(model, _APPLIED, False):
        raise ValueError("apply_mup: already applied to this model")
    config = model.config
    rules = mup_rules(config, mup)
    if getattr(model, "share_embeddings_and_output_weights", False):  # no readout_init_std
        mup.resolve(dataclasses.replace(model_shape(config), tied_readout=True))
    if config.softmax_scale != rules.softmax_scale:
        raise ValueError(
            "apply_mup: the model was not built from mup_transformer_config(config, mup) "
            f"(softmax_scale {config.softmax_scale}, muP wants {rules.softmax_scale}); its "
            "init and attention would not be muP's"
        )
    _correct_init(model, rules)

    if getattr(model, "embedding", None) is not None and rules.embedding_multiplier != 1.0:
        model.embedding.register_forward_hook(_scale_output(rules.embedding_multiplier))
    if rules.residual_multiplier != 1.0:
        for module_name, module in model.named_modules():
            if _RESIDUAL_BRANCH.search(module_name):
                module.register_forward_hook(_scale_output(rules.residual_multiplier))
    if getattr(model, "output_layer", None) is not None and rules.logits_divisor != 1.0:
        model.output_layer.register_forward_hook(_scale_output(1.0 / rules.logits_divisor))
    setattr(model, _APPLIED, rules)
    return model


@torch.no_grad()
def _correct_init(model: torch.nn.Module, rules: MupRules) -> None:
    """Rescale weights whose muP std differs from what the config's init methods gave.

    Megatron initialises the readout and router with ``init_method`` and expert fc2 with
    ``output_layer_init_method``; rescaling a zero-mean normal init by a constant gives the
    wanted std exactly, elementwise, so every shard of a parallel model agrees.
    """
    for name, param in model.named_parameters():
        role = classify_parameter(name, param)
        if getattr(param, "shared_embedding", False) and role is ParamRole.EMBEDDING:
            continue  # tied readout: initialised as (and synced from) the embedding
        built = _built_init_std(role, rules)
        wanted = rules.init_std_for(role)
        if built is None or wanted is None or built == wanted:
            continue
        param.mul_(wanted / built)


def mup_config_overrides(
    config: TransformerConfig,
    mup: MupConfig | None,
    optimizer_config: Any,
    base_overrides: dict | None = None,
) -> dict | None:
    """ParamKey -> ParamGroupOverride for ``get_megatron_optimizer`` (megatron-core 0.16+).

    Merged with Megatron's standard overrides (no weight decay on biases and norms,
    ``decoupled_lr`` on embedding/output) or ``base_overrides`` when given; muP never sets
    the LR of embedding or output parameters, so it cannot clash with ``decoupled_lr``.
    With ``mup`` None it returns ``base_overrides`` untouched.
    """
    if mup is None:
        return base_overrides  # None: Megatron applies its own standard overrides
    from megatron.core.optimizer import get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    _refuse_upstream_mup(config)
    rules = mup_rules(config, mup)
    overrides = dict(
        get_standard_config_overrides(optimizer_config)
        if base_overrides is None
        else base_overrides
    )
    lr = optimizer_config.lr
    min_lr = optimizer_config.min_lr if optimizer_config.min_lr is not None else 0.0
    for role in ParamRole:
        override: dict[str, float] = {}
        lr_mult = rules.lr_mult(role)
        if lr_mult != 1.0:
            override["max_lr"] = lr * lr_mult
            override["min_lr"] = min_lr * lr_mult
        if rules.eps_mult(role) != 1.0:
            override["eps"] = optimizer_config.adam_eps * rules.eps_mult(role)
        if rules.wd_mult(role) != 1.0:
            override["wd_mult"] = rules.wd_mult(role)
        if not override:
            continue
        override[GROUP_ROLE_KEY] = role.value  # tells a checkpoint's muP groups apart
        predicate = ParamWithNamePredicate(
            name=f"megatron_power_mup_{role.value}",
            fn=lambda param, name, role=role: classify_parameter(name, param) is role,
        )
        overrides[ParamKey(with_name_predicate=predicate)] = ParamGroupOverride(**override)
    return overrides


def single_lr_mult(mup: MupConfig, rules: MupRules) -> float:
    """The one LR multiplier megatron-core <= 0.15's optimizer API can apply; a muP config
    it cannot express (per-group eps or wd_mult, two multipliers) is refused, naming the
    field (checked before training, and again where the optimizer is built)."""
    if mup.scale_adam_eps:
        raise ValueError("scale_adam_eps: megatron-core <= 0.15 has no per-group eps")
    if mup.weight_decay != "coupled":
        raise ValueError("weight_decay: megatron-core <= 0.15 has no per-group wd_mult")
    multipliers = {rules.lr_mult(role) for role in ParamRole} - {1.0}
    if len(multipliers) > 1:
        raise ValueError(
            "base_moe_ffn_hidden_size: experts and hidden matrices need different LR "
            f"multipliers {sorted(multipliers)}; megatron-core <= 0.15 takes one lr_mult"
        )
    return multipliers.pop() if multipliers else 1.0


def mup_scale_lr_cond(
    config: TransformerConfig, mup: MupConfig
) -> tuple[Callable[[str, torch.nn.Parameter], bool], float]:
    """``(scale_lr_cond, lr_mult)`` for megatron-core up to 0.15, whose optimizer takes one
    LR multiplier for the parameters a condition selects (Megatron's ``step`` applies it).

    That API cannot express two different multipliers, a per-group eps or wd_mult; such a
    config is refused with the field to change.
    """
    _refuse_upstream_mup(config)
    rules = mup_rules(config, mup)
    lr_mult = single_lr_mult(mup, rules)

    def scale_lr_cond(name: str, param: torch.nn.Parameter) -> bool:
        return rules.lr_mult(classify_parameter(name, param)) != 1.0

    return scale_lr_cond, lr_mult
