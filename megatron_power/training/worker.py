"""Entry for torchrun: ``python -m megatron_power.training.worker CONFIG [INIT_FROM]``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import notices


def main() -> None:
    notices.quiet()
    import torch.distributed as dist

    from ..errors import TrainingDiverged
    from .config import PretrainConfig
    from .loop import train

    config = PretrainConfig.load(Path(sys.argv[1]))
    init_from = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        train(config, init_from)
    except (TrainingDiverged, ValueError) as error:  # one line, not a traceback per rank
        if dist.get_rank() == 0:
            word = "stopped" if isinstance(error, TrainingDiverged) else "error"
            print(f"megatron-power pretrain: {word}: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, TrainingDiverged) else 2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
