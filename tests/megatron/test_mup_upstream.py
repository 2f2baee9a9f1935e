"""megatron-core 0.17+ has its own muP (``use_mup``): never both, and the same numbers
where both express the same setting. Runs on the 0.19 CI line; the 0.16 line has no
upstream muP to compare with."""

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_power.megatron.mup import classify_parameter, mup_config_overrides
from megatron_power.mup import MupConfig
from tests.support.gpt import batch, build_gpt, init_model_parallel, tiny_config

pytestmark = pytest.mark.skipif(
    "use_mup" not in TransformerConfig.__dataclass_fields__,
    reason="this megatron-core has no upstream muP (added in 0.17)",
)


@pytest.fixture(autouse=True)
def one_rank(single_process_group):
    init_model_parallel()


UPSTREAM = dict(use_mup=True, mup_base_hidden_size=64, mup_embedding_mult=4.0)
PLUGIN = MupConfig(base_hidden_size=64, embedding_multiplier=4.0)


def test_plugin_and_upstream_mup_together_are_refused():
    with pytest.raises(ValueError, match=r"^use_mup: Megatron-Core's own muP is on"):
        build_gpt(tiny_config(hidden=256, **UPSTREAM), PLUGIN)


@pytest.mark.parametrize("moe", [False, True])
def test_same_settings_give_the_same_model_logits_and_learning_rates(moe):
    from megatron.core.optimizer import (
        OptimizerConfig,
        _get_param_groups,
        get_mup_config_overrides,
        get_standard_config_overrides,
    )

    torch.manual_seed(11)
    upstream = build_gpt(tiny_config(hidden=256, moe=moe, moe_ffn=256, **UPSTREAM))
    torch.manual_seed(11)
    plugin = build_gpt(tiny_config(hidden=256, moe=moe, moe_ffn=256), PLUGIN)

    for (name, a), (_, b) in zip(
        upstream.named_parameters(), plugin.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    tokens, positions, mask = batch()
    torch.testing.assert_close(
        plugin(tokens, positions, mask), upstream(tokens, positions, mask), rtol=1e-5, atol=1e-6
    )

    optimizer_config = OptimizerConfig(optimizer="adam", lr=1e-2, min_lr=1e-4, weight_decay=0.1)
    upstream_overrides = get_standard_config_overrides(optimizer_config)
    upstream_overrides.update(get_mup_config_overrides(optimizer_config, 4.0, "adam"))
    # Upstream scales Adam's eps with width by default; the plugin does when asked.
    with_eps = MupConfig(base_hidden_size=64, embedding_multiplier=4.0, scale_adam_eps=True)
    plugin_overrides = mup_config_overrides(plugin.config, with_eps, optimizer_config)

    def lr_by_name(model, overrides):
        groups = _get_param_groups([model], optimizer_config, overrides)
        names = {id(p): n for n, p in model.named_parameters()}
        return {
            names[id(p)]: (g["max_lr"], g["min_lr"], g["wd_mult"])
            for g in groups
            for p in g["params"]
        }

    upstream_lrs = lr_by_name(upstream, upstream_overrides)
    plugin_lrs = lr_by_name(plugin, plugin_overrides)
    assert upstream_lrs.keys() == plugin_lrs.keys()
    for name, numbers in upstream_lrs.items():
        assert plugin_lrs[name] == pytest.approx(numbers), name
    hidden = [n for n, p in plugin.named_parameters() if classify_parameter(n, p).value == "hidden"]
    assert hidden and all(plugin_lrs[n][0] == pytest.approx(1e-2 / 4) for n in hidden)
