"""Entry for torchrun: ``python -m megatron_power.training.worker CONFIG
[--init-from CHECKPOINT] [--override-schedule] [--evaluate]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import notices


def main() -> None:
    notices.quiet()
    import torch.distributed as dist

    from ..errors import TrainingDiverged
    from .config import PretrainConfig
    from .loop import evaluate_finished, train

    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--init-from", type=Path, default=None)
    parser.add_argument("--override-schedule", action="store_true")
    parser.add_argument("--evaluate", action="store_true", help="the finished run's final loss")
    args = parser.parse_args()
    config = PretrainConfig.load(args.config)
    try:
        if args.evaluate:
            evaluate_finished(config)
        else:
            train(config, args.init_from, override_schedule=args.override_schedule)
    except (TrainingDiverged, ValueError) as error:  # one line, not a traceback per rank
        if dist.get_rank() == 0:
            word = "stopped" if isinstance(error, TrainingDiverged) else "error"
            print(f"megatron-power pretrain: {word}: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, TrainingDiverged) else 2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
