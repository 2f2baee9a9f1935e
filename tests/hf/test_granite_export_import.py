"""``export-hf`` / ``import-hf`` against transformers' own Granite / GraniteMoE classes.

Real runs of ``megatron-power pretrain`` at TP=2 (dense, SentencePiece text) and EP=2
(MoE, Markov data) are exported; the expectation each time is Megatron-Core's own
forward pass on the sharded model, run on two gloo ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tests.hf.granite_models import TOKENS, hf_logits, megatron_logits
from tests.support.distributed import run_ranks

RUN = ["--hidden-size", "64", "--num-layers", "2", "--head-dim", "16", "--seq-length", "32",
       "--global-batch-size", "8", "--train-tokens", "4096", "--warmup-tokens", "512",
       "--exit-interval", "3"]  # fmt: skip
SHORT = ["--train-tokens", 4096, "--warmup-tokens", 512, "--global-batch-size", 8]


def megatron_power(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def latest_checkpoint(run_dir: Path) -> Path:
    iteration = int((run_dir / "checkpoints" / "latest").read_text())
    return run_dir / "checkpoints" / f"iter_{iteration:07d}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    words = "the cat sat on a mat while dogs ran far from home and birds sang".split()  # noqa: SIM905
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(30))
                                  for i in range(200)))  # fmt: skip
    dense = root / "dense-tp2"
    megatron_power("pretrain", "--run-dir", dense, "--nproc", 2, "--tp", 2, "--data", corpus,
                   "--vocab-size", 96, *RUN)  # fmt: skip
    moe = root / "moe-ep2"
    megatron_power("pretrain", "--run-dir", moe, "--model", "moe", "--num-experts", 4,
                   "--nproc", 2, "--ep", 2, *RUN)  # fmt: skip
    exported = {}
    for run in (dense, moe):
        exported[run.name] = root / f"{run.name}-hf"
        megatron_power("export-hf", run, exported[run.name])
    return {"dense": dense, "moe": moe, "exported": exported, "root": root}


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_exported_model_computes_the_megatron_logits(runs, kind):
    run = runs[kind]
    directory = runs["exported"][run.name]
    config = json.loads((directory / "config.json").read_text())
    expected_arch = "GraniteForCausalLM" if kind == "dense" else "GraniteMoeForCausalLM"
    assert config["architectures"] == [expected_arch]
    # muP of the run (base 64 -> width ratio 1 here): the four Granite scalars
    assert config["embedding_multiplier"] == 4.0 and config["residual_multiplier"] == 0.5
    assert config["attention_multiplier"] == pytest.approx(1 / 16)  # muP's 1/head_dim
    assert config["logits_scaling"] == 1.0
    reference = run_ranks(megatron_logits, 2, [str(run)], TOKENS)
    reference = [logits for (logits,) in reference]
    torch.testing.assert_close(reference[0], reference[1])  # both ranks agree
    got = hf_logits(directory, TOKENS)
    assert got.shape == reference[0].shape
    difference = (got - reference[0]).abs().max().item()
    print(f"{kind}: max |HF - Megatron| logit difference {difference:.2e}")
    assert difference < 1e-4
    assert reference[0].std() > 0.05  # a trained, non-degenerate readout


def test_tokenizer_is_exported_with_the_model(runs):
    import sentencepiece as spm

    directory = runs["exported"]["dense-tp2"]
    processor = spm.SentencePieceProcessor(model_file=str(runs["dense"] / "tokenizer.model"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    text = "the cat sat on a mat while dogs ran"
    assert tokenizer(text)["input_ids"] == processor.encode(text)
    config = json.loads((directory / "config.json").read_text())
    # the tokenizer's own ids (a run trained here has no source config to keep)
    assert (config["bos_token_id"], config["eos_token_id"]) == (processor.bos_id(),
                                                                processor.eos_id())  # fmt: skip
    assert config["bos_token_id"] != config["eos_token_id"]
    assert config["pad_token_id"] is None  # SentencePiece's pad id is -1: none


@pytest.mark.parametrize(("kind", "flags"), [("dense", ["--tp", "2"]), ("moe", ["--ep", "2"])])
def test_import_at_the_same_parallelism_gives_back_every_shard(runs, kind, flags, tmp_path):
    """Unpadded (as the run was), every rank's shard comes back as it was saved."""
    run = runs[kind]
    out = tmp_path / "imported"
    megatron_power("import-hf", runs["exported"][run.name], out, *flags,
                   "--make-vocab-size-divisible-by", 1, *SHORT)  # fmt: skip
    for rank in (0, 1):
        original = torch.load(latest_checkpoint(run) / f"rank{rank:03d}.pt", weights_only=False)
        imported = torch.load(
            out / f"checkpoints/iter_0000000/rank{rank:03d}.pt", weights_only=False
        )
        weights = {k: v for k, v in original["model"].items() if not k.endswith("_extra_state")}
        assert imported["model"].keys() == weights.keys()
        for name, tensor in weights.items():
            assert torch.equal(imported["model"][name], tensor), name
        assert {k: imported["parallel"][k] for k in ("tp_rank", "ep_rank", "dp_rank")} == {
            k: original["parallel"][k] for k in ("tp_rank", "ep_rank", "dp_rank")
        }


def test_import_at_another_parallelism_round_trips_and_resumes(runs, tmp_path):
    """Dense TP=2 -> HF -> TP=1 run -> HF again: the same tensors; the run trains on."""
    from safetensors.torch import load_file

    exported = runs["exported"]["dense-tp2"]
    out = tmp_path / "tp1"
    megatron_power("import-hf", exported, out, "--data", runs["root"] / "corpus.txt",
                   *SHORT)  # fmt: skip
    again = tmp_path / "again-hf"
    megatron_power("export-hf", out, again)
    first, second = (
        load_file(exported / "model.safetensors"),
        load_file(again / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert json.loads((again / "config.json").read_text()) == json.loads(
        (exported / "config.json").read_text()
    )
    megatron_power("pretrain", "--resume", out, "--exit-interval", 4)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # it starts from the trained weights (not a fresh init at ln(96) = 4.56) and trains on
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["loss"] < 4.0


def test_moe_imported_at_ep2_computes_the_hf_logits(runs, tmp_path):
    exported = runs["exported"]["moe-ep2"]
    out = tmp_path / "moe"
    megatron_power("import-hf", exported, out, "--ep", "2",
                   *SHORT)  # fmt: skip
    reference = run_ranks(megatron_logits, 2, [str(out)], TOKENS)
    reference = [logits for (logits,) in reference]
    assert (hf_logits(exported, TOKENS) - reference[0]).abs().max().item() < 1e-4


def test_megatron_lm_release_checkpoint_loads_into_megatron(runs, tmp_path):
    """import-hf --megatron-lm-dir: Megatron-LM's torch-format 'release' layout at TP=2,
    vocabulary padded to 128 x TP; Megatron-Core's model at TP=2 loads each
    mp_rank_TT/model_optim_rng.pt and computes the HF logits (padding aside)."""
    from megatron_power.hf.convert import megatron_lm_names

    exported = runs["exported"]["dense-tp2"]
    lm = tmp_path / "megatron-lm"
    megatron_power("import-hf", exported, tmp_path / "run", "--tp", 2, "--megatron-lm-dir", lm,
                   "--transformer-impl", "local", *SHORT)  # fmt: skip
    assert (lm / "latest_checkpointed_iteration.txt").read_text() == "release"
    files = [str(lm / f"release/mp_rank_{tp:02d}/model_optim_rng.pt") for tp in (0, 1)]
    state = torch.load(files[0], weights_only=False)
    assert state["checkpoint_version"] == 3.0 and state["iteration"] == 0
    assert state["model"]["embedding.word_embeddings.weight"].shape[0] == 128  # 256 / TP
    reference = run_ranks(megatron_logits, 2, [str(tmp_path / "run")], TOKENS, files)
    assert reference[0][0].shape[-1] == 96  # the 256 rows cut to the model's vocabulary
    assert (hf_logits(exported, TOKENS) - reference[0][0]).abs().max().item() < 1e-4
    te = megatron_lm_names(state["model"], transformer_engine=True, moe=False)
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in te
    assert "decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in te
    assert not any("layernorm.weight" in name and "final" not in name for name in te)


def test_inexpressible_configs_are_refused(tmp_path):
    from megatron_power.hf.granite import granite_config
    from tests.support.gpt import tiny_config

    for field, extra in [
        ("normalization", {"normalization": "LayerNorm"}),
        ("apply_residual_connection_post_layernorm",
         {"apply_residual_connection_post_layernorm": True}),
        ("qk_layernorm", {"qk_layernorm": True}),
        ("add_bias_linear", {"add_bias_linear": True}),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^{field}: .*cannot be exported to Granite"):
            granite_config(tiny_config(**extra), None, 96, 32, 10_000, tied=False)
    with pytest.raises(ValueError, match=r"^moe_router_pre_softmax: "):
        granite_config(tiny_config(moe=True, moe_router_pre_softmax=True), None, 96, 32, 1e4, False)
    hf = tmp_path / "biased"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "granite", "hidden_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 96,
        "max_position_embeddings": 32, "attention_bias": True}))  # fmt: skip
    result = megatron_power("import-hf", hf, tmp_path / "out", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "megatron-power import-hf: error: DIR: config.json attention_bias=True is not "
        "supported (allowed: False)"
    ]


def test_release_layout_is_where_megatron_lm_looks(runs, tmp_path, megatron_lm_tree):
    """Megatron-LM's own get_checkpoint_name / read_metadata find every file written."""
    lm = tmp_path / "lm"
    megatron_power("import-hf", runs["exported"]["moe-ep2"], tmp_path / "run", "--ep", 2,
                   "--megatron-lm-dir", lm, *SHORT)  # fmt: skip
    probe = (
        "import sys; from megatron.training import checkpointing as c\n"
        "root = sys.argv[1]\n"
        "print(c.read_metadata(root + '/latest_checkpointed_iteration.txt'))\n"
        "for ep in (0, 1): print(c.get_checkpoint_name(root, 0, release=True,"
        " pipeline_parallel=False, tensor_rank=0, pipeline_rank=0, expert_parallel=True,"
        " expert_rank=ep))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(megatron_lm_tree)}
    result = subprocess.run([sys.executable, "-c", probe, str(lm)], capture_output=True,
                            text=True, env=env, check=True)  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert lines[-3] == "(0, True)"
    for line in lines[-2:]:
        assert Path(line).is_file(), line


def test_export_never_overwrites_without_the_flag(runs, tmp_path):
    out = tmp_path / "exported"
    megatron_power("export-hf", runs["dense"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = megatron_power("export-hf", runs["moe"], out, check=False)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"megatron-power export-hf: error: OUT: {out} exists and is not empty; "
        "pass --overwrite to replace it"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    megatron_power("export-hf", runs["moe"], out, "--overwrite")
    assert json.loads((out / "config.json").read_text())["model_type"] == "granitemoe"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
