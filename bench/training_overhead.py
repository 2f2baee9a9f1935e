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
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_power.megatron import PowerOptimizerParamScheduler
    from megatron_power.megatron.mup import mup_config_overrides
    from megatron_power.training.loop import build_model, schedule_settings

    config.mup = plugin
    model, mup = build_model(config, vocab, device)
    optimizer_config = OptimizerConfig(optimizer="adam", lr=config.lr, min_lr=0.0, weight_decay=0.1)
    overrides = mup_config_overrides(model.config, mup, optimizer_config)  # mup None: Megatron's
    groups = _get_param_groups([model], optimizer_config, overrides)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))
    if plugin:
        scheduler = PowerOptimizerParamScheduler.from_settings(
            optimizer, schedule_settings(config), start_wd=0.1, end_wd=0.1,
            use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=False,
        )  # fmt: skip
    else:
        samples = config.train_iters * config.global_batch_size
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=config.lr, min_lr=0.0,
            lr_warmup_steps=config.warmup_tokens // config.seq_length, lr_decay_steps=samples,
            lr_decay_style="cosine", start_wd=0.1, end_wd=0.1, wd_incr_steps=samples,
            wd_incr_style="constant",
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
    args = parser.parse_args()

    from megatron_power.training.config import PretrainConfig
    from megatron_power.training.loop import init_distributed

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
    RESULTS.mkdir(exist_ok=True)
    stem = f"training_overhead_{device.type}"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"args": vars(args), "seconds": times}) + "\n")


if __name__ == "__main__":
    main()
