"""The ``megatron-power`` command: one subcommand per tool.

Every usage error is one line on stderr and exit status 2, before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import notices
from ..errors import TrainingDiverged

notices.quiet()

from . import coord_check, hf, mup_audit, pretrain, schedule, sweep  # noqa: E402


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="megatron-power",
        description="Power LR scheduler, WSD family and muP for Megatron-Core.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, parser_class=OneLineErrorParser
    )
    pretrain.add_parser(subparsers)
    coord_check.add_parser(subparsers)
    mup_audit.add_parser(subparsers)
    schedule.add_parser(subparsers)
    sweep.add_parsers(subparsers)
    hf.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "lr", "") is None and hasattr(args, "embedded_default"):
        # No schedule given: run the tool's embedded default, keeping the user's other flags.
        command_index = argv.index(args.command)
        argv = argv[: command_index + 1] + args.embedded_default + argv[command_index + 1 :]
        args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"megatron-power {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"megatron-power {args.command}: stopped: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
