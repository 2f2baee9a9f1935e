"""The Power law against the paper's own figures (arXiv 2408.13359, section 4)."""

import math

import pytest

from megatron_power.schedules import PowerLaw, Schedule, power_schedule
from megatron_power.schedules import power as power_module

PAPER_BATCH_TOKENS = 1024 * 4096  # beta = 1024 sequences of 4096 tokens


def test_wsd_sweep_fit_gives_papers_1e13_value():
    # gamma(T) = 4.6 * T**-0.51; eta = beta * gamma = 1.1e-3 at 1e13 tokens, beta 1024.
    lr = PowerLaw(a=4.6, b=-0.51).lr(1e13, PAPER_BATCH_TOKENS, max_lr=1.0)
    assert lr == pytest.approx(1.1e-3, rel=0.03)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(1e12, 3.1e-3), (2.5e12, 1.9e-3)],
)
def test_paper_final_values(tokens, expected):
    law = PowerLaw(a=4.0, b=-0.51)
    assert law.lr(tokens, PAPER_BATCH_TOKENS, max_lr=0.02) == pytest.approx(expected, rel=0.03)


def test_cap_holds_until_about_26b_tokens():
    law = PowerLaw(a=4.0, b=-0.51)
    assert law.lr(20e9, PAPER_BATCH_TOKENS, max_lr=0.02) == 0.02
    assert law.lr(30e9, PAPER_BATCH_TOKENS, max_lr=0.02) < 0.02
    assert law.tokens_at_cap(PAPER_BATCH_TOKENS, 0.02) == pytest.approx(26e9, rel=0.05)


def test_beta_is_counted_in_reference_sequences_at_any_sequence_length():
    law = PowerLaw(a=4.0, b=-0.51)
    paper = law.lr(1e12, batch_tokens=1024 * 4096, max_lr=1.0)
    half_length = law.lr(1e12, batch_tokens=2048 * 2048, max_lr=1.0)
    assert half_length == paper
    # Doubling the batch doubles the law (beta**1), by hand: 2 * 4 * 1024 * 1e12**-0.51.
    doubled = law.lr(1e12, batch_tokens=2048 * 4096, max_lr=1.0)
    assert doubled == pytest.approx(2 * 4 * 1024 * 1e12**-0.51, rel=1e-12)


def test_batch_exponent_scales_beta():
    law = PowerLaw(a=4.0, b=-0.51, batch_exponent=0.5)
    assert law.lr(1e12, 1024 * 4096, max_lr=1.0) == pytest.approx(4 * 32 * 1e12**-0.51)


def test_a_held_batch_sets_beta_whatever_batch_is_in_force():
    """Under a ramp 256 -> 1024 sequences with beta held at 1024, every step has the LR
    of the final batch: 4 * 1024 * n**-0.51 by hand, at each batch of the ramp."""
    law = PowerLaw(a=4.0, b=-0.51, held_batch_tokens=1024 * 4096)
    for batch in (256, 512, 768, 1024):
        assert law.lr(1e12, batch * 4096, max_lr=1.0) == pytest.approx(
            4 * 1024 * 1e12**-0.51, rel=1e-12
        )
    in_force = PowerLaw(a=4.0, b=-0.51)
    assert in_force.lr(1e12, 256 * 4096, max_lr=1.0) == pytest.approx(
        4 * 256 * 1e12**-0.51, rel=1e-12
    )
    assert law.tokens_at_cap(256 * 4096, 0.02) == in_force.tokens_at_cap(1024 * 4096, 0.02)


def test_reference_length_is_a_setting():
    law = PowerLaw(a=4.0, b=-0.51, reference_seq_length=2048)
    assert law.beta(1024 * 4096) == 2048


def test_warmup_meets_the_power_curve():
    law = PowerLaw(a=4.0, b=-0.51)
    warmup = 60e9  # past the cap, so the curve is the law itself
    schedule = Schedule(warmup=warmup, power=law)
    at_end = schedule.lr(warmup, max_lr=0.02, min_lr=0.0, batch_tokens=PAPER_BATCH_TOKENS)
    just_after = schedule.lr(
        warmup * (1 + 1e-9), max_lr=0.02, min_lr=0.0, batch_tokens=PAPER_BATCH_TOKENS
    )
    assert at_end == law.lr(warmup, PAPER_BATCH_TOKENS, 0.02)
    assert just_after == pytest.approx(at_end, rel=1e-8)
    halfway = schedule.lr(warmup / 2, max_lr=0.02, min_lr=0.0, batch_tokens=PAPER_BATCH_TOKENS)
    assert halfway == pytest.approx(at_end / 2, rel=1e-12)


def test_power_tail_decays_to_min_lr_exactly():
    law = PowerLaw(a=4.0, b=-0.51)
    schedule = power_schedule(law=law, warmup=1e9, total=1e12, decay=1e11)
    kwargs = dict(max_lr=0.02, min_lr=1e-5, batch_tokens=PAPER_BATCH_TOKENS)
    start = schedule.lr(9e11, **kwargs)
    assert start == law.lr(9e11, PAPER_BATCH_TOKENS, 0.02)
    # Paper's e-based exponential at r = 0.5: (e**0.5 - 1) / (e - 1).
    mid = schedule.lr(9.5e11, **kwargs)
    assert mid == pytest.approx(1e-5 + (math.exp(0.5) - 1) / (math.e - 1) * (start - 1e-5))
    assert schedule.lr(1e12, **kwargs) == 1e-5
    assert schedule.lr(1.5e12, **kwargs) == 1e-5


class _PowGuard:
    """Stands in for ``math`` inside the power module and fails on 0**negative."""

    def __getattr__(self, name):
        return getattr(math, name)

    @staticmethod
    def pow(base, exponent):
        if base == 0 and exponent < 0:
            raise AssertionError("0**b evaluated")
        return math.pow(base, exponent)


@pytest.mark.parametrize("warmup", [0.0, 1000.0])
def test_zero_tokens_never_evaluates_zero_to_a_negative_power(monkeypatch, warmup):
    monkeypatch.setattr(power_module, "math", _PowGuard())
    schedule = Schedule(warmup=warmup, power=PowerLaw())
    lr = schedule.lr(0.0, max_lr=0.02, min_lr=0.0, batch_tokens=PAPER_BATCH_TOKENS)
    assert lr == (0.02 if warmup == 0 else 0.0)
    assert power_module.PowerLaw().lr(0.0, 0.0, max_lr=0.02) == 0.02
    assert schedule.lr(1.0, max_lr=0.02, min_lr=0.0, batch_tokens=PAPER_BATCH_TOKENS) > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(a=0.0), "lr_power_a"),
        (dict(a=-1.0), "lr_power_a"),
        (dict(b=0.0), "lr_power_b"),
        (dict(b=0.3), "lr_power_b"),
        (dict(reference_seq_length=0), "lr_power_reference_seq_length"),
        (dict(batch_exponent=0.0), "lr_power_batch_exponent"),
        (dict(held_batch_tokens=0.0), "lr_power_batch_size"),
    ],
)
def test_bad_law_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PowerLaw(**kwargs)
