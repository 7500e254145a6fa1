from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.schedules import (
    SchedCos, SchedExp, SchedLin, SchedNo, SchedPoly, combine_scheds, combined_cos,
    flat_cos_scheds, minimum, one_cycle_scheds, sgdr_n_epoch, sgdr_scheds,
    slide, steep, valley,
)

values = st.floats(-10, 10, allow_nan=False)
positions = st.floats(0, 1)


def test_basic_schedules_match_their_formulas():
    assert SchedLin(0, 10)(0.3) == pytest.approx(3)
    assert SchedCos(0, 10)(0.5) == pytest.approx(5)
    assert SchedCos(1, 3)(0.3) == pytest.approx(1 + (1 + math.cos(math.pi * 0.7)) * 2 / 2)
    assert SchedNo(2, 7)(0.9) == 2
    assert SchedExp(1e-4, 1)(0.5) == pytest.approx(1e-2)
    assert SchedPoly(2, 0, 2)(0.5) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "sched", [SchedLin(1, 3), SchedCos(1, 3), SchedExp(1, 3), SchedPoly(1, 3, 0.5)]
)
def test_schedules_hit_start_and_end_exactly(sched):
    assert sched(0) == pytest.approx(1, abs=0, rel=1e-15)
    assert sched(1) == pytest.approx(3, abs=0, rel=1e-15)


def test_schedules_accept_tensor_positions():
    for sched in (SchedLin(1, 3), SchedCos(1, 3), SchedExp(1, 3), SchedPoly(1, 3, 2)):
        out = sched(torch.tensor(0.3))
        assert float(out) == pytest.approx(sched(0.3), rel=1e-6)


def test_schedules_work_elementwise_on_per_group_values():
    sched = SchedCos([1e-3, 1e-2], [0.0, 0.0])
    np.testing.assert_allclose(sched(0.5), [5e-4, 5e-3])
    np.testing.assert_allclose(sched(torch.tensor(0.5)), [5e-4, 5e-3])
    np.testing.assert_allclose(SchedExp([1e-6, 1e-5], [1e-2, 1e-1])(0.5), [1e-4, 1e-3])


@settings(max_examples=50, deadline=None)
@given(values, values, st.lists(positions, min_size=2, max_size=20))
def test_sched_cos_is_monotone_between_start_and_end(start, end, pos):
    out = [SchedCos(start, end)(p) for p in sorted(pos)]
    lo, hi = min(start, end), max(start, end)
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in out)
    sign = 1 if end >= start else -1
    assert all(sign * (b - a) >= -1e-9 for a, b in zip(out, out[1:]))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.05, 1), min_size=1, max_size=5).flatmap(
        lambda w: st.tuples(st.just(w), st.lists(values, min_size=len(w) + 1, max_size=len(w) + 1))
    ),
    st.booleans(),
)
def test_combine_scheds_hits_endpoints_and_is_continuous_at_joins(weights_and_values, cos):
    weights, vals = weights_and_values
    pcts = [w / sum(weights) for w in weights]
    kind = SchedCos if cos else SchedLin
    f = combine_scheds(pcts, [kind(a, b) for a, b in zip(vals, vals[1:])])
    assert f(0.0) == pytest.approx(vals[0], abs=1e-9)
    assert f(1.0) == pytest.approx(vals[-1], abs=1e-9)
    # 1e-9 either side of a join the schedule has moved by up to its steepest slope times 1e-9
    # (a cosine segment is at most pi/2 times steeper than the straight line)
    slope = max(abs(b - a) / p for p, a, b in zip(pcts, vals, vals[1:]))
    tol = 1e-6 + 2 * slope * 1e-9
    join = 0.0
    for p, v in zip(pcts[:-1], vals[1:-1]):
        join += p
        for eps in (-1e-9, 0.0, 1e-9):
            assert f(join + eps) == pytest.approx(v, abs=tol)


def test_combine_scheds_rejects_pcts_not_summing_to_one():
    with pytest.raises(ValueError, match=r"sum to 1, got \[0.3, 0.3\]"):
        combine_scheds([0.3, 0.3], [SchedLin(0, 1), SchedLin(1, 0)])
    with pytest.raises(ValueError, match="one pct per schedule"):
        combine_scheds([1.0], [SchedLin(0, 1), SchedLin(1, 0)])
    with pytest.raises(ValueError, match="non-negative"):
        combine_scheds([1.5, -0.5], [SchedLin(0, 1), SchedLin(1, 0)])


def test_combine_scheds_tolerates_float_rounding_in_pcts():
    f = combine_scheds([0.1] * 10, [SchedLin(i, i + 1) for i in range(10)])
    assert f(1.0) == pytest.approx(10)
    assert f(0.55) == pytest.approx(5.5)


def test_combined_cos_with_zero_width_pieces():
    assert combined_cos(0.0, 1, 2, 3)(0) == 2
    assert combined_cos(0.0, 1, 2, 3)(1) == 3
    assert combined_cos(1.0, 1, 2, 3)(0) == 1
    assert combined_cos(1.0, 1, 2, 3)(1) == 2


def test_one_cycle_values_at_start_peak_and_end():
    s = one_cycle_scheds(1e-2, div=25.0, div_final=1e5, pct_start=0.25)
    assert s["lr"](0) == pytest.approx(1e-2 / 25)
    assert s["lr"](0.25) == pytest.approx(1e-2)
    assert s["lr"](1) == pytest.approx(1e-2 / 1e5)
    assert s["mom"](0) == pytest.approx(0.95)
    assert s["mom"](0.25) == pytest.approx(0.85)
    assert s["mom"](1) == pytest.approx(0.95)
    assert s["lr"](0.125) == pytest.approx((4e-4 + 1e-2) / 2)  # halfway up the cosine


def test_one_cycle_per_group_lr_and_no_moms():
    s = one_cycle_scheds([1e-3, 1e-2], moms=None)
    assert set(s) == {"lr"}
    np.testing.assert_allclose(s["lr"](0), [1e-3 / 25, 1e-2 / 25])
    np.testing.assert_allclose(s["lr"](0.25), [1e-3, 1e-2])
    np.testing.assert_allclose(s["lr"](1), [1e-8, 1e-7])


def test_one_cycle_refuses_an_unconverted_slice():
    with pytest.raises(TypeError, match="slice"):
        one_cycle_scheds(slice(1e-4, 1e-2))


def test_flat_cos_is_flat_then_anneals():
    s = flat_cos_scheds(0.1, div_final=1e5, pct_start=0.75)
    assert set(s) == {"lr"}
    for p in (0, 0.3, 0.75):
        assert s["lr"](p) == pytest.approx(0.1)
    assert s["lr"](1) == pytest.approx(1e-6)
    assert flat_cos_scheds(0.1, mom=0.9)["mom"](0.5) == 0.9


def test_sgdr_restarts_at_each_cycle():
    assert sgdr_n_epoch(3, 1, 2) == 7
    assert sgdr_n_epoch(3, 2, 1) == 6
    lr = sgdr_scheds(3, 1, 0.1, cycle_mult=2)["lr"]
    for start in (0, 1 / 7, 3 / 7):
        assert lr(start) == pytest.approx(0.1)
    assert lr(1 / 7 - 1e-9) == pytest.approx(0, abs=1e-6)
    assert lr(1) == pytest.approx(0, abs=1e-12)
    assert lr(3 / 7 + 2 / 7) == pytest.approx(0.05)  # middle of the last, 4-epoch cycle
    with pytest.raises(ValueError, match="n_cycles >= 1"):
        sgdr_scheds(0, 1, 0.1)


def test_lr_find_schedule_is_exponential():
    lr = SchedExp(1e-7, 10)  # what LRFinder follows
    assert lr(0) == pytest.approx(1e-7)
    assert lr(0.5) == pytest.approx(1e-3)
    assert lr(1) == pytest.approx(10)


def test_schedules_pickle():
    s = one_cycle_scheds(1e-2)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2["lr"](0.4) == s["lr"](0.4)


def _lr_curve():
    """A range-test curve: flat, falls fastest around 1e-3, bottoms out near 1e-1, diverges."""
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    losses = 2 + 0.5 * np.tanh(-(x + 3)) + np.where(x > -1, 3 * (x + 1) ** 2, 0)
    return lrs, losses


def test_minimum_is_a_tenth_of_the_lowest_loss_lr():
    lrs, losses = _lr_curve()
    lr, (lr_pt, loss_pt) = minimum(torch.tensor(lrs), torch.tensor(losses), 100)
    i = int(np.argmin(losses))
    assert lr_pt == pytest.approx(lrs[i]) and loss_pt == pytest.approx(losses[i])
    assert lr == pytest.approx(lrs[i] / 10)
    assert isinstance(lr, float) and isinstance(loss_pt, float)


def test_steep_finds_the_fastest_descent():
    lrs, losses = _lr_curve()
    lr, (lr_pt, loss_pt) = steep(lrs, losses, 100)
    assert -3.2 < math.log10(lr) < -2.8
    assert lr == lr_pt and loss_pt == pytest.approx(losses[list(lrs).index(lr)])


def test_valley_suggests_the_middle_of_the_longest_descent():
    losses = np.array([5.0, 5.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 2.0, 8.0])
    lrs = np.logspace(-5, 0, len(losses))
    lr, (lr_pt, loss_pt) = valley(lrs, losses, 10)
    # longest decreasing run: indices 2..7, so third = 5/3 and i = 2 + 1 + 0 = 3
    assert lr == pytest.approx(lrs[3]) and loss_pt == 4.0 and lr_pt == lr


def test_valley_on_a_noisy_curve_lands_inside_the_descent():
    lrs, losses = _lr_curve()
    noise = np.random.default_rng(0).normal(0, 0.01, len(losses))
    lr, _ = valley(lrs, losses + noise, 100)
    assert -6 < math.log10(lr) < -1


def test_slide_lands_before_the_minimum():
    lrs, losses = _lr_curve()
    lr, (lr_pt, loss_pt) = slide(lrs, losses, 100)
    assert -6 < math.log10(lr) < -1
    assert lr == lr_pt
    assert loss_pt == pytest.approx(np.interp(np.log10(lr), np.log10(lrs), losses))
    assert slide(lrs, losses, 100, adjust_value=2.0)[0] == pytest.approx(2 * lr)


def test_slide_copes_with_curves_shorter_than_the_window():
    lrs, losses = np.logspace(-5, -1, 5), np.array([3.0, 2.0, 1.0, 2.0, 9.0])
    lr, _ = slide(lrs, losses, 5)
    assert lrs[0] <= lr <= lrs[-1]


def test_suggestions_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="same length"):
        valley([1e-3, 1e-2], [1.0, 2.0, 3.0], 3)


def _finder_curve():
    """An LR range test's shape: flat at 5.0, a fall to 3.0 between 1e-3 and 1e-1, a floor, then a blow-up."""
    lrs = np.logspace(-6, 1, 71)
    x = np.log10(lrs)
    fall = 5.0 - 2.0 * np.clip((x + 3) / 2, 0, 1)  # 5 at 1e-3 down to 3 at 1e-1, linear in log10(lr)
    losses = fall + np.where(x > 0, (x - 0) * 4, 0.0)  # blows up above 1
    losses[np.argmin(np.abs(x - (-0.5)))] -= 0.01  # the lowest point, at lr 10**-0.5 on the floor
    return lrs, losses


def test_knee_is_where_the_loss_has_made_80pct_of_its_fall():
    from rnnkit.schedules import knee

    lrs, losses = _finder_curve()
    lr, (at, loss) = knee(lrs, losses)
    # start 5.0, lowest 2.99: 80% of the fall is at loss 5 - 0.8 * 2.01 = 3.392, i.e. log10(lr) = -3 + 2*0.804
    assert math.log10(lr) == pytest.approx(-3 + 2 * (0.8 * 2.01 / 2.0), abs=1e-9)
    assert loss == pytest.approx(5 - 0.8 * 2.01) and at == lr
    assert knee(lrs, losses, frac=0.5)[0] < lr < knee(lrs, losses, frac=0.95)[0]
    assert valley(lrs, losses)[0] < lr < 10 ** -0.5  # above fastai's valley, below the lowest point


def test_knee_of_a_curve_that_never_falls_is_minimums():
    from rnnkit.schedules import knee

    lrs = np.logspace(-5, 0, 30)
    rising = np.linspace(2.0, 4.0, 30)
    assert knee(lrs, rising) == minimum(lrs, rising)
    with pytest.raises(ValueError, match="frac"):
        knee(lrs, rising, frac=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=3, max_size=60))
def test_knee_lies_between_the_first_lr_and_the_lowest_point(values):
    from rnnkit.schedules import knee

    losses = np.array(values)
    lrs = np.logspace(-6, 0, len(losses))
    lr = knee(lrs, losses)[0]
    i_min = int(np.argmin(losses))
    if losses[0] > losses[i_min]:
        assert lrs[0] <= lr <= lrs[i_min] * (1 + 1e-12)


def test_fall_is_where_the_loss_is_8pct_below_its_start():
    from rnnkit.schedules import fall

    lrs, losses = _finder_curve()  # 5.0 falling linearly in log10(lr) from 1e-3 to 3.0 at 1e-1
    lr, (at, loss) = fall(lrs, losses)
    # 8% below 5.0 is 4.6: a fifth of the way down a fall of 2.0 over two decades, log10(lr) = -3 + 0.4
    assert math.log10(lr) == pytest.approx(-2.6, abs=1e-9)
    assert loss == pytest.approx(4.6) and at == lr
    assert fall(lrs, losses, rel=0.04)[0] < lr < fall(lrs, losses, rel=0.2)[0]
    assert valley(lrs, losses)[0] < lr


def test_fall_of_a_curve_that_never_falls_8pct_is_knees():
    from rnnkit.schedules import fall, knee

    lrs = np.logspace(-5, 0, 30)
    shallow = 5.0 - 0.2 * np.clip(np.linspace(-1, 1, 30), 0, 1)  # a 4% fall, like a pretrained model's
    assert fall(lrs, shallow) == knee(lrs, shallow)
    with pytest.raises(ValueError, match="rel"):
        fall(lrs, shallow, rel=1.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=3, max_size=60))
def test_fall_lies_between_the_first_lr_and_the_lowest_point(values):
    from rnnkit.schedules import fall

    losses = np.array(values)
    lrs = np.logspace(-6, 0, len(losses))
    lr = fall(lrs, losses)[0]
    if losses[0] > losses.min():
        assert lrs[0] <= lr <= lrs[int(np.argmin(losses))] * (1 + 1e-12)
