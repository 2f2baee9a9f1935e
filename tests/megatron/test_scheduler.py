"""PowerOptimizerParamScheduler against Megatron-Core's own OptimizerParamScheduler."""

import math
from itertools import accumulate, pairwise

import pytest
import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_power.megatron import PowerOptimizerParamScheduler, ScheduleMismatchError
from megatron_power.schedules import PowerLaw, wsd_schedule

SEQ = 256


def make_optimizer(max_lrs=(1e-3,), min_ratio=0.1):
    groups = [
        {
            "params": [torch.nn.Parameter(torch.zeros(3))],
            "max_lr": max_lr,
            "min_lr": max_lr * min_ratio,
        }
        for max_lr in max_lrs
    ]
    return torch.optim.AdamW(groups, lr=max_lrs[0])


def megatron_args(style="cosine", **overrides):
    args = dict(
        init_lr=0.0,
        max_lr=1e-3,
        min_lr=1e-4,
        lr_warmup_steps=64,
        lr_decay_steps=2048,
        lr_decay_style=style,
        start_wd=0.01,
        end_wd=0.1,
        wd_incr_steps=2048,
        wd_incr_style="cosine",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=False,
    )
    args.update(overrides)
    return args


def lrs(scheduler):
    return [group["lr"] for group in scheduler.optimizer.param_groups]


def run(scheduler, increments):
    out = []
    for increment in increments:
        scheduler.step(increment)
        out.append((lrs(scheduler), [g["weight_decay"] for g in scheduler.optimizer.param_groups]))
    return out


INCREMENTS = [8] * 100 + [16] * 50 + [32] * 60
MEGATRON_CASES = [
    ("constant", {}),
    ("linear", {}),
    ("cosine", {}),
    ("inverse-square-root", {}),
] + [
    ("WSD", dict(wsd_decay_steps=512, lr_wsd_decay_style=shape))
    for shape in ("exponential", "linear", "cosine", "minus_sqrt")
]


@pytest.mark.parametrize(("style", "extra"), MEGATRON_CASES)
def test_megatron_styles_equal_megatron_value_for_value(style, extra):
    ours = PowerOptimizerParamScheduler(
        make_optimizer((1e-3, 5e-4)), **megatron_args(style, **extra)
    )
    theirs = OptimizerParamScheduler(make_optimizer((1e-3, 5e-4)), **megatron_args(style, **extra))
    assert ours.schedule is None
    assert run(ours, INCREMENTS) == run(theirs, INCREMENTS)
    assert {k: v for k, v in ours.state_dict().items() if k != "megatron_power"} == (
        theirs.state_dict()
    )


@pytest.mark.parametrize("shape", ["exponential", "linear", "cosine", "minus_sqrt"])
def test_pure_wsd_equals_megatron_wsd(shape):
    megatron = OptimizerParamScheduler(
        make_optimizer(), **megatron_args("WSD", wsd_decay_steps=512, lr_wsd_decay_style=shape)
    )
    pure = wsd_schedule(warmup=64 * SEQ, total=2048 * SEQ, decay=512 * SEQ, shape=shape)
    for samples in accumulate(INCREMENTS):
        megatron.step(samples - megatron.num_steps)
        assert pure.lr(samples * SEQ, max_lr=1e-3, min_lr=1e-4) == pytest.approx(
            lrs(megatron)[0], rel=1e-14, abs=1e-18
        )


def power_scheduler(optimizer=None, **overrides):
    """The Power style with a tail, as Megatron-LM would build it, plus ``overrides``."""
    args = megatron_args(
        "power",
        lr_warmup_steps=64,
        lr_decay_steps=4096,
        wsd_decay_steps=512,
        lr_wsd_decay_style="exponential_e",
        max_lr=0.02,
        min_lr=0.0,
        seq_length=SEQ,
        lr_power_a=4.0,
        lr_power_b=-0.51,
    )
    args.update(overrides)
    return PowerOptimizerParamScheduler(optimizer or make_optimizer((0.02,), 0.0), **args)


def test_power_uses_the_batch_in_force_at_every_step():
    scheduler = power_scheduler(lr_power_a=0.5)  # small a: below the cap at this scale
    law = PowerLaw(a=0.5, b=-0.51)
    tokens = 0
    for increment in [8] * 20 + [16] * 20 + [64] * 20:  # a batch-size ramp
        scheduler.step(increment)
        tokens += increment * SEQ
        if scheduler.num_steps > 64:
            expected = law.lr(tokens, increment * SEQ, max_lr=0.02)
            assert expected < 0.02
            assert lrs(scheduler)[0] == expected


def test_power_without_a_tail_needs_no_budget():
    scheduler = PowerOptimizerParamScheduler(
        make_optimizer((0.02,), 0.0),
        **megatron_args("power", lr_decay_steps=None, max_lr=0.02, min_lr=0.0),
        seq_length=SEQ,
        lr_power_a=4.0,
    )
    scheduler.step(10**9)
    expected = PowerLaw(a=4.0).lr(10**9 * SEQ, 10**9 * SEQ, 0.02)
    assert lrs(scheduler)[0] == expected


def test_power_tail_ends_at_min_lr():
    scheduler = power_scheduler(min_lr=1e-5)
    scheduler.optimizer.param_groups[0]["min_lr"] = 1e-5
    scheduler.step(4096)
    assert lrs(scheduler)[0] == 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(lr_wsd_decay_style="half_life"),
        dict(lr_wsd_decay_style="half_life", lr_decay_half_life_steps=64),
        dict(lr_wsd_cycle_steps=[1024, 2048], lr_wsd_decay_style="cosine"),
        dict(lr_decay_style="WSD", lr_wsd_decay_style="exponential_e"),
    ],
)
def test_param_groups_keep_their_ratio_at_every_step(overrides):
    optimizer = make_optimizer((0.02, 0.005), min_ratio=0.01)
    scheduler = power_scheduler(optimizer=optimizer, min_lr=0.0002, **overrides)
    assert scheduler.schedule is not None
    seen = set()
    for increment in INCREMENTS * 3:
        scheduler.step(increment)
        first, second = lrs(scheduler)
        assert second == pytest.approx(first / 4, rel=1e-12)
        seen.add(first)
    assert len(seen) > 50  # the LR really moved through warmup and decay


def test_changed_megatron_style_parameter_is_refused():
    first = PowerOptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    run(first, INCREMENTS[:10])
    changed = PowerOptimizerParamScheduler(
        make_optimizer(), **megatron_args("cosine", lr_decay_steps=4096)
    )
    with pytest.raises(ScheduleMismatchError, match=r"^lr_decay_steps"):
        changed.load_state_dict(first.state_dict())


def megatron_param_groups(model, lr, min_lr, second_layer_scale):
    """Param groups from megatron-core's own code, giving layer "1." a scaled LR.

    0.16+ expresses per-group LRs as ParamKey -> ParamGroupOverride(max_lr, min_lr);
    up to 0.15 as scale_lr_cond + lr_mult, which Megatron's ``step`` applies. Each line
    of CI runs the path its megatron-core has.
    """
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups, optimizer_config

    if hasattr(optimizer_config, "ParamKey"):
        from megatron.core.optimizer_param_scheduler import ParamGroupOverride

        config = OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=0.1)
        override = ParamGroupOverride(
            max_lr=lr * second_layer_scale, min_lr=min_lr * second_layer_scale
        )
        return _get_param_groups([model], config, {optimizer_config.ParamKey(name="1.*"): override})
    return _get_param_groups(
        [model],
        no_weight_decay_cond=None,
        scale_lr_cond=lambda name, param: name.startswith("1."),
        lr_mult=second_layer_scale,
        lr=lr,
        min_lr=min_lr,
        decoupled_lr=None,
        decoupled_min_lr=None,
    )


def test_megatron_param_groups_follow_their_own_lr(single_process_group):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    groups = megatron_param_groups(model, lr=0.02, min_lr=0.002, second_layer_scale=0.25)
    optimizer = torch.optim.AdamW(groups, lr=0.02)
    scheduler = power_scheduler(optimizer=optimizer, min_lr=0.002)
    second_layer = {id(p) for p in model[1].parameters()}
    scaled = [g for g in optimizer.param_groups if id(g["params"][0]) in second_layer]
    base = [g for g in optimizer.param_groups if id(g["params"][0]) not in second_layer]
    assert scaled and base

    batch = torch.randn(16, 4)
    for increment in INCREMENTS:
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()
        scheduler.step(increment)
        for group in scaled:
            assert group["lr"] == pytest.approx(base[0]["lr"] / 4, rel=1e-12)
    assert scheduler.num_steps == sum(INCREMENTS)
    assert base[0]["lr"] == scheduler.schedule.lr(
        scheduler.tokens_seen, max_lr=0.02, min_lr=0.002, batch_tokens=32 * SEQ
    )


RESUME_CASES = {
    "power": {},
    "power-wsd-s": dict(lr_wsd_cycle_steps=[1024, 2048, 4096]),
    "power-half-life": dict(lr_wsd_decay_style="half_life", lr_decay_half_life_steps=100),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_is_bit_identical_with_a_batch_ramp(case):
    increments = [4] * 100 + [8] * 100 + [16] * 100 + [32] * 100  # ends past 4096 samples
    stop = 150  # mid-ramp, mid-run

    whole = power_scheduler(lr_power_a=4.0, **RESUME_CASES[case])
    uninterrupted = [lrs(whole) for _ in increments if not whole.step(_)]

    first = power_scheduler(lr_power_a=4.0, **RESUME_CASES[case])
    before = [lrs(first) for _ in increments[:stop] if not first.step(_)]
    state = first.state_dict()
    torch.save(state, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    second = power_scheduler(lr_power_a=4.0, **RESUME_CASES[case])
    second.load_state_dict(torch.load(buffer, weights_only=False))
    assert lrs(second) == before[-1]
    after = [lrs(second) for _ in increments[stop:] if not second.step(_)]
    assert before + after == uninterrupted


def test_resume_of_megatron_style_matches_megatron():
    ours = PowerOptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    theirs = OptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    run(ours, INCREMENTS[:50])
    run(theirs, INCREMENTS[:50])
    fresh_ours = PowerOptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    fresh_theirs = OptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    fresh_ours.load_state_dict(ours.state_dict())
    fresh_theirs.load_state_dict(theirs.state_dict())
    assert run(fresh_ours, INCREMENTS[50:]) == run(fresh_theirs, INCREMENTS[50:])


def test_plain_megatron_checkpoint_loads_into_the_subclass():
    theirs = OptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    run(theirs, INCREMENTS[:50])
    ours = PowerOptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    ours.load_state_dict(theirs.state_dict())
    assert run(ours, INCREMENTS[50:]) == run(theirs, INCREMENTS[50:])


CHANGED_FIELDS = [
    ("lr_power_a", 5.0),
    ("lr_power_b", -0.4),
    ("lr_power_reference_seq_length", 2048),
    ("lr_power_batch_exponent", 0.8),
    ("lr_power_batch_size", 64),
    ("seq_length", 512),
    ("wsd_decay_steps", 256),
    ("lr_wsd_decay_style", "linear"),
    ("lr_warmup_steps", 32),
    ("lr_decay_steps", 8192),
    ("max_lr", 0.01),
    ("lr_wsd_cycle_steps", [1024, 4096]),
    ("lr_decay_half_life_steps", 50),
]


@pytest.mark.parametrize(("field", "value"), CHANGED_FIELDS)
def test_changed_schedule_parameter_is_refused(field, value):
    first = power_scheduler()
    run(first, [8] * 20)
    changed = power_scheduler(**{field: value})
    with pytest.raises(ScheduleMismatchError, match=f"^{field}: the checkpoint has"):
        changed.load_state_dict(first.state_dict())


def test_style_switch_from_a_plain_megatron_checkpoint_is_refused():
    theirs = OptimizerParamScheduler(make_optimizer(), **megatron_args("cosine"))
    run(theirs, INCREMENTS[:10])
    with pytest.raises(ScheduleMismatchError, match="lr_decay_style"):
        power_scheduler().load_state_dict(theirs.state_dict())


def test_override_keeps_this_runs_values_and_use_checkpoint_keeps_the_checkpoints():
    first = power_scheduler(lr_power_a=4.0)
    run(first, [8] * 200)
    state = first.state_dict()

    overriding = power_scheduler(lr_power_a=8.0, override_opt_param_scheduler=True)
    overriding.load_state_dict(state)
    assert overriding.settings.lr_power_a == 8.0
    law = PowerLaw(a=8.0)
    assert lrs(overriding)[0] == law.lr(200 * 8 * SEQ, 8 * SEQ, 0.02)

    reusing = power_scheduler(lr_power_a=8.0, use_checkpoint_opt_param_scheduler=True)
    with pytest.warns(UserWarning, match="lr_power_a"):
        reusing.load_state_dict(state)
    assert reusing.settings.lr_power_a == 4.0
    assert run(reusing, [8] * 50) == run(first, [8] * 50)


def test_the_python_api_default_refuses_a_changed_schedule_as_the_readme_says():
    """Constructed with Megatron's positional arguments only (no switch given), a
    checkpoint with another schedule is refused, not silently taken over."""
    args = megatron_args("WSD", wsd_decay_steps=256)
    del args["use_checkpoint_opt_param_scheduler"], args["override_opt_param_scheduler"]
    first = PowerOptimizerParamScheduler(make_optimizer(), **args)
    run(first, [8] * 20)
    changed = PowerOptimizerParamScheduler(make_optimizer(), **{**args, "max_lr": 2e-3})
    with pytest.raises(ScheduleMismatchError, match=r"^max_lr: the checkpoint has 0\.001"):
        changed.load_state_dict(first.state_dict())


def test_use_checkpoint_says_which_values_it_replaces():
    first = power_scheduler(lr_power_a=4.0)
    run(first, [8] * 20)
    reusing = power_scheduler(lr_power_a=8.0, use_checkpoint_opt_param_scheduler=True)
    with pytest.warns(UserWarning, match="lr_power_a 8.0 -> 4.0"):
        reusing.load_state_dict(first.state_dict())


def test_branch_decay_from_a_stable_checkpoint():
    trunk = power_scheduler(lr_power_a=4.0)
    run(trunk, [8] * 200)  # 1600 samples: inside the stable phase
    at_branch = lrs(trunk)[0]

    branch = power_scheduler(
        lr_power_a=4.0,
        lr_decay_steps=2000,  # the branch run ends sooner; allowed with a branch decay
        lr_branch_decay_start_steps=1600,
        lr_branch_decay_steps=400,
        lr_branch_decay_style="linear",
    )
    branch.load_state_dict(trunk.state_dict())
    assert lrs(branch)[0] == at_branch
    history = run(branch, [8] * 50)
    assert history[24][0][0] == pytest.approx(0.5 * PowerLaw(a=4.0).lr(1600 * SEQ, 8 * SEQ, 0.02))
    assert history[-1][0][0] == 0.0  # min_lr exactly at 2000 samples
    assert all(later[0][0] <= earlier[0][0] for earlier, later in pairwise(history))


def test_a_branch_stopped_inside_its_decay_resumes_exactly():
    def branch_scheduler():
        return power_scheduler(
            lr_decay_steps=2000,
            lr_branch_decay_start_steps=1600,
            lr_branch_decay_steps=400,
            lr_branch_decay_style="linear",
        )

    trunk = power_scheduler()
    run(trunk, [8] * 200)
    uninterrupted = branch_scheduler()
    uninterrupted.load_state_dict(trunk.state_dict())
    stopped = branch_scheduler()
    stopped.load_state_dict(trunk.state_dict())
    run(stopped, [8] * 20)  # 160 samples into the branch's decay
    resumed = branch_scheduler()
    resumed.load_state_dict(stopped.state_dict())  # the same branch: not a new one
    assert run(resumed, [8] * 30) == run(uninterrupted, [8] * 50)[20:]


def test_branch_decay_before_the_checkpoint_is_refused():
    trunk = power_scheduler()
    run(trunk, [8] * 200)
    branch = power_scheduler(lr_branch_decay_start_steps=800, lr_branch_decay_steps=400)
    with pytest.raises(ScheduleMismatchError, match="lr_branch_decay_start_steps"):
        branch.load_state_dict(trunk.state_dict())


def test_wsd_s_through_the_scheduler():
    scheduler = PowerOptimizerParamScheduler(
        make_optimizer(),
        **megatron_args("WSD", wsd_decay_steps=100, lr_wsd_decay_style="linear"),
        seq_length=SEQ,
        lr_wsd_cycle_steps=[500, 1000, 2048],
    )
    seen = {}
    for _ in range(2048 // 4):
        scheduler.step(4)
        seen[scheduler.num_steps] = lrs(scheduler)[0]
    for budget in (500, 1000, 2048):
        assert seen[budget] == 1e-4
        assert seen[budget - 100] == 1e-3
        assert seen[budget - 52] == pytest.approx(1e-4 + 0.52 * 9e-4)
    assert seen[504] == 1e-3 and seen[1004] == 1e-3


def test_half_life_wsd_through_the_scheduler():
    scheduler = PowerOptimizerParamScheduler(
        make_optimizer(),
        **megatron_args("WSD", wsd_decay_steps=400, lr_wsd_decay_style="half_life"),
        seq_length=SEQ,
        lr_decay_half_life_steps=100,
    )
    scheduler.step(1648 + 100)
    assert lrs(scheduler)[0] == pytest.approx(5e-4)
    scheduler.step(300)
    assert lrs(scheduler)[0] == 1e-4


BAD_INPUT = [
    (dict(lr_power_b=0.0), "lr_power_b"),
    (dict(lr_power_b=0.5), "lr_power_b"),
    (dict(lr_power_a=0.0), "lr_power_a"),
    (dict(lr_power_a=-4.0), "lr_power_a"),
    (dict(lr_warmup_steps=5000), "lr_warmup_steps"),
    (dict(wsd_decay_steps=5000), "wsd_decay_steps"),
    (dict(lr_warmup_steps=-1), "lr_warmup_steps"),
    (dict(wsd_decay_steps=-5), "wsd_decay_steps"),
    (dict(lr_decay_steps=-5), "lr_decay_steps"),
    (dict(lr_wsd_decay_style="cubic"), "lr_wsd_decay_style"),
    (dict(lr_branch_decay_style="cubic"), "lr_branch_decay_style"),
    (dict(lr_decay_style="power-law"), "lr_decay_style"),
    (dict(lr_wsd_cycle_steps=[2048, 1024]), "lr_wsd_cycle_steps"),
    (dict(lr_wsd_cycle_steps=[1024, 1100]), "lr_wsd_cycle_steps"),
    (dict(lr_branch_decay_start_steps=10, lr_branch_decay_steps=10), "lr_branch_decay_start"),
    (dict(lr_branch_decay_start_steps=1000), "lr_branch_decay_steps"),
    (dict(seq_length=None), "seq_length"),
    (dict(seq_length=0), "seq_length"),
    (dict(min_lr=-1.0), "min_lr"),
    (dict(global_batch_size=0), "global_batch_size"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUT)
def test_bad_input_is_refused_at_construction_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        power_scheduler(**overrides)


def test_branch_decay_needs_a_stable_phase():
    with pytest.raises(ValueError, match=r"^lr_decay_style"):
        PowerOptimizerParamScheduler(
            make_optimizer(),
            **megatron_args("cosine"),
            seq_length=SEQ,
            lr_branch_decay_start_steps=100,
            lr_branch_decay_steps=10,
        )


def test_decay_shapes_agree_with_megatron_names():
    # Megatron's "exponential" through the plugin (forced by WSD-S) is 2 * 0.5**r - 1.
    scheduler = PowerOptimizerParamScheduler(
        make_optimizer(),
        **megatron_args("WSD", wsd_decay_steps=400, lr_wsd_decay_style="exponential", min_lr=0.0),
        seq_length=SEQ,
        lr_wsd_cycle_steps=[2048],
    )
    scheduler.optimizer.param_groups[0]["min_lr"] = 0.0
    scheduler.step(1648 + 100)
    assert lrs(scheduler)[0] == pytest.approx(1e-3 * (2 * math.pow(0.5, 0.25) - 1))
