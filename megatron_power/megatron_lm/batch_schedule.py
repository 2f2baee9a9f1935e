"""``--step-batch-size-schedule`` on Megatron-LM releases that lack it (0.14-0.17).

Megatron-LM 0.18 added the flag (and deprecated ``--rampup-batch-size``); on older trees
the plugin adds it and follows it with Megatron's own seams: the global microbatch
calculator (replaced after Megatron builds its constant one) and ``update_train_iters``
(the iterations a sample-based run needs). The schedule is read exactly as 0.18 reads it
(megatron_power.schedules.batch), so a run moves between lines unchanged.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..arguments import batch_schedule_from_args
from ..schedules.batch import FLAG, iterations_for, parse_step_batch_schedule, step_batch_size_at

#: set on the parsed arguments when the plugin, not the tree, defines the flag
BY_PLUGIN = "megatron_power_step_batch_schedule"


def add_flag_where_missing(parser: argparse.ArgumentParser) -> None:
    """Add the flag to a tree that predates it (Megatron-LM < 0.18)."""
    if any(FLAG in action.option_strings for action in parser._actions):
        return
    parser.add_argument(
        FLAG, type=str, default=None,
        help='Global batch size by tokens seen, e.g. "0:768 250B:1536" (Megatron-LM 0.18 '
        "semantics; followed by megatron-power on this older tree).",
    )  # fmt: skip
    parser.set_defaults(**{BY_PLUGIN: True})


def followed_by_plugin(args: argparse.Namespace) -> bool:
    return bool(getattr(args, BY_PLUGIN, False)) and args.step_batch_size_schedule is not None


def prepare(args: argparse.Namespace) -> None:
    """Before Megatron's checks: the schedule read as 0.18 reads it (one line where Megatron
    asserts); on older trees also what 0.18 refuses, and Megatron gets the schedule's final
    batch as its global batch size (it then builds a constant calculator, replaced later)."""
    if getattr(args, "step_batch_size_schedule", None) is None:
        return
    if followed_by_plugin(args):
        batch_schedule_from_args(args)
    else:  # the tree's own (0.18+)
        parse_step_batch_schedule(args.step_batch_size_schedule, args.seq_length)


class StepScheduleCalculator:
    """A Megatron NumMicroBatchesCalculator following the step schedule (duck-typed to the
    base class of every release: get, get_current_global_batch_size, ..., update)."""

    def __init__(self, schedule: tuple[tuple[int, int], ...], micro_batch_size: int,
                 data_parallel_size: int) -> None:  # fmt: skip
        self.schedule = schedule
        self.micro_batch_size = micro_batch_size
        self.micro_times_dp = micro_batch_size * data_parallel_size
        self.global_batch_size = schedule[-1][1]
        self.update(0, consistency_check=False)

    def update(self, consumed_samples: int, consistency_check: bool, verbose: bool = False) -> None:
        size = step_batch_size_at(consumed_samples, self.schedule)
        if consistency_check and size % self.micro_times_dp:
            raise ValueError(
                f"{FLAG}: batch {size} (after {consumed_samples} samples) is not divisible by "
                f"micro batch x data parallel = {self.micro_times_dp}"
            )
        self.current_global_batch_size = size
        self.current_running_global_batch_size = size
        self.num_micro_batches = size // self.micro_times_dp

    def get(self) -> int:
        return self.num_micro_batches

    def get_current_global_batch_size(self) -> int:
        return self.current_global_batch_size

    def get_micro_batch_size(self) -> int:
        return self.micro_batch_size

    def get_current_running_global_batch_size(self) -> int:
        return self.current_running_global_batch_size


def with_step_calculator(init_calculator: Callable, get_args: Callable) -> Callable:
    """Wrap ``init_num_microbatches_calculator``: install the step-schedule calculator."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = init_calculator(*args, **kwargs)
        megatron_args = get_args()
        if followed_by_plugin(megatron_args):
            from megatron.core import num_microbatches_calculator as calculators

            schedule = parse_step_batch_schedule(
                megatron_args.step_batch_size_schedule, megatron_args.seq_length
            )
            calculators._GLOBAL_NUM_MICROBATCHES_CALCULATOR = StepScheduleCalculator(
                schedule, megatron_args.micro_batch_size, megatron_args.data_parallel_size
            )
            if megatron_args.rank == 0:
                print(f"megatron-power: following {FLAG} {schedule} (samples)", flush=True)
        return result

    return wrapped


def with_train_iters(update_train_iters: Callable) -> Callable:
    """Wrap ``update_train_iters``: a sample-based run under the schedule needs as many
    iterations as it takes to consume --train-samples (0.18's own rule)."""

    def wrapped(args: argparse.Namespace) -> None:
        if followed_by_plugin(args) and not args.train_iters:
            schedule = parse_step_batch_schedule(args.step_batch_size_schedule, args.seq_length)
            args.train_iters = iterations_for(
                args.train_samples, lambda consumed: step_batch_size_at(consumed, schedule)
            )
            return
        update_train_iters(args)

    return wrapped


def install(replace_everywhere: Callable, get_args: Callable) -> None:
    """Attach to the tree's calculator and ``update_train_iters`` (inert on 0.18+)."""
    import megatron.core.num_microbatches_calculator as calculators
    import megatron.training.training as training

    replace_everywhere(
        calculators.init_num_microbatches_calculator,
        with_step_calculator(calculators.init_num_microbatches_calculator, get_args),
    )
    training.update_train_iters = with_train_iters(training.update_train_iters)
