"""import-hf / export-hf starting from models built by transformers' own classes.

The expectation is always transformers itself: its logits and loss for the model it
built (dense and MoE, tied and untied, GQA, odd vocabularies, every muP scalar
non-trivial, a config with only the required fields, linear RoPE), and the very files it
wrote (an import followed by an export gives them back bit for bit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_power.hf.convert import ImportOptions, export_granite, import_granite
from tests.hf.granite_models import (
    DENSE,
    MINIMAL,
    MOE,
    TOKENS,
    build_granite,
    hf_logits,
    megatron_logits,
)
from tests.support.distributed import run_ranks

LINEAR_ROPE = dict(DENSE, rope_parameters={"rope_type": "linear", "factor": 4.0,
                                           "rope_theta": 500.0})  # fmt: skip
#: name: (config fields, config.json with only those fields, weight dtype)
MODELS = {
    "dense": (DENSE, False, torch.float32),
    "dense-minimal-tied": (MINIMAL, True, torch.float32),
    "dense-linear-rope-bf16": (LINEAR_ROPE, False, torch.bfloat16),
    "moe": (MOE, False, torch.float32),
    "moe-minimal-tied": (dict(MINIMAL, num_local_experts=4, num_experts_per_tok=2), True,
                         torch.float32),
}  # fmt: skip
#: layouts each model is imported at: (tp, ep)
LAYOUTS = {name: [(1, 1), (2, 1)] + ([(1, 2)] if "moe" in name else []) for name in MODELS}
RUN = dict(
    data="markov", vocab_size=128, tokenizer_model=None, step_batch_size_schedule=None,
    train_tokens=4096, global_batch_size=4,
    schedule={"lr_decay_style": "constant", "max_lr": 1e-3, "lr_warmup_steps": 0},
)  # fmt: skip


def megatron_power(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=900, cwd=cwd, env=env,
    )  # fmt: skip
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each model directory and its runs, imported at every layout of LAYOUTS."""
    root = tmp_path_factory.mktemp("from-transformers")
    built = {}
    for name, (fields, minimal, dtype) in MODELS.items():
        directory = build_granite(root / name, fields, dtype=dtype, minimal=minimal)
        runs = {}
        for tp, ep in LAYOUTS[name]:
            runs[tp, ep] = root / f"{name}-tp{tp}-ep{ep}"
            import_granite(directory, runs[tp, ep], ImportOptions(tp=tp, ep=ep, seq_length=32),
                           dict(RUN))  # fmt: skip
        built[name] = {"directory": directory, "runs": runs}
    return built


@pytest.mark.parametrize("world", [1, 2])
def test_megatron_logits_equal_transformers(models, world):
    """TP 1 and 2 (and EP 2 for MoE): Megatron-Core's logits on the imported shards are
    transformers' logits for the model it built (1e-5), padding rows cut."""
    cases = [(name, layout) for name in MODELS for layout in LAYOUTS[name]
             if layout[0] * layout[1] == world]  # fmt: skip
    runs = [str(models[name]["runs"][layout]) for name, layout in cases]
    got = run_ranks(megatron_logits, world, runs, TOKENS)
    for rank in range(1, world):
        for a, b in zip(got[0], got[rank], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, layout), logits in zip(cases, got[0], strict=True):
        expected = hf_logits(models[name]["directory"])
        assert logits.shape == expected.shape, name
        difference = (logits - expected).abs().max().item()
        print(f"{name} tp{layout[0]} ep{layout[1]}: max |Megatron - transformers| {difference:.1e}")
        assert difference < 1e-5, (name, layout, difference)
        assert expected.std() > 0.3  # random weights: a logit that could differ


def test_transformers_defaults_for_absent_fields(models):
    """A config.json without attention_multiplier / rms_norm_eps gets transformers'
    defaults (1.0 and 1e-6), not 1/sqrt(head_dim) and Megatron's 1e-5."""
    config = json.loads((models["dense-minimal-tied"]["runs"][1, 1] / "config.json").read_text())
    assert config["norm_epsilon"] == 1e-6
    assert config["mup"]["attention_scale"] == 1.0
    assert config["share_embeddings"] is True


@pytest.mark.parametrize("name", list(MODELS))
def test_import_then_export_gives_back_the_source(models, name, tmp_path):
    """At every layout: the tensors bit for bit in their dtype (bf16 stays bf16), every
    config field as the source had it (a source without a dtype field gets the weights'),
    the other files byte for byte."""
    source = models[name]["directory"]
    expected = load_file(source / "model.safetensors")
    source_config = json.loads((source / "config.json").read_text())
    for layout, run in models[name]["runs"].items():
        out = tmp_path / f"tp{layout[0]}-ep{layout[1]}"
        export_granite(run, out)
        got = load_file(out / "model.safetensors")
        assert got.keys() == expected.keys(), layout
        for tensor_name, tensor in expected.items():
            assert got[tensor_name].dtype == tensor.dtype, tensor_name
            assert torch.equal(got[tensor_name], tensor), (layout, tensor_name)
        config = json.loads((out / "config.json").read_text())
        dtype_key = "dtype" if "dtype" in source_config else "torch_dtype"  # the source's
        assert config[dtype_key] == str(next(iter(got.values())).dtype).removeprefix("torch.")
        assert config == {dtype_key: config[dtype_key], **source_config}, layout
        for path in source.iterdir():
            if path.name not in ("model.safetensors", "config.json"):
                assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_moe_with_tp_runs_sequence_parallel_and_trains_like_tp1(models, tmp_path):
    """D2: a GraniteMoE imported at --tp 2 trains (sequence parallelism on, logged), and
    its losses are those of the same model at TP 1; the first one is transformers' loss."""
    losses, runs = {}, {}
    for layout in ((1, 1), (2, 1)):
        run = runs[layout] = tmp_path / f"tp{layout[0]}"
        import_granite(models["moe"]["directory"], run, ImportOptions(tp=layout[0], seq_length=32),
                       dict(RUN))  # fmt: skip
        result = megatron_power("pretrain", "--resume", run, "--exit-interval", 2)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("sequence parallelism on" in result.stdout) == (layout[0] == 2)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[layout] = [row["loss"] for row in rows]
    assert len(losses[1, 1]) == 2
    assert losses[2, 1] == pytest.approx(losses[1, 1], rel=1e-5)
    assert losses[1, 1][0] == pytest.approx(
        transformers_loss_on_first_batch(runs[1, 1], models["moe"]["directory"]),
        rel=1e-5,
    )
    # the sequence-parallel run's shards (norms and router kept equal over TP) export to
    # a model transformers computes the trained run's logits with
    trained, exported = runs[2, 1], tmp_path / "tp2-trained-hf"
    export_granite(trained, exported)
    got = run_ranks(megatron_logits, 2, [str(trained)], TOKENS)[0][0]
    assert (hf_logits(exported) - got).abs().max().item() < 1e-5
    assert (hf_logits(models["moe"]["directory"]) - got).abs().max().item() > 1e-4


def transformers_loss_on_first_batch(run: Path, directory: Path) -> float:
    """transformers' loss for the model in ``directory`` on the run's first batch (read
    from the run's own dataset, as its training loop reads it)."""
    import transformers

    from megatron_power.data.indexed import build_gpt_datasets, read_meta
    from megatron_power.training.config import PretrainConfig
    from megatron_power.training.data import data_prefix, get_batch

    config = PretrainConfig.load(run / "config.json")
    prefix = data_prefix(config)
    train, _ = build_gpt_datasets(prefix, config.seq_length, 1, 1, config.seed, read_meta(prefix))
    batch = get_batch(train, 0, config.batch_at(0), torch.device("cpu"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        logits = model(batch["tokens"]).logits
    losses = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), reduction="none"
    )
    mask = batch["loss_mask"].flatten().float()
    return ((losses * mask).sum() / mask.sum()).item()


def hugging_face_tokenizer(directory: Path, corpus: Path) -> None:
    """A small BPE tokenizer.json (Granite's own is one) trained on ``corpus``,
    with its eos token named in tokenizer_config.json as the Hub writes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<|endoftext|>"])
    tokenizer.train([str(corpus)], trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))


def test_text_run_from_another_directory_moved_and_exported(tmp_path):
    """D1 + D4: imported with relative paths from one directory, resumed by its absolute
    path from another, then moved and exported: the first loss is transformers' loss on
    that batch (text tokenized by the model's own tokenizer.json), the export loads in
    transformers and computes the trained run's logits. Without a tokenizer, text is
    refused."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    words = "the cat sat on a mat while dogs ran far from home and birds sang".split()  # noqa: SIM905
    documents = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(120)]
    (here / "corpus.txt").write_text("\n\n".join(documents))
    model = build_granite(here / "model", DENSE)
    refused = megatron_power("import-hf", "model", "run", "--data", "corpus.txt", cwd=here)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "megatron-power import-hf: error: --tokenizer-model: model has no tokenizer "
        "(tokenizer.model or tokenizer.json) and none was given: text must be tokenized "
        "with the model's own tokenizer"
    ]
    assert not (here / "run").exists()
    hugging_face_tokenizer(model, here / "corpus.txt")
    flags = ["--data", "corpus.txt", "--train-tokens", 4096, "--global-batch-size", 4,
             "--seq-length", 32, "--lr", "0.001", "--lr-decay-style", "constant",
             "--warmup-tokens", 0]  # fmt: skip
    imported = megatron_power("import-hf", "model", "run", *flags, cwd=here)
    assert imported.returncode == 0, imported.stderr[-3000:]
    run = here / "run"
    resumed = megatron_power("pretrain", "--resume", run.resolve(), "--exit-interval", 3,
                             cwd=elsewhere)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    assert rows[0]["loss"] == pytest.approx(transformers_loss_on_first_batch(run, model),
                                            rel=1e-5)  # fmt: skip
    moved = elsewhere / "moved-run"
    shutil.move(run, moved)
    exported = megatron_power("export-hf", moved, "exported", cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr[-3000:]
    out = elsewhere / "exported"
    assert (out / "tokenizer.json").read_bytes() == (model / "tokenizer.json").read_bytes()
    trained = run_ranks(megatron_logits, 1, [str(moved)], TOKENS)[0][0]
    assert (hf_logits(out) - trained).abs().max().item() < 1e-5
    assert (hf_logits(model) - trained).abs().max().item() > 1e-4  # it did train
