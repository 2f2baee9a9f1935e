"""Megatron-Core GPT <-> Hugging Face Granite / GraniteMoE: config and tensor mapping.

Granite is a Llama with four muP scalars, which is why it can carry a muP model:
``embedding_multiplier`` (inputs x m_emb), ``residual_multiplier`` (each branch x m_res
before its residual add), ``attention_multiplier`` (the softmax scale) and
``logits_scaling`` (logits / s). Anything else that changes the function (LayerNorm,
biases, QK norm, partial or interleaved RoPE, post-norm residuals, pre-softmax routing,
shared experts) has no Granite field, so the export refuses it rather than write a model
that computes something else.

Tensors use the Hub layout of IBM's PowerLM-3B / PowerMoE-3B (``block_sparse_moe.
input_linear`` etc.); transformers 5 renames them on load, and import accepts both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..mup.rules import MupConfig

ARCHITECTURES = {"dense": ("GraniteForCausalLM", "granite"),
                 "moe": ("GraniteMoeForCausalLM", "granitemoe")}  # fmt: skip


@dataclass(frozen=True)
class GraniteShape:
    """What the tensor mapping needs to know of the model."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    num_experts: int | None  # None: dense
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def refuse_inexpressible(megatron_config: Any, position_embedding_type: str = "rope") -> None:
    """Raise ValueError naming the first TransformerConfig field Granite cannot express."""
    checks = [
        ("normalization", megatron_config.normalization == "RMSNorm", "Granite has RMSNorm only"),
        ("add_bias_linear", not megatron_config.add_bias_linear, "no linear biases"),
        ("add_qkv_bias", not getattr(megatron_config, "add_qkv_bias", False), "no QKV bias"),
        ("qk_layernorm", not megatron_config.qk_layernorm, "Granite has no QK norm"),
        ("gated_linear_unit", megatron_config.gated_linear_unit, "Granite's MLP is SwiGLU"),
        (
            "activation_func",
            megatron_config.activation_func is torch.nn.functional.silu,
            "Granite's MLP is SwiGLU (silu)",
        ),
        (
            "apply_residual_connection_post_layernorm",
            not megatron_config.apply_residual_connection_post_layernorm,
            "Granite is pre-norm with the residual taken before the norm",
        ),
        ("rotary_interleaved", not megatron_config.rotary_interleaved, "RoPE is rotate-half"),
        ("multi_latent_attention", not megatron_config.multi_latent_attention, "no MLA in Granite"),
        ("position_embedding_type", position_embedding_type == "rope", "Granite uses RoPE"),
        (
            "hidden_size",
            megatron_config.kv_channels * megatron_config.num_attention_heads
            == megatron_config.hidden_size,
            "Granite needs head_dim x heads == hidden_size",
        ),
    ]
    if megatron_config.num_moe_experts:
        checks += [
            (
                "moe_router_pre_softmax",
                not megatron_config.moe_router_pre_softmax,
                "GraniteMoE takes the top-k logits, then their softmax",
            ),
            (
                "moe_router_score_function",
                getattr(megatron_config, "moe_router_score_function", "softmax") == "softmax",
                "GraniteMoE routes by softmax",
            ),
            (
                "moe_router_topk_scaling_factor",
                megatron_config.moe_router_topk_scaling_factor in (None, 1.0),
                "GraniteMoE has no routing scale",
            ),
            (
                "moe_shared_expert_intermediate_size",
                not megatron_config.moe_shared_expert_intermediate_size,
                "GraniteMoE has no shared experts",
            ),
            (
                "moe_layer_freq",
                megatron_config.moe_layer_freq in (1, None),
                "GraniteMoE has experts in every layer",
            ),
        ]
    for field, ok, why in checks:
        if not ok:
            value = getattr(megatron_config, field, position_embedding_type)
            raise ValueError(f"{field}: {value!r} cannot be exported to Granite ({why})")


def granite_config(
    megatron_config: Any,
    mup_rules: Any | None,
    vocab_size: int,
    max_position_embeddings: int,
    rotary_base: float,
    tied: bool,
    token_ids: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """The Hub ``config.json`` of the exported model, muP mapped to Granite's scalars."""
    refuse_inexpressible(megatron_config)
    moe = bool(megatron_config.num_moe_experts)
    architecture, model_type = ARCHITECTURES["moe" if moe else "dense"]
    softmax_scale = megatron_config.softmax_scale or 1.0 / math.sqrt(megatron_config.kv_channels)
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": megatron_config.hidden_size,
        "intermediate_size": (
            megatron_config.moe_ffn_hidden_size if moe else megatron_config.ffn_hidden_size
        ),
        "num_hidden_layers": megatron_config.num_layers,
        "num_attention_heads": megatron_config.num_attention_heads,
        "num_key_value_heads": megatron_config.num_query_groups
        or megatron_config.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": megatron_config.layernorm_epsilon,
        "rope_theta": float(rotary_base),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "attention_dropout": megatron_config.attention_dropout,
        "initializer_range": megatron_config.init_method_std,
        **granite_scalars(mup_rules, softmax_scale),
        "torch_dtype": "float32",
        "use_cache": True,
    }
    config.update(token_ids or {})
    if moe:
        config.update(
            num_local_experts=megatron_config.num_moe_experts,
            num_experts_per_tok=megatron_config.moe_router_topk,
            output_router_logits=False,
            router_aux_loss_coef=megatron_config.moe_aux_loss_coeff or 0.0,
        )
    else:
        config["mlp_bias"] = False
    return config


def granite_scalars(mup_rules: Any | None, softmax_scale: float) -> dict[str, float]:
    """Resolved muP rules -> Granite's four scalars (all neutral without muP)."""
    return {
        "embedding_multiplier": mup_rules.embedding_multiplier if mup_rules else 1.0,
        "residual_multiplier": mup_rules.residual_multiplier if mup_rules else 1.0,
        "attention_multiplier": softmax_scale,
        "logits_scaling": mup_rules.logits_divisor if mup_rules else 1.0,
    }


def mup_from_granite(hf: dict[str, Any], base_hidden_size: int | None) -> dict[str, Any] | None:
    """Granite's four scalars -> the MupConfig knobs that reproduce them (None: all are
    neutral, standard parameterisation). ``hf`` holds transformers' defaults for absent
    fields (attention_multiplier 1.0, not 1/sqrt(head_dim)). The base width defaults to
    hidden / logits_scaling, the width ratio muP divides the logits by."""
    hidden = hf["hidden_size"]
    head_dim = hidden // hf["num_attention_heads"]
    embedding = hf["embedding_multiplier"]
    residual = hf["residual_multiplier"]
    attention = hf["attention_multiplier"]
    logits = hf["logits_scaling"]
    if (embedding, residual, logits) == (1.0, 1.0, 1.0) and abs(attention - head_dim**-0.5) < 1e-12:
        return None
    if base_hidden_size is None:
        ratio = hidden / logits
        if abs(ratio - round(ratio)) > 1e-6 or hidden % round(ratio):
            raise ValueError(
                f"--mup-base-hidden-size: hidden_size / logits_scaling = {ratio:g} is not a "
                "divisor of hidden_size; give the base width"
            )
        base_hidden_size = round(ratio)
    mup = MupConfig.granite(
        base_hidden_size=base_hidden_size,
        embedding_multiplier=embedding,
        residual_multiplier=residual,
        attention_multiplier=attention,
        logits_scaling=logits,
    )
    return {name: value for name, value in mup.to_dict().items() if value is not None}


#: RoPE variants Megatron-Core's GPT computes exactly as transformers does: none (default)
#: and linear position interpolation (GPTModel's seq_len_interpolation_factor).
EXACT_ROPE_TYPES = ("default", "linear")


def rope_of(hf: dict[str, Any]) -> tuple[float, float | None]:
    """(rope_theta, linear scaling factor or None) of a resolved config: transformers 5's
    ``rope_parameters`` or 4.x's ``rope_theta`` + ``rope_scaling``. Any other scaling is
    refused: converting it would change the logits."""
    parameters = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    theta = parameters.get("rope_theta", hf.get("rope_theta", 10_000.0))
    kind = (parameters.get("rope_type") or legacy.get("rope_type") or legacy.get("type")
            or "default")  # fmt: skip
    if kind not in EXACT_ROPE_TYPES:
        raise ValueError(
            f"DIR: config.json rope type {kind!r} is not supported: megatron-power converts "
            f"{' and '.join(EXACT_ROPE_TYPES)} RoPE exactly; Megatron-Core's GPT has no "
            f"{kind} RoPE that computes what transformers' does"
        )
    partial = parameters.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(
            f"DIR: config.json partial_rotary_factor {partial!r} is not supported (Granite "
            "rotates every channel: 1.0)"
        )
    if kind == "linear":
        factor = parameters.get("factor", legacy.get("factor"))
        if not isinstance(factor, int | float) or factor <= 0:
            raise ValueError(f"DIR: config.json linear RoPE factor {factor!r} is not > 0")
        return float(theta), float(factor)
    return float(theta), None


def refuse_unconvertible(hf: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of a resolved Granite config that the
    plugin's model cannot compute exactly."""
    model_type = hf.get("model_type")
    if model_type not in ("granite", "granitemoe"):
        raise ValueError(f"DIR: model_type {model_type!r} is not granite or granitemoe")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    checks = {
        "attention_bias": (not hf.get("attention_bias", False), "False"),
        "mlp_bias": (not hf.get("mlp_bias", False), "False"),
        "hidden_act": (hf.get("hidden_act", "silu") == "silu", "'silu'"),
        "head_dim": (hf.get("head_dim") in (None, hidden // heads), "hidden_size / heads"),
        "num_key_value_heads": (heads % (hf.get("num_key_value_heads") or heads) == 0,
                                "a divisor of num_attention_heads"),
        "hidden_size": (hidden % heads == 0, "a multiple of num_attention_heads"),
        "shared_intermediate_size": (not hf.get("shared_intermediate_size"), "0 or absent"),
    }  # fmt: skip
    for field, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(
                f"DIR: config.json {field}={hf.get(field)!r} is not supported (allowed: {allowed})"
            )
    rope_of(hf)


def check_layout(hf: dict[str, Any], tp: int, ep: int) -> None:
    """Heads, KV heads and experts against the layout, named as the model's, before
    anything is built (the vocabulary is padded instead, as Megatron pads it; the run's
    own checks, PretrainConfig.validate, follow)."""
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    for name, count in (("num_attention_heads", heads), ("num_key_value_heads", groups)):
        if count % tp:
            raise ValueError(
                f"--tp: {tp} does not divide the model's {name} {count}; use a divisor of it"
            )
    experts = hf.get("num_local_experts") if hf["model_type"] == "granitemoe" else None
    if ep > 1 and not experts:
        raise ValueError(f"--ep: {ep} needs a MoE model; this one is dense (use --ep 1)")
    if experts and experts % ep:
        raise ValueError(f"--ep: {ep} does not divide the model's {experts} experts")


def shape_of(config: dict[str, Any]) -> GraniteShape:
    heads = config["num_attention_heads"]
    return GraniteShape(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        num_experts=config.get("num_local_experts") if config["model_type"] != "granite" else None,
        tied=bool(config.get("tie_word_embeddings", False)),
    )


def _qkv_parts(shape: GraniteShape) -> tuple[int, int]:
    if shape.num_attention_heads % shape.num_query_groups:
        raise ValueError("num_key_value_heads: does not divide num_attention_heads")
    return shape.num_query_groups, shape.num_attention_heads // shape.num_query_groups


def to_granite(full: dict[str, torch.Tensor], shape: GraniteShape) -> dict[str, torch.Tensor]:
    """Megatron global state dict (local spec names) -> Granite Hub tensors."""
    groups, per_group = _qkv_parts(shape)
    d, h = shape.head_dim, shape.hidden_size
    out = {
        "model.embed_tokens.weight": full["embedding.word_embeddings.weight"],
        "model.norm.weight": full["decoder.final_layernorm.weight"],
    }
    if not shape.tied:
        out["lm_head.weight"] = full["output_layer.weight"]
    for i in range(shape.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = full[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = full[src + "pre_mlp_layernorm.weight"]
        qkv = full[src + "self_attention.linear_qkv.weight"].view(groups, per_group + 2, d, h)
        out[dst + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(-1, h)
        out[dst + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(-1, h)
        out[dst + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(-1, h)
        out[dst + "self_attn.o_proj.weight"] = full[src + "self_attention.linear_proj.weight"]
        if shape.num_experts is None:
            gate, up = full[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
            out[dst + "mlp.gate_proj.weight"] = gate
            out[dst + "mlp.up_proj.weight"] = up
            out[dst + "mlp.down_proj.weight"] = full[src + "mlp.linear_fc2.weight"]
        else:
            experts = range(shape.num_experts)
            moe = dst + "block_sparse_moe."
            out[moe + "router.layer.weight"] = full[src + "mlp.router.weight"]
            out[moe + "input_linear.weight"] = torch.stack(
                [full[f"{src}mlp.experts.local_experts.{e}.linear_fc1.weight"] for e in experts]
            )
            out[moe + "output_linear.weight"] = torch.stack(
                [full[f"{src}mlp.experts.local_experts.{e}.linear_fc2.weight"] for e in experts]
            )
    return {name: tensor.detach().contiguous().clone() for name, tensor in out.items()}


#: transformers 5 in-memory names -> the Hub names import reads.
_HUB_NAMES = {
    "block_sparse_moe.experts.gate_up_proj": "block_sparse_moe.input_linear.weight",
    "block_sparse_moe.experts.down_proj": "block_sparse_moe.output_linear.weight",
    "block_sparse_moe.router.weight": "block_sparse_moe.router.layer.weight",
}


def from_granite(tensors: dict[str, torch.Tensor], shape: GraniteShape) -> dict[str, torch.Tensor]:
    """Granite tensors (Hub or transformers-5 names) -> Megatron global state dict."""
    hub = {}
    for name, tensor in tensors.items():
        for new, old in _HUB_NAMES.items():
            if name.endswith(new):
                name = name[: -len(new)] + old
        hub[name] = tensor
    groups, per_group = _qkv_parts(shape)
    d, h = shape.head_dim, shape.hidden_size

    def take(name: str) -> torch.Tensor:
        if name not in hub:
            raise ValueError(f"DIR: the checkpoint has no tensor {name}")
        return hub.pop(name)

    full = {
        "embedding.word_embeddings.weight": take("model.embed_tokens.weight"),
        "decoder.final_layernorm.weight": take("model.norm.weight"),
    }
    if not shape.tied:
        full["output_layer.weight"] = take("lm_head.weight")
    else:
        hub.pop("lm_head.weight", None)
    for i in range(shape.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        full[dst + "input_layernorm.weight"] = take(src + "input_layernorm.weight")
        full[dst + "pre_mlp_layernorm.weight"] = take(src + "post_attention_layernorm.weight")
        q = take(src + "self_attn.q_proj.weight").view(groups, per_group, d, h)
        k = take(src + "self_attn.k_proj.weight").view(groups, 1, d, h)
        v = take(src + "self_attn.v_proj.weight").view(groups, 1, d, h)
        full[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h)
        full[dst + "self_attention.linear_proj.weight"] = take(src + "self_attn.o_proj.weight")
        if shape.num_experts is None:
            full[dst + "mlp.linear_fc1.weight"] = torch.cat(
                [take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")]
            )
            full[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.down_proj.weight")
        else:
            moe = src + "block_sparse_moe."
            full[dst + "mlp.router.weight"] = take(moe + "router.layer.weight")
            fc1, fc2 = take(moe + "input_linear.weight"), take(moe + "output_linear.weight")
            for e in range(shape.num_experts):
                full[f"{dst}mlp.experts.local_experts.{e}.linear_fc1.weight"] = fc1[e]
                full[f"{dst}mlp.experts.local_experts.{e}.linear_fc2.weight"] = fc2[e]
    if hub:
        raise ValueError(f"DIR: tensors with no Megatron counterpart: {sorted(hub)[:4]}")
    return {name: tensor.contiguous().clone() for name, tensor in full.items()}
