"""Batch-size schedules, as Megatron-LM defines them; the Power LR reads the batch in force.

Two forms exist. ``--rampup-batch-size START INCREMENT SAMPLES`` (Megatron-LM up to 0.17;
deprecated and ignored from 0.18) and, from 0.18, ``--step-batch-size-schedule
"0:768 250B:1536 500B:3072"``: batch sizes by thresholds in tokens when the sequence
length is known (else samples), with suffixes K, M, B, T. The plugin follows the step
schedule itself where a Megatron-LM release lacks it, and in its own tools.

    >>> schedule = parse_step_batch_schedule("0:2 1K:4 2K:8", seq_length=64)
    >>> schedule
    ((0, 2), (15, 4), (31, 8))
    >>> [step_batch_size_at(samples, schedule) for samples in (0, 14, 15, 31)]
    [2, 2, 4, 8]
"""

from __future__ import annotations

import functools
import itertools
import math

FLAG = "--step-batch-size-schedule"
_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def _count(text: str, entry: str) -> int:
    """Megatron's reading of a number with an optional K/M/B/T suffix."""
    value = text.strip().upper()
    multiplier = _SUFFIXES.get(value[-1:], 1)
    if multiplier != 1:
        value = value[:-1]
    try:
        number = float(value) * multiplier
    except ValueError:
        raise ValueError(f"{FLAG}: {entry!r} is not THRESHOLD:BATCH_SIZE (K/M/B/T)") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{FLAG}: {entry!r} needs finite counts >= 0")
    return int(number)


@functools.lru_cache(maxsize=32)
def parse_step_batch_schedule(text: str, seq_length: int | None) -> tuple[tuple[int, int], ...]:
    """``((threshold_samples, batch_size), ...)`` from the flag's value, exactly as
    Megatron-LM 0.18+ reads it (tokens -> samples by floor division); refused in one line
    where Megatron would assert. Cached: callers ask once per step (the result is immutable)."""
    entries = text.strip().replace(",", " ").split()
    if not entries:
        raise ValueError(f'{FLAG}: give "THRESHOLD:BATCH_SIZE ...", e.g. "0:768 250B:1536"')
    schedule = []
    for entry in entries:
        threshold, colon, batch = entry.partition(":")
        if not colon:
            raise ValueError(f"{FLAG}: {entry!r} is not THRESHOLD:BATCH_SIZE")
        samples = _count(threshold, entry)
        if seq_length:
            samples //= seq_length
        size = _count(batch, entry)
        if size < 1:
            raise ValueError(f"{FLAG}: {entry!r}: batch sizes must be >= 1")
        schedule.append((samples, size))
    schedule.sort(key=lambda pair: pair[0])
    if schedule[0][0] != 0:
        raise ValueError(f"{FLAG}: the first threshold must be 0, got {entries[0]!r}")
    for (before, _), (after, _) in itertools.pairwise(schedule):
        if after <= before:
            unit = "samples" if seq_length else "thresholds"
            raise ValueError(f"{FLAG}: thresholds must increase ({unit} {before}, then {after})")
    return tuple(schedule)


def step_batch_size_at(samples: int, schedule: tuple[tuple[int, int], ...]) -> int:
    """The global batch size in force once ``samples`` have been consumed."""
    size = schedule[0][1]
    for threshold, batch in schedule:
        if samples < threshold:
            break
        size = batch
    return size


def rampup_batch_size_at(samples: int, global_batch_size: int, rampup: list[int] | None) -> int:
    """The global batch size in force after ``samples``, by Megatron's ramp-up rule:
    START + floor(consumed / (SAMPLES / steps)) * INCREMENT, capped at the global batch."""
    if not rampup:
        return global_batch_size
    start, increment, ramp_samples = rampup
    steps = (global_batch_size - start) // increment
    if steps <= 0:
        return global_batch_size
    samples_per_increment = ramp_samples / steps
    current = start + int(samples // samples_per_increment) * increment
    return min(current, global_batch_size)


def iterations_for(samples: int, batch_at) -> int:
    """Iterations to consume ``samples`` when iteration i takes ``batch_at(consumed)``
    (Megatron-LM's ``update_train_iters`` for a step schedule)."""
    iterations = consumed = 0
    while consumed < samples:
        consumed += batch_at(consumed)
        iterations += 1
    return iterations
