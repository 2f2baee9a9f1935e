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
readout (output layer) init_std                    lr                  logits x m_out / m
                         [readout_init_std if set;
                          0: zero at every width]
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

import dataclasses
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..knobs import NON_NEGATIVE, POSITIVE, POSITIVE_COUNT, knob, validate_knobs

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
class RoleRule:
    """One row of the classification table: a parameter whose full name matches
    ``pattern`` (``re.search``) has ``role``."""

    pattern: str
    role: ParamRole
    why: str


#: Parameter name -> muP role, first match wins. Names are Megatron-Core's (local and
#: Transformer Engine specs, dense, MoE, MLA, MTP); any prefix (``module.``) is allowed.
#: A parameter no row matches is an error, never a silent default: add a row with
#: :func:`add_role_rule` (or here) once you have decided its role.
PARAM_ROLE_RULES: list[RoleRule] = [
    RoleRule(r"(^|\.)embedding\.(word|position)_embeddings\.weight$", ParamRole.EMBEDDING,
             "input embeddings (tokens, learned positions)"),
    RoleRule(r"(^|\.)output_layer\.weight$", ParamRole.READOUT, "the readout: logits / m"),
    RoleRule(r"(norm\.weight|norm\.bias|\.layer_norm_weight|\.layer_norm_bias)$",
             ParamRole.VECTOR, "norm gains and biases (TE fuses them into linear_qkv/fc1)"),
    RoleRule(r"\.bias\d*$", ParamRole.VECTOR, "linear biases (TE grouped: bias0..N)"),
    RoleRule(r"\.mlp\.router\.weight$", ParamRole.ROUTER, "MoE router (per the router rule)"),
    RoleRule(r"\.experts\.(local_experts\.\d+\.linear_fc1\.weight|linear_fc1\.weight\d*"
             r"|weight1)$", ParamRole.EXPERT_FC1, "expert fc1 (sequential, TE grouped, grouped)"),
    RoleRule(r"\.experts\.(local_experts\.\d+\.linear_fc2\.weight|linear_fc2\.weight\d*"
             r"|weight2)$", ParamRole.EXPERT_FC2, "expert fc2: its fan-in is the expert width"),
    RoleRule(r"\.shared_experts\.linear_fc2\.weight$", ParamRole.OUTPUT_PROJECTION,
             "shared expert fc2 (a residual branch's output)"),
    RoleRule(r"\.shared_experts\.(linear_fc1\.weight|gate_weight)$", ParamRole.HIDDEN,
             "shared expert fc1 and its gate (fan-in: hidden)"),
    RoleRule(r"\.self_attention\.linear_proj\.weight$", ParamRole.OUTPUT_PROJECTION,
             "attention output projection"),
    RoleRule(r"\.mlp\.linear_fc2\.weight$", ParamRole.OUTPUT_PROJECTION, "MLP fc2"),
    RoleRule(r"\.self_attention\.linear_qkv\.weight$", ParamRole.HIDDEN, "fused QKV"),
    RoleRule(r"\.self_attention\.linear_(q_proj|q_down_proj|q_up_proj|kv_down_proj"
             r"|kv_up_proj)\.weight$", ParamRole.HIDDEN,
             "MLA projections: fan-in is the hidden size or a LoRA rank that grows with it"),
    RoleRule(r"\.mlp\.linear_fc1\.weight$", ParamRole.HIDDEN, "MLP fc1 (gated: [gate; up])"),
    RoleRule(r"(^|\.)mtp\.layers\.\d+\.eh_proj\.weight$", ParamRole.HIDDEN,
             "MTP: projection of [embedding; hidden]"),
]  # fmt: skip


class UnknownParameterError(ValueError):
    """A parameter no classification rule matches."""


def add_role_rule(pattern: str, role: ParamRole | str, why: str) -> None:
    """Decide the role of parameters the table does not know (checked first)."""
    re.compile(pattern)
    PARAM_ROLE_RULES.insert(0, RoleRule(pattern, ParamRole(role), why))


def role_of(name: str) -> ParamRole:
    """The muP role of a parameter, from the first matching row of the table.

    >>> role_of("decoder.layers.0.self_attention.linear_proj.weight")
    <ParamRole.OUTPUT_PROJECTION: 'output_projection'>
    """
    for rule in PARAM_ROLE_RULES:
        if re.search(rule.pattern, name):
            return rule.role
    roles = ", ".join(role.value for role in ParamRole)
    raise UnknownParameterError(
        f"{name}: no muP rule for this parameter; decide its role ({roles}) and add it "
        f"with megatron_power.mup.rules.add_role_rule(r'<pattern>', '<role>', '<why>')"
    )


@dataclass(frozen=True)
class ModelShape:
    """The global (unsharded) sizes the muP ratios come from."""

    hidden_size: int
    num_layers: int
    head_dim: int
    moe_ffn_hidden_size: int | None = None
    tied_readout: bool = False  # the readout shares the input embedding's weight


def _mup_knob(default, help, name, **meta):
    """A MupConfig knob: ``--power-mup-<name>`` in Megatron-LM, ``--mup-<name>`` in pretrain."""
    return knob(default, help, flag=f"--power-mup-{name}", pretrain_flag=f"--mup-{name}", **meta)


@dataclass(frozen=True, kw_only=True)
class MupConfig:
    """Everything muP needs besides the model's own shape. See the module docstring.

    Each field is a knob (:func:`megatron_power.knobs.knob`): the flags of every entry
    point, the checks and the help come from it.
    """

    base_hidden_size: int = _mup_knob(
        dataclasses.MISSING,
        "Base width: m = hidden size / this.",
        "base-hidden-size",
        check=POSITIVE_COUNT,
    )
    embedding_multiplier: float = _mup_knob(
        1.0, "Embedding output multiplier.", "embedding-multiplier", check=POSITIVE
    )
    residual_multiplier: float = _mup_knob(
        1.0,
        "Residual branch multiplier (before the add).",
        "residual-multiplier",
        check=POSITIVE,
    )
    residual_rule: str = _mup_knob(
        "constant",
        "How the residual multiplier depends on depth.",
        "residual-rule",
        choices=RESIDUAL_RULES,
    )
    base_num_layers: int | None = _mup_knob(
        None, "Base depth (completep rule).", "base-num-layers", check=POSITIVE_COUNT
    )
    base_head_dim: int | None = _mup_knob(
        None,
        "Base head dim: attention scale sqrt(base)/head_dim (default 1/head_dim).",
        "base-head-dim",
        check=POSITIVE_COUNT,
    )
    attention_scale: float | None = _mup_knob(
        None,
        "Softmax scale, overriding the rule (Granite's attention_multiplier).",
        "attention-scale",
        check=POSITIVE,
    )
    logits_scale: float | None = _mup_knob(
        None,
        "Logits divisor, overriding the width ratio (Granite's logits_scaling).",
        "logits-scale",
        check=POSITIVE,
    )
    output_multiplier: float = _mup_knob(
        1.0,
        "Readout multiplier tuned at the base width: logits x this / m.",
        "output-multiplier",
        check=POSITIVE,
    )
    init_std: float | None = _mup_knob(
        None,
        "Base init std (default the model's init_method_std).",
        "init-std",
        check=POSITIVE,
    )
    readout_init_std: float | None = _mup_knob(
        None,
        "Readout init std (default the base init std); 0 starts the logits at zero at every "
        "width (muTransfer's advice: random readout logits shrink as 1/sqrt(m), so a narrow "
        "base is tuned against noise that wide models lack).",
        "readout-init-std",
        check=NON_NEGATIVE,
    )
    depth_scaled_output_init: bool = knob(
        True,
        "Output projections' init / sqrt(2 x layers).",
        flag="--power-mup-no-depth-scaled-output-init",
        pretrain_flag="--mup-no-depth-scaled-output-init",
    )
    base_moe_ffn_hidden_size: int | None = _mup_knob(
        None,
        "Base expert FFN width (expert fc2 scales with its own ratio).",
        "base-moe-ffn-hidden-size",
        check=POSITIVE_COUNT,
    )
    router: str = _mup_knob("hidden", "Router rule.", "router", choices=ROUTER_RULES)
    scale_adam_eps: bool = knob(
        False,
        "Scale Adam eps with the LR multiplier.",
        flag="--power-mup-scale-adam-eps",
        pretrain_flag="--mup-scale-adam-eps",
    )
    weight_decay: str = _mup_knob(
        "coupled", "Weight-decay rule.", "weight-decay", choices=WEIGHT_DECAY_RULES
    )

    def __post_init__(self) -> None:
        validate_knobs(self)
        if self.residual_rule == "completep" and self.base_num_layers is None:
            raise ValueError("base_num_layers: required by residual_rule='completep'")
        if self.logits_scale is not None and self.output_multiplier != 1.0:
            raise ValueError(
                f"output_multiplier: {self.output_multiplier:g} is not applied when logits_scale "
                "sets the logits divisor outright; give one of them"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MupConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a muP setting (known: {', '.join(sorted(known))})")
        return cls(**data)

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
        if shape.tied_readout and self.readout_init_std is not None:
            raise ValueError(
                f"readout_init_std: {self.readout_init_std:g} cannot apply, the readout is tied "
                "to the input embedding (it is initialised as the embedding); untie them or "
                "drop it"
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
            logits_divisor=(
                self.logits_scale
                if self.logits_scale is not None
                else width_mult / self.output_multiplier
            ),
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
        if role is ParamRole.READOUT and self.config.readout_init_std is not None:
            return self.config.readout_init_std
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
