"""Proxy LR sweeps: a grid of runs, each a command, each result a file.

A sweep directory holds ``sweep.json`` (the grid and the command template),
``results/<run id>.json`` (one per finished run, written atomically, status ok,
failed with the log's tail, or interrupted), ``logs/<run id>.log`` and ``results.jsonl``
(every record, collected). A finished run is never redone; a failed one is kept, and
rerun only when asked; an interrupted one (killed by a signal) is run again by the next
sweep, from its checkpoint where it has one. The sweep directory, and each run, is
locked while in use; each command runs under :mod:`.guard`, so nothing it starts
outlives it or the sweep. Locally the runs are processes on a thread pool (one per GPU,
or CPU cores / threads per run); with SLURM each is one task of a job array running
``megatron-power sweep --task-index $SLURM_ARRAY_TASK_ID`` on the shared filesystem.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

from ..files import DirectoryLock, atomic_write_text
from ..schedules.settings import default_decay_shape
from ..training.rundir import RunDir

#: Megatron-LM's evaluation line (training.py evaluate_and_print_results), which
#: ``megatron-power pretrain`` prints too: `` validation loss at iteration 100 on
#: validation set | lm loss value: 2.451234E+00 | lm loss PPL: ...``.
VALIDATION_LOSS = re.compile(
    r"validation loss at iteration\s+(?P<iteration>\d+)(?P<where>[^|]*)\|\s*lm loss value:\s*"
    r"(?P<loss>[-+0-9.eEnaNinf]+)"
)

#: The default proxy: ``megatron-power pretrain`` with WSD (exponential_e decay).
PRETRAIN_TEMPLATE = (
    "{python} -m megatron_power.cli.main pretrain --run-dir {run_dir} --lr-decay-style WSD "
    "--lr {lr} --train-tokens {train_tokens} --global-batch-size {global_batch_size} "
    "--seq-length {seq_length} --hidden-size {hidden_size} --seed {seed} "
    "--warmup-tokens {warmup_tokens} --decay-tokens {decay_tokens} --decay-shape {decay_shape}"
)


#: A run whose command was killed by a signal (kill -9, the OOM killer, a stopped job)
#: did not fail on its own: the next sweep runs it again (resuming from its checkpoint).
INTERRUPTED = "interrupted"
KILLED = {128 + 9, 128 + 15, 128 + 2}  # SIGKILL, SIGTERM, SIGINT, as the guard reports them


#: A grid axis, its flag, and the template placeholders that pass it on: an axis with more
#: than one value that the command does not name would give identical runs.
GRID_AXES = (
    ("lrs", "--lrs", ("lr",)),
    ("global_batch_sizes", "--global-batch-sizes", ("global_batch_size",)),
    ("train_tokens", "--train-tokens", ("train_tokens", "train_iters", "train_samples")),
    ("hidden_sizes", "--hidden-sizes", ("hidden_size",)),
    ("seeds", "--seeds", ("seed",)),
)


@dataclass
class SweepSpec:
    """The grid and how to run one cell of it (saved as sweep.json)."""

    lrs: list[float]
    global_batch_sizes: list[int]
    train_tokens: list[int]
    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    seeds: list[int] = field(default_factory=lambda: [0])
    seq_length: int = 128
    warmup_fraction: float = 0.02
    decay_fraction: float = 0.2
    # the proxies' WSD decay shape: Power's default tail, so the fit sees the tail it serves
    decay_shape: str = default_decay_shape("power").value
    template: str = PRETRAIN_TEMPLATE
    extra_args: str = ""  # appended to the command (e.g. pretrain flags)

    def runs(self) -> list[dict[str, Any]]:
        """Every run's parameters, in a fixed order (the SLURM array index is the position)."""
        grid = itertools.product(self.train_tokens, self.global_batch_sizes, self.hidden_sizes,
                                 self.lrs, self.seeds)  # fmt: skip
        return [
            {
                "lr": lr,
                "global_batch_size": batch,
                "train_tokens": tokens,
                "hidden_size": hidden,
                "seed": seed,
                "seq_length": self.seq_length,
            }
            for tokens, batch, hidden, lr, seed in grid
        ]

    def validate(self) -> None:
        for name in ("lrs", "global_batch_sizes", "train_tokens", "hidden_sizes", "seeds"):
            values = getattr(self, name)
            flag = f"--{name.replace('_', '-')}"
            if not values:
                raise ValueError(f"{flag}: give at least one value")
            for value in values:
                if not math.isfinite(value) or (value <= 0 if name != "seeds" else value < 0):
                    allowed = ">= 0" if name == "seeds" else "finite and > 0"
                    raise ValueError(f"{flag}: values must be {allowed}, got {value}")
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{flag}: {repeated[0]} is given twice (each run once)")
        if self.seq_length < 1:
            raise ValueError(f"--seq-length: must be >= 1, got {self.seq_length}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"--warmup-fraction: must lie in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"--decay-fraction: must lie in [0, 1], got {self.decay_fraction}")
        for run in self.runs():
            if run["train_tokens"] < run["global_batch_size"] * self.seq_length:
                raise ValueError(
                    f"--train-tokens: {run['train_tokens']} is shorter than one step of "
                    f"--global-batch-sizes {run['global_batch_size']} x --seq-length "
                    f"{self.seq_length}"
                )
        command(self, self.runs()[0], Path("RUN_DIR"))  # unknown placeholders fail here
        words = {}
        for flag, text in (("--command", self.template), ("--extra-args", self.extra_args)):
            try:
                words[flag] = shlex.split(text)
            except ValueError as error:  # an unbalanced quote
                raise ValueError(f"{flag}: {error} in {text!r}") from None
        set_by_template = {w.split("=")[0] for w in words["--command"] if w.startswith("--")}
        extra = flag_values(words["--extra-args"])
        given: dict[str, list[str]] = {}
        for flag, values in extra:
            if given.setdefault(flag, values) != values:
                raise ValueError(
                    f"--extra-args: {flag} is given twice ({' '.join(given[flag])}, then "
                    f"{' '.join(values)}; the run would take the last); give it once"
                )
        for flag, _ in extra:
            if flag in set_by_template:
                raise ValueError(
                    f"--extra-args: {flag} is set by the command template already "
                    "(the run would take whichever comes last); set it through the sweep's own "
                    "flags or --command"
                )
        named = {field for _, field, _, _ in string.Formatter().parse(self.template) if field}
        for axis, flag, fields in GRID_AXES:
            if len(getattr(self, axis)) > 1 and not named & set(fields):
                raise ValueError(
                    f"{flag}: {len(getattr(self, axis))} values, but --command names none of "
                    f"{', '.join('{' + f + '}' for f in fields)}: every run would be the same"
                )


def flag_values(words: list[str]) -> list[tuple[str, list[str]]]:
    """Each flag of a command line's ``words`` with its values, in order: ``--flag=v``, or
    the words up to the next flag."""
    out = []
    for index, word in enumerate(words):
        if word.startswith("--"):
            flag, _, inline = word.partition("=")
            following = itertools.takewhile(lambda w: not w.startswith("--"), words[index + 1 :])
            out.append((flag, [inline] if inline else list(following)))
    return out


def lr_label(lr: float) -> str:
    """The LR as a run id spells it: 6 significant digits where that is exact (the ids of
    earlier sweeps), the shortest exact form otherwise (0.0100001 and 0.01000012 differ)."""
    short = f"{lr:g}"
    return short if float(short) == lr else repr(float(lr))


def run_id(run: dict[str, Any]) -> str:
    return (f"t{run['train_tokens']}-b{run['global_batch_size']}-h{run['hidden_size']}"
            f"-lr{lr_label(run['lr'])}-s{run['seed']}")  # fmt: skip


def placeholders(spec: SweepSpec, run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything a command template may name: tokens, and Megatron-LM's samples and iters."""
    batch_tokens = run["global_batch_size"] * run["seq_length"]
    iters = max(1, run["train_tokens"] // batch_tokens)
    warmup_iters = round(iters * spec.warmup_fraction)
    decay_iters = max(1, round(iters * spec.decay_fraction))
    return {
        **run,
        "id": run_id(run),
        "run_dir": str(run_dir),
        "python": sys.executable,
        "train_iters": iters,
        "train_samples": iters * run["global_batch_size"],
        "warmup_iters": warmup_iters,
        "warmup_samples": warmup_iters * run["global_batch_size"],
        "warmup_tokens": warmup_iters * batch_tokens,
        "decay_iters": decay_iters,
        "decay_samples": decay_iters * run["global_batch_size"],
        "decay_tokens": decay_iters * batch_tokens,
        "decay_shape": spec.decay_shape,
    }


def runs_pretrain(template: str) -> bool:
    """Whether the template is a ``megatron-power pretrain`` run in ``{run_dir}`` (the
    default, or a bench's own flags): a killed attempt then resumes from its checkpoint."""
    return "megatron_power.cli.main pretrain --run-dir {run_dir}" in template


def command(spec: SweepSpec, run: dict[str, Any], run_dir: Path) -> str:
    try:
        text = spec.template.format(**placeholders(spec, run, run_dir))
    except (KeyError, IndexError) as error:
        raise ValueError(f"--command: unknown placeholder {error} in the template") from None
    return f"{text} {spec.extra_args}".strip()


def final_validation_loss(log: str) -> float | None:
    """The last validation-set loss Megatron printed (test-set lines are ignored)."""
    matches = [m for m in VALIDATION_LOSS.finditer(log) if "test" not in m["where"]]
    return float(matches[-1]["loss"]) if matches else None


# ------------------------------------------------------------------ the directory
class SweepDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def spec_file(self) -> Path:
        return self.path / "sweep.json"

    def save_spec(self, spec: SweepSpec) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "results").mkdir(exist_ok=True)
        (self.path / "logs").mkdir(exist_ok=True)
        atomic_write_text(self.spec_file, json.dumps(asdict(spec), indent=2) + "\n")

    def record_spec(self, spec: SweepSpec) -> None:
        """Save ``spec``, refusing one whose runs would differ from the recorded sweep's
        (its finished runs would be taken for runs of the new one)."""
        if self.spec_file.is_file():
            old = self.load_spec()
            for name in ("template", "extra_args", "seq_length", "warmup_fraction",
                         "decay_fraction", "decay_shape"):  # fmt: skip
                if getattr(old, name) != getattr(spec, name):
                    raise ValueError(
                        f"--sweep-dir: {self.path} holds a sweep with another {name} "
                        f"({getattr(old, name)!r}); finished runs would not compare - use a "
                        "new dir"
                    )
        self.save_spec(spec)

    def load_spec(self) -> SweepSpec:
        if not self.spec_file.is_file():
            raise ValueError(f"--sweep-dir: {self.path} has no sweep.json")
        return SweepSpec(**json.loads(self.spec_file.read_text()))

    def result_file(self, run: dict[str, Any]) -> Path:
        return self.path / "results" / f"{run_id(run)}.json"

    def result(self, run: dict[str, Any]) -> dict[str, Any] | None:
        file = self.result_file(run)
        return json.loads(file.read_text()) if file.is_file() else None

    def pending(self, spec: SweepSpec, retry_failed: bool) -> list[int]:
        """Indices of runs to do: no result yet, interrupted (killed by a signal), or
        failed when ``retry_failed``."""
        todo = []
        for index, run in enumerate(spec.runs()):
            result = self.result(run)
            if (
                result is None
                or result["status"] == INTERRUPTED
                or (retry_failed and result["status"] != "ok")
            ):
                todo.append(index)
        return todo

    def write_result(self, record: dict[str, Any]) -> None:
        file = self.path / "results" / f"{record['id']}.json"
        if file.is_file():  # a failed attempt being retried: keep it beside the new one
            old = json.loads(file.read_text())
            file.rename(file.with_name(f"{record['id']}.attempt-{old.get('finished', 0):.0f}.json"))
        atomic_write_text(file, json.dumps(record, indent=2) + "\n")  # all or nothing

    def collect(self) -> list[dict[str, Any]]:
        """Every recorded run (earlier failed attempts included) -> results.jsonl."""
        records = []
        for file in sorted((self.path / "results").glob("*.json")):
            try:
                records.append(json.loads(file.read_text()))
            except ValueError:
                raise ValueError(f"--sweep-dir: {file} is not a readable result") from None
        lines = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write_text(self.path / "results.jsonl", lines)
        return records


# ------------------------------------------------------------------- one run
class Stopped(Exception):
    """The sweep was stopped before this run started."""


class Guards:
    """The guard processes of the runs in flight, so that a stop (Ctrl-C) ends them and
    starts no other, instead of waiting for every queued run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def start(self, argv: list[str], **popen: Any) -> subprocess.Popen:
        with self._lock:
            if self._stopped:
                raise Stopped
            process = subprocess.Popen(argv, **popen)
            self._running.add(process)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def stop(self) -> None:
        """SIGTERM every running guard (it stops its command's group and exits 143, an
        interrupted run that the next sweep reruns); no run starts after this."""
        with self._lock:
            self._stopped = True
            for process in self._running:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)


def run_one(sweep: SweepDir, spec: SweepSpec, index: int, env: dict[str, str] | None = None,
            guards: Guards | None = None):  # fmt: skip
    """Run grid entry ``index`` to completion and record it; returns the record (the one
    already there when another process finished the run first)."""
    run = spec.runs()[index]
    identifier = run_id(run)
    with DirectoryLock(sweep.path / "results", f"--sweep-dir run {identifier}",
                       name=f"{identifier}.lock"):  # fmt: skip
        done = sweep.result(run)
        if done is not None and done["status"] == "ok":
            return done
        return _run_locked(sweep, spec, index, run, identifier, env, guards or Guards())


def _run_locked(sweep, spec, index, run, identifier, env, guards: Guards) -> dict[str, Any]:
    run_dir = sweep.path / "runs" / identifier
    text = command(spec, run, run_dir)
    if runs_pretrain(spec.template) and run_dir.exists():
        # An attempt that was killed: continue from its checkpoint, or start it over.
        if RunDir(run_dir).latest_checkpoint() is not None and RunDir(run_dir).config.is_file():
            text = f"{sys.executable} -m megatron_power.cli.main pretrain --resume {run_dir}"
        else:
            shutil.rmtree(run_dir)
    log_file = sweep.path / "logs" / f"{identifier}.log"
    start = time.time()
    with log_file.open("a") as log:
        log.write(f"$ {text}\n")
        log.flush()
        offset = log.tell()
        # The guard stops everything the command starts when it ends or the sweep dies.
        process = guards.start(
            [sys.executable, "-m", "megatron_power.sweep.guard", "bash", "-c", text],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        returncode = process.wait()
        process.stdin.close()
        guards.finished(process)
    with log_file.open(errors="replace") as log:
        log.seek(offset)
        output = log.read()
    loss = final_validation_loss(output)
    ok = returncode == 0 and loss is not None and math.isfinite(loss)
    record = {
        "id": identifier, "index": index, "params": run, "command": text,
        # A guard killed by a signal itself (kill -9 of it, the OOM killer) reports -N.
        "status": "ok" if ok else INTERRUPTED if returncode in KILLED or returncode < 0
        else "failed",
        "valid_loss": loss,
        "returncode": returncode, "seconds": round(time.time() - start, 2),
        "finished": time.time(), "log": str(log_file),
    }  # fmt: skip
    if not ok:
        reason = "no validation loss in the log" if returncode == 0 else "exit status"
        record["error"] = f"{reason} {returncode}: " + output[-2000:]
    sweep.write_result(record)
    return record


def default_slots(threads_per_run: int, jobs: int | None = None) -> list[dict[str, str]]:
    """One environment per concurrent run: a GPU each, or a share of the CPU cores;
    ``jobs`` (--jobs): that many instead, the environments reused in turn (small runs
    sharing a GPU)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    if gpus:
        slots = [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(gpus)]
    else:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count())  # fmt: skip
        count = max(1, (cores or 1) // threads_per_run)
        slots = [{"OMP_NUM_THREADS": str(threads_per_run)} for _ in range(count)]
    return slots if jobs is None else (slots * jobs)[:jobs]


def run_local(
    sweep: SweepDir,
    spec: SweepSpec,
    indices: Sequence[int],
    slots: list[dict[str, str]],
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``indices`` concurrently, one per slot (environment); records as they finish."""
    return run_jobs([(sweep, spec, index) for index in indices], slots, on_done)


def run_jobs(
    jobs: Sequence[tuple[SweepDir, SweepSpec, int]],
    slots: list[dict[str, str]],
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Grid entries of one or several sweeps, one per slot, in the order given. A stop
    (Ctrl-C, or a signal the caller turns into an exception) starts no queued run and ends
    the running ones, recorded as interrupted, before it propagates."""
    free: Queue = Queue()
    for slot in slots:
        free.put(slot)
    guards = Guards()

    def job(sweep: SweepDir, spec: SweepSpec, index: int) -> dict[str, Any]:
        slot = free.get()
        try:
            return run_one(sweep, spec, index, slot, guards)
        finally:
            free.put(slot)

    records = []
    pool = ThreadPoolExecutor(max_workers=len(slots))
    try:
        for future in as_completed([pool.submit(job, *entry) for entry in jobs]):
            record = future.result()
            records.append(record)
            if on_done:
                on_done(record)
    except BaseException:
        guards.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return records


# ------------------------------------------------------------------- SLURM
def array_ranges(indices: Iterable[int]) -> str:
    """SLURM's --array syntax for a set of indices: 0-3,7,9-10."""
    parts, run = [], []
    for index in sorted(indices):
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [index]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def sbatch_script(
    sweep: SweepDir,
    indices: Sequence[int],
    max_parallel: int | None,
    sbatch_options: Sequence[str],
    setup: str = "",
) -> str:
    """A job array: task N runs grid entry N of sweep.json and writes its result file."""
    array = array_ranges(indices) + (f"%{max_parallel}" if max_parallel else "")
    path = sweep.path.resolve()
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=megatron-power-sweep",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={path}/logs/slurm-%A_%a.out",
        *(f"#SBATCH {option}" for option in sbatch_options),
        "set -euo pipefail",
        "# Written by megatron-power sweep --launcher slurm; results land in",
        f"# {path}/results/, collected with: megatron-power sweep --sweep-dir {path} --collect",
    ]
    if setup:
        lines.append(setup)
    lines.append(
        f"exec {sys.executable} -m megatron_power.cli.main sweep --sweep-dir {path} "
        '--task-index "${SLURM_ARRAY_TASK_ID:?not a SLURM array task}"'
    )
    return "\n".join(lines) + "\n"
