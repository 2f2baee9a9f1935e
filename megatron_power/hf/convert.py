"""Run checkpoints <-> Hugging Face Granite model directories, and Megatron-LM release
checkpoints: what ``export-hf`` and ``import-hf`` do (the CLI only parses their flags).

    export_granite(Path("runs/default"), Path("hf/my-model"))     # latest checkpoint
    import_granite(Path("hf/my-model"), Path("runs/continued"), ImportOptions(tp=2), fields)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
    GraniteMoE model directory; returns the architecture. An imported run gives back its
    source's files and every config field the source had (changed only where the run's
    model differs, each change printed), its weights in the source's dtype where they
    convert exactly. The directory is written under a temporary name and renamed when
    complete; an existing OUT is replaced only with ``overwrite``."""
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
    vocab = config.model_vocab_size or full["embedding.word_embeddings.weight"].shape[0]
    full = unpad_vocabulary(full, vocab)
    computed = granite_config(
        megatron_config,
        rules,
        vocab_size=vocab,
        max_position_embeddings=config.seq_length,
        rotary_base=config.rotary_base,
        tied=config.share_embeddings,
        token_ids=token_ids_of(config, meta, prefix),
    )
    tensors = to_granite(full, shape_of(computed))
    imported = run.hf_source.is_dir()
    hf_config = with_source_fields(run.hf_source, computed) if imported else computed
    dtype = export_dtype(tensors, config.extra.get("source_dtypes", []))
    tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    dtype_key = next((k for k in ("dtype", "torch_dtype") if k in hf_config), "torch_dtype")
    hf_config[dtype_key] = str(dtype).removeprefix("torch.")
    out = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if imported:  # generation config, tokenizer files: as the source had them
        for path in sorted(run.hf_source.iterdir()):
            shutil.copyfile(path, out / path.name)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tokenizer = None
    if meta.get("tokenizer_model"):  # recorded relative to the data directory
        tokenizer = (prefix.parent / meta["tokenizer_model"]).resolve()
    elif config.tokenizer_model:
        tokenizer = config.path(config.tokenizer_model).resolve()
    if tokenizer is not None and tokenizer.parent != run.hf_source.resolve():
        if tokenizer.suffix == ".json":  # a Hugging Face tokenizer: its files as they are
            for name in (tokenizer.name, "tokenizer_config.json", "special_tokens_map.json"):
                if (tokenizer.parent / name).is_file():
                    shutil.copyfile(tokenizer.parent / name, out / name)
        else:
            write_tokenizer(tokenizer, out)
    provenance = {"run_config": json.loads(run.config.read_text()),
                  "checkpoint": str(checkpoint)}  # fmt: skip
    (out / "megatron_power.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if final.exists():
        replaced = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.replace(final, replaced)
        shutil.rmtree(replaced)
    os.replace(out, final)
    print(f"exported {checkpoint} -> {final} ({hf_config['architectures'][0]}, {dtype_key} "
          f"{hf_config[dtype_key]})")  # fmt: skip
    return hf_config["architectures"][0]


#: Fields of an exported config that the run's model decides; every other field of an
#: imported model's config.json (token ids, positions, rope, router loss, ...) is its own.
MODEL_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
    "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling",
    "num_local_experts", "num_experts_per_tok",
)  # fmt: skip


def with_source_fields(source: Path, computed: dict[str, Any]) -> dict[str, Any]:
    """The imported model's config.json as it was, with the run's value of each model
    field where it differs from the source's (transformers' default for an absent one)."""
    raw = json.loads((source / "config.json").read_text())
    resolved = read_hf_config(source)
    merged = dict(raw)
    for name in MODEL_FIELDS:
        if name not in computed:
            continue
        value, before = computed[name], resolved.get(name)
        same = value == before or (
            isinstance(value, float) and isinstance(before, int | float)
            and abs(value - before) <= 1e-12 * max(1.0, abs(before))
        )  # fmt: skip
        if not same:
            merged[name] = value
            print(f"export: {name} {before!r} -> {value!r} (the run's model)")
    return merged


def export_dtype(tensors: dict, source_dtypes: list[str]):
    """The source's weight dtype when every tensor converts to it exactly (an import gives
    back its files bit for bit), else float32: a dtype that rounds is never chosen."""
    import torch

    if len(source_dtypes) != 1 or source_dtypes[0] == "float32":
        return torch.float32
    dtype = getattr(torch, source_dtypes[0])
    inexact = [n for n, t in tensors.items() if not torch.equal(t.to(dtype).to(t.dtype), t)]
    if inexact:
        print(f"export: weights written as float32: {len(inexact)} tensors (e.g. "
              f"{inexact[0]}) are not exactly {source_dtypes[0]} since the import")  # fmt: skip
        return torch.float32
    return dtype


def token_ids_of(config: PretrainConfig, meta: dict, prefix: Path) -> dict[str, int | None]:
    """bos / eos / pad of a run trained here: its tokenizer's, end-of-document for eos."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": meta.get("eod"),
                                  "pad_token_id": None}  # fmt: skip
    model = meta.get("tokenizer_model")
    if model and model.endswith(".model"):
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(prefix.parent / model))
        for key, index in (("bos_token_id", processor.bos_id()),
                           ("pad_token_id", processor.pad_id())):  # fmt: skip
            ids[key] = index if index >= 0 else None
    return ids


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
#: Files of a model directory that are not its configuration or tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The config.json with transformers' defaults for every absent field, read by
    transformers' own GraniteConfig / GraniteMoeConfig so the defaults and the rope fields
    of any transformers version are its own."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"DIR: {directory} has no config.json")
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"DIR: {path} is not JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("model_type") not in ("granite", "granitemoe"):
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        raise ValueError(f"DIR: model_type {model_type!r} is not granite or granitemoe")
    try:
        from transformers import AutoConfig
    except ImportError:
        raise ValueError(
            "import-hf: reading a Granite config needs transformers "
            "(pip install 'megatron-power[hf]')"
        ) from None
    try:
        resolved = AutoConfig.from_pretrained(directory).to_dict()
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"DIR: transformers cannot read {path}: {error}") from None
    return resolved


def read_hf_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
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
    checkpoint. Every check runs before a tensor is read; the run is written under a
    temporary name and renamed when complete. Returns the run's config."""
    from .granite import check_layout, refuse_unconvertible, shape_of

    directory, out = Path(directory), Path(out)
    if RunDir(out).config.exists() or RunDir(out).has_checkpoints():
        raise ValueError(f"OUT: {out} already holds a run; choose another directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"OUT: {out} exists and is not empty; choose a new run directory")
    hf = read_hf_config(directory)
    refuse_unconvertible(hf)
    check_layout(hf, options.tp, options.ep)
    config = run_config_of(hf, options, run_fields, out)
    if config.data != "markov":
        if not Path(config.data).is_file():
            raise ValueError(f"--data: no such file: {config.data}")
        tokenizer = Path(config.tokenizer_model) if config.tokenizer_model else None
        if tokenizer is None:
            tokenizer = source_tokenizer(directory)
            if tokenizer is None:
                raise ValueError(
                    f"--tokenizer-model: {directory} has no tokenizer (tokenizer.model or "
                    "tokenizer.json) and none was given: text must be tokenized with the "
                    "model's own tokenizer"
                )
            # the run's copy, named relative to the run directory
            config.tokenizer_model = f"{RunDir(out).hf_source.name}/{tokenizer.name}"
        check_tokenizer(tokenizer, hf["vocab_size"])
    config.validate(inputs_needed=False)
    if not any(directory.glob("*.safetensors")):
        raise ValueError(f"DIR: {directory} has no .safetensors files")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        run = RunDir(partial)
        copy_model_files(directory, run.hf_source)
        write_run_checkpoint(directory, run, config, options, shape_of(hf))
        config.save(run.config)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if options.megatron_lm_dir:
        write_megatron_lm_release(RunDir(out), config, options)
    linear = config.seq_len_interpolation_factor
    print(f"imported {directory} -> {out} (tp {options.tp}, ep {options.ep}"
          + (f", linear RoPE x{linear:g}" if linear else "")
          + (", sequence parallel: MoE under TP" if config.model == "moe" and options.tp > 1
             else "")
          + f"); continue with: megatron-power pretrain --resume {out}")  # fmt: skip
    return config


def run_config_of(
    hf: dict[str, Any], options: ImportOptions, run_fields: dict[str, Any], out: Path
) -> PretrainConfig:
    """The run that continues the model: its shape, norms, RoPE, muP and router from the
    resolved config (transformers' defaults included), data and schedule from the flags."""
    from .granite import rope_of, shape_of

    shape = shape_of(hf)
    moe = shape.num_experts is not None
    theta, linear_factor = rope_of(hf)
    # transformers trains with the router loss only when it outputs router logits
    router_loss = moe and hf["output_router_logits"]
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
        moe_aux_loss_coeff=hf["router_aux_loss_coef"] if router_loss else 0.0,
        attention_dropout=hf["attention_dropout"],  # Granite 3.0 trains with 0.1
        num_query_groups=shape.num_query_groups,
        rotary_base=int(theta) if theta.is_integer() else theta,
        seq_len_interpolation_factor=linear_factor,
        norm_epsilon=hf["rms_norm_eps"],
        share_embeddings=shape.tied,
        model_vocab_size=hf["vocab_size"],
        make_vocab_size_divisible_by=options.make_vocab_size_divisible_by,
        seq_length=options.seq_length or hf["max_position_embeddings"],
        init_method_std=hf["initializer_range"],
        nproc=options.tp * options.ep,
        tensor_model_parallel_size=options.tp,
        expert_model_parallel_size=options.ep,
        mup=mup_from_granite(hf, options.mup_base_hidden_size),
        **run_fields,
    )
    if config.data == "markov":
        config.vocab_size = hf["vocab_size"]
    return config


def source_tokenizer(directory: Path) -> Path | None:
    """The model's tokenizer file: SentencePiece's tokenizer.model or a Hugging Face
    tokenizer.json (both tokenize text for pretrain)."""
    for name in ("tokenizer.model", "tokenizer.json"):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def check_tokenizer(path: Path, vocab_size: int) -> None:
    """A tokenizer whose ids the model has rows for (checked before anything is written)."""
    from ..data.text import load_tokenizer

    if not path.is_file():
        raise ValueError(f"--tokenizer-model: no such file: {path}")
    _, size, _ = load_tokenizer(path)
    if size > vocab_size:
        raise ValueError(
            f"--tokenizer-model: {path.name} has {size} tokens, more than the model's "
            f"vocab_size {vocab_size}"
        )


def copy_model_files(directory: Path, destination: Path) -> None:
    """Everything of the model directory but its weights (config.json, generation config,
    tokenizer files): what export writes back unchanged."""
    destination.mkdir(parents=True)
    for path in sorted(Path(directory).iterdir()):
        if (
            path.is_file()
            and not path.name.endswith(WEIGHT_SUFFIXES)
            and (not path.name.endswith(".index.json"))
        ):
            shutil.copyfile(path, destination / path.name)


def write_run_checkpoint(
    directory: Path, run: RunDir, config: PretrainConfig, options: ImportOptions, shape: Any
) -> None:
    """iter_0000000 of the run: every rank's shard, vocabulary padded as the run pads it;
    the source's weight dtype is recorded so export can write it back bit for bit."""
    import torch

    from ..training.model import padded_vocab_size
    from .granite import from_granite
    from .shards import split_state_dict

    tensors = read_hf_tensors(directory)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    full = from_granite({name: t.float() for name, t in tensors.items()}, shape)
    vocab = config.model_vocab_size
    rows = full["embedding.word_embeddings.weight"].shape[0]
    if rows != vocab:
        raise ValueError(f"DIR: model.embed_tokens.weight has {rows} rows; vocab_size is {vocab}")
    full = pad_vocabulary(full, padded_vocab_size(vocab, config))
    config.extra = {"imported_from": str(directory.resolve()), "source_dtypes": dtypes}
    path = run.checkpoint(0)
    path.mkdir(parents=True)
    experts = config.num_experts if config.model == "moe" else None
    for place, local in split_state_dict(full, options.tp, options.ep, experts):
        state = {"iteration": 0, "model": local, "parallel": place,
                 "imported_from": str(directory.resolve())}  # fmt: skip
        torch.save(state, rank_file(path, place["rank"]))
    run.write_latest(0)


def pad_vocabulary(full: dict, rows: int) -> dict:
    """Embedding and readout with zero rows up to ``rows`` (Megatron's padding)."""
    import torch

    padded = dict(full)
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if name in padded:
            weight = padded[name]
            extra = rows - weight.shape[0]
            padded[name] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    return padded


def unpad_vocabulary(full: dict, rows: int) -> dict:
    """The model's own rows of the embedding and readout (padding removed)."""
    vocabulary = ("embedding.word_embeddings.weight", "output_layer.weight")
    return {name: tensor[:rows] if name in vocabulary else tensor for name, tensor in full.items()}


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


def write_megatron_lm_release(run: RunDir, config: PretrainConfig, options: ImportOptions) -> None:
    """A 'release' checkpoint in Megatron-LM's torch format: iter 'release', one
    mp_rank_TT[_EEE]/model_optim_rng.pt per model-parallel rank, weights only (Megatron-LM
    skips optimizer and RNG state for a release), vocabulary padded as Megatron-LM pads it
    (the run's padding: --make-vocab-size-divisible-by x --tp)."""
    import torch

    from .shards import gather_state_dict, read_rank_files, split_state_dict

    full = gather_state_dict(read_rank_files(run.checkpoint(0)))
    moe = config.model == "moe"
    experts = config.num_experts if moe else None
    root = Path(options.megatron_lm_dir)
    for place, local in split_state_dict(full, options.tp, options.ep, experts):
        path = megatron_lm_release_file(root, place["tp_rank"], place["ep_rank"], options.ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": megatron_lm_names(local, options.transformer_impl != "local", moe),
                 "checkpoint_version": 3.0, "iteration": 0}  # fmt: skip
        torch.save(state, path)
    megatron_lm_tracker(root).write_text("release")
    print(f"Megatron-LM checkpoint: {root} (pretrain_gpt.py --load {root} --ckpt-format torch "
          f"--transformer-impl {options.transformer_impl} "
          f"--tensor-model-parallel-size {options.tp} "
          f"--expert-model-parallel-size {options.ep} "
          f"--make-vocab-size-divisible-by {options.make_vocab_size_divisible_by})")  # fmt: skip
