"""Hooks that teach an unmodified Megatron-LM tree the plugin's flags and scheduler.

:func:`install` (what ``python -m megatron_power.launch`` calls before running the
script) does three things, each at a seam every release from core_r0.14 to core_r0.19
has:

* ``megatron.training.arguments.parse_args`` gains the plugin's flags through its own
  ``extra_args_provider`` hook (chained after the script's), and ``--lr-decay-style`` /
  ``--lr-wsd-decay-style`` accept the plugin's values. That covers the add_argument era
  (<=0.15), the SchedulerConfig era (0.16+; its Literal becomes argparse choices) and the
  0.18+ ``parse_and_validate_args`` path, which calls ``parse_args``.
* ``validate_args`` additionally checks the plugin's settings, once Megatron has filled
  in its defaults (the global batch size), so bad input stops before training with one
  line naming the flag.
* with ``--power-mup``: ``core_transformer_config_from_args`` returns the muP config,
  ``get_model`` (or, from 0.19, the model builder's ``pre_wrap_hooks``) applies muP to
  each chunk before Megatron wraps it, and
  ``get_megatron_optimizer`` receives muP's per-group overrides;
* resuming: a checkpoint's optimizer param groups are paired with the run's by muP
  role as well (``MegatronOptimizer._filter_and_reorder_param_groups``), and under
  ``--override-opt_param-scheduler`` every group keeps this run's LR range
  (``load_checkpoint``), on every line;
* ``megatron.training.training.OptimizerParamScheduler``, which
  ``get_optimizer_param_scheduler`` looks up by module-global name, becomes
  :class:`MegatronLMScheduler`, which takes Megatron's arguments unchanged and the
  plugin's options from ``get_args()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from collections.abc import Callable
from typing import Any

from ..arguments import (
    add_mup_args,
    add_power_args,
    mup_from_args,
    name_the_mup_flag,
    rampup_as_step_schedule,
    settings_from_args,
)
from ..knobs import dest_of, knobs
from ..megatron.mup import (
    GROUP_ROLE_KEY,
    apply_mup,
    mup_config_overrides,
    mup_scale_lr_cond,
    mup_transformer_config,
    single_lr_mult,
)
from ..megatron.scheduler import PowerOptimizerParamScheduler
from ..mup.rules import ModelShape
from ..schedules.decay import MEGATRON_WSD_SHAPES
from ..schedules.settings import PLUGIN_STYLES, ScheduleSettings
from . import batch_schedule

_MARK = "_megatron_power_hook"
#: whether the tree's get_megatron_optimizer takes per-group overrides (0.16+); set by install
_PER_GROUP_OVERRIDES = True


def plugin_scheduler_fields() -> tuple[str, ...]:
    """ScheduleSettings fields that Megatron's OptimizerParamScheduler constructor does
    not take: the hook passes them from the parsed flags (derived, so none is missed)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    megatron = set(inspect.signature(OptimizerParamScheduler.__init__).parameters)
    return tuple(f.name for f in dataclasses.fields(ScheduleSettings) if f.name not in megatron)


def _extend_choices(parser: argparse.ArgumentParser, dest: str, extra: list[str]) -> None:
    for action in parser._actions:
        if action.dest == dest and action.choices is not None:
            action.choices = list(action.choices) + [c for c in extra if c not in action.choices]
            return
    raise RuntimeError(f"megatron-power: this Megatron-LM tree has no --{dest.replace('_', '-')}")


def add_megatron_lm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``extra_args_provider`` for Megatron-LM: the plugin's flags, and the plugin's values
    of Megatron's own choice flags (from the knobs' choices)."""
    for _item, meta in knobs(ScheduleSettings):
        if meta.megatron_lm_owns and meta.choices is not None:
            _extend_choices(parser, meta.dest, list(meta.choices))
    batch_schedule.add_flag_where_missing(parser)
    return add_mup_args(add_power_args(parser))


def uses_plugin(args: argparse.Namespace) -> bool:
    """True when the run asks for anything only the plugin computes."""
    if args.lr_decay_style in PLUGIN_STYLES:
        return True
    if getattr(args, "lr_wsd_decay_style", None) not in (None, *MEGATRON_WSD_SHAPES):
        return True
    for _item, meta in knobs(ScheduleSettings):
        for flag in meta.flags():
            if flag in meta.megatron_lm_flags():
                continue
            if getattr(args, dest_of(flag), None) is not None:
                return True
    return False


def check_before_megatron(args: argparse.Namespace) -> None:
    """Stop, with one line naming the flag, on what Megatron-LM's own ``validate_args``
    would end in a bare AssertionError or silently ignore."""
    try:
        if getattr(args, "seq_length", None) is None and not getattr(
            args, "encoder_seq_length", None
        ):
            raise ValueError("--seq-length: required (the tokens in every sample)")
        batch_schedule.prepare(args)
        rampup = getattr(args, "rampup_batch_size", None)
        if rampup and not getattr(args, batch_schedule.BY_PLUGIN, False):
            # 0.18+ deprecated the ramp: its calculator ignores it (a warning, no ramp).
            schedule = rampup_as_step_schedule(
                [int(x) for x in rampup], args.global_batch_size, args.seq_length
            )
            raise ValueError(
                "--rampup-batch-size: this Megatron-LM ignores it (deprecated since 0.18); "
                f'give the same ramp as --step-batch-size-schedule "{schedule}" '
                "without --global-batch-size"
            )
    except ValueError as error:
        sys.stderr.write(f"megatron-power: error: {error}\n")
        raise SystemExit(2) from None


def flag_given(flag: str, argv: list[str]) -> bool:
    """Whether ``flag`` is on the command line (Megatron-LM parses with allow_abbrev off)."""
    return any(item == flag or item.startswith(flag + "=") for item in argv)


def validate_plugin_args(args: argparse.Namespace) -> None:
    """Build the schedule settings and muP rules now, so a bad flag stops the run before
    training, with one line naming the flag."""
    try:
        if uses_plugin(args):
            settings_from_args(args)
        mup = mup_from_args(args)
        if mup is not None:
            try:
                rules = mup.resolve(_model_shape(args))
                if not _PER_GROUP_OVERRIDES:
                    single_lr_mult(mup, rules)  # <= 0.15: one lr_mult for every group
            except ValueError as error:
                raise ValueError(name_the_mup_flag(str(error))) from None
    except ValueError as error:
        sys.stderr.write(f"megatron-power: error: {error}\n")
        raise SystemExit(2) from None


def _model_shape(args: argparse.Namespace) -> ModelShape:
    head_dim = args.kv_channels or args.hidden_size // args.num_attention_heads
    moe_ffn = (
        getattr(args, "moe_ffn_hidden_size", None) if getattr(args, "num_experts", None) else None
    )
    tied = not getattr(args, "untie_embeddings_and_output_weights", False)
    return ModelShape(args.hidden_size, args.num_layers, head_dim, moe_ffn, tied_readout=tied)


def with_mup_config(build_config: Callable) -> Callable:
    """Wrap ``core_transformer_config_from_args``: muP's attention scale and init methods."""

    def core_transformer_config_from_args(args, *rest, **options):
        config = build_config(args, *rest, **options)
        return mup_transformer_config(config, mup_from_args(args))

    return core_transformer_config_from_args


def with_mup_model(get_model: Callable, get_args: Callable) -> Callable:
    """Wrap ``get_model``: apply muP to each model chunk the provider builds, before
    Megatron wraps it (DDP, Float16Module)."""

    def wrapped_get_model(model_provider_func, *rest, **options):
        mup = mup_from_args(get_args())
        if mup is None:
            return get_model(model_provider_func, *rest, **options)

        def provider(*args, **kwargs):
            return _apply_mup_and_say_so(model_provider_func(*args, **kwargs), mup)

        return get_model(provider, *rest, **options)

    return wrapped_get_model


def with_mup_pre_wrap_hook(setup_model_and_optimizer: Callable, get_args: Callable) -> Callable:
    """Wrap ``setup_model_and_optimizer``: on 0.19+ a script that passes a config container
    has its model built by the container's builder, not ``get_model``; muP goes in through
    the builder's seam, ``cfg_container.model.pre_wrap_hooks``, before Megatron wraps it."""

    def wrapped(*args, **options):
        container = options.get("cfg_container")
        model_config = getattr(container, "model", None)
        mup = mup_from_args(get_args())
        if mup is not None and model_config is not None:
            model_config.pre_wrap_hooks = [
                *model_config.pre_wrap_hooks,
                lambda chunks: [_apply_mup_and_say_so(chunk, mup) for chunk in chunks],
            ]
        return setup_model_and_optimizer(*args, **options)

    return wrapped


def _apply_mup_and_say_so(model: Any, mup: Any) -> Any:
    """apply_mup, with one line in the log per model chunk (rank 0)."""
    model = apply_mup(model, mup)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        rules = model._megatron_power_mup
        print(
            f"megatron-power: muP applied to {type(model).__name__} (width multiplier "
            f"{rules.width_mult:g}, embedding x{rules.embedding_multiplier:g}, "
            f"residual x{rules.residual_multiplier:g}, logits /{rules.logits_divisor:g})",
            flush=True,
        )
    return model


def with_mup_optimizer(get_megatron_optimizer: Callable, get_args: Callable) -> Callable:
    """Wrap ``get_megatron_optimizer``: muP's per-group LR (and eps, wd) overrides, merged
    with whatever overrides Megatron-LM passes (0.16+), or ``scale_lr_cond``/``lr_mult``
    (up to 0.15)."""
    parameters = inspect.signature(get_megatron_optimizer).parameters

    def wrapped(config, model_chunks, *rest, **options):
        mup = mup_from_args(get_args())
        if mup is None:
            return get_megatron_optimizer(config, model_chunks, *rest, **options)
        model_config = _unwrap(model_chunks[0]).config
        if "config_overrides" in parameters:
            bound = inspect.signature(get_megatron_optimizer).bind(
                config, model_chunks, *rest, **options
            )
            bound.arguments["config_overrides"] = mup_config_overrides(
                model_config, mup, config, bound.arguments.get("config_overrides")
            )
            return get_megatron_optimizer(*bound.args, **bound.kwargs)
        bound = inspect.signature(get_megatron_optimizer).bind(
            config, model_chunks, *rest, **options
        )
        if bound.arguments.get("scale_lr_cond") is not None:
            raise ValueError("--power-mup: this run already sets scale_lr_cond; cannot add muP's")
        scale_lr_cond, lr_mult = mup_scale_lr_cond(model_config, mup)
        bound.arguments["scale_lr_cond"] = scale_lr_cond
        bound.arguments["lr_mult"] = lr_mult
        return get_megatron_optimizer(*bound.args, **bound.kwargs)

    return wrapped


def with_group_matching_by_role(filter_and_reorder: Callable) -> Callable:
    """Wrap ``MegatronOptimizer._filter_and_reorder_param_groups`` (how a checkpoint's
    param groups are paired with the run's): pair them by Megatron's identifier without
    the LR range, plus the muP role.

    Megatron 0.16-0.18 leave max_lr out, so muP's hidden group (LR/m) and the embedding
    group collide and the load fails; 0.19+ put max_lr in, so a resume with a changed
    ``--lr`` finds no group. The role tells muP's groups apart on every line, and the LR
    range a resume continues with is settled after the load (:func:`with_lr_range_kept`).
    Where this pairing is not one to one, Megatron's own runs unchanged.
    """

    def key_of(group: dict) -> tuple:
        from megatron.core.optimizer import optimizer as megatron_optimizer

        names = [k for k in megatron_optimizer.param_group_identifier_keys
                 if k not in ("max_lr", "min_lr")]  # fmt: skip
        values = tuple(group.get(k, group.get(f"pre_{k}")) for k in names)
        return (*values, group.get(GROUP_ROLE_KEY))

    def filter_and_reorder_param_groups(current_groups: list, state_dict_groups: list) -> list:
        saved: dict[tuple, dict] = {}
        for group in state_dict_groups:
            saved.setdefault(key_of(group), group)
        needed = [key_of(group) for group in current_groups]
        if len(saved) != len(state_dict_groups) or any(key not in saved for key in needed):
            return filter_and_reorder(current_groups, state_dict_groups)
        params_in_state_dict_order = [group["params"] for group in state_dict_groups]
        paired = []
        for key, params in zip(needed, params_in_state_dict_order, strict=False):
            group = saved[key]
            group["params"] = params
            paired.append(group)
        return paired

    return staticmethod(filter_and_reorder_param_groups)


def with_lr_range_kept(load_checkpoint: Callable, get_args: Callable) -> Callable:
    """Wrap ``load_checkpoint``: under ``--override-opt_param-scheduler`` every param group
    continues with this run's LR range (its max_lr/min_lr as built, muP's per-group ratios
    included).

    Without this, loading the optimizer state puts back the checkpoint's ranges (0.14-0.19:
    a changed ``--lr`` is not applied to any group) or sets every group to ``--lr`` (main
    after 0.19, PR #3720: muP's ratios are erased).
    """
    signature = inspect.signature(load_checkpoint)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        optimizer = bound.arguments.get("optimizer")
        scheduler = bound.arguments.get("opt_param_scheduler")
        groups = getattr(optimizer, "param_groups", None) or []
        built = [(group.get("max_lr"), group.get("min_lr")) for group in groups]
        result = load_checkpoint(*args, **kwargs)
        if getattr(get_args(), "override_opt_param_scheduler", False) and built:
            for group, (max_lr, min_lr) in zip(optimizer.param_groups, built, strict=True):
                if max_lr is not None:
                    group["max_lr"] = max_lr
                if min_lr is not None:
                    group["min_lr"] = min_lr
            if scheduler is not None:
                scheduler.step(0)
        return result

    return wrapped


def _unwrap(module: Any) -> Any:
    """The GPTModel inside Megatron's DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module


def scheduler_arguments(megatron_args: argparse.Namespace, kwargs: dict[str, Any]) -> dict:
    """The keyword arguments Megatron-LM passes to OptimizerParamScheduler, completed with
    every ScheduleSettings field its constructor lacks (from the parsed flags)."""
    if not uses_plugin(megatron_args):
        return dict(kwargs)
    if getattr(megatron_args, "train_samples", None):
        # A sample-based run: Megatron has filled in train_iters from it by now.
        megatron_args = argparse.Namespace(**{**vars(megatron_args), "train_iters": None})
    settings = settings_from_args(megatron_args)
    completed = {**kwargs, **{name: getattr(settings, name) for name in plugin_scheduler_fields()}}
    # Megatron passes its own default shape when none was given; the settings know whether
    # the user chose one (the style's one default otherwise).
    if "lr_wsd_decay_style" in kwargs:
        completed["lr_wsd_decay_style"] = settings.lr_wsd_decay_style
    return completed


class MegatronLMScheduler(PowerOptimizerParamScheduler):
    """Megatron-LM constructs this with OptimizerParamScheduler's arguments; the plugin's
    options come from Megatron-LM's parsed arguments."""

    latest: MegatronLMScheduler | None = None
    """The run's scheduler (one per process), for the training log."""

    def __init__(self, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        from megatron.training.global_vars import get_args

        super().__init__(optimizer, *args, **scheduler_arguments(get_args(), kwargs))
        MegatronLMScheduler.latest = self

    def base_lr(self) -> float:
        """The LR of a group with the run's own max_lr/min_lr (no muP or other scaling)."""
        return self.get_lr({"max_lr": self.max_lr, "min_lr": self.min_lr})


def with_base_lr_logged(training_log: Callable) -> Callable:
    """Wrap ``training_log`` on 0.14/0.15: Megatron logs the LR of the last param group,
    which with muP's ``lr_mult`` group is the hidden matrices' LR / m; log the run's."""
    signature = inspect.signature(training_log)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        scheduler = MegatronLMScheduler.latest
        bound = signature.bind(*args, **kwargs)
        if scheduler is not None and bound.arguments.get("learning_rate") is not None:
            bound.arguments["learning_rate"] = scheduler.base_lr()
        return training_log(*bound.args, **bound.kwargs)

    return wrapped


def _replace_everywhere(original: Any, replacement: Any) -> None:
    """Rebind ``original`` in every loaded module that imported it by name."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not namespace:
            continue
        for name, value in list(namespace.items()):
            if value is original:
                setattr(module, name, replacement)


def install() -> None:
    """Install the hooks into the importable Megatron-LM tree; safe to call twice."""
    import megatron.training.arguments as arguments
    import megatron.training.initialize  # noqa: F401  (binds parse_args by name in some releases)
    import megatron.training.training as training

    if getattr(arguments.parse_args, _MARK, False):
        return
    original_parse = arguments.parse_args
    original_validate = arguments.validate_args

    def parse_args(extra_args_provider=None, ignore_unknown_args=False):
        def provider(parser):
            if extra_args_provider is not None:
                parser = extra_args_provider(parser)
            return add_megatron_lm_args(parser)

        args = original_parse(provider, ignore_unknown_args)
        # Megatron-LM fills in "exponential" when the flag is absent; the plugin's one
        # default (exponential_e for power) must apply then, as at every other entry point.
        args.megatron_power_wsd_decay_style_given = flag_given("--lr-wsd-decay-style", sys.argv)
        return args

    def validate_args(args, *rest, **options):
        check_before_megatron(args)
        result = original_validate(args, *rest, **options)
        validate_plugin_args(args)
        return result

    from megatron.training.global_vars import get_args

    for function in (parse_args, validate_args):
        setattr(function, _MARK, True)
        function.__doc__ = "Megatron-LM's, with megatron-power's flags and checks."
    _replace_everywhere(original_parse, parse_args)
    _replace_everywhere(original_validate, validate_args)
    _replace_everywhere(
        arguments.core_transformer_config_from_args,
        with_mup_config(arguments.core_transformer_config_from_args),
    )
    training.OptimizerParamScheduler = MegatronLMScheduler
    from megatron.core.optimizer.optimizer import MegatronOptimizer

    MegatronOptimizer._filter_and_reorder_param_groups = with_group_matching_by_role(
        MegatronOptimizer._filter_and_reorder_param_groups
    )
    batch_schedule.install(_replace_everywhere, get_args)
    import megatron.training.checkpointing as checkpointing

    _replace_everywhere(
        checkpointing.load_checkpoint, with_lr_range_kept(checkpointing.load_checkpoint, get_args)
    )
    training.get_model = with_mup_model(training.get_model, get_args)
    training.setup_model_and_optimizer = with_mup_pre_wrap_hook(
        training.setup_model_and_optimizer, get_args
    )
    global _PER_GROUP_OVERRIDES
    _PER_GROUP_OVERRIDES = (
        "config_overrides" in inspect.signature(training.get_megatron_optimizer).parameters
    )
    if not _PER_GROUP_OVERRIDES:  # <= 0.15
        training.training_log = with_base_lr_logged(training.training_log)
    training.get_megatron_optimizer = with_mup_optimizer(training.get_megatron_optimizer, get_args)
