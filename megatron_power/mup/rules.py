"""muP rules as PowerLM / Granite / MiniCPM use them, as plain numbers (no torch, no Megatron).

``m = hidden_size / base_hidden_size`` is the width ratio. A model tuned at the base
width keeps its LR and init when widened if (Adam; paper Table 1; Yang et al. 2022):

=====================  ==========================  ==================  =================
parameter role         init std                    Adam LR             forward
=====================  ==========================  ==================  =================
embedding              init_std                    lr                  output x m_emb
hidden matrix          init_std / sqrt(m)          lr / m
output projection      init_std / sqrt(m)          lr / m              branch x m_res
  (attn proj, fc2)       [/ sqrt(2L) by default]                         before the add
expert fc1             init_std / sqrt(m)          lr / m
expert fc2             init_std / sqrt(m_e)        lr / m_e            (m_e: expert FFN
                         [/ sqrt(2L)]                                    width ratio)
router                 per ``router`` rule (below)
vector (norm, bias)    unchanged                   lr
readout (output layer) init_std                    lr                  logits / m
attention              -                           -                   QK^T * sqrt(d0)/d
=====================  ==========================  ==================  =================

Router rules: ``hidden`` (default; Megatron upstream and IBM treat it as a hidden matrix:
its fan-in is the hidden size), ``readout`` (OLMo-core: init and LR like the output
layer) or ``unscaled`` (Cerebras: left as standard parameterisation).

Weight decay: ``coupled`` (default) keeps PyTorch AdamW's decay ``lr * wd``, so hidden
matrices decay ``1/m`` as fast, which is what IBM's and the Granite runs did;
``independent`` multiplies their ``wd`` by ``m`` so ``lr * wd`` is width independent
(Wortsman et al. 2024's recommendation for long runs).

    >>> rules = MupConfig(base_hidden_size=256, embedding_multiplier=12).resolve(
    ...     ModelShape(hidden_size=1024, num_layers=4, head_dim=64))
    >>> rules.width_mult, rules.lr_mult(ParamRole.HIDDEN), rules.logits_divisor
    (4.0, 0.25, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

RESIDUAL_RULES = ("constant", "minicpm", "completep")
ROUTER_RULES = ("hidden", "readout", "unscaled")
WEIGHT_DECAY_RULES = ("coupled", "independent")


class ParamRole(StrEnum):
    EMBEDDING = "embedding"
    HIDDEN = "hidden"
    OUTPUT_PROJECTION = "output_projection"
    EXPERT_FC1 = "expert_fc1"
    EXPERT_FC2 = "expert_fc2"
    ROUTER = "router"
    VECTOR = "vector"
    READOUT = "readout"


@dataclass(frozen=True)
class ModelShape:
    """The global (unsharded) sizes the muP ratios come from."""

    hidden_size: int
    num_layers: int
    head_dim: int
    moe_ffn_hidden_size: int | None = None


@dataclass(frozen=True)
class MupConfig:
    """Everything muP needs besides the model's own shape. See the module docstring."""

    base_hidden_size: int
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    residual_rule: str = "constant"
    base_num_layers: int | None = None
    base_head_dim: int | None = None
    attention_scale: float | None = None
    logits_scale: float | None = None
    init_std: float | None = None
    depth_scaled_output_init: bool = True
    base_moe_ffn_hidden_size: int | None = None
    router: str = "hidden"
    scale_adam_eps: bool = False
    weight_decay: str = "coupled"

    def __post_init__(self) -> None:
        if not self.base_hidden_size > 0:
            raise ValueError(f"base_hidden_size: must be > 0, got {self.base_hidden_size}")
        for name in ("embedding_multiplier", "residual_multiplier"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("attention_scale", "logits_scale", "init_std"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        for name in ("base_num_layers", "base_head_dim", "base_moe_ffn_hidden_size"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        if self.residual_rule not in RESIDUAL_RULES:
            raise ValueError(
                f"residual_rule: unknown rule {self.residual_rule!r}; "
                f"choose one of {', '.join(RESIDUAL_RULES)}"
            )
        if self.residual_rule == "completep" and self.base_num_layers is None:
            raise ValueError("base_num_layers: required by residual_rule='completep'")
        if self.router not in ROUTER_RULES:
            raise ValueError(
                f"router: unknown rule {self.router!r}; choose one of {', '.join(ROUTER_RULES)}"
            )
        if self.weight_decay not in WEIGHT_DECAY_RULES:
            raise ValueError(
                f"weight_decay: unknown rule {self.weight_decay!r}; "
                f"choose one of {', '.join(WEIGHT_DECAY_RULES)}"
            )

    # ------------------------------------------------------------------ presets
    @classmethod
    def granite(
        cls,
        *,
        base_hidden_size: int,
        embedding_multiplier: float,
        residual_multiplier: float,
        attention_multiplier: float,
        logits_scaling: float,
        **options,
    ) -> MupConfig:
        """HF GraniteConfig's four multipliers, mapped one to one."""
        return cls(
            base_hidden_size=base_hidden_size,
            embedding_multiplier=embedding_multiplier,
            residual_multiplier=residual_multiplier,
            attention_scale=attention_multiplier,
            logits_scale=logits_scaling,
            **options,
        )

    @classmethod
    def minicpm(
        cls, *, scale_emb: float, scale_depth: float, dim_model_base: int, head_dim: int, **options
    ) -> MupConfig:
        """MiniCPM: embeddings x scale_emb, branches x scale_depth/sqrt(L), logits / m,
        standard 1/sqrt(head_dim) attention."""
        return cls(
            base_hidden_size=dim_model_base,
            embedding_multiplier=scale_emb,
            residual_multiplier=scale_depth,
            residual_rule="minicpm",
            base_head_dim=head_dim,
            **options,
        )

    # --------------------------------------------------------------- resolving
    def resolve(self, shape: ModelShape, init_method_std: float = 0.02) -> MupRules:
        """The numbers for one model shape; refuses shapes the config cannot serve."""
        if shape.hidden_size % self.base_hidden_size:
            raise ValueError(
                f"base_hidden_size: {self.base_hidden_size} does not divide hidden_size "
                f"{shape.hidden_size}"
            )
        width_mult = shape.hidden_size / self.base_hidden_size
        expert_mult = width_mult
        if self.base_moe_ffn_hidden_size is not None:
            if shape.moe_ffn_hidden_size is None:
                raise ValueError("base_moe_ffn_hidden_size: set, but the model has no experts")
            if shape.moe_ffn_hidden_size % self.base_moe_ffn_hidden_size:
                raise ValueError(
                    f"base_moe_ffn_hidden_size: {self.base_moe_ffn_hidden_size} does not divide "
                    f"moe_ffn_hidden_size {shape.moe_ffn_hidden_size}"
                )
            expert_mult = shape.moe_ffn_hidden_size / self.base_moe_ffn_hidden_size
        if self.residual_rule == "minicpm":
            residual = self.residual_multiplier / math.sqrt(shape.num_layers)
        elif self.residual_rule == "completep":
            residual = self.residual_multiplier * (self.base_num_layers / shape.num_layers)
        else:
            residual = self.residual_multiplier
        if self.attention_scale is not None:
            softmax_scale = self.attention_scale
        else:
            base_head = 1.0 if self.base_head_dim is None else math.sqrt(self.base_head_dim)
            softmax_scale = base_head / shape.head_dim
        return MupRules(
            config=self,
            width_mult=width_mult,
            expert_width_mult=expert_mult,
            residual_multiplier=residual,
            softmax_scale=softmax_scale,
            logits_divisor=self.logits_scale if self.logits_scale is not None else width_mult,
            init_std=self.init_std if self.init_std is not None else init_method_std,
            num_layers=shape.num_layers,
        )


@dataclass(frozen=True)
class MupRules:
    """The resolved muP numbers for one model; the rule table lives in these methods."""

    config: MupConfig
    width_mult: float
    expert_width_mult: float
    residual_multiplier: float
    softmax_scale: float
    logits_divisor: float
    init_std: float
    num_layers: int

    @property
    def embedding_multiplier(self) -> float:
        return self.config.embedding_multiplier

    def fan_in_ratio(self, role: ParamRole) -> float:
        """The width ratio of the role's fan-in (1 for roles muP does not scale)."""
        if role in (ParamRole.HIDDEN, ParamRole.OUTPUT_PROJECTION, ParamRole.EXPERT_FC1):
            return self.width_mult
        if role is ParamRole.EXPERT_FC2:
            return self.expert_width_mult
        if role is ParamRole.ROUTER and self.config.router == "hidden":
            return self.width_mult
        return 1.0

    def init_std_for(self, role: ParamRole) -> float | None:
        """Init std for the role; None for vectors (norms, biases keep their init)."""
        if role is ParamRole.VECTOR:
            return None
        std = self.init_std / math.sqrt(self.fan_in_ratio(role))
        if self.config.depth_scaled_output_init and role in (
            ParamRole.OUTPUT_PROJECTION,
            ParamRole.EXPERT_FC2,
        ):
            std /= math.sqrt(2.0 * self.num_layers)
        return std

    def lr_mult(self, role: ParamRole) -> float:
        """Adam LR multiplier: 1 / fan-in ratio for matrices muP scales."""
        return 1.0 / self.fan_in_ratio(role)

    def eps_mult(self, role: ParamRole) -> float:
        """Adam epsilon multiplier (``scale_adam_eps``): eps shrinks with the gradient scale."""
        return 1.0 / self.fan_in_ratio(role) if self.config.scale_adam_eps else 1.0

    def wd_mult(self, role: ParamRole) -> float:
        """Weight-decay multiplier: ``independent`` keeps lr * wd width independent."""
        if self.config.weight_decay == "independent":
            return self.fan_in_ratio(role)
        return 1.0
