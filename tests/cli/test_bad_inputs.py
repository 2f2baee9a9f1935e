"""Bad and unusual inputs, one row each: the exit status, the one line on stderr that names
the flag or field, and nothing that existed before changed or removed.

The rows come from an audit of the tools as a new user meets them (mistyped numbers,
zeros, NaN, a missing file, a run directory in use, a resume with other flags, inputs
that used to hang). Most run in-process (fast); the ones that start training or used to
hang run as a subprocess under a timeout. ``python -m pytest tests/cli/test_bad_inputs.py``
prints one line per row; the count of passing rows is the count of clean errors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SMALL = ["--train-tokens", "40960", "--warmup-tokens", "8192"]  # 20 steps, tail 16-20
#: The fixture directory each row starts from (built once, copied per row):
#:   run/     a finished 20-step run (embedded Power schedule, checkpoints at 10 and 20)
#:   tiny.txt a text of a few bytes; other.txt some text; results/ a sweep's results
FIXTURE_FILES = ("run", "tiny.txt", "other.txt", "results", "no_params.jsonl", "empty.jsonl")


@dataclass(frozen=True)
class Row:
    name: str
    argv: list[str]
    message: str  # a fragment the one stderr line must contain
    code: int = 2
    subprocess: bool = False  # trains or used to hang: a separate process with a timeout
    setup: str | None = None  # a named preparation in the row's directory
    extra: dict = field(default_factory=dict)


P = ["pretrain", "--run-dir", "new"]
PREDICT = ["predict", "--fit"]
#: The fixture run's own budget in Megatron-LM's flags (a constant schedule at 0.01).
BUDGET = ["--lr", "0.01", "--lr-decay-style", "constant", "--train-iters", "20",
          "--global-batch-size", "16", "--seq-length", "128"]  # fmt: skip
RESUME = ["pretrain", "--resume", "run"]
ROWS = [
    # ------------------------------------------------ pretrain: numbers out of range
    Row("lr-inf", [*P, "--lr", "inf"], "--lr (max_lr): must be a finite number >= 0, got inf"),
    Row("lr-nan", [*P, "--lr", "nan"], "--lr (max_lr): must be a finite number"),
    Row("lr-negative", [*P, "--lr", "-1"], "--lr (max_lr): must be a finite number >= 0"),
    Row("min-lr-nan", [*P, "--min-lr", "nan"], "--min-lr (min_lr): must be a finite number"),
    Row("min-lr-above-lr", [*P, "--lr", "0.01", "--min-lr", "0.1"], "max_lr): must be >= min_lr"),
    Row("power-a-nan", [*P, "--lr-power-a", "nan"], "--lr-power-a (lr_power_a): must be a finite"),
    Row("power-a-zero", [*P, "--lr-power-a", "0"], "--lr-power-a (lr_power_a): must be a finite number > 0"),
    Row("power-b-inf", [*P, "--lr-power-b", "inf"], "--lr-power-b (lr_power_b):"),
    Row("power-b-positive", [*P, "--lr-power-b", "0.5"], "--lr-power-b (lr_power_b):"),
    Row("batch-exponent-nan", [*P, "--lr-power-batch-exponent", "nan"], "--lr-power-batch-exponent"),
    Row("reference-seq-zero", [*P, "--lr-power-reference-seq-length", "0"], "--lr-power-reference-seq-length"),
    Row("power-batch-size-zero", [*P, "--lr-decay-style", "power", "--lr-power-batch-size", "0"], "--lr-power-batch-size (lr_power_batch_size): must be an integer >= 1, got 0"),
    Row("power-batch-size-fraction", [*P, "--lr-decay-style", "power", "--lr-power-batch-size", "1.5"], "argument --lr-power-batch-size: invalid int value: '1.5'"),
    Row("seq-length-zero", [*P, "--seq-length", "0"], "--seq-length: must be an integer >= 1, got 0"),
    Row("batch-zero", [*P, "--global-batch-size", "0"], "--global-batch-size: must be an integer >= 1, got 0"),
    Row("train-tokens-zero", [*P, "--train-tokens", "0"], "--train-tokens: must be an integer >= 1, got 0"),
    Row("train-tokens-below-a-step", [*P, "--train-tokens", "100"], "--train-tokens: shorter than one step"),
    Row("hidden-zero", [*P, "--hidden-size", "0"], "--hidden-size: must be an integer >= 1, got 0"),
    Row("head-dim-zero", [*P, "--head-dim", "0"], "--head-dim: must be an integer >= 1, got 0"),
    Row("head-dim-not-dividing", [*P, "--head-dim", "48"], "--head-dim: 48 does not divide --hidden-size"),
    Row("layers-zero", [*P, "--num-layers", "0"], "--num-layers: must be an integer >= 1, got 0"),
    Row("nproc-zero", [*P, "--nproc", "0"], "--nproc: must be an integer >= 1, got 0"),
    Row("tp-zero", [*P, "--tp", "0"], "--tp: must be an integer >= 1, got 0"),
    Row("tp-not-dividing-heads", [*P, "--nproc", "3", "--tp", "3"], "--tp: 3 does not divide the 4 attention heads"),
    Row("nproc-not-multiple", [*P, "--nproc", "3", "--tp", "2"], "--nproc: 3 is not a multiple of --tp x --ep"),
    Row("ep-on-dense", [*P, "--nproc", "2", "--ep", "2"], "--ep: expert parallelism needs --model moe"),
    Row("moe-zero-experts", [*P, "--model", "moe", "--num-experts", "0"], "--num-experts: must be an integer >= 1, got 0"),
    Row("experts-not-divisible-by-ep", [*P, "--model", "moe", "--num-experts", "3", "--nproc", "2", "--ep", "2"], "--num-experts: not divisible by --ep"),
    Row("moe-tp-odd-sequence", [*P, "--model", "moe", "--num-experts", "4", "--nproc", "2", "--tp", "2", "--seq-length", "33"], "--seq-length: 33 is not divisible by --tp 2 (MoE with tensor parallelism runs sequence parallel"),
    Row("experts-on-dense", [*P, "--num-experts", "4"], "--num-experts: only applies with --model moe"),
    Row("exit-interval-zero", [*P, "--exit-interval", "0"], "--exit-interval: must be an integer >= 1, got 0"),
    Row("exit-interval-negative", [*P, "--exit-interval", "-1"], "--exit-interval: must be an integer >= 1, got -1"),
    Row("vocab-one", [*P, "--vocab-size", "1"], "--vocab-size: must be an integer >= 2, got 1"),
    Row("seed-negative", [*P, "--seed", "-1"], "--seed: must be an integer >= 0"),
    Row("not-a-number", [*P, "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    Row("unknown-flag", [*P, "--lr-power-c", "1"], "unrecognized arguments: --lr-power-c 1"),
    # ------------------------------------------------ pretrain: schedule shape
    Row("warmup-negative", [*P, "--warmup-tokens", "-5"], "--warmup-tokens (lr_warmup_steps):"),
    Row("warmup-longer-than-run", [*P, "--warmup-tokens", "4000000"], "--warmup-tokens (lr_warmup_steps): warmup"),
    Row("decay-fraction-above-one", [*P, "--decay-fraction", "1.5"], "--decay-fraction"),
    Row("decay-tokens-and-fraction", [*P, "--decay-tokens", "4096", "--decay-fraction", "0.1"], "--decay-tokens and --decay-fraction: give one, not both"),
    Row("decay-length-on-cosine", [*P, "--lr", "0.01", "--lr-decay-style", "cosine", "--decay-tokens", "4096"], "not applied by lr_decay_style='cosine'"),
    Row("wsd-without-decay", [*P, "--lr", "0.01", "--lr-decay-style", "WSD"], "wsd_decay_steps): required by lr_decay_style='WSD'"),
    Row("wsd-decay-longer-than-run", [*P, "--lr", "0.01", "--lr-decay-style", "WSD", "--decay-tokens", "3000000"], "is longer than the run"),
    Row("wsd-s-past-the-end", [*P, "--lr", "0.01", "--lr-decay-style", "WSD", "--decay-tokens", "40000", "--wsd-cycle-tokens", "500000", "3000000"], "--wsd-cycle-tokens: 3000000 is past the end of the run (976 steps of 2048 tokens = 1998848)"),
    Row("wsd-s-not-increasing", [*P, "--lr", "0.01", "--lr-decay-style", "WSD", "--decay-tokens", "4096", "--wsd-cycle-tokens", "800000", "400000"], "strictly increasing"),
    Row("wsd-s-on-cosine", [*P, "--lr", "0.01", "--lr-decay-style", "cosine", "--wsd-cycle-tokens", "400000"], "has no stable phase"),
    Row("bad-decay-shape", [*P, "--decay-shape", "square"], "argument --decay-shape: invalid choice: 'square'"),
    Row("branch-without-init-from", [*P, "--branch-decay-tokens", "100000"], "--branch-decay-tokens: needs --init-from CHECKPOINT"),
    # ------------------------------------------------ pretrain: files and directories
    Row("data-missing", [*P, "--data", "missing.txt"], "--data: no such file:"),
    Row("sweep-dir-empty", ["sweep", "--sweep-dir", ""], "--sweep-dir: needs a directory, got ''"),
    Row("tune-dir-empty", ["mup-tune", "--tune-dir", "", "--output-multipliers", "1"], "--tune-dir: needs a directory, got ''"),
    Row("resume-empty", ["pretrain", "--resume", ""], "--resume: needs a directory, got ''"),
    Row("run-dir-empty", ["pretrain", "--run-dir", ""], "--run-dir: needs a directory, got ''"),
    Row("init-from-empty", [*P, "--init-from", ""], "--init-from: needs a directory, got ''"),
    Row("tokenizer-with-markov-data", [*P, "--tokenizer-model", "tiny.txt"], "--tokenizer-model: only applies with --data FILE (text)"),
    Row("tokenizer-not-a-sentencepiece-model", [*P, "--data", "other.txt", "--tokenizer-model", "tiny.txt"], "/tiny.txt is not a SentencePiece model (give a .model file"),
    Row("tokenizer-json-not-a-tokenizer", [*P, "--data", "other.txt", "--tokenizer-model", "bad.json"], "/bad.json is not a Hugging Face tokenizer.json: Model missing", setup="write bad.json {}"),
    Row("tokenizer-missing", [*P, "--data", "other.txt", "--tokenizer-model", "missing.model"], "--tokenizer-model: no such file:"),
    Row("data-too-small-used-to-hang", [*P, "--data", "tiny.txt", "--vocab-size", "16"], "--data: its training split", subprocess=True),
    Row("data-too-small-on-two-ranks", [*P, "--data", "tiny.txt", "--vocab-size", "16", "--nproc", "2", "--tp", "2"], "--data: its training split", subprocess=True),
    Row("pretrain-power-knob-without-power", ["pretrain", "--lr-decay-style", "WSD", "--lr-power-b", "-0.4"], "--lr-power-b: only applies with --lr-decay-style power, not WSD"),
    Row("pretrain-flag-twice", [*P, "--lr", "0.01", "--lr", "0.02"], "--lr: given twice (--lr 0.01, then --lr 0.02); give it once"),
    Row("pretrain-mup-flag-twice", [*P, "--mup-embedding-multiplier", "4", "--mup-embedding-multiplier=16"], "--mup-embedding-multiplier: given twice (--mup-embedding-multiplier 4.0, then --mup-embedding-multiplier 16.0); give it once"),
    Row("schedule-flag-twice", ["schedule", "--lr", "0.01", "--train-iters", "10", "--global-batch-size", "8", "--train-iters", "20"], "--train-iters: given twice (--train-iters 10, then --train-iters 20); give it once"),
    Row("pretrain-power-batch-size-without-power", ["pretrain", "--lr-decay-style", "WSD", "--lr-power-batch-size", "16"], "--lr-power-batch-size: only applies with --lr-decay-style power, not WSD"),
    Row("pretrain-step-batch-with-gbs", ["pretrain", "--step-batch-size-schedule", "0:8 4K:16", "--global-batch-size", "16"], "--step-batch-size-schedule: give it or --global-batch-size, not both"),
    Row("pretrain-step-batch-garbage", ["pretrain", "--step-batch-size-schedule", "0:8 four:16"], "--step-batch-size-schedule: 'four:16' is not THRESHOLD:BATCH_SIZE"),
    Row("new-run-over-a-finished-run", ["pretrain", "--run-dir", "run"], "--run-dir: run already holds a run; continue it with --resume run"),
    Row("run-dir-unwritable", ["pretrain", "--run-dir", "/proc/megatron-power-run"], "/proc/megatron-power-run"),
    Row("run-dir-in-use", [*P, *SMALL], "--run-dir: new is in use by pid", setup="lock new"),
    Row("resume-in-use", [*RESUME, "--exit-interval", "1"], "--resume: run is in use by pid", setup="lock run"),
    Row("device-cuda-without-cuda", [*P, "--device", "cuda"], "--device: cuda asked for, but no CUDA device is visible"),
    Row("override-without-resume", [*P, "--override-opt-param-scheduler"], "--override-opt-param-scheduler: only with --resume"),
    Row("no-mup-with-mup-flags", [*P, "--no-mup", "--mup-base-hidden-size", "32"], "--mup-base-hidden-size: not applied with --no-mup"),
    Row("mup-base-zero", [*P, "--mup-base-hidden-size", "0"], "--mup-base-hidden-size"),
    Row("mup-multiplier-nan", [*P, "--mup-embedding-multiplier", "nan"], "--mup-embedding-multiplier"),
    Row("mup-readout-init-std-negative", [*P, "--mup-readout-init-std", "-0.02"], "--mup-readout-init-std"),
    Row("mup-output-multiplier-with-logits-scale", [*P, "--mup-output-multiplier", "2", "--mup-logits-scale", "9"], "--mup-output-multiplier (output_multiplier): 2 is not applied when logits_scale sets the logits divisor outright"),
    # ------------------------------------------------ pretrain: branches
    Row("init-from-not-a-checkpoint", ["pretrain", "--init-from", "other.txt", "--run-dir", "b", "--branch-decay-tokens", "4096"], "--init-from: other.txt is not a run's checkpoints/iter_N directory"),
    Row("init-from-inside-the-decay", ["pretrain", "--init-from", "run/checkpoints/iter_0000020", "--run-dir", "b", "--branch-decay-tokens", "4096"], "lies inside the trunk's decay"),
    Row("init-from-over-a-run", ["pretrain", "--init-from", "run/checkpoints/iter_0000010", "--run-dir", "run", "--branch-decay-tokens", "4096"], "--run-dir: run already holds a run"),
    Row("branch-not-whole-steps", ["pretrain", "--init-from", "run/checkpoints/iter_0000010", "--run-dir", "b", "--branch-decay-tokens", "100000"], "--branch-decay-tokens: 100000 is not a whole number of the trunk's steps (2048 tokens each), so the run would end before its decay does; use 98304 or 100352"),
    Row("init-from-without-run-dir", ["pretrain", "--init-from", "run/checkpoints/iter_0000010", "--branch-decay-tokens", "4096"], "--init-from: give --run-dir for the branch"),
    # ------------------------------------------------ pretrain --resume
    Row("resume-missing", ["pretrain", "--resume", "missing"], "--resume: missing has no config.json"),
    Row("resume-changed-lr", [*RESUME, "--lr", "0.04"], "--lr 0.02 -> 0.04; --override-opt-param-scheduler accepts"),
    Row("resume-changed-power-a", [*RESUME, "--lr-power-a", "1.0"], "--lr-power-a 0.6308 -> 1.0"),
    Row("resume-changed-seed", [*RESUME, "--seed", "1"], "--seed 0 -> 1"),
    Row("resume-changed-width", [*RESUME, "--hidden-size", "256"], "--hidden-size 128 -> 256"),
    Row("resume-changed-batch", [*RESUME, "--global-batch-size", "32"], "--global-batch-size 16 -> 32"),
    Row("resume-changed-data", [*RESUME, "--data", "other.txt"], "--data 'markov' -> "),
    Row("resume-changed-mup", [*RESUME, "--no-mup"], "--no-mup False -> True"),
    Row("resume-longer-with-a-tail", [*RESUME, "--train-tokens", "81920"], "--train-tokens 40960 -> 81920"),
    Row("resume-edited-config", RESUME, "--global-batch-size 16 -> 8", setup="edit run batch 8"),
    Row("resume-with-run-dir", [*RESUME, "--run-dir", "other"], "--run-dir: not with --resume"),
    Row("resume-unreadable-config", RESUME, "not a readable config.json", setup="break run config"),
    # ------------------------------------------------ schedule
    Row("schedule-rampup-zero-used-to-hang", ["schedule", "--rampup-batch-size", "0", "2", "100"], "--rampup-batch-size: START and INCREMENT must be >= 1", subprocess=True),
    Row("schedule-rampup-not-dividing", ["schedule", "--global-batch-size", "8", "--rampup-batch-size", "1", "3", "100"], "--rampup-batch-size: INCREMENT 3 does not divide"),
    Row("schedule-rampup-above-batch", ["schedule", "--global-batch-size", "8", "--rampup-batch-size", "16", "8", "100"], "--rampup-batch-size: START 16 is above --global-batch-size 8"),
    Row("schedule-step-batch-with-gbs", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2 1K:4", "--global-batch-size", "8"], "--step-batch-size-schedule: give it or --global-batch-size, not both"),
    Row("schedule-step-batch-with-iters", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-iters", "10", "--step-batch-size-schedule", "0:2 1K:4"], "--step-batch-size-schedule: needs --train-samples"),
    Row("schedule-step-batch-not-from-zero", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "1K:2 2K:4"], "--step-batch-size-schedule: the first threshold must be 0"),
    Row("schedule-step-batch-garbage", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2 lots:4"], "--step-batch-size-schedule: 'lots:4' is not THRESHOLD:BATCH_SIZE"),
    Row("schedule-step-batch-no-colon", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2 1000"], "--step-batch-size-schedule: '1000' is not THRESHOLD:BATCH_SIZE"),
    Row("schedule-step-batch-zero-batch", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:0"], "--step-batch-size-schedule: '0:0': batch sizes must be >= 1"),
    Row("schedule-step-batch-nan", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2 nan:4"], "--step-batch-size-schedule: 'nan:4' needs finite counts"),
    Row("schedule-step-batch-repeated", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2 1K:4 1K:8"], "--step-batch-size-schedule: thresholds must increase"),
    Row("schedule-step-batch-empty", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", " "], "--step-batch-size-schedule: give \"THRESHOLD:BATCH_SIZE"),
    Row("schedule-step-batch-with-ramp", ["schedule", "--lr", "0.01", "--seq-length", "64", "--train-samples", "640", "--step-batch-size-schedule", "0:2", "--rampup-batch-size", "2", "2", "8"], "--step-batch-size-schedule: give it or --rampup-batch-size"),
    Row("schedule-power-knob-without-power", ["schedule", "--lr", "0.01", "--lr-power-a", "4", "--train-iters", "10", "--global-batch-size", "8"], "--lr-power-a: only applies with --lr-decay-style power, not linear"),
    Row("schedule-power-batch-size-without-power", ["schedule", "--lr", "0.01", "--lr-power-batch-size", "8", "--train-iters", "10", "--global-batch-size", "8"], "--lr-power-batch-size: only applies with --lr-decay-style power, not linear"),
    Row("schedule-lr-nan", ["schedule", "--lr", "nan", "--train-iters", "100", "--global-batch-size", "8"], "--lr (max_lr): must be a finite number"),
    Row("schedule-iters-zero", ["schedule", "--lr", "0.01", "--train-iters", "0", "--global-batch-size", "8"], "--train-iters: must be an integer >= 1, got 0"),
    Row("schedule-batch-zero", ["schedule", "--lr", "0.01", "--train-iters", "10", "--global-batch-size", "0"], "--global-batch-size: must be an integer >= 1, got 0"),
    Row("schedule-every-zero", ["schedule", "--every", "0"], "--every: must be >= 1, got 0"),
    Row("schedule-too-long-to-preview", ["schedule", "--lr", "0.01", "--train-iters", "1000000000000", "--global-batch-size", "1"], "more than 20000000 iterations"),
    Row("schedule-output-inside-a-file", ["schedule", "--output", "tiny.txt/x.csv"], "--output: tiny.txt/x.csv is inside a file"),
    Row("schedule-output-exists", ["schedule", "--output", "tiny.txt"], "--output: tiny.txt exists (--force overwrites it)"),
    Row("schedule-output-is-a-directory", ["schedule", "--output", "run"], "--output: run is a directory, not a file"),
    Row("schedule-png-exists", ["schedule", "--png", "other.txt"], "--png: other.txt exists (--force overwrites it)"),
    Row("schedule-png-empty-name", ["schedule", "--png", ""], "--png: needs a file name, got '.'"),
    Row("schedule-png-is-output", ["schedule", "--png", "new.out", "--output", "new.out"], "--output: new.out is also --png"),
    Row("schedule-both-lengths", ["schedule", "--lr", "0.01", "--train-iters", "10", "--train-samples", "100", "--global-batch-size", "8"], "--train-iters and --train-samples: give one, not both"),
    Row("schedule-decay-fraction", ["schedule", "--lr-wsd-decay-fraction", "2"], "--lr-wsd-decay-fraction"),
    Row("schedule-power-b-positive", ["schedule", "--lr-power-b", "1"], "--lr-power-b (lr_power_b):"),
    # ------------------------------------------------ sweep and fit
    Row("sweep-lr-nan", ["sweep", "--sweep-dir", "s", "--lrs", "nan"], "--lrs: values must be finite and > 0, got nan"),
    Row("sweep-lr-negative", ["sweep", "--sweep-dir", "s", "--lrs", "-0.01"], "--lrs: values must be finite and > 0"),
    Row("sweep-lr-twice", ["sweep", "--sweep-dir", "s", "--lrs", "0.01", "0.01"], "--lrs: 0.01 is given twice"),
    Row("sweep-batch-zero", ["sweep", "--sweep-dir", "s", "--global-batch-sizes", "0"], "--global-batch-sizes: values must be finite and > 0"),
    Row("sweep-spec-changed", ["sweep", "--sweep-dir", "old", "--extra-args", "--num-layers 3", "--launcher", "slurm", "--dry-run"], "--sweep-dir: old holds a sweep with another extra_args ('--num-layers 2')", setup="sweepdir old --num-layers 2"),
    Row("sweep-seq-zero", ["sweep", "--sweep-dir", "s", "--seq-length", "0"], "--seq-length: must be >= 1, got 0"),
    Row("sweep-tokens-below-a-step", ["sweep", "--sweep-dir", "s", "--train-tokens", "100"], "--train-tokens: 100 is shorter than one step"),
    Row("sweep-jobs-zero", ["sweep", "--sweep-dir", "s", "--lrs", "0.01", "--train-tokens", "4096", "--jobs", "0"], "--jobs: must be >= 1, got 0"),
    Row("sweep-threads-zero", ["sweep", "--sweep-dir", "s", "--lrs", "0.01", "--train-tokens", "4096", "--threads-per-run", "0"], "--threads-per-run: must be >= 1, got 0"),
    Row("sweep-warmup-one", ["sweep", "--sweep-dir", "s", "--warmup-fraction", "1"], "--warmup-fraction: must lie in [0, 1), got 1.0"),
    Row("sweep-decay-two", ["sweep", "--sweep-dir", "s", "--decay-fraction", "2"], "--decay-fraction: must lie in [0, 1], got 2.0"),
    Row("sweep-command-ignores-the-lrs", ["sweep", "--sweep-dir", "s", "--lrs", "0.01", "0.02", "--command", "echo {run_dir}"], "--lrs: 2 values, but --command names none of {lr}: every run would be the same"),
    Row("sweep-command-ignores-the-seeds", ["sweep", "--sweep-dir", "s", "--seeds", "0", "1", "--command", "echo {lr} {train_tokens} {global_batch_size}"], "--seeds: 2 values, but --command names none of {seed}"),
    Row("sweep-command-ignores-the-budgets", ["sweep", "--sweep-dir", "s", "--train-tokens", "40960", "81920", "--command", "echo {lr} {global_batch_size}"], "--train-tokens: 2 values, but --command names none of {train_tokens}, {train_iters}, {train_samples}"),
    Row("sweep-extra-args-unknown-to-pretrain", ["sweep", "--sweep-dir", "s", "--extra-args", "--no-such-flag 3"], "--extra-args: pretrain would refuse it: unrecognized arguments: --no-such-flag 3"),
    Row("sweep-extra-args-flag-twice", ["sweep", "--sweep-dir", "s", "--extra-args", "--num-layers 1 --num-layers=2"], "--extra-args: --num-layers is given twice (1, then 2; the run would take the last); give it once"),
    Row("sweep-extra-args-not-an-int", ["sweep", "--sweep-dir", "s", "--extra-args", "--num-layers two"], "--extra-args: pretrain would refuse it: argument --num-layers: invalid int value: 'two'"),
    Row("sweep-extra-args-overrides-the-grid", ["sweep", "--sweep-dir", "s", "--extra-args", "--hidden-size 64"], "--extra-args: --hidden-size is set by the command template already"),
    Row("sweep-extra-args-unbalanced-quote", ["sweep", "--sweep-dir", "s", "--extra-args", "--data-path 'a b"], "--extra-args: No closing quotation"),
    Row("sweep-unknown-placeholder", ["sweep", "--sweep-dir", "s", "--command", "echo {nope}"], "--command: unknown placeholder 'nope'"),
    Row("sweep-collect-nothing", ["sweep", "--sweep-dir", "missing", "--collect"], "--sweep-dir: missing has no sweep.json"),
    Row("sweep-in-use", ["sweep", "--sweep-dir", "s", "--lrs", "0.01", "--train-tokens", "4096"], "--sweep-dir: s is in use by pid", setup="lock s"),
    Row("fit-missing", ["fit", "missing"], "RESULTS: missing does not exist"),
    Row("fit-empty", ["fit", "empty.jsonl"], "RESULTS: empty.jsonl holds no successful runs"),
    Row("fit-without-params", ["fit", "no_params.jsonl"], "has no params with"),
    Row("fit-not-identified", ["fit", "results"], "no fit for width(s) 128"),
    Row("fit-json-exists", ["fit", "results", "--json", "tiny.txt"], "--json: tiny.txt exists (--force overwrites it)"),
    Row("fit-png-exists", ["fit", "results", "--png", "other.txt"], "--png: other.txt exists (--force overwrites it)"),
    # ------------------------------------------------ Hugging Face and muP tools
    Row("export-over-a-directory", ["export-hf", "run", "other-dir"], "OUT: other-dir", setup="mkdir other-dir"),
    Row("export-not-a-run", ["export-hf", "other.txt", "out"], "CKPT: other.txt is neither a run directory"),
    Row("import-missing", ["import-hf", "missing", "imported"], "DIR: missing has no config.json"),
    Row("import-over-a-run", ["import-hf", "hf", "run"], "OUT: run already holds a run", setup="fake hf"),
    Row("import-yarn-rope", ["import-hf", "hf", "new"], "DIR: config.json rope type 'yarn' is not supported", setup='fake hf {"rope_parameters":{"rope_type":"yarn","factor":4.0,"rope_theta":10000.0}}'),
    Row("import-dynamic-rope-4x", ["import-hf", "hf", "new"], "DIR: config.json rope type 'dynamic' is not supported", setup='fake hf {"rope_scaling":{"type":"dynamic","factor":2.0}}'),
    Row("import-kv-heads-not-dividing-tp", ["import-hf", "hf", "new", "--tp", "2"], "--tp: 2 does not divide the model's num_key_value_heads 1", setup='fake hf {"num_key_value_heads":1}'),
    Row("import-heads-not-dividing-tp", ["import-hf", "hf", "new", "--tp", "4"], "--tp: 4 does not divide the model's num_attention_heads 2", setup="fake hf"),
    Row("import-ep-on-dense", ["import-hf", "hf", "new", "--ep", "2"], "--ep: 2 needs a MoE model", setup="fake hf"),
    Row("import-experts-not-dividing-ep", ["import-hf", "hf", "new", "--ep", "4"], "--ep: 4 does not divide the model's 6 experts", setup='fake hf {"model_type":"granitemoe","num_local_experts":6}'),
    Row("import-text-without-tokenizer", ["import-hf", "hf", "new", "--data", "other.txt"], "--tokenizer-model: hf has no tokenizer", setup="fake hf"),
    Row("import-biased", ["import-hf", "hf", "new"], "DIR: config.json attention_bias=True is not supported", setup='fake hf {"attention_bias":true}'),
    Row("import-no-weights", ["import-hf", "hf", "new"], "DIR: hf has no .safetensors files", setup="fake hf"),
    Row("import-llama", ["import-hf", "hf", "new"], "DIR: model_type 'llama' is not granite or granitemoe", setup='fake hf {"model_type":"llama"}'),
    # ------------------------------------------------ predict
    Row("predict-missing-run", [*PREDICT, "missing", *BUDGET], "--fit: missing is not a run directory"),
    Row("predict-one-schedule", [*PREDICT, "run", *BUDGET], "--fit: the runs hold 1 schedule"),
    Row("predict-nothing-decays", [*PREDICT, "flat1", "flat2", *BUDGET], "--fit: no run decays its LR", setup="flatten run flat1 flat2"),
    Row("predict-models-differ", [*PREDICT, "run", "wide", *BUDGET], "--fit: wide and run differ in hidden_size", setup="copyedit run wide hidden_size 256"),
    Row("predict-seq-length", [*PREDICT, "run", "flat1", *BUDGET[:-1], "32"], "--seq-length 32: the fitted runs use 128", setup="flatten run flat1"),
    Row("predict-unseen-batch", [*PREDICT, "run", "flat1", "--lr", "0.01", "--train-iters", "20", "--global-batch-size", "64", "--seq-length", "128"], "batch 64 was not in the fit, whose runs all use 16", setup="flatten run flat1"),
    Row("predict-other-schedule", [*PREDICT, "run", "flat1", "--lr", "0.02", *BUDGET[2:], "--compare", "flat1"], "--compare: flat1 did not follow these flags (iteration 1: LR 0.01, the flags' 0.02)", setup="flatten run flat1"),
    Row("predict-families", [*PREDICT, "run", *BUDGET, "--optimize", "--families", "wsd,foo"], "--families: 'wsd,foo'; choose from wsd, wsd-s, power"),
    Row("predict-optimize-with-a-style", [*PREDICT, "run", "flat1", *BUDGET[:2], *BUDGET[4:], "--optimize", "--lr-decay-style", "cosine"], "--lr-decay-style: --optimize chooses the schedule", setup="flatten run flat1"),
    Row("predict-png-exists", [*PREDICT, "run", *BUDGET, "--png", "tiny.txt"], "--png: tiny.txt exists (--force overwrites it)"),
    Row("predict-json-exists", [*PREDICT, "run", *BUDGET, "--json", "other.txt"], "--json: other.txt exists (--force overwrites it)"),
    Row("predict-json-is-a-directory", [*PREDICT, "run", *BUDGET, "--json", "run"], "--json: run is a directory, not a file"),
    Row("predict-save-fit-exists", [*PREDICT, "run", *BUDGET, "--save-fit", "tiny.txt"], "--save-fit: tiny.txt exists"),
    Row("predict-not-a-fit-file", [*PREDICT, "empty.json", *BUDGET], "--fit: empty.json is not a fit saved by --save-fit", setup="write empty.json {}"),
    Row("predict-fit-from-out-of-range", [*PREDICT, "run", *BUDGET, "--fit-from", "1.5"], "--fit-from: must be in [0, 1), got 1.5"),
    Row("predict-every-zero", [*PREDICT, "run", *BUDGET, "--every", "0"], "--every: must be >= 1, got 0"),
    Row("predict-validation-sets-differ", [*PREDICT, "run", "flat1", *BUDGET], "--fit: run and flat1 were evaluated on different validation sets", setup="flatten run flat1 revalidate"),
    # ------------------------------------------------ evaluate
    Row("evaluate-missing-run", ["evaluate", "missing"], "RUN: missing is not a run directory"),
    Row("evaluate-unfinished-run", ["evaluate", "run", "half"], "RUN: half has not finished (no summary.json)", setup="unfinish run half"),
    Row("predict-unknown-law", [*PREDICT, "run", *BUDGET, "--law", "chinchilla"], "argument --law: invalid choice: 'chinchilla'"),
    # ------------------------------------------------ mup-tune
    Row("mup-tune-nothing-searched", ["mup-tune", "--tune-dir", "tune"], "mup-tune: give at least one of --output-multipliers, --embedding-multipliers, --init-stds"),
    Row("mup-tune-zero-multiplier", ["mup-tune", "--tune-dir", "tune", "--output-multipliers", "0", "1"], "--output-multipliers: values must be finite and > 0, got 0.0"),
    Row("mup-tune-nan-init-std", ["mup-tune", "--tune-dir", "tune", "--init-stds", "nan"], "--init-stds: values must be finite and > 0, got nan"),
    Row("mup-tune-twice", ["mup-tune", "--tune-dir", "tune", "--init-stds", "0.02", "0.02"], "--init-stds: a value is given twice"),
    Row("mup-tune-rounds-zero", ["mup-tune", "--tune-dir", "tune", "--init-stds", "0.02", "--rounds", "0"], "--rounds: must be >= 1, got 0"),
    Row("mup-tune-own-flag", ["mup-tune", "--tune-dir", "tune", "--init-stds", "0.02", "--extra-args", "--hidden-size 128"], "--extra-args: --hidden-size is set by mup-tune itself"),
    Row("mup-tune-extra-flag-twice", ["mup-tune", "--tune-dir", "tune", "--init-stds", "0.02", "--extra-args", "--num-layers 1 --num-layers 2"], "--extra-args: --num-layers is given twice (1, then 2; the run would take the last); give it once"),
    Row("mup-tune-lr-zero", ["mup-tune", "--tune-dir", "tune", "--init-stds", "0.02", "--lrs", "0", "0.01"], "--lrs"),
    Row("mup-audit-hidden-zero", ["mup-audit", "--hidden-size", "0"], "--hidden-size"),
    Row("coord-check-one-width", ["coord-check", "--widths", "64"], "--widths: give two or more widths"),
    Row("coord-check-zero-steps", ["coord-check", "--steps", "0"], "--steps: must be an integer >= 1, got 0"),
    Row("coord-check-zero-seeds", ["coord-check", "--seeds", "0"], "--seeds: must be an integer >= 1, got 0"),
    Row("coord-check-zero-batch", ["coord-check", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    Row("coord-check-lr-nan", ["coord-check", "--lr", "nan"], "--lr: must be a finite number >= 0, got nan"),
    Row("coord-check-zero-layers", ["coord-check", "--num-layers", "0"], "--num-layers: must be an integer >= 1, got 0"),
    Row("coord-check-zero-head-dim", ["coord-check", "--head-dim", "0"], "--head-dim: must be an integer >= 1, got 0"),
    Row("coord-check-zero-width", ["coord-check", "--widths", "0", "64"], "--widths: must be integers >= 1, got 0"),
    Row("mup-audit-lr-negative", ["mup-audit", "--lr", "-1"], "--lr: must be a finite number >= 0, got -1.0"),
    Row("coord-check-png-exists", ["coord-check", "--png", "tiny.txt"], "--png: tiny.txt exists (--force overwrites it)"),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (the lock files excepted)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "pretrain", "--run-dir", "run",
         *SMALL, "--exit-interval", "10"],
        cwd=root, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "pretrain", "--resume", "run"],
        cwd=root, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (root / "tiny.txt").write_text("hello world\n")
    (root / "other.txt").write_text("\n\n".join(f"document {i} " * 40 for i in range(40)))
    results = root / "results"
    results.mkdir()
    records = [  # two cells: fewer than a and b need
        {"id": f"r{i}", "status": "ok", "valid_loss": loss,
         "params": {"lr": lr, "global_batch_size": 16, "train_tokens": tokens,
                    "hidden_size": 128, "seed": 0, "seq_length": 128}}
        for i, (tokens, lr, loss) in enumerate(
            [(t, lr, 3.0 + (lr - 0.01) ** 2 * 100 + 1e5 / t) for t in (100_000, 200_000)
             for lr in (0.005, 0.01, 0.02)])
    ]  # fmt: skip
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "no_params.jsonl").write_text(json.dumps({"status": "ok", "valid_loss": 3.0}) + "\n")
    (root / "empty.jsonl").write_text("")
    return root


def prepare(directory: Path, setup: str | None):
    """A row's named preparation; returns what must stay alive while the row runs."""
    if setup is None:
        return None
    verb, target, *rest = setup.split()
    if verb == "lock":
        from megatron_power.files import DirectoryLock

        return DirectoryLock(directory / target, "test").acquire()
    if verb == "mkdir":
        (directory / target).mkdir()
        (directory / target / "keep.txt").write_text("someone's work\n")
    elif verb == "edit":
        config = json.loads((directory / target / "config.json").read_text())
        config["global_batch_size"] = int(rest[1])
        (directory / target / "config.json").write_text(json.dumps(config))
    elif verb == "flatten":  # copies of a run whose every step used one LR (0.01, 0.02, ...)
        revalidate = rest[-1:] == ["revalidate"]  # the copies evaluated on another set
        rest = rest[:-1] if revalidate else rest
        for number, name in enumerate((rest and [target, *rest][1:]) or [target], start=1):
            shutil.copytree(directory / target, directory / name)
            rows = [json.loads(line) for line in (directory / name / "metrics.jsonl").open()]
            lines = [json.dumps({**row, "lr": 0.01 * number}) for row in rows]
            (directory / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            if revalidate:
                summary = json.loads((directory / name / "summary.json").read_text())
                summary["valid_set"] = {**summary["valid_set"], "sha256": "0" * 16}
                (directory / name / "summary.json").write_text(json.dumps(summary))
    elif verb == "sweepdir":  # a sweep directory recorded with these --extra-args
        from megatron_power.sweep.runner import SweepDir, SweepSpec

        SweepDir(directory / target).save_spec(
            SweepSpec([0.01], [16], [40960], extra_args=" ".join(rest))
        )
    elif verb == "unfinish":  # a copy of a run stopped before its end: no summary.json
        shutil.copytree(directory / target, directory / rest[0])
        (directory / rest[0] / "summary.json").unlink()
    elif verb == "copyedit":  # a copy of a run with one config.json field changed
        shutil.copytree(directory / target, directory / rest[0])
        config = json.loads((directory / rest[0] / "config.json").read_text())
        config[rest[1]] = json.loads(rest[2])
        (directory / rest[0] / "config.json").write_text(json.dumps(config))
    elif verb == "write":
        (directory / target).write_text(" ".join(rest))
    elif verb == "break":
        (directory / target / "config.json").write_text("{ half a file")
    elif verb == "fake":  # a Granite config.json (no weights), fields overridden by JSON
        (directory / target).mkdir()
        fake = {
            "model_type": "granite",
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 128,
            "max_position_embeddings": 128,
        }
        fake.update(json.loads(" ".join(rest)) if rest else {})
        (directory / target / "config.json").write_text(json.dumps(fake))
    return None


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_gets_one_clear_line_and_changes_nothing(row, fixture_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(fixture_dir, work, symlinks=True)
    held = prepare(work, row.setup)
    before = snapshot(work)
    try:
        if row.subprocess:
            result = subprocess.run(
                [sys.executable, "-m", "megatron_power.cli.main", *row.argv],
                cwd=work, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
            code, stderr = result.returncode, result.stderr
        else:
            code, stderr = run_in_process(row.argv, work, monkeypatch)
    finally:
        if held is not None:
            held.release()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == row.code, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"megatron-power {row.argv[0]}: error: "), lines[0]
    assert row.message in lines[0], lines[0]
    after = snapshot(work)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or removed: {changed}"


def run_in_process(argv: list[str], work: Path, monkeypatch) -> tuple[int, str]:
    """``megatron-power ARGV`` in this process, in ``work``; (exit status, stderr)."""
    import contextlib
    import io

    from megatron_power.cli.main import main

    monkeypatch.chdir(work)
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, stderr.getvalue()
