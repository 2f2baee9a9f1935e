"""Import-time notices from Megatron-Core and torch that are expected on a machine without
Transformer Engine, apex or absl; silenced so that a one-line error stays one line."""

from __future__ import annotations

import logging
import warnings


def quiet() -> None:
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*absl.logging is not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    warnings.filterwarnings("ignore", message=".*full scope is deprecated.*")
    # GPTDataset's note for a tokenizer without its own pad id (ours: the markov source's)
    warnings.filterwarnings("ignore", message=".*pad token id in the tokenizer collides.*")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
