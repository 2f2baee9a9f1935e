"""The story of one ``megatron-power pretrain`` run, per rank (torchrun starts several).

Set up the processes, prepare the data, build the model with muP, the optimizer and the
plugin's scheduler, resume if there is a checkpoint, then step: batch, forward, backward,
average gradients, clip, step, schedule, log, checkpoint. Each part lives in its own
module; this one only tells the order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.indexed import check_enough_tokens
from ..errors import TrainingDiverged
from ..files import atomic_write_text
from .checkpoint import load_checkpoint, resume, save_checkpoint
from .config import PretrainConfig
from .data import build_datasets, data_prefix, get_batch, prepare_data, valid_sequences
from .distributed import init_distributed
from .metrics import Progress
from .model import build_model, run_vocabulary, runs_sequence_parallel
from .optimizer import build_optimizer
from .rundir import RunDir
from .step import average_gradients, clip_gradients, evaluate, evaluated_set, forward_loss


def stop_if_diverged(loss: torch.Tensor, iteration: int, run: RunDir) -> None:
    """Every rank learns whether any rank's loss is not finite, and all stop together
    before anything is saved, so the last good checkpoint stays the newest."""
    finite = torch.isfinite(loss).float().reshape(1)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        kept = run.latest_checkpoint()
        raise TrainingDiverged(
            f"loss is {loss.item()} at iteration {iteration}: training diverged (a lower --lr "
            f"or warmup may help); last good checkpoint kept: {kept or 'none written yet'}"
        )


def train(
    config: PretrainConfig, init_from: Path | None = None, override_schedule: bool = False
) -> dict[str, Any]:
    """Train (or resume) the run in ``config.run_dir``; returns the final metrics.
    ``override_schedule``: continue with the config's schedule where the checkpoint's
    differs (Megatron's --override-opt_param-scheduler)."""
    from megatron.core import parallel_state

    device = init_distributed(config)
    run = RunDir(config.run_dir)
    meta = prepare_data(config, run.path)
    check_enough_tokens(data_prefix(config), config.seq_length)
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    batches = config.batches(config.train_iters)
    for batch in sorted(set(batches)):
        if batch % dp_size:
            raise ValueError(
                f"global_batch_size: {batch} is not divisible by the data-parallel size {dp_size}"
            )
    # One epoch of each split, whatever the run's length: sample i is the same sequence
    # for a run, its resumption and its branches (the loop wraps around past an epoch).
    train_set, valid_set = build_datasets(config, meta)
    model, mup = build_model(config, run_vocabulary(config, meta), device)
    optimizer, scheduler = build_optimizer(config, model, mup, override_schedule)

    if init_from is not None:
        start = load_checkpoint(init_from, model, optimizer, scheduler)
    else:
        start = resume(run, model, optimizer, scheduler)  # 0 for a new run

    progress = Progress(run, config, start, meta) if dist.get_rank() == 0 else None
    if progress is not None and runs_sequence_parallel(config):
        tp = config.tensor_model_parallel_size
        print(f"megatron-power: MoE with --tp {tp}: sequence parallelism on "
              "(Megatron-Core needs it for MoE under tensor parallelism)")  # fmt: skip
    checkpoint_every = max(1, config.checkpoint_interval_tokens // config.tokens_per_step)
    model.train()
    consumed = sum(batches[:start])  # samples before this invocation's first step
    for iteration in range(start + 1, config.train_iters + 1):
        batch = batches[iteration - 1]
        local_batch = batch // dp_size
        first = consumed + dp_rank * local_batch
        consumed += batch
        loss = forward_loss(model, get_batch(train_set, first, local_batch, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model)
        grad_norm = clip_gradients(model, config.clip_grad)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        scheduler.step(batch)
        reduced = loss.detach().clone()
        dist.all_reduce(reduced, group=parallel_state.get_data_parallel_group())
        stop_if_diverged(reduced / dp_size, iteration, run)
        if progress is not None:
            progress.record(iteration, consumed * config.seq_length, (reduced / dp_size).item(),
                            lr, grad_norm, batch)  # fmt: skip
        stop = config.exit_interval is not None and iteration == start + config.exit_interval
        if iteration % checkpoint_every == 0 or iteration == config.train_iters or stop:
            save_checkpoint(run, iteration, model, optimizer, scheduler, config.to_json())
        if stop and iteration < config.train_iters:
            if progress is not None:
                progress.stopped(iteration)
            return {"stopped_at": iteration}

    summary = final_evaluation(config, model, valid_set, meta, device)
    summary["final_lr"] = optimizer.param_groups[0]["lr"]
    if progress is not None:
        progress.finished(summary)
        # Megatron-LM's own evaluation line, so sweeps read pretrain and Megatron-LM alike.
        print(
            f" validation loss at iteration {config.train_iters} on validation set | "
            f"lm loss value: {summary['valid_loss']:.6E} | "
            f"lm loss PPL: {math.exp(summary['valid_loss']):.6E} |"
        )
        print(f"validation loss {summary['valid_loss']:.4f} nats/token; run directory {run.path}")
    dist.barrier()
    return summary


def final_evaluation(config: PretrainConfig, model, valid_set, meta: dict, device) -> dict:
    """The run's summary: its validation loss on the data set's fixed validation set,
    and which sequences those were."""
    from megatron.core import parallel_state

    dp_size = parallel_state.get_data_parallel_world_size()
    samples = min(max(dp_size, valid_sequences(config)), len(valid_set))
    valid_loss = evaluate(model, valid_set, samples, parallel_state.get_data_parallel_rank(),
                          dp_size, device)  # fmt: skip
    return {
        "iterations": config.train_iters,
        "tokens": config.tokens_after(config.train_iters),
        "valid_loss": valid_loss,
        "valid_set": evaluated_set(valid_set, samples, dp_size, config.seq_length),
        "entropy_rate": meta.get("entropy_rate"),
        "unigram_entropy": meta.get("unigram_entropy"),
    }


def evaluate_finished(config: PretrainConfig) -> dict[str, Any]:
    """Evaluate a finished run's final checkpoint on its data set's fixed validation set
    (``megatron-power evaluate``): summary.json gets the new loss, and keeps the earlier
    one under ``earlier_evaluations`` when the set differed."""
    device = init_distributed(config)
    run = RunDir(config.run_dir)
    meta = prepare_data(config, run.path)
    _, valid_set = build_datasets(config, meta)
    model, mup = build_model(config, run_vocabulary(config, meta), device)
    optimizer, scheduler = build_optimizer(config, model, mup, False)
    iteration = resume(run, model, optimizer, scheduler)
    if iteration != config.train_iters:
        raise ValueError(
            f"{run.path}: its newest checkpoint is iteration {iteration} of "
            f"{config.train_iters}; finish it first (megatron-power pretrain --resume {run.path})"
        )
    summary = final_evaluation(config, model, valid_set, meta, device)
    if dist.get_rank() == 0:
        earlier = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
        summary["final_lr"] = earlier.get("final_lr", optimizer.param_groups[0]["lr"])
        history = list(earlier.get("earlier_evaluations", []))
        if "valid_loss" in earlier and earlier.get("valid_set") != summary["valid_set"]:
            history.append({"valid_loss": earlier["valid_loss"],
                            "valid_set": earlier.get("valid_set", "not recorded")})  # fmt: skip
        if history:
            summary["earlier_evaluations"] = history
        atomic_write_text(run.summary, json.dumps(summary, indent=2) + "\n")
    dist.barrier()
    return summary
