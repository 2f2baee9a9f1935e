"""The ``megatron-power pretrain`` worker: one process per rank (torchrun starts several).

Real Megatron-Core pieces: parallel_state, GPTModel (local spec, dense or MoE), the
plugin's muP and PowerOptimizerParamScheduler, megatron.core.datasets. The loop itself is
the plain algorithm: batch, forward, backward, average gradients over data parallelism,
clip, step, schedule - so it runs on CPU (gloo) as on GPU (nccl).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.indexed import build_gpt_datasets, read_meta, write_indexed, write_meta
from ..data.markov import MarkovSource
from ..megatron.mup import apply_mup, mup_config_overrides, mup_transformer_config
from ..megatron.scheduler import PowerOptimizerParamScheduler
from ..megatron.settings import ScheduleSettings
from ..mup.rules import MupConfig
from .config import PretrainConfig


# --------------------------------------------------------------------------- setup
def free_port() -> int:
    """A free local port for a single-process run (torchrun sets its own)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_rendezvous_address() -> None:
    """MASTER_ADDR/PORT for init_process_group: torchrun's when it launched us; a lone
    process takes a free port, since one inherited from its parent (a sweep, a SLURM job,
    a test session) would collide with a sibling run's."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def init_distributed(config: PretrainConfig) -> torch.device:
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        set_rendezvous_address()
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        expert_model_parallel_size=config.expert_model_parallel_size,
    )
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tensor_parallel.model_parallel_cuda_manual_seed(config.seed)
        return torch.device("cuda", torch.cuda.current_device())
    from ..megatron.cpu import install_cpu_support

    install_cpu_support()
    return torch.device("cpu")


def data_prefix(config: PretrainConfig) -> Path:
    """Where the run's tokens live; a branch run shares its trunk's."""
    return Path(config.data_dir or Path(config.run_dir) / "data") / "tokens"


def prepare_data(config: PretrainConfig, run_dir: Path) -> dict[str, Any]:
    """Write the run's tokens as an indexed dataset once (rank 0); return its metadata."""
    prefix = data_prefix(config)
    if dist.get_rank() == 0 and not Path(f"{prefix}.json").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        if config.data == "markov":
            source = MarkovSource(
                config.vocab_size, config.markov_seed, config.markov_concentration
            )
            needed = int((config.train_tokens + 4 * config.eval_tokens) * 1.15)
            needed += 10 * config.seq_length
            stream = source.sample(needed, seed=config.markov_seed + 1)
            # Documents of 8 sequences, so Megatron's document-level split has many.
            size = 8 * config.seq_length
            documents = [stream[i : i + size] for i in range(0, len(stream), size)]
            meta = {
                "source": "markov",
                "vocab_size": config.vocab_size,
                "eod": config.vocab_size - 1,
                "entropy_rate": source.entropy_rate(),
                "unigram_entropy": source.unigram_entropy(),
            }
        else:
            from ..data.text import tokenize_text

            documents, meta = tokenize_text(config, run_dir)
        write_indexed(prefix, documents, meta["vocab_size"])
        write_meta(prefix, meta)
    dist.barrier()
    return read_meta(prefix)


def small_gpt_options(
    hidden_size: int,
    num_layers: int,
    head_dim: int,
    ffn_hidden_size: int | None = None,
    moe_experts: int | None = None,
    moe_ffn_hidden_size: int | None = None,
    moe_router_topk: int = 2,
    num_query_groups: int | None = None,
    norm_epsilon: float = 1e-5,
    **parallel: Any,
) -> dict[str, Any]:
    """TransformerConfig fields of the small Granite-like GPT (RMSNorm, SwiGLU, RoPE, no
    bias, no dropout, fp32, CPU init) that pretrain and the tests build; MoE when
    ``moe_experts`` is given (allgather dispatcher: it runs on CPU)."""
    options: dict[str, Any] = dict(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=hidden_size // head_dim,
        kv_channels=head_dim,
        num_query_groups=num_query_groups,
        ffn_hidden_size=ffn_hidden_size or 2 * hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        **parallel,
    )
    if moe_experts:
        options.update(
            num_moe_experts=moe_experts,
            moe_router_topk=moe_router_topk,
            moe_ffn_hidden_size=moe_ffn_hidden_size or hidden_size,
            moe_grouped_gemm=False,
            moe_token_dispatcher_type="allgather",
            moe_aux_loss_coeff=0.0,
        )
    return options


def transformer_config(config: PretrainConfig):
    """The run's TransformerConfig (muP's softmax scale and init included) and muP config."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    options = small_gpt_options(
        config.hidden_size,
        config.num_layers,
        config.head_dim,
        config.ffn_hidden_size,
        moe_experts=config.num_experts if config.model == "moe" else None,
        moe_ffn_hidden_size=config.moe_ffn_hidden_size,
        moe_router_topk=config.moe_router_topk,
        num_query_groups=config.num_query_groups,
        norm_epsilon=config.norm_epsilon,
        init_method_std=config.init_method_std,
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        expert_model_parallel_size=config.expert_model_parallel_size,
    )
    mup = mup_config(config)
    return mup_transformer_config(TransformerConfig(**options), mup), mup


def build_model(config: PretrainConfig, vocab_size: int, device: torch.device):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    megatron_config, mup = transformer_config(config)
    spec = get_gpt_layer_local_spec(
        num_experts=megatron_config.num_moe_experts,
        moe_grouped_gemm=False,
        normalization="RMSNorm",
    )
    torch.manual_seed(config.seed)
    model = GPTModel(
        config=megatron_config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=config.seq_length,
        position_embedding_type="rope",
        rotary_base=config.rotary_base,
        share_embeddings_and_output_weights=config.share_embeddings,
    )
    apply_mup(model, mup)
    return model.to(device), mup


def model_vocab_size(config: PretrainConfig, meta: dict[str, Any]) -> int:
    """The data's vocabulary, or the larger padded one an imported model brings."""
    padded = config.padded_vocab_size
    if padded is not None and padded < meta["vocab_size"]:
        raise ValueError(
            f"padded_vocab_size: {padded} is smaller than the data's vocabulary "
            f"{meta['vocab_size']}"
        )
    return padded or meta["vocab_size"]


def parallel_ranks() -> dict[str, int]:
    """Where this rank's shards sit in the model-parallel grid (saved with them, so an
    export can gather them without recomputing Megatron's rank order)."""
    from megatron.core import parallel_state as ps

    return {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "tp_size": ps.get_tensor_model_parallel_world_size(),
        "dp_rank": ps.get_data_parallel_rank(),
        "ep_rank": ps.get_expert_model_parallel_rank(),
        "ep_size": ps.get_expert_model_parallel_world_size(),
        "etp_rank": ps.get_expert_tensor_parallel_rank(),
        "etp_size": ps.get_expert_tensor_parallel_world_size(),
        "edp_rank": ps.get_expert_data_parallel_rank(),
    }


def mup_config(config: PretrainConfig) -> MupConfig | None:
    if not config.mup:
        return None
    return MupConfig(
        base_hidden_size=config.mup_base_hidden_size,
        embedding_multiplier=config.mup_embedding_multiplier,
        residual_multiplier=config.mup_residual_multiplier,
        attention_scale=config.mup_attention_multiplier,
        logits_scale=config.mup_logits_scaling,
    )


def schedule_settings(config: PretrainConfig) -> ScheduleSettings:
    """The run's schedule in Megatron's units (samples), from the config's tokens."""
    seq = config.seq_length

    def samples(tokens: int | None) -> int | None:
        return None if tokens is None else tokens // seq

    return ScheduleSettings(
        lr_decay_style=config.lr_decay_style,
        max_lr=config.lr,
        min_lr=config.min_lr,
        lr_warmup_steps=samples(config.warmup_tokens),
        lr_decay_steps=config.train_iters * config.global_batch_size,
        wsd_decay_steps=samples(config.decay_tokens) or None,
        lr_wsd_decay_style=config.decay_shape,
        seq_length=seq,
        lr_power_a=config.lr_power_a,
        lr_power_b=config.lr_power_b,
        lr_power_batch_exponent=config.lr_power_batch_exponent,
        lr_wsd_cycle_steps=(
            None
            if config.wsd_cycle_tokens is None
            else tuple(samples(tokens) for tokens in config.wsd_cycle_tokens)
        ),
        lr_branch_decay_start_steps=samples(config.branch_decay_start_tokens),
        lr_branch_decay_steps=samples(config.branch_decay_tokens),
    )


# ---------------------------------------------------------------------------- steps
def get_batch(dataset, first: int, count: int, device: torch.device) -> dict[str, torch.Tensor]:
    samples = [dataset[(first + i) % len(dataset)] for i in range(count)]
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}


def forward_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # GPTDataset's mask is [1, s, s] per sample, True where attention is blocked.
    losses = model(
        batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]
    )
    mask = batch["loss_mask"]
    return (losses.float() * mask).sum() / mask.sum()


def average_gradients(model) -> None:
    """Data-parallel gradient averaging (what Megatron's DDP does).

    Expert gradients already hold every data-parallel rank's tokens (the token dispatcher
    gathers them over the expert group), so they are summed over the expert-data-parallel
    group only; both are divided by the data-parallel size.
    """
    from megatron.core import parallel_state

    dp_size = parallel_state.get_data_parallel_world_size()
    if dp_size == 1:
        return
    dp_group = parallel_state.get_data_parallel_group()
    expert_dp_group = parallel_state.get_expert_data_parallel_group()
    for param in model.parameters():
        if param.grad is None:
            continue
        expert = not getattr(param, "allreduce", True)
        dist.all_reduce(param.grad, group=expert_dp_group if expert else dp_group)
        param.grad.div_(dp_size)


def clip_gradients(model, max_norm: float) -> float:
    """Global gradient norm over all shards, each parameter counted once; clip to ``max_norm``."""
    from megatron.core import parallel_state

    sharded = torch.zeros(1, device=next(model.parameters()).device)
    replicated = torch.zeros_like(sharded)
    experts = torch.zeros_like(sharded)
    for param in model.parameters():
        if param.grad is None:
            continue
        square = param.grad.float().pow(2).sum()
        if not getattr(param, "allreduce", True):
            experts += square
        elif getattr(param, "tensor_model_parallel", False):
            sharded += square
        else:
            replicated += square
    dist.all_reduce(sharded, group=parallel_state.get_tensor_model_parallel_group())
    dist.all_reduce(experts, group=parallel_state.get_expert_model_parallel_group())
    norm = math.sqrt((sharded + replicated + experts).item())
    if max_norm > 0 and norm > max_norm:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(max_norm / (norm + 1e-6))
    return norm


# ----------------------------------------------------------------------- checkpoint
def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / f"iter_{iteration:07d}"


def save_checkpoint(run_dir: Path, iteration: int, model, optimizer, scheduler) -> None:
    path = checkpoint_dir(run_dir, iteration)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "parallel": parallel_ranks(),
        },
        path / f"rank{dist.get_rank():03d}.pt",
    )
    dist.barrier()
    if dist.get_rank() == 0:
        (run_dir / "checkpoints" / "latest").write_text(f"{iteration}\n")


def latest_iteration(run_dir: Path) -> int | None:
    pointer = run_dir / "checkpoints" / "latest"
    return int(pointer.read_text()) if pointer.exists() else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Load this rank's file; an imported checkpoint (weights only) starts a fresh
    optimizer and schedule at its iteration."""
    state = torch.load(path / f"rank{dist.get_rank():03d}.pt", weights_only=False)
    if state.get("imported_from"):
        # Written without building the model: it lacks the modules' empty _extra_state.
        result = model.load_state_dict(state["model"], strict=False)
        missing = [key for key in result.missing_keys if not key.endswith("._extra_state")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {path}: does not fit the model (missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
    else:
        model.load_state_dict(state["model"])
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    return state["iteration"]


# ------------------------------------------------------------------------- the run
def train(config: PretrainConfig, init_from: Path | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``config.run_dir``; returns the final metrics."""
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    device = init_distributed(config)
    rank = dist.get_rank()
    run_dir = Path(config.run_dir)
    meta = prepare_data(config, run_dir)
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if config.global_batch_size % dp_size:
        raise ValueError(
            f"global_batch_size: {config.global_batch_size} is not divisible by the data-"
            f"parallel size {dp_size}"
        )
    local_batch = config.global_batch_size // dp_size
    eval_samples = max(dp_size, config.eval_tokens // config.seq_length)
    # One epoch of each split, whatever the run's length: sample i is the same sequence
    # for a run, its resumption and its branches (the loop wraps around past an epoch).
    # Megatron's builder builds the index cache on rank 0 first, then on the others.
    train_set, valid_set = build_gpt_datasets(
        data_prefix(config), config.seq_length, 1, 1, config.seed, meta
    )

    model, mup = build_model(config, model_vocab_size(config, meta), device)
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=config.lr, min_lr=config.min_lr, weight_decay=config.weight_decay
    )
    groups = _get_param_groups(
        [model], optimizer_config, mup_config_overrides(model.config, mup, optimizer_config)
    )
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.adam_beta2))
    scheduler = PowerOptimizerParamScheduler.from_settings(
        optimizer,
        schedule_settings(config),
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=False,
    )

    start = 0
    resume_from = init_from
    if resume_from is None and latest_iteration(run_dir) is not None:
        resume_from = checkpoint_dir(run_dir, latest_iteration(run_dir))
    if resume_from is not None:
        start = load_checkpoint(resume_from, model, optimizer, scheduler)

    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        kept = []
        if metrics_path.exists():  # rows past the checkpoint are recomputed identically
            kept = [line for line in metrics_path.read_text().splitlines()
                    if json.loads(line)["iteration"] <= start]  # fmt: skip
        metrics_path.write_text("".join(line + "\n" for line in kept))

    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=config.train_iters, initial=start, unit="it", file=sys.stderr,
                        dynamic_ncols=True, disable=None)  # fmt: skip
        floor = meta.get("entropy_rate")
        if floor is not None:
            progress.write(
                f"loss floor (entropy rate of the source): {floor:.4f} nats/token; "
                f"unigram entropy {meta['unigram_entropy']:.4f}"
            )
    checkpoint_every = max(1, config.checkpoint_interval_tokens // config.tokens_per_step)
    tick = time.perf_counter()
    model.train()
    for iteration in range(start + 1, config.train_iters + 1):
        first = (iteration - 1) * config.global_batch_size + dp_rank * local_batch
        batch = get_batch(train_set, first, local_batch, device)
        loss = forward_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model)
        grad_norm = clip_gradients(model, config.clip_grad)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        scheduler.step(config.global_batch_size)
        reduced = loss.detach().clone()
        dist.all_reduce(reduced, group=parallel_state.get_data_parallel_group())
        reduced /= dp_size
        if rank == 0:
            now = time.perf_counter()
            row = {
                "iteration": iteration,
                "tokens": iteration * config.tokens_per_step,
                "loss": reduced.item(),
                "lr": lr,
                "grad_norm": grad_norm,
            }
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            progress.update(1)
            progress.set_postfix(
                tokens=f"{row['tokens']:.3g}", loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}",
                tok_s=f"{config.tokens_per_step / max(now - tick, 1e-9):.0f}",
            )  # fmt: skip
            tick = now
        stop = config.exit_interval is not None and iteration == start + config.exit_interval
        if iteration % checkpoint_every == 0 or iteration == config.train_iters or stop:
            save_checkpoint(run_dir, iteration, model, optimizer, scheduler)
        if stop and iteration < config.train_iters:
            if rank == 0:
                progress.close()
                print(f"exit interval reached: checkpoint at iteration {iteration}; "
                      f"continue with --resume {run_dir}")  # fmt: skip
            return {"stopped_at": iteration}

    eval_samples = min(eval_samples, len(valid_set))
    valid_loss = evaluate(model, valid_set, eval_samples, dp_rank, dp_size, device)
    summary = {
        "final_lr": optimizer.param_groups[0]["lr"],
        "iterations": config.train_iters,
        "tokens": config.train_iters * config.tokens_per_step,
        "valid_loss": valid_loss,
        "entropy_rate": meta.get("entropy_rate"),
        "unigram_entropy": meta.get("unigram_entropy"),
    }
    if rank == 0:
        progress.close()
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from .plots import plot_run

        plot_run(metrics_path, run_dir / "loss_lr.png", floor=meta.get("entropy_rate"))
        # Megatron-LM's own evaluation line, so sweeps read pretrain and Megatron-LM alike.
        print(
            f" validation loss at iteration {config.train_iters} on validation set | "
            f"lm loss value: {valid_loss:.6E} | lm loss PPL: {math.exp(valid_loss):.6E} |"
        )
        print(f"validation loss {valid_loss:.4f} nats/token; run directory {run_dir}")
    dist.barrier()
    return summary


@torch.no_grad()
def evaluate(model, dataset, samples: int, dp_rank: int, dp_size: int, device) -> float:
    from megatron.core import parallel_state

    model.eval()
    per_rank = max(1, samples // dp_size)
    total = torch.zeros(1, device=device)
    for start in range(0, per_rank, 8):
        count = min(8, per_rank - start)
        batch = get_batch(dataset, dp_rank * per_rank + start, count, device)
        total += forward_loss(model, batch) * count
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    model.train()
    return (total / (per_rank * dp_size)).item()


def main() -> None:
    """Entry for torchrun: ``python -m megatron_power.training.loop CONFIG [INIT_FROM]``."""
    import megatron_power.cli.main  # noqa: F401  (its filters for Megatron's CPU notices)

    config = PretrainConfig.load(Path(sys.argv[1]))
    init_from = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    train(config, init_from)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
