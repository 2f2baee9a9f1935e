"""Training step time: the plugin's Power scheduler + muP vs plain Megatron-Core.

The same GPTModel (the embedded default's shape unless told otherwise) is built twice
from one seed: once plain (standard parameterisation, Megatron's own
OptimizerParamScheduler with cosine, Megatron's param groups) and once with the plugin
(muP hooks and init, muP's ParamGroupOverrides, PowerOptimizerParamScheduler with the
default's Power + tail). Both train on the same batches, timed side by side in this one
run, interleaved block by block so machine noise hits both alike: forward, backward,
optimizer step and scheduler step. Prints a table and writes
bench/results/training_overhead_<device>.{md,json}.

    python bench/training_overhead.py                  # CPU, the default 4 x 128 model
    python bench/training_overhead.py --device cuda --hidden-size 1024 --num-layers 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import megatron.core  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def setup(config, plugin: bool, device: torch.device, vocab: int):
    """The plugin's model, optimizer and scheduler (as pretrain builds them), or the same
    model in standard parameterisation with Megatron's own cosine scheduler."""
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_power.training.config import EMBEDDED_MUP
    from megatron_power.training.model import Vocabulary, build_model
    from megatron_power.training.optimizer import build_optimizer

    config = dataclasses.replace(config, mup=dict(EMBEDDED_MUP) if plugin else None)
    model, mup = build_model(config, Vocabulary.unpadded(vocab), device)
    if plugin:
        return (model, *build_optimizer(config, model, mup))
    settings = config.schedule_settings()
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=settings.max_lr, min_lr=0.0, weight_decay=config.weight_decay
    )
    groups = _get_param_groups([model], optimizer_config, None)  # Megatron's standard groups
    optimizer = torch.optim.AdamW(groups, lr=settings.max_lr, betas=(0.9, config.adam_beta2))
    samples = config.train_iters * config.global_batch_size
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=settings.max_lr, min_lr=0.0,
        lr_warmup_steps=settings.lr_warmup_steps, lr_decay_steps=samples,
        lr_decay_style="cosine", start_wd=config.weight_decay, end_wd=config.weight_decay,
        wd_incr_steps=samples, wd_incr_style="constant",
    )  # fmt: skip
    return model, optimizer, scheduler


def train_block(parts, batches, config, sync) -> float:
    model, optimizer, scheduler = parts
    start = time.perf_counter()
    for tokens, labels, positions, mask in batches:
        losses = model(tokens, positions, mask, labels=labels)
        loss = losses.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step(config.global_batch_size)
    sync()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None,
                        help="the results' path without .md/.json "
                        "(default: bench/results/training_overhead_<device>)")  # fmt: skip
    args = parser.parse_args()

    from megatron_power.files import atomic_write_text
    from megatron_power.training.config import PretrainConfig
    from megatron_power.training.distributed import init_distributed

    config = PretrainConfig(
        hidden_size=args.hidden_size, num_layers=args.num_layers,
        global_batch_size=args.global_batch_size, seq_length=args.seq_length,
        device=args.device,
    )  # fmt: skip
    device = init_distributed(config)
    vocab = 128
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    shape = (config.global_batch_size, config.seq_length)
    causal = torch.triu(torch.ones(shape[1], shape[1], dtype=torch.bool), 1)[None, None]
    positions = torch.arange(shape[1]).expand(shape)
    batches = []
    for _ in range(args.steps):
        tokens = torch.randint(0, vocab, (shape[0], shape[1] + 1), generator=generator)
        batches.append(tuple(t.to(device) for t in (tokens[:, :-1], tokens[:, 1:], positions,
                                                     causal)))  # fmt: skip
    setups = {"plain Megatron-Core (SP, cosine)": setup(config, False, device, vocab),
              "plugin (muP + Power scheduler)": setup(config, True, device, vocab)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in setups}
    for parts in setups.values():  # warm-up
        train_block(parts, batches[:2], config, sync)
    for _ in range(args.rounds):
        for name, parts in setups.items():
            times[name].append(train_block(parts, batches, config, sync))
    reference = statistics.median(times["plain Megatron-Core (SP, cosine)"])
    device_name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"# Training step time, plugin vs plain Megatron-Core ({device.type}: {device_name}, "
        f"megatron-core {megatron.core.__version__}, torch {torch.__version__})",
        "",
        f"GPT {args.num_layers} x {args.hidden_size}, batch {args.global_batch_size} x "
        f"{args.seq_length}; median of {args.rounds} interleaved blocks of {args.steps} steps.",
        "",
        "| setup | ms / step | ratio |",
        "| --- | ---: | ---: |",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median * 1e3:.2f} | {median / reference:.3f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    stem = args.out or RESULTS / f"training_overhead_{device.type}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_name(f"{stem.name}.md"), text)
    record = {"args": {**vars(args), "out": str(stem)}, "seconds": times}
    atomic_write_text(stem.with_name(f"{stem.name}.json"), json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
