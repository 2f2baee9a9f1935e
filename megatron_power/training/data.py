"""The run's data: tokens written once as a Megatron indexed dataset, read by GPTDataset.

The validation set is fixed per data set: the same sequences for every run of it, whatever
its length or seed, so final losses of runs compare (``megatron-power predict`` fits them).
The synthetic source's validation stream is its own file, sampled with its own seed; a text
file's is Megatron's validation split, read in one fixed order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.indexed import build_gpt_datasets, read_meta, write_indexed, write_meta
from ..data.markov import MarkovSource
from .config import PretrainConfig
from .rundir import RunDir


def data_prefix(config: PretrainConfig) -> Path:
    """Where the run's tokens live; a branch run shares its trunk's."""
    directory = config.path(config.data_dir) if config.data_dir else RunDir(config.run_dir).data
    return directory / "tokens"


#: The validation set's shuffle seed (not the run's: every seed evaluates the same sequences).
VALID_SEED = 0
#: The synthetic validation stream's seed, past the training stream's (markov_seed + 1).
MARKOV_VALID_SEED_OFFSET = 2


def valid_prefix(config: PretrainConfig) -> Path:
    """The synthetic source's validation tokens, beside the training tokens."""
    return data_prefix(config).with_name("valid")


def valid_sequences(config: PretrainConfig) -> int:
    return max(1, config.eval_tokens // config.seq_length)


def prepare_data(config: PretrainConfig, run_dir: Path) -> dict[str, Any]:
    """Write the run's tokens as an indexed dataset once (rank 0); return its metadata."""
    prefix = data_prefix(config)
    if dist.get_rank() == 0 and config.data == "markov":
        prepare_markov_validation(config)
    if dist.get_rank() == 0 and not Path(f"{prefix}.json").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        if config.data == "markov":
            source = MarkovSource(
                config.vocab_size, config.markov_seed, config.markov_concentration
            )
            needed = int((config.train_tokens + 4 * config.eval_tokens) * 1.15)
            needed += 10 * config.seq_length
            stream = source.sample(needed, seed=config.markov_seed + 1)
            # Documents of 8 sequences, so Megatron's document-level split has many.
            size = 8 * config.seq_length
            documents = [stream[i : i + size] for i in range(0, len(stream), size)]
            meta = {
                "source": "markov",
                "vocab_size": config.vocab_size,
                "eod": config.vocab_size - 1,
                "entropy_rate": source.entropy_rate(),
                "unigram_entropy": source.unigram_entropy(),
            }
        else:
            from ..data.text import tokenize_text

            documents, meta = tokenize_text(config, run_dir, prefix.parent)
        write_indexed(prefix, documents, meta["vocab_size"])
        write_meta(prefix, meta)
    dist.barrier()
    return read_meta(prefix)


def prepare_markov_validation(config: PretrainConfig) -> None:
    """The synthetic validation stream: exactly the sequences evaluated (a run written
    before this file existed gets it at its next launch or ``megatron-power evaluate``)."""
    prefix = valid_prefix(config)
    if Path(f"{prefix}.json").exists():
        return
    prefix.parent.mkdir(parents=True, exist_ok=True)
    source = MarkovSource(config.vocab_size, config.markov_seed, config.markov_concentration)
    stream = source.sample(valid_sequences(config) * config.seq_length + 1,
                           seed=config.markov_seed + MARKOV_VALID_SEED_OFFSET)  # fmt: skip
    size = 8 * config.seq_length
    write_indexed(prefix, [stream[i : i + size] for i in range(0, len(stream), size)],
                  config.vocab_size)  # fmt: skip
    write_meta(prefix, {"source": "markov validation", "vocab_size": config.vocab_size,
                        "eod": config.vocab_size - 1})  # fmt: skip


def build_datasets(config: PretrainConfig, meta: dict[str, Any]):
    """(train, valid): the training order follows the run's seed, the validation set not."""
    prefix = data_prefix(config)
    train_set, valid_set = build_gpt_datasets(prefix, config.seq_length, 1, 1, config.seed, meta)
    if config.data == "markov":
        _, valid_set = build_gpt_datasets(valid_prefix(config), config.seq_length, 0, 1,
                                          VALID_SEED, meta, split="0,100,0")  # fmt: skip
    elif config.seed != VALID_SEED:
        _, valid_set = build_gpt_datasets(prefix, config.seq_length, 1, 1, VALID_SEED, meta)
    return train_set, valid_set


def get_batch(dataset, first: int, count: int, device: torch.device) -> dict[str, torch.Tensor]:
    samples = [dataset[(first + i) % len(dataset)] for i in range(count)]
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}
