"""``megatron-power export-hf`` / ``import-hf``: Granite-format models in and out.

megatron-power export-hf runs/default hf/my-model        # latest checkpoint of a run
megatron-power import-hf hf/my-model runs/continued --tp 2
megatron-power pretrain --resume runs/continued          # train on with Power
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .pretrain import add_data_and_schedule_arguments, data_and_schedule_fields


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export-hf",
        help="Write a run's checkpoint as a transformers Granite / GraniteMoE model.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("checkpoint", metavar="CKPT", help="a run directory or its iter_N")
    export.add_argument("out", metavar="OUT", help="the transformers model directory to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
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


def run_export(args: argparse.Namespace) -> int:
    from ..hf.convert import export_granite

    export_granite(Path(args.checkpoint), Path(args.out), overwrite=args.overwrite)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..hf.convert import ImportOptions, import_granite

    options = ImportOptions(
        tp=args.tp,
        ep=args.ep,
        mup_base_hidden_size=args.mup_base_hidden_size,
        seq_length=args.seq_length,
        megatron_lm_dir=args.megatron_lm_dir,
        transformer_impl=args.transformer_impl,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
    )
    import_granite(Path(args.directory), Path(args.out), options, data_and_schedule_fields(args))
    return 0
