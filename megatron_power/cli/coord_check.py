"""``megatron-power coord-check``: the muP coordinate check for a model config.

Builds the model at several widths (real Megatron-Core, one CPU/GPU process), takes a
few Adam steps at a high LR on the Markov data, and fits the slope of log2 mean
|activation| against log2 width for the embedding, every layer, every router and
experts output, and the logits. Prints pass/fail per module with its slope and writes
a PNG. Exit status 1 when a module fails.

    megatron-power coord-check                       # dense, widths 128..1024
    megatron-power coord-check --model moe --no-mup  # see standard parameterisation fail
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import check_output_file, save_figure_atomically
from .pretrain import add_mup_arguments, mup_from_args

DEFAULT_PNG = "coord_check.png"
SEQ = 16  # tokens per sequence of the check's batches
NUM_EXPERTS = 4  # the MoE model's experts


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "coord-check",
        help="muP coordinate check: activation scale vs width, pass/fail per module.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=["dense", "moe"], default="dense")
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=16)
    add_mup_arguments(parser)  # pretrain's muP flags; the base width defaults to the smallest
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2, help=f"sequences of {SEQ} tokens")
    parser.add_argument(
        "--png",
        type=Path,
        default=None,
        help=f"the plot (default ./{DEFAULT_PNG}, replaced on every check)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --png")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.png, "--png", args.force)
    png = args.png or Path(DEFAULT_PNG)
    widths = sorted(args.widths)
    if widths[0] < 1:
        raise ValueError(f"--widths: must be integers >= 1, got {widths[0]}")
    if len(widths) < 2 or widths[-1] < 2 * widths[0]:
        raise ValueError("--widths: give two or more widths spanning at least 2x")
    for flag in ("--steps", "--seeds", "--batch-size"):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value < 1:
            raise ValueError(f"{flag}: must be an integer >= 1, got {value}")
    from ..knobs import knob_of
    from ..mup.rules import MupConfig
    from ..schedules.settings import ScheduleSettings
    from ..training.config import name_the_mup_flag

    knob_of(ScheduleSettings, "max_lr").validate("--lr", args.lr)
    if args.head_dim >= 1 and any(width % args.head_dim for width in widths):
        raise ValueError(f"--head-dim: {args.head_dim} must divide every width")
    for width in widths:  # pretrain's own checks of the model flags, at every width
        model_config(args, width).validate()

    mup = mup_from_args(args)
    if mup is not None:
        if args.mup_base_hidden_size is None:
            mup["base_hidden_size"] = widths[0]
        try:
            mup = MupConfig.from_dict(mup)
        except ValueError as error:
            raise ValueError(name_the_mup_flag(str(error))) from None
        for width in widths:
            if width % mup.base_hidden_size:
                raise ValueError(
                    f"--mup-base-hidden-size: {mup.base_hidden_size} does not divide width {width}"
                )
    means = measure(args, widths, mup)
    from ..mup.coord_check import judge

    verdicts = judge(widths, means)
    failed = 0
    print(f"{'phase':8} {'module':12} {'slope':>8}  bound            verdict")
    for verdict in verdicts:
        low, high = verdict.bound
        failed += not verdict.passed
        print(f"{verdict.phase:8} {verdict.module:12} {verdict.slope:+8.3f}  "
              f"[{low:+.2f}, {high:+.2f}]  {'pass' if verdict.passed else 'FAIL'}")  # fmt: skip
    plot(widths, means, png, "muP" if mup else "standard parameterisation")
    print(f"{len(verdicts) - failed}/{len(verdicts)} passed; plot {png}")
    return 1 if failed else 0


def model_config(args: argparse.Namespace, width: int, mup: dict | None = None, seed: int = 0):
    """The PretrainConfig of the checked model at ``width`` (checked by pretrain's rules)."""
    from ..training.config import PretrainConfig

    return PretrainConfig(
        model=args.model, hidden_size=width, num_layers=args.num_layers,
        head_dim=args.head_dim, moe_ffn_hidden_size=width, seq_length=SEQ, mup=mup,
        seed=seed, num_experts=NUM_EXPERTS,
    )  # fmt: skip


def measure(args: argparse.Namespace, widths: list[int], mup) -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    from ..data.markov import MarkovSource
    from ..megatron.coord_check import coordinate_check
    from ..megatron.mup import mup_config_overrides
    from ..training.distributed import set_rendezvous_address
    from ..training.model import Vocabulary, build_model

    if not dist.is_initialized():
        set_rendezvous_address()
        dist.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    from ..megatron.cpu import install_cpu_support

    install_cpu_support()
    source = MarkovSource(vocab_size=96)

    def build(width: int, seed: int):
        config = model_config(args, width, None if mup is None else mup.to_dict(), seed)
        model, _ = build_model(config, Vocabulary.unpadded(source.vocab_size), torch.device("cpu"))
        optimizer_config = OptimizerConfig(
            optimizer="adam", lr=args.lr, min_lr=0.0, weight_decay=0.0
        )
        overrides = mup_config_overrides(model.config, mup, optimizer_config)
        groups = _get_param_groups([model], optimizer_config, overrides)
        for group in groups:
            group["lr"] = group["max_lr"]
        return model, torch.optim.Adam(groups, lr=args.lr)

    def batch(seed: int):
        stream = torch.from_numpy(source.sample(args.batch_size * (SEQ + 1), seed))
        tokens = stream.view(args.batch_size, SEQ + 1)[:, :SEQ].contiguous()
        positions = torch.arange(SEQ).unsqueeze(0).expand(args.batch_size, -1)
        mask = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)
        return tokens, positions, mask

    return coordinate_check(build, widths, range(args.seeds), args.steps, batch)


def plot(widths: list[int], means: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(means), figsize=(6 * len(means), 4), squeeze=False)
    for axis, (phase, modules) in zip(axes[0], means.items(), strict=True):
        for module, values in modules.items():
            axis.plot(widths, values, marker="o", label=module)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log", base=2)
        axis.set_xlabel("width")
        axis.set_ylabel("mean |activation|")
        axis.set_title(f"{title}: {phase}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomically(figure, path, dpi=100)
    plt.close(figure)
