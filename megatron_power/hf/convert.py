"""Run checkpoints <-> Hugging Face Granite model directories, and Megatron-LM release
checkpoints: what ``export-hf`` and ``import-hf`` do (the CLI only parses their flags).

    export_granite(Path("runs/default"), Path("hf/my-model"))     # latest checkpoint
    import_granite(Path("hf/my-model"), Path("runs/continued"), ImportOptions(tp=2), fields)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training.config import PretrainConfig
from ..training.rundir import (
    RunDir,
    megatron_lm_release_file,
    megatron_lm_tracker,
    rank_file,
    resolve_checkpoint,
)
from .granite import mup_from_granite


# ------------------------------------------------------------------------- export
def export_granite(checkpoint_or_run: Path, out: Path, overwrite: bool = False) -> str:
    """Write a run's checkpoint (a run directory: its latest) as a transformers Granite /
    GraniteMoE model directory; returns the architecture. The directory is written under a
    temporary name and renamed when complete; an existing OUT is replaced only with
    ``overwrite``."""
    from safetensors.torch import save_file

    from ..data.indexed import read_meta
    from ..megatron.mup import mup_rules
    from ..training.config import PretrainConfig
    from ..training.data import data_prefix
    from ..training.model import transformer_config
    from .granite import granite_config, shape_of, to_granite
    from .shards import gather_state_dict, read_rank_files

    final = Path(out)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ValueError(f"OUT: {final} exists and is not empty; pass --overwrite to replace it")
    run, checkpoint = resolve_checkpoint(Path(checkpoint_or_run))
    config = PretrainConfig.load(run.config)
    megatron_config, mup = transformer_config(config)
    rules = mup_rules(megatron_config, mup) if mup is not None else None
    full = gather_state_dict(read_rank_files(checkpoint))
    prefix = data_prefix(config)
    meta = read_meta(prefix) if Path(f"{prefix}.json").is_file() else {}
    hf_config = granite_config(
        megatron_config,
        rules,
        vocab_size=full["embedding.word_embeddings.weight"].shape[0],
        max_position_embeddings=config.seq_length,
        rotary_base=config.rotary_base,
        tied=config.share_embeddings,
        eos_token_id=meta.get("eod", config.extra.get("eos_token_id")),
    )
    tensors = to_granite(full, shape_of(hf_config))
    out = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if meta.get("tokenizer_model"):  # recorded relative to the data directory
        write_tokenizer(prefix.parent / meta["tokenizer_model"], out)
    elif config.tokenizer_model:
        write_tokenizer(config.path(config.tokenizer_model), out)
    provenance = {"run_config": json.loads(run.config.read_text()),
                  "checkpoint": str(checkpoint)}  # fmt: skip
    (out / "megatron_power.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if final.exists():
        replaced = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.replace(final, replaced)
        shutil.rmtree(replaced)
    os.replace(out, final)
    print(f"exported {checkpoint} -> {final} ({hf_config['architectures'][0]})")
    return hf_config["architectures"][0]


def write_tokenizer(model_file: Path, out: Path) -> None:
    """The run's SentencePiece model, plus (when transformers is installed) the
    tokenizer.json that ``AutoTokenizer`` reads for a Granite model directory."""
    import sentencepiece as spm

    shutil.copyfile(model_file, out / "tokenizer.model")
    processor = spm.SentencePieceProcessor(model_file=str(model_file))

    def piece(index: int) -> str | None:
        return processor.id_to_piece(index) if index >= 0 else None

    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": piece(processor.bos_id()),
        "eos_token": piece(processor.eos_id()),
        "unk_token": piece(processor.unk_id()),
        "pad_token": piece(processor.pad_id()),
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    try:
        from transformers import LlamaTokenizer
    except ImportError:
        print("transformers is not installed: wrote tokenizer.model only (no tokenizer.json)")
        return
    # The training data carried no BOS/EOS inside documents: neither does the HF tokenizer.
    LlamaTokenizer.from_pretrained(out, add_bos_token=False, add_eos_token=False).save_pretrained(
        out
    )


# ------------------------------------------------------------------------- import
def _refuse_hf(config: dict) -> None:
    model_type = config.get("model_type")
    if model_type not in ("granite", "granitemoe"):
        raise ValueError(f"DIR: model_type {model_type!r} is not granite or granitemoe")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    checks = {
        "attention_bias": not config.get("attention_bias", False),
        "mlp_bias": not config.get("mlp_bias", False),
        "hidden_act": config.get("hidden_act", "silu") == "silu",
        "rope_scaling": not config.get("rope_scaling"),
        "head_dim": config.get("head_dim") in (None, hidden // heads),
        "shared_intermediate_size": not config.get("shared_intermediate_size"),
    }
    for field, ok in checks.items():
        if not ok:
            raise ValueError(f"DIR: config.json {field}={config.get(field)!r} is not supported")


def read_hf_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"DIR: {directory} has no .safetensors files")
    tensors: dict = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


@dataclass(frozen=True)
class ImportOptions:
    """How to lay an imported model out as a run (the ``import-hf`` flags)."""

    tp: int = 1
    ep: int = 1
    mup_base_hidden_size: int | None = None
    seq_length: int | None = None
    megatron_lm_dir: str | None = None
    transformer_impl: str = "transformer_engine"
    make_vocab_size_divisible_by: int = 128


def import_granite(
    directory: Path, out: Path, options: ImportOptions, run_fields: dict[str, Any]
) -> PretrainConfig:
    """A Granite / GraniteMoE model directory -> a run directory that ``pretrain --resume``
    continues (``run_fields``: its data and schedule), and optionally a Megatron-LM release
    checkpoint. Returns the run's config."""
    import torch

    from .granite import from_granite, shape_of
    from .shards import split_state_dict

    directory, out = Path(directory), Path(out)
    if not (directory / "config.json").is_file():
        raise ValueError(f"DIR: {directory} has no config.json")
    if RunDir(out).has_checkpoints() or RunDir(out).config.exists():
        raise ValueError(f"OUT: {out} already holds a run; choose another directory")
    hf = json.loads((directory / "config.json").read_text())
    _refuse_hf(hf)
    shape = shape_of(hf)
    moe = shape.num_experts is not None
    rope = hf.get("rope_parameters") or {}
    config = PretrainConfig(
        run_dir=str(out),
        model="moe" if moe else "dense",
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        head_dim=shape.head_dim,
        ffn_hidden_size=None if moe else hf["intermediate_size"],
        moe_ffn_hidden_size=hf["intermediate_size"] if moe else None,
        num_experts=shape.num_experts or PretrainConfig.num_experts,
        moe_router_topk=hf.get("num_experts_per_tok", 2),
        num_query_groups=shape.num_query_groups,
        rotary_base=int(rope.get("rope_theta", hf.get("rope_theta", 10_000))),
        norm_epsilon=hf.get("rms_norm_eps", 1e-5),
        share_embeddings=shape.tied,
        padded_vocab_size=hf["vocab_size"],
        seq_length=options.seq_length or hf["max_position_embeddings"],
        init_method_std=hf.get("initializer_range", 0.02),
        nproc=options.tp * options.ep,
        tensor_model_parallel_size=options.tp,
        expert_model_parallel_size=options.ep,
        mup=mup_from_granite(hf, options.mup_base_hidden_size),
        **run_fields,
    )
    if config.data == "markov":
        config.vocab_size = hf["vocab_size"]
    config.extra = {"imported_from": str(directory), "eos_token_id": hf.get("eos_token_id")}
    tokenizer = directory / "tokenizer.model"
    if config.tokenizer_model is None and tokenizer.is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, out / "tokenizer.model")
        config.tokenizer_model = "tokenizer.model"  # inside the run: relative to it
    config.validate()
    full = from_granite(read_hf_tensors(directory), shape)
    ranks = split_state_dict(full, options.tp, options.ep, shape.num_experts)
    run = RunDir(out)
    path = run.checkpoint(0)
    path.mkdir(parents=True, exist_ok=True)
    for place, local in ranks:
        state = {"iteration": 0, "model": local, "parallel": place,
                 "imported_from": str(directory)}  # fmt: skip
        torch.save(state, rank_file(path, place["rank"]))
    run.write_latest(0)
    config.save(run.config)
    if options.megatron_lm_dir:
        write_megatron_lm_release(full, options, shape.num_experts, moe)
    print(f"imported {directory} -> {out} (tp {options.tp}, ep {options.ep}); "
          f"continue with: megatron-power pretrain --resume {out}")  # fmt: skip
    return config


def megatron_lm_names(local: dict, transformer_engine: bool, moe: bool) -> dict:
    """Local-spec names -> the names of Megatron-LM's layer spec: Transformer Engine fuses
    the pre-attention norm into linear_qkv and, in dense layers, the pre-MLP norm into fc1."""
    if not transformer_engine:
        return dict(local)
    renamed = {}
    for name, tensor in local.items():
        name = name.replace(
            ".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"
        )
        if not moe:
            name = name.replace(".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight")
        renamed[name] = tensor
    return renamed


def write_megatron_lm_release(full: dict, options: ImportOptions, experts, moe: bool) -> None:
    """A 'release' checkpoint in Megatron-LM's torch format: iter 'release', one
    mp_rank_TT[_EEE]/model_optim_rng.pt per model-parallel rank, weights only (Megatron-LM
    skips optimizer and RNG state for a release), vocabulary padded as Megatron-LM pads it."""
    import torch

    from .shards import split_state_dict

    multiple = options.make_vocab_size_divisible_by * options.tp
    padded = dict(full)
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if name in padded:
            rows = padded[name]
            extra = -rows.shape[0] % multiple
            padded[name] = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])])
    root = Path(options.megatron_lm_dir)
    for place, local in split_state_dict(padded, options.tp, options.ep, experts):
        path = megatron_lm_release_file(root, place["tp_rank"], place["ep_rank"], options.ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": megatron_lm_names(local, options.transformer_impl != "local", moe),
                 "checkpoint_version": 3.0, "iteration": 0}  # fmt: skip
        torch.save(state, path)
    megatron_lm_tracker(root).write_text("release")
    print(f"Megatron-LM checkpoint: {root} (pretrain_gpt.py --load {root} --ckpt-format torch "
          f"--transformer-impl {options.transformer_impl} "
          f"--tensor-model-parallel-size {options.tp} "
          f"--expert-model-parallel-size {options.ep})")  # fmt: skip
