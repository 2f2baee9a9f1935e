"""The run's data: tokens written once as a Megatron indexed dataset, read by GPTDataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.indexed import read_meta, write_indexed, write_meta
from ..data.markov import MarkovSource
from .config import PretrainConfig
from .rundir import RunDir


def data_prefix(config: PretrainConfig) -> Path:
    """Where the run's tokens live; a branch run shares its trunk's."""
    directory = config.path(config.data_dir) if config.data_dir else RunDir(config.run_dir).data
    return directory / "tokens"


def prepare_data(config: PretrainConfig, run_dir: Path) -> dict[str, Any]:
    """Write the run's tokens as an indexed dataset once (rank 0); return its metadata."""
    prefix = data_prefix(config)
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


def get_batch(dataset, first: int, count: int, device: torch.device) -> dict[str, torch.Tensor]:
    samples = [dataset[(first + i) % len(dataset)] for i in range(count)]
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}
