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

from . import (  # noqa: E402
    coord_check,
    evaluate,
    hf,
    mup_audit,
    mup_tune,
    predict,
    pretrain,
    schedule,
    sweep,
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="megatron-power",
        description="Power LR scheduler, WSD family and muP for Megatron-Core.",
    )
    subparsers = parser.add_subparsers(dest="tool", required=True, parser_class=OneLineErrorParser)
    pretrain.add_parser(subparsers)
    coord_check.add_parser(subparsers)
    mup_audit.add_parser(subparsers)
    mup_tune.add_parser(subparsers)
    schedule.add_parser(subparsers)
    predict.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    sweep.add_parsers(subparsers)
    hf.add_parsers(subparsers)
    for command in subparsers.choices.values():
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def tool_parser(parser: argparse.ArgumentParser, tool: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[tool]  # type: ignore[union-attr]


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with an unknown flag reported by the tool's parser (its name first)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        tool_parser(parser, args.tool).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line set itself (not argparse defaults): a resume compares
    only what the user asked for."""
    actions = parser._actions
    defaults = [action.default for action in actions]
    try:
        for action in actions:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in zip(actions, defaults, strict=True):
            action.default = default
    return set(vars(namespace)) - set(parser._defaults)


#: Flags that take several occurrences by design (--sbatch-option, --help).
REPEATABLE = (argparse._AppendAction, argparse._CountAction, argparse._HelpAction,
              argparse._VersionAction, argparse._SubParsersAction)  # fmt: skip


def repeated_flag(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """One line for the first flag ``argv`` gives twice with different values, else None:
    argparse keeps the last value, so the first would be silently ignored."""
    seen: dict[str, tuple[str, object]] = {}
    repeats: list[str] = []
    swapped = []

    def recording(cls: type) -> type:
        class Recording(cls):  # type: ignore[misc, valid-type]
            def __call__(self, parser, namespace, values, option_string=None):
                if self.dest in seen and seen[self.dest][1] != values and not repeats:
                    first, before = seen[self.dest]
                    repeats.append(f"{option_string}: given twice ({first} {before}, then "
                                   f"{option_string} {values}); give it once")  # fmt: skip
                seen.setdefault(self.dest, (option_string, values))
                super().__call__(parser, namespace, values, option_string)

        return Recording

    try:
        for action in parser._actions:
            if action.option_strings and not isinstance(action, REPEATABLE):
                swapped.append((action, type(action)))
                action.__class__ = recording(type(action))
        parser.parse_known_args(argv)
    finally:
        for action, cls in swapped:
            action.__class__ = cls
    return repeats[0] if repeats else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse(parser, argv)
    repeated = repeated_flag(tool_parser(parser, args.tool), argv[argv.index(args.tool) + 1 :])
    if repeated:  # the user's own flags (the embedded default below may be overridden)
        tool_parser(parser, args.tool).error(repeated)
    if getattr(args, "lr", "") is None and hasattr(args, "embedded_default"):
        # No schedule given: run the tool's embedded default, keeping the user's other flags.
        command_index = argv.index(args.tool)
        argv = argv[: command_index + 1] + args.embedded_default + argv[command_index + 1 :]
        args = parse(parser, argv)
    command_parser = tool_parser(parser, args.tool)
    args.given = given_flags(command_parser, argv[argv.index(args.tool) + 1 :])
    prefix = f"megatron-power {args.tool}"
    try:
        return args.handler(args)
    except ValueError as error:
        if args.debug:
            raise
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"{prefix}: stopped: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an unwritable or missing path the user named
        if args.debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prefix}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours: one line, the traceback with --debug
        if args.debug:
            raise
        print(
            f"{prefix}: internal error: {type(error).__name__}: {error} (rerun with --debug "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
