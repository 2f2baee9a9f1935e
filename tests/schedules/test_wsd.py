"""WSD, WSD-S cycles and branch decay as pure functions."""

import pytest

from megatron_power.schedules import (
    DecayWindow,
    PowerLaw,
    Schedule,
    with_branch_decay,
    wsd_s_schedule,
    wsd_schedule,
)

LR = dict(max_lr=1.0, min_lr=0.1)


def test_wsd_phases():
    schedule = wsd_schedule(warmup=100, total=1000, decay=200, shape="linear")
    assert schedule.lr(50, **LR) == 0.5
    assert schedule.lr(100, **LR) == 1.0
    assert schedule.lr(800, **LR) == 1.0
    assert schedule.lr(900, **LR) == pytest.approx(0.55)
    assert schedule.lr(1000, **LR) == 0.1
    assert schedule.lr(5000, **LR) == 0.1


def test_wsd_in_samples_equals_wsd_in_tokens():
    samples = wsd_schedule(warmup=10, total=100, decay=20, shape="minus_sqrt")
    seq = 4096
    tokens = wsd_schedule(warmup=10 * seq, total=100 * seq, decay=20 * seq, shape="minus_sqrt")
    for sample in range(0, 120):
        assert samples.lr(sample, **LR) == tokens.lr(sample * seq, **LR)


def test_wsd_s_decays_at_every_budget_then_returns_to_stable():
    schedule = wsd_s_schedule(warmup=10, budgets=[100, 200, 400], decay=20, shape="linear")
    for budget in (100, 200, 400):
        assert schedule.lr(budget - 20, **LR) == 1.0
        assert schedule.lr(budget - 10, **LR) == pytest.approx(0.55)
        assert schedule.lr(budget, **LR) == 0.1
        assert schedule.lr(budget + 1, **LR) == 1.0
    assert schedule.lr(150, **LR) == 1.0


def test_wsd_s_with_a_power_stable_phase_returns_to_the_law():
    law = PowerLaw(a=4.0, b=-0.51)
    cycles = wsd_s_schedule(warmup=1e6, budgets=[1e9, 2e9], decay=1e8, shape="linear")
    schedule = Schedule(warmup=cycles.warmup, power=law, decays=cycles.decays)
    kwargs = dict(max_lr=0.02, min_lr=0.0, batch_tokens=8 * 4096)
    assert schedule.lr(1e9, **kwargs) == 0.0
    assert schedule.lr(1.5e9, **kwargs) == law.lr(1.5e9, 8 * 4096, 0.02)


def test_branch_decay_leaves_the_stable_phase_unchanged():
    base = wsd_schedule(warmup=100, total=10_000, decay=1000, shape="linear")
    branch = with_branch_decay(base, start=3000, length=500, shape="linear")
    for position in range(0, 3001, 50):
        assert branch.lr(position, **LR) == base.lr(position, **LR)
    assert branch.lr(3250, **LR) == pytest.approx(0.55)
    assert branch.lr(3500, **LR) == 0.1
    assert branch.lr(9500, **LR) == 0.1  # the original tail is gone


def test_branch_off_a_wsd_s_run_keeps_earlier_cycles():
    cycles = wsd_s_schedule(warmup=10, budgets=[100, 200, 400], decay=20, shape="linear")
    branch = with_branch_decay(cycles, start=250, length=50, shape="cosine")
    assert branch.lr(100, **LR) == 0.1
    assert branch.lr(200, **LR) == 0.1
    assert branch.lr(300, **LR) == 0.1
    assert branch.lr(390, **LR) == 0.1  # the 400 cycle is replaced by the branch


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wsd_schedule(warmup=100, total=100, decay=10), "total"),
        (lambda: wsd_schedule(warmup=100, total=1000, decay=901), "decay"),
        (lambda: wsd_schedule(warmup=-1, total=1000, decay=10), "warmup"),
        (lambda: wsd_s_schedule(warmup=0, budgets=[200, 100], decay=10), "budgets"),
        (lambda: wsd_s_schedule(warmup=0, budgets=[100, 105], decay=10), "decay"),
        (lambda: wsd_schedule(warmup=0, total=100, decay=10, shape="cubic"), "decay_shape"),
        (
            lambda: with_branch_decay(
                wsd_schedule(warmup=100, total=1000, decay=200), start=50, length=10
            ),
            "branch decay start",
        ),
        (
            lambda: with_branch_decay(
                wsd_schedule(warmup=100, total=1000, decay=200), start=900, length=10
            ),
            "branch decay start",
        ),
        (lambda: DecayWindow(start=10, length=0), "decay length"),
    ],
)
def test_bad_input_names_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()
