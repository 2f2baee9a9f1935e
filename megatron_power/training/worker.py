"""Entry for torchrun: ``python -m megatron_power.training.worker CONFIG [INIT_FROM]``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import notices


def main() -> None:
    notices.quiet()
    import torch.distributed as dist

    from .config import PretrainConfig
    from .loop import train

    config = PretrainConfig.load(Path(sys.argv[1]))
    init_from = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    train(config, init_from)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
