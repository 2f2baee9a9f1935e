"""muP on real Megatron-Core GPT / MoE models on CPU (one gloo rank)."""

import math

import pytest
import torch

from megatron_power.megatron.mup import (
    apply_mup,
    classify_parameter,
    mup_config_overrides,
    mup_rules,
    mup_transformer_config,
)
from megatron_power.mup import MupConfig, ParamRole
from tests.support.gpt import batch, build_gpt, init_model_parallel, tiny_config


@pytest.fixture(autouse=True)
def one_rank(single_process_group):
    init_model_parallel()


def param_groups(model, mup, lr=1e-2, min_lr=1e-4, **optimizer_options):
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    config = OptimizerConfig(
        optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=0.1, **optimizer_options
    )
    overrides = None if mup is None else mup_config_overrides(model.config, mup, config)
    return _get_param_groups([model], config, overrides)


EXPECTED_ROLES = {
    "embedding.word_embeddings.weight": ParamRole.EMBEDDING,
    "decoder.layers.0.self_attention.linear_qkv.weight": ParamRole.HIDDEN,
    "decoder.layers.0.self_attention.linear_proj.weight": ParamRole.OUTPUT_PROJECTION,
    "decoder.layers.0.input_layernorm.weight": ParamRole.VECTOR,
    "decoder.layers.0.mlp.router.weight": ParamRole.ROUTER,
    "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight": ParamRole.EXPERT_FC1,
    "decoder.layers.0.mlp.experts.local_experts.0.linear_fc2.weight": ParamRole.EXPERT_FC2,
    "decoder.final_layernorm.weight": ParamRole.VECTOR,
    "output_layer.weight": ParamRole.READOUT,
}


@pytest.mark.parametrize("router", ["hidden", "readout", "unscaled"])
def test_every_parameter_matches_the_rule_table(router):
    """Init std measured on the built model and LR from Megatron's param groups, per role."""
    torch.manual_seed(0)
    mup = MupConfig(base_hidden_size=64, base_moe_ffn_hidden_size=64, router=router)
    config = tiny_config(hidden=512, layers=2, moe=True, moe_ffn=256, init_method_std=0.05)
    model = build_gpt(config, mup)
    rules = mup_rules(model.config, mup)
    # By hand: m = 512/64 = 8, m_e = 256/64 = 4, 2L = 4.
    hand_std = {
        ParamRole.EMBEDDING: 0.05,
        ParamRole.HIDDEN: 0.05 / math.sqrt(8),
        ParamRole.OUTPUT_PROJECTION: 0.05 / math.sqrt(8) / 2,
        ParamRole.EXPERT_FC1: 0.05 / math.sqrt(8),
        ParamRole.EXPERT_FC2: 0.05 / math.sqrt(4) / 2,
        ParamRole.ROUTER: 0.05 / math.sqrt(8) if router == "hidden" else 0.05,
        ParamRole.READOUT: 0.05,
    }
    hand_lr = {role: 1.0 for role in ParamRole}
    hand_lr.update(
        {ParamRole.HIDDEN: 1 / 8, ParamRole.OUTPUT_PROJECTION: 1 / 8, ParamRole.EXPERT_FC1: 1 / 8,
         ParamRole.EXPERT_FC2: 1 / 4, ParamRole.ROUTER: 1 / 8 if router == "hidden" else 1.0}
    )  # fmt: skip
    names = dict(model.named_parameters())
    for name, role in EXPECTED_ROLES.items():
        assert classify_parameter(name, names[name]) is role, name
    seen_roles = set()
    for name, param in names.items():
        role = classify_parameter(name, param)
        seen_roles.add(role)
        if role is not ParamRole.VECTOR:
            assert param.std().item() == pytest.approx(hand_std[role], rel=0.12), name
            assert rules.init_std_for(role) == pytest.approx(hand_std[role])
    assert seen_roles == set(ParamRole)

    group_of = {}
    for group in param_groups(model, mup, lr=1e-2, min_lr=1e-4):
        for param in group["params"]:
            group_of[id(param)] = group
    for name, param in names.items():
        role = classify_parameter(name, param)
        group = group_of[id(param)]
        assert group["max_lr"] == pytest.approx(1e-2 * hand_lr[role]), name
        assert group["min_lr"] == pytest.approx(1e-4 * hand_lr[role]), name
        # Megatron's standard rule survives the merge: no weight decay on norms.
        assert group["wd_mult"] == (0.0 if role is ParamRole.VECTOR else 1.0), name


def test_eps_and_independent_weight_decay_reach_the_param_groups():
    mup = MupConfig(base_hidden_size=64, scale_adam_eps=True, weight_decay="independent")
    model = build_gpt(tiny_config(hidden=256), mup)
    for group in param_groups(model, mup, adam_eps=1e-8):
        roles = {
            classify_parameter(n, p)
            for n, p in model.named_parameters()
            if any(p is q for q in group["params"])
        }
        if roles & {ParamRole.HIDDEN, ParamRole.OUTPUT_PROJECTION}:
            assert group["eps"] == pytest.approx(1e-8 / 4) and group["wd_mult"] == 4.0
        else:
            assert "eps" not in group


@pytest.mark.parametrize("moe", [False, True])
def test_mup_off_is_plain_megatron_bit_for_bit(moe):
    """The plugin's three muP calls with muP off vs Megatron-Core used directly."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    config = tiny_config(hidden=128, moe=moe)
    spec = get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts, moe_grouped_gemm=False, normalization="RMSNorm"
    )

    def build(transformer_config):
        torch.manual_seed(3)
        return GPTModel(
            config=transformer_config, transformer_layer_spec=spec, vocab_size=96,
            max_sequence_length=16, position_embedding_type="rope",
            share_embeddings_and_output_weights=False,
        )  # fmt: skip

    plain = build(config)
    plugin_config = mup_transformer_config(config, None)
    plugin = apply_mup(build(plugin_config), None)
    assert plugin_config is config
    for (name, a), (_, b) in zip(plain.named_parameters(), plugin.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    tokens, positions, mask = batch()
    assert torch.equal(plain(tokens, positions, mask), plugin(tokens, positions, mask))

    optimizer_config = OptimizerConfig(optimizer="adam", lr=1e-2, min_lr=1e-4, weight_decay=0.1)
    overrides = mup_config_overrides(plugin_config, None, optimizer_config)
    plain_groups = _get_param_groups([plain], optimizer_config, None)
    plugin_groups = _get_param_groups([plugin], optimizer_config, overrides)

    def described(groups, model):
        names = {id(p): n for n, p in model.named_parameters()}
        return [
            ({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]])
            for g in groups
        ]

    assert described(plain_groups, plain) == described(plugin_groups, plugin)


def test_base_width_reproduces_standard_parameterisation_except_the_multipliers():
    """At m = 1 with unit multipliers and a base head dim, muP is standard Megatron."""
    mup = MupConfig(base_hidden_size=128, base_head_dim=16)
    torch.manual_seed(5)
    plain = build_gpt(tiny_config(hidden=128))
    torch.manual_seed(5)
    with_mup = build_gpt(tiny_config(hidden=128), mup)
    # Readout: Megatron inits it with init_method (same std at m = 1).
    for (name, a), (_, b) in zip(
        plain.named_parameters(), with_mup.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b), name
    tokens, positions, mask = batch()
    torch.testing.assert_close(with_mup(tokens, positions, mask), plain(tokens, positions, mask))


def test_bad_input_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^base_hidden_size"):
        build_gpt(tiny_config(hidden=96), MupConfig(base_hidden_size=64))
    with pytest.raises(ValueError, match=r"^softmax_scale"):
        mup_transformer_config(tiny_config(softmax_scale=0.1), MupConfig(base_hidden_size=64))
    model = build_gpt(tiny_config(), MupConfig(base_hidden_size=64))
    with pytest.raises(ValueError, match=r"^apply_mup: already applied"):
        apply_mup(model, MupConfig(base_hidden_size=64))
    plain = build_gpt(tiny_config())
    with pytest.raises(ValueError, match=r"^apply_mup: the model was not built from"):
        apply_mup(plain, MupConfig(base_hidden_size=32))


def _granite_reference(
    model, tokens, *, emb_mult, residual, attn_scale, logits_div, logits_premul=1.0
):
    """Granite / MiniCPM forward written out by hand (RMSNorm, RoPE, SwiGLU, causal MHA),
    reading the Megatron model's weights; the multipliers are plain arguments here."""
    weights = dict(model.named_parameters())
    config = model.config
    heads, head_dim = config.num_attention_heads, config.kv_channels
    x = weights["embedding.word_embeddings.weight"][tokens] * emb_mult  # [b, s, h]
    seq = tokens.shape[1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(t):
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * cos + rotated * sin

    def norm(t, weight):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + config.layernorm_epsilon) * weight

    causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    for layer in range(config.num_layers):
        p = f"decoder.layers.{layer}."
        h = norm(x, weights[p + "input_layernorm.weight"])
        qkv = (h @ weights[p + "self_attention.linear_qkv.weight"].t()).view(
            *h.shape[:2], heads, 3, head_dim
        )
        q, k, v = (
            rope(qkv[:, :, :, i].transpose(1, 2)) if i < 2 else qkv[:, :, :, i].transpose(1, 2)
            for i in range(3)
        )
        scores = (q @ k.transpose(-1, -2)) * attn_scale
        attention = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        attention = attention.transpose(1, 2).reshape(*h.shape)
        x = x + (attention @ weights[p + "self_attention.linear_proj.weight"].t()) * residual
        h = norm(x, weights[p + "pre_mlp_layernorm.weight"])
        gate, up = (h @ weights[p + "mlp.linear_fc1.weight"].t()).chunk(2, -1)
        x = (
            x
            + ((torch.nn.functional.silu(gate) * up) @ weights[p + "mlp.linear_fc2.weight"].t())
            * residual
        )
    h = norm(x, weights["decoder.final_layernorm.weight"]) * logits_premul
    return (h @ weights["output_layer.weight"].t()) / logits_div


def megatron_logits(model, tokens):
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
    mask = torch.ones(1, 1, tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
    return model(tokens, positions, mask)


def test_granite_preset_equals_the_granite_formulas():
    mup = MupConfig.granite(
        base_hidden_size=32, embedding_multiplier=12.0, residual_multiplier=0.22,
        attention_multiplier=0.015625, logits_scaling=4.0,
    )  # fmt: skip
    torch.manual_seed(1)
    model = build_gpt(tiny_config(hidden=128, layers=2), mup)
    tokens = batch()[0]
    reference = _granite_reference(
        model, tokens, emb_mult=12.0, residual=0.22, attn_scale=0.015625, logits_div=4.0
    )
    torch.testing.assert_close(megatron_logits(model, tokens), reference, rtol=1e-5, atol=1e-5)


def test_minicpm_preset_equals_the_minicpm_formulas():
    mup = MupConfig.minicpm(scale_emb=12.0, scale_depth=1.4, dim_model_base=32, head_dim=16)
    torch.manual_seed(2)
    model = build_gpt(tiny_config(hidden=128, layers=3), mup)
    tokens = batch()[0]
    # MiniCPM: lm_head(h / (hidden / dim_model_base)), branches x scale_depth / sqrt(L).
    reference = _granite_reference(
        model, tokens, emb_mult=12.0, residual=1.4 / math.sqrt(3), attn_scale=1 / math.sqrt(16),
        logits_div=1.0, logits_premul=1 / (128 / 32),
    )  # fmt: skip
    torch.testing.assert_close(megatron_logits(model, tokens), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("readout_std", [0.0, 0.01])
def test_readout_init_std_rescales_the_readout_and_nothing_else(readout_std):
    """The readout starts from its own std (the same draw rescaled; 0: zero logits at
    every width); every other parameter is the one built without it, seed for seed."""
    config = tiny_config(hidden=256, init_method_std=0.05)
    torch.manual_seed(3)
    plain = build_gpt(config, MupConfig(base_hidden_size=64))
    torch.manual_seed(3)
    model = build_gpt(config, MupConfig(base_hidden_size=64, readout_init_std=readout_std))
    for (name, a), (_, b) in zip(plain.named_parameters(), model.named_parameters(), strict=True):
        if name == "output_layer.weight":
            torch.testing.assert_close(b, a * (readout_std / 0.05))
            assert b.std().item() == pytest.approx(readout_std, rel=0.05)
        else:
            assert torch.equal(a, b), name
    logits = megatron_logits(model, batch()[0])
    assert (logits.abs().max().item() == 0.0) == (readout_std == 0.0)


def test_readout_init_std_is_refused_for_a_tied_readout():
    with pytest.raises(ValueError, match=r"^readout_init_std: 0 cannot apply, the readout is tied"):
        build_gpt(tiny_config(), MupConfig(base_hidden_size=64, readout_init_std=0.0),
                  share_embeddings_and_output_weights=True)  # fmt: skip


def test_output_multiplier_scales_the_logits_on_top_of_the_width_rule():
    # muTransfer's readout multiplier, tuned at the base width: logits x m_out / m.
    mup = MupConfig(base_hidden_size=32, embedding_multiplier=4.0, output_multiplier=3.0)
    torch.manual_seed(2)
    model = build_gpt(tiny_config(hidden=128, layers=2), mup)
    tokens = batch()[0]
    reference = _granite_reference(
        model, tokens, emb_mult=4.0, residual=1.0, attn_scale=1 / 16,
        logits_div=128 / 32, logits_premul=3.0,
    )  # fmt: skip
    torch.testing.assert_close(megatron_logits(model, tokens), reference, rtol=1e-5, atol=1e-5)


def test_single_lr_mult_form_for_megatron_core_up_to_0_15():
    from megatron_power.megatron.mup import mup_scale_lr_cond

    mup = MupConfig(base_hidden_size=64)
    model = build_gpt(tiny_config(hidden=256, moe=True, moe_ffn=128), mup)
    condition, lr_mult = mup_scale_lr_cond(model.config, mup)
    assert lr_mult == 0.25
    for name, param in model.named_parameters():
        scaled = classify_parameter(name, param) in {
            ParamRole.HIDDEN, ParamRole.OUTPUT_PROJECTION, ParamRole.EXPERT_FC1,
            ParamRole.EXPERT_FC2, ParamRole.ROUTER,
        }  # fmt: skip
        assert condition(name, param) is scaled, name
    with pytest.raises(ValueError, match=r"^base_moe_ffn_hidden_size"):
        mup_scale_lr_cond(model.config, MupConfig(base_hidden_size=64, base_moe_ffn_hidden_size=64))
    with pytest.raises(ValueError, match=r"^scale_adam_eps"):
        mup_scale_lr_cond(model.config, MupConfig(base_hidden_size=64, scale_adam_eps=True))


def test_merges_with_decoupled_lr_without_clashing():
    mup = MupConfig(base_hidden_size=64)
    model = build_gpt(tiny_config(hidden=256), mup)
    groups = param_groups(
        model, mup, lr=1e-2, min_lr=1e-4, decoupled_lr=3e-3, decoupled_min_lr=3e-5
    )
    lr_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            lr_of[names[id(param)]] = (group["max_lr"], group["min_lr"])
    assert lr_of["embedding.word_embeddings.weight"] == (3e-3, 3e-5)
    assert lr_of["output_layer.weight"] == (3e-3, 3e-5)
    assert lr_of["decoder.layers.0.self_attention.linear_qkv.weight"] == pytest.approx(
        (2.5e-3, 2.5e-5)
    )
    assert lr_of["decoder.final_layernorm.weight"] == (1e-2, 1e-4)


@pytest.mark.parametrize(
    ("name", "dims", "role"),
    [
        # Transformer Engine spec: norms fused into the linear layers.
        ("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight", 1, ParamRole.VECTOR),
        ("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", 1, ParamRole.VECTOR),
        ("decoder.layers.0.mlp.linear_fc1.weight", 2, ParamRole.HIDDEN),
        # TEGroupedMLP and GroupedMLP experts.
        ("decoder.layers.0.mlp.experts.linear_fc1.weight3", 2, ParamRole.EXPERT_FC1),
        ("decoder.layers.0.mlp.experts.linear_fc2.weight3", 2, ParamRole.EXPERT_FC2),
        ("decoder.layers.0.mlp.experts.weight1", 2, ParamRole.EXPERT_FC1),
        ("decoder.layers.0.mlp.experts.weight2", 2, ParamRole.EXPERT_FC2),
        # Shared experts are dense MLPs of the layer.
        ("decoder.layers.0.mlp.shared_experts.linear_fc1.weight", 2, ParamRole.HIDDEN),
        ("decoder.layers.0.mlp.shared_experts.linear_fc2.weight", 2, ParamRole.OUTPUT_PROJECTION),
        ("decoder.layers.0.self_attention.q_layernorm.weight", 1, ParamRole.VECTOR),
    ],
)
def test_classification_of_other_specs_parameter_names(name, dims, role):
    param = torch.nn.Parameter(torch.zeros((4,) * dims))
    assert classify_parameter(name, param) is role


@pytest.mark.parametrize(
    "name",
    [
        "decoder.layers.0.self_attention.linear_q_down_proj.weight",
        "decoder.layers.0.self_attention.linear_q_up_proj.weight",
        "decoder.layers.0.self_attention.linear_kv_down_proj.weight",
        "decoder.layers.0.self_attention.linear_kv_up_proj.weight",
        "mtp.layers.0.eh_proj.weight",
    ],
)
def test_mla_and_mtp_projections_are_hidden_matrices_by_decision(name):
    param = torch.nn.Parameter(torch.zeros(4, 4))
    assert classify_parameter(name, param) is ParamRole.HIDDEN


def test_an_unknown_parameter_is_an_error_naming_it_and_a_rule_can_be_added():
    from megatron_power.mup import rules

    name = "decoder.layers.0.self_attention.linear_new_proj.weight"
    param = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(rules.UnknownParameterError, match=r"linear_new_proj.*add_role_rule"):
        classify_parameter(name, param)
    before = list(rules.PARAM_ROLE_RULES)
    try:
        rules.add_role_rule(r"\.linear_new_proj\.weight$", "output_projection", "a test rule")
        assert classify_parameter(name, param) is ParamRole.OUTPUT_PROJECTION
    finally:
        rules.PARAM_ROLE_RULES[:] = before
