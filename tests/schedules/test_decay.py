"""Every decay shape against values worked out by hand at r = 0.25 and 0.5."""

import itertools
import math

import pytest

from megatron_power.schedules import DecayShape, decay_lr

# (shape, c(0.25), c(0.5)), c = fraction of (start - min) left; by hand from each formula.
HAND_VALUES = [
    ("exponential", 2 * 2**-0.25 - 1, 2 * 2**-0.5 - 1),  # 0.681793, 0.414214
    ("exponential_e", (math.e**0.75 - 1) / (math.e - 1), (math.e**0.5 - 1) / (math.e - 1)),
    ("linear", 0.75, 0.5),
    ("cosine", (1 + math.sqrt(0.5)) / 2, 0.5),
    ("minus_sqrt", 0.5, 1 - math.sqrt(0.5)),
]


@pytest.mark.parametrize(("shape", "at_quarter", "at_half"), HAND_VALUES)
def test_shape_by_hand(shape, at_quarter, at_half):
    start, end = 3.0, 1.0
    quarter = decay_lr(shape, start_lr=start, min_lr=end, elapsed=25, length=100)
    half = decay_lr(shape, start_lr=start, min_lr=end, elapsed=50, length=100)
    assert quarter == pytest.approx(end + at_quarter * (start - end), rel=1e-12)
    assert half == pytest.approx(end + at_half * (start - end), rel=1e-12)


def test_spot_values_written_out():
    # Decimal values typed from a calculator, so a wrong formula above cannot hide.
    assert decay_lr("exponential", start_lr=1, min_lr=0, elapsed=1, length=4) == pytest.approx(
        0.681793, abs=1e-6
    )
    assert decay_lr("exponential_e", start_lr=1, min_lr=0, elapsed=1, length=2) == pytest.approx(
        0.377541, abs=1e-6
    )
    assert decay_lr("cosine", start_lr=1, min_lr=0, elapsed=1, length=4) == pytest.approx(
        0.853553, abs=1e-6
    )


def test_half_life_halves_every_half_life():
    kwargs = dict(start_lr=8.0, min_lr=0.0, length=100, half_life=25)
    assert decay_lr("half_life", elapsed=25, **kwargs) == 4.0
    assert decay_lr("half_life", elapsed=50, **kwargs) == 2.0


def test_half_life_is_floored_at_min_lr():
    kwargs = dict(start_lr=8.0, min_lr=3.0, length=100, half_life=25)
    assert decay_lr("half_life", elapsed=50, **kwargs) == 3.0


def test_default_half_life_reaches_min_lr_at_the_end():
    # 1.0 -> 0.125 is three halvings; over 90 units the half-life is 30.
    assert decay_lr("half_life", start_lr=1.0, min_lr=0.125, elapsed=30, length=90) == 0.5
    almost = decay_lr("half_life", start_lr=1.0, min_lr=0.125, elapsed=89.999, length=90)
    assert almost == pytest.approx(0.125, rel=1e-4)


@pytest.mark.parametrize("shape", [shape.value for shape in DecayShape])
def test_every_shape_ends_at_min_lr_exactly(shape):
    for start, end, length in [(0.02, 0.0, 1000), (3e-3, 1.7e-5, 333), (1.0, 0.1, 7)]:
        assert decay_lr(shape, start_lr=start, min_lr=end, elapsed=length, length=length) == end
        assert decay_lr(shape, start_lr=start, min_lr=end, elapsed=0, length=length) == start


@pytest.mark.parametrize("shape", [shape.value for shape in DecayShape])
def test_every_shape_falls_monotonically(shape):
    values = [decay_lr(shape, start_lr=1.0, min_lr=0.01, elapsed=t, length=100) for t in range(101)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))


def test_unknown_shape_names_the_field():
    with pytest.raises(ValueError, match="lr_wsd_decay_style: unknown decay shape 'cubic'"):
        DecayShape.parse("cubic", field="lr_wsd_decay_style")
