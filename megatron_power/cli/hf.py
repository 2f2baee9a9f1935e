"""``megatron-power export-hf`` / ``import-hf``: Granite-format models in and out.

megatron-power export-hf runs/default hf/my-model        # latest checkpoint of a run
megatron-power import-hf hf/my-model runs/continued --tp 2
megatron-power pretrain --resume runs/continued          # train on with Power
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .pretrain import add_data_and_schedule_arguments, data_and_schedule_fields, validate


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export-hf",
        help="Write a run's checkpoint as a transformers Granite / GraniteMoE model.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("checkpoint", metavar="CKPT", help="a run directory or its iter_N")
    export.add_argument("out", metavar="OUT", help="the transformers model directory to write")
    export.set_defaults(handler=run_export)

    load = subparsers.add_parser(
        "import-hf",
        help="Turn a Granite / GraniteMoE model into a run that pretrain --resume continues.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("directory", metavar="DIR", help="a transformers Granite model directory")
    load.add_argument("out", metavar="OUT", help="the run directory to write")
    load.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the run")
    load.add_argument("--ep", type=int, default=1, help="expert-parallel size of the run")
    load.add_argument(
        "--mup-base-hidden-size",
        type=int,
        default=None,
        help="muP base width for continued training (default hidden_size / logits_scaling)",
    )
    load.add_argument(
        "--seq-length", type=int, default=None, help="default max_position_embeddings"
    )
    lm = load.add_argument_group("Megatron-LM (legacy --ckpt-format torch, loaded with --load)")
    lm.add_argument(
        "--megatron-lm-dir",
        default=None,
        help="also write a Megatron-LM 'release' checkpoint here for pretrain_gpt.py --load",
    )
    lm.add_argument(
        "--transformer-impl",
        choices=["transformer_engine", "local"],
        default="transformer_engine",
        help="Megatron-LM's flag of the same name: TE fuses the norms into the linears",
    )
    lm.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Megatron-LM's flag: the vocabulary is padded to a multiple of this x TP",
    )
    add_data_and_schedule_arguments(load)
    load.set_defaults(handler=run_import)


# ------------------------------------------------------------------------- export
def resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run directory or one of its iter_N."""
    from ..training.loop import checkpoint_dir, latest_iteration

    if (path / "config.json").is_file():
        iteration = latest_iteration(path)
        if iteration is None:
            raise ValueError(f"CKPT: {path} has no checkpoints")
        return path, checkpoint_dir(path, iteration)
    run_dir = path.parent.parent
    if not path.name.startswith("iter_") or not (run_dir / "config.json").is_file():
        raise ValueError(f"CKPT: {path} is neither a run directory nor its checkpoints/iter_N")
    return run_dir, path


def run_export(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..data.indexed import read_meta
    from ..hf.granite import granite_config, shape_of, to_granite
    from ..hf.shards import gather_state_dict, read_rank_files
    from ..megatron.mup import mup_rules
    from ..training.config import PretrainConfig
    from ..training.loop import data_prefix, transformer_config

    run_dir, checkpoint = resolve_checkpoint(Path(args.checkpoint))
    config = PretrainConfig.load(run_dir / "config.json")
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tokenizer = meta.get("tokenizer_model") or config.tokenizer_model
    if tokenizer:
        write_tokenizer(Path(tokenizer), out)
    provenance = {"run_config": json.loads((run_dir / "config.json").read_text()),
                  "checkpoint": str(checkpoint)}  # fmt: skip
    (out / "megatron_power.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"exported {checkpoint} -> {out} ({hf_config['architectures'][0]})")
    return 0


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


def run_import(args: argparse.Namespace) -> int:
    import torch

    from ..hf.granite import from_granite, shape_of
    from ..hf.shards import split_state_dict
    from ..training.config import PretrainConfig
    from ..training.loop import checkpoint_dir

    directory, out = Path(args.directory), Path(args.out)
    if not (directory / "config.json").is_file():
        raise ValueError(f"DIR: {directory} has no config.json")
    if (out / "checkpoints").exists():
        raise ValueError(f"OUT: {out} already has checkpoints")
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
        seq_length=args.seq_length or hf["max_position_embeddings"],
        init_method_std=hf.get("initializer_range", 0.02),
        nproc=args.tp * args.ep,
        tensor_model_parallel_size=args.tp,
        expert_model_parallel_size=args.ep,
        **{**data_and_schedule_fields(args), **mup_fields(hf, args.mup_base_hidden_size)},
    )
    if config.data == "markov":
        config.vocab_size = hf["vocab_size"]
    config.extra = {"imported_from": str(directory), "eos_token_id": hf.get("eos_token_id")}
    tokenizer = directory / "tokenizer.model"
    if config.tokenizer_model is None and tokenizer.is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, out / "tokenizer.model")
        config.tokenizer_model = str(out / "tokenizer.model")
    validate(config)
    full = from_granite(read_hf_tensors(directory), shape)
    ranks = split_state_dict(full, args.tp, args.ep, shape.num_experts)
    path = checkpoint_dir(out, 0)
    path.mkdir(parents=True, exist_ok=True)
    for place, local in ranks:
        state = {"iteration": 0, "model": local, "parallel": place,
                 "imported_from": str(directory)}  # fmt: skip
        torch.save(state, path / f"rank{place['rank']:03d}.pt")
    (out / "checkpoints" / "latest").write_text("0\n")
    config.save(out / "config.json")
    if args.megatron_lm_dir:
        write_megatron_lm_release(full, args, shape.num_experts, moe)
    print(f"imported {directory} -> {out} (tp {args.tp}, ep {args.ep}); "
          f"continue with: megatron-power pretrain --resume {out}")  # fmt: skip
    return 0


def mup_fields(hf: dict, base_hidden_size: int | None) -> dict:
    """muP settings that reproduce Granite's four scalars (muP off when all are neutral)."""
    hidden = hf["hidden_size"]
    head_dim = hidden // hf["num_attention_heads"]
    embedding = hf.get("embedding_multiplier", 1.0)
    residual = hf.get("residual_multiplier", 1.0)
    attention = hf.get("attention_multiplier", head_dim**-0.5)
    logits = hf.get("logits_scaling", 1.0)
    if (embedding, residual, logits) == (1.0, 1.0, 1.0) and abs(attention - head_dim**-0.5) < 1e-12:
        return {"mup": False}
    if base_hidden_size is None:
        ratio = hidden / logits
        if abs(ratio - round(ratio)) > 1e-6 or hidden % round(ratio):
            raise ValueError(
                f"--mup-base-hidden-size: hidden_size / logits_scaling = {ratio:g} is not a "
                "divisor of hidden_size; give the base width"
            )
        base_hidden_size = round(ratio)
    return {
        "mup": True,
        "mup_base_hidden_size": base_hidden_size,
        "mup_embedding_multiplier": embedding,
        "mup_residual_multiplier": residual,
        "mup_attention_multiplier": attention,
        "mup_logits_scaling": logits,
    }


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


def write_megatron_lm_release(full: dict, args: argparse.Namespace, experts, moe: bool) -> None:
    """A 'release' checkpoint in Megatron-LM's torch format: iter 'release', one
    mp_rank_TT[_EEE]/model_optim_rng.pt per model-parallel rank, weights only (Megatron-LM
    skips optimizer and RNG state for a release), vocabulary padded as Megatron-LM pads it."""
    import torch

    from ..hf.shards import split_state_dict

    multiple = args.make_vocab_size_divisible_by * args.tp
    padded = dict(full)
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if name in padded:
            rows = padded[name]
            extra = -rows.shape[0] % multiple
            padded[name] = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])])
    root = Path(args.megatron_lm_dir)
    for place, local in split_state_dict(padded, args.tp, args.ep, experts):
        name = f"mp_rank_{place['tp_rank']:02d}" + (
            f"_{place['ep_rank']:03d}" if args.ep > 1 else ""
        )
        path = root / "release" / name
        path.mkdir(parents=True, exist_ok=True)
        state = {"model": megatron_lm_names(local, args.transformer_impl != "local", moe),
                 "checkpoint_version": 3.0, "iteration": 0}  # fmt: skip
        torch.save(state, path / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("release")
    print(f"Megatron-LM checkpoint: {root} (pretrain_gpt.py --load {root} --ckpt-format torch "
          f"--transformer-impl {args.transformer_impl} --tensor-model-parallel-size {args.tp} "
          f"--expert-model-parallel-size {args.ep})")  # fmt: skip
