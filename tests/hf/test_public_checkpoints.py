"""The public checkpoints the README gives import commands for (ibm/PowerLM-3b,
ibm/PowerMoE-3b, ibm-granite/granite-3.0-2b-base): their exact config.json values through
import-hf's checks at the documented layouts, and through import, Megatron's forward and
export with the weights shrunk (every scalar, the vocabulary, head size, GQA ratio,
experts and top-k kept)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_power.hf.convert import (
    ImportOptions,
    export_granite,
    import_granite,
    read_hf_config,
    run_config_of,
)
from megatron_power.hf.granite import check_layout, refuse_unconvertible
from megatron_power.training.model import padded_vocab_size
from tests.hf.granite_models import TOKENS, build_granite, hf_logits, megatron_logits
from tests.hf.public_configs import PUBLIC, shrunk
from tests.support.distributed import run_ranks

RUN = dict(
    data="markov", vocab_size=128, tokenizer_model=None, step_batch_size_schedule=None,
    train_tokens=4096, global_batch_size=4,
    schedule={"lr_decay_style": "constant", "max_lr": 1e-3, "lr_warmup_steps": 0},
)  # fmt: skip
#: vocabulary rows as Megatron pads them (a multiple of 128 x TP), by hand
PADDED = {(49152, 1): 49152, (49152, 2): 49152, (49152, 4): 49152,
          (49155, 1): 49280, (49155, 2): 49408}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLIC))
def test_documented_layouts_accept_the_full_config(name, tmp_path):
    """The exact config passes every check at each README layout: muP base width 256
    (hidden / logits_scaling), transformers' values for the rest, vocabulary padded."""
    config, one_gpu, eight_gpus = PUBLIC[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = read_hf_config(tmp_path)
    refuse_unconvertible(hf)
    for tp, ep in {*one_gpu, *eight_gpus}:
        check_layout(hf, tp, ep)
        fields = dict(RUN, train_tokens=4096 * 4 * 100)
        run = run_config_of(hf, ImportOptions(tp=tp, ep=ep), fields, tmp_path / "run")
        run.validate(inputs_needed=False)
        assert run.mup["base_hidden_size"] == 256
        assert run.mup["attention_scale"] == 1 / 64
        assert run.norm_epsilon == config["rms_norm_eps"]
        assert run.attention_dropout == config["attention_dropout"]
        assert padded_vocab_size(run.model_vocab_size, run) == PADDED[config["vocab_size"], tp]


#: where each shrunk model is imported (the layouts its shrunk head counts allow)
SHRUNK_LAYOUTS = {"ibm/PowerLM-3b": [(1, 1)], "ibm/PowerMoE-3b": [(2, 1), (1, 2)],
                  "ibm-granite/granite-3.0-2b-base": [(2, 1)]}  # fmt: skip


def test_shrunk_public_models_import_compute_and_export(tmp_path):
    """bf16 as published: Megatron's logits equal transformers' (1e-5 of the largest logit);
    export gives back every tensor in bf16 bit for bit and the config.json field for field."""
    runs = {}
    for name, (config, _, _) in PUBLIC.items():
        fields = shrunk(config)
        directory = build_granite(tmp_path / name.replace("/", "--"), fields,
                                  dtype=torch.bfloat16, minimal=True)  # fmt: skip
        (directory / "config.json").write_text(json.dumps(fields, indent=2))
        for tp, ep in SHRUNK_LAYOUTS[name]:
            run = tmp_path / f"{directory.name}-tp{tp}-ep{ep}"
            import_granite(directory, run, ImportOptions(tp=tp, ep=ep, seq_length=32), dict(RUN))
            runs[name, tp, ep] = (directory, run)
    for world in (1, 2):
        cases = [(key, value) for key, value in runs.items() if key[1] * key[2] == world]
        got = run_ranks(megatron_logits, world, [str(run) for _, (_, run) in cases], TOKENS)
        for (key, (directory, _)), logits in zip(cases, got[0], strict=True):
            expected = hf_logits(directory)
            difference = (logits - expected).abs().max().item()
            print(f"{key}: max |Megatron - transformers| {difference:.1e}")
            # fp32 rounding grows with the logits' size: the shrunk PowerMoE's reach 5.5, and
            # its TP/EP layouts sum experts and partial products in another order (3.2e-5 on
            # an AVX-512 CPU); a wrong conversion is off by 1e-2 or more
            assert difference < 1e-5 * max(1.0, expected.abs().max().item()), key
    for (name, tp, ep), (directory, run) in runs.items():
        out = tmp_path / f"export-{directory.name}-tp{tp}-ep{ep}"
        export_granite(run, out)
        expected = load_file(directory / "model.safetensors")
        got = load_file(out / "model.safetensors")
        assert got.keys() == expected.keys()
        for tensor_name, tensor in expected.items():
            assert got[tensor_name].dtype == torch.bfloat16
            assert torch.equal(got[tensor_name], tensor), (name, tensor_name)
        source = json.loads((directory / "config.json").read_text())
        assert json.loads((out / "config.json").read_text()) == source, name
