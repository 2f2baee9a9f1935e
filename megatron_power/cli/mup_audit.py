"""``megatron-power mup-audit``: what muP does to every parameter of a model.

Builds the model (real Megatron-Core, one CPU process) with pretrain's model and muP
flags and prints, per parameter: its muP role (from the classification table), the init
std it was built with (measured) and muP's rule, and the Adam LR, eps and weight decay
of its optimizer group as Megatron's param groups carry them.

    megatron-power mup-audit                               # the embedded model
    megatron-power mup-audit --model moe --hidden-size 256 --mup-base-hidden-size 64
"""

from __future__ import annotations

import argparse

from .pretrain import DEFAULTS, add_model_arguments, add_mup_arguments, mup_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mup-audit",
        help="Print every parameter's muP role, init std, LR, Adam eps and weight decay.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = add_model_arguments(parser)
    model.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size)
    parser.add_argument("--lr", type=float, default=0.02, help="base learning rate")
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    add_mup_arguments(parser)
    parser.set_defaults(handler=run)


def audit_rows(config, lr: float) -> list[dict]:
    """One row per parameter of the model ``config`` describes (built on CPU)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    from ..megatron.cpu import install_cpu_support
    from ..megatron.mup import classify_parameter, mup_config_overrides, mup_rules
    from ..training.distributed import set_rendezvous_address
    from ..training.model import Vocabulary, build_model

    if not dist.is_initialized():
        set_rendezvous_address()
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    install_cpu_support()
    model, mup = build_model(config, Vocabulary.unpadded(config.vocab_size), torch.device("cpu"))
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=lr, min_lr=0.0, weight_decay=config.weight_decay
    )
    groups = _get_param_groups(
        [model], optimizer_config, mup_config_overrides(model.config, mup, optimizer_config)
    )
    group_of = {id(param): group for group in groups for param in group["params"]}
    rules = mup_rules(model.config, mup) if mup is not None else None
    rows = []
    for name, param in model.named_parameters():
        role = classify_parameter(name, param)
        group = group_of[id(param)]
        rows.append(
            {
                "name": name,
                "shape": tuple(param.shape),
                "role": role.value,
                "init_std": param.detach().float().std().item() if param.numel() > 1 else 0.0,
                "rule_std": rules.init_std_for(role) if rules else None,
                "lr": group.get("max_lr", lr),
                "eps": group.get("eps", optimizer_config.adam_eps),
                "weight_decay": group["wd_mult"] * config.weight_decay,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from ..training.config import PretrainConfig

    config = PretrainConfig(
        model=args.model,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        head_dim=args.head_dim,
        num_experts=args.num_experts,
        vocab_size=args.vocab_size,
        weight_decay=args.weight_decay,
        mup=mup_from_args(args),
    )
    config.validate()
    from ..knobs import knob_of
    from ..schedules.settings import ScheduleSettings

    knob_of(ScheduleSettings, "max_lr").validate("--lr", args.lr)
    rows = audit_rows(config, args.lr)
    width = max(len(row["name"]) for row in rows)
    print(f"{'parameter':{width}}  {'role':17} {'init std':>9} {'muP std':>9} "
          f"{'lr':>9} {'adam eps':>9} {'wd':>6}")  # fmt: skip
    for row in rows:
        rule = "-" if row["rule_std"] is None else f"{row['rule_std']:.3e}"
        print(f"{row['name']:{width}}  {row['role']:17} {row['init_std']:9.3e} {rule:>9} "
              f"{row['lr']:9.3e} {row['eps']:9.1e} {row['weight_decay']:6.3f}")  # fmt: skip
    muP = "off (standard parameterisation)" if config.mup is None else config.mup
    print(f"{len(rows)} parameters; muP: {muP}")
    return 0
