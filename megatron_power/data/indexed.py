"""Write token documents as a Megatron-Core indexed dataset and read it back as GPTDatasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class PlainTokenizer:
    """What megatron.core.datasets asks of a tokenizer: ids for end-of-document and pad."""

    def __init__(self, vocab_size: int, eod: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = eod
        self.unique_identifiers = {"class": "PlainTokenizer", "vocab_size": vocab_size, "eod": eod}


def write_indexed(prefix: Path, documents: list[np.ndarray], vocab_size: int) -> None:
    """``prefix``.bin/.idx in Megatron-Core's indexed format."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = np.uint16 if vocab_size < 65_500 else np.int32
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for document in documents:
        builder.add_document(torch.from_numpy(document.astype(np.int64)), [len(document)])
    builder.finalize(f"{prefix}.idx")


def write_meta(prefix: Path, meta: dict[str, Any]) -> None:
    Path(f"{prefix}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(prefix: Path) -> dict[str, Any]:
    return json.loads(Path(f"{prefix}.json").read_text())


#: Megatron's document-level split of the run's tokens: training, validation, test.
SPLIT = "95,5,0"


def check_enough_tokens(prefix: Path, seq_length: int) -> None:
    """Each split needs one sequence (seq_length + 1 tokens): with less, Megatron's
    GPTDataset loops for ever looking for a first sample. Split as its builder splits."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))  # its lengths are a view of its memory map:
    lengths = [int(length) for length in dataset.sequence_lengths]  # copy while it is open
    del dataset
    count = len(lengths)
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(SPLIT))
    for name, bounds in zip(("training", "validation"), matrix, strict=False):
        begin, end = round(bounds[0] * count), round(bounds[1] * count)
        tokens = sum(lengths[begin:end])
        if tokens < seq_length + 1:
            raise ValueError(
                f"--data: its {name} split ({SPLIT.replace(',', '/')} of {count} documents) "
                f"holds {tokens} tokens, less than one sequence of --seq-length {seq_length} "
                "+ 1: give more documents or a shorter --seq-length"
            )


def build_gpt_datasets(
    prefix: Path,
    seq_length: int,
    train_samples: int,
    valid_samples: int,
    seed: int,
    meta: dict,
    split: str = SPLIT,
):
    """(train, valid) GPTDatasets through megatron.core.datasets' own builder (a split
    with no training part gives train None)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([str(prefix)], None),
        split=split,
        path_to_cache=str(Path(prefix).parent / "cache"),
        tokenizer=PlainTokenizer(meta["vocab_size"], meta["eod"]),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, config
    ).build()
    return train, valid
