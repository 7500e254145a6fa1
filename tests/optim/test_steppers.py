"""Steppers against numbers computed by hand on one-element tensors."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, debias, l2_reg,
                                   momentum_step, rms_prop_step, sgd_step, step_stat, stepper,
                                   weight_decay)

finite = st.floats(-10, 10, allow_nan=False)


def param(value: float, grad: float) -> torch.Tensor:
    p = torch.tensor([value], dtype=torch.float64)
    p.grad = torch.tensor([grad], dtype=torch.float64)
    return p


def test_stepper_sets_defaults():
    @stepper(mom=0.5)
    def f(p, *, mom, **_): ...
    assert f.defaults == {"mom": 0.5}


def test_stepper_rejects_a_name_that_is_not_a_keyword_parameter():
    with pytest.raises(TypeError, match="`mom`, which is not a keyword parameter of `f`"):
        @stepper(mom=0.5)
        def f(p, *, lr, **_): ...


def test_steppers_declare_fastai_defaults():
    assert average_grad.defaults == {"mom": 0.9}
    assert average_sqr_grad.defaults == {"sqr_mom": 0.99}
    assert rms_prop_step.defaults == {"eps": 1e-8}
    assert sgd_step.defaults == {} and adam_step.defaults == {}


def test_sgd_step_moves_against_the_gradient():
    p = param(1.0, 0.5)
    sgd_step(p, lr=0.1)
    assert p.item() == pytest.approx(0.95)


def test_weight_decay_shrinks_the_parameter():
    p = param(2.0, 0.5)
    weight_decay(p, lr=0.1, wd=0.5)
    assert p.item() == pytest.approx(1.9)
    assert p.grad.item() == 0.5


def test_weight_decay_respects_do_wd():
    p = param(2.0, 0.5)
    weight_decay(p, lr=0.1, wd=0.5, do_wd=False)
    assert p.item() == 2.0


def test_l2_reg_adds_wd_times_p_to_the_gradient():
    p = param(2.0, 0.5)
    l2_reg(p, lr=0.1, wd=0.1)
    assert p.grad.item() == pytest.approx(0.7)
    assert p.item() == 2.0
    l2_reg(p, lr=0.1, wd=0.1, do_wd=False)
    assert p.grad.item() == pytest.approx(0.7)


def test_average_grad_without_dampening_sums_gradients():
    p = param(0.0, 2.0)
    state = average_grad(p, mom=0.9)
    assert state["grad_avg"].item() == pytest.approx(2.0)
    p.grad.fill_(1.0)
    state = average_grad(p, mom=0.9, **state)
    assert state["grad_avg"].item() == pytest.approx(2.8)


def test_average_grad_with_dampening_is_an_exponential_average():
    p = param(0.0, 2.0)
    state = average_grad(p, mom=0.9, dampening=True)
    assert state["grad_avg"].item() == pytest.approx(0.2)
    p.grad.fill_(1.0)
    state = average_grad(p, mom=0.9, dampening=True, **state)
    assert state["grad_avg"].item() == pytest.approx(0.28)


def test_average_sqr_grad_averages_squared_gradients():
    p = param(0.0, 2.0)
    state = average_sqr_grad(p, sqr_mom=0.99)
    assert state["sqr_avg"].item() == pytest.approx(0.04)
    p.grad.fill_(1.0)
    state = average_sqr_grad(p, sqr_mom=0.99, **state)
    assert state["sqr_avg"].item() == pytest.approx(0.0496)
    undamped = average_sqr_grad(param(0.0, 2.0), sqr_mom=0.99, dampening=False)
    assert undamped["sqr_avg"].item() == pytest.approx(4.0)


def test_momentum_step_follows_grad_avg():
    p = param(1.0, 0.5)
    momentum_step(p, lr=0.1, grad_avg=torch.tensor([2.0], dtype=torch.float64))
    assert p.item() == pytest.approx(0.8)


def test_rms_prop_step_divides_by_root_of_sqr_avg_plus_eps():
    sqr_avg = torch.tensor([0.25], dtype=torch.float64)
    p = param(1.0, 0.5)
    rms_prop_step(p, lr=0.1, sqr_avg=sqr_avg, eps=0.5)  # 1 - 0.1 * 0.5 / (0.5 + 0.5)
    assert p.item() == pytest.approx(0.95)
    p = param(1.0, 0.5)
    rms_prop_step(p, lr=0.1, sqr_avg=sqr_avg, eps=0.0, grad_avg=torch.tensor([2.0]).double())
    assert p.item() == pytest.approx(0.6)  # 1 - 0.1 * 2 / 0.5
    assert sqr_avg.item() == 0.25  # the state is read, not changed


def test_step_stat_counts_steps():
    p = param(1.0, 0.5)
    assert step_stat(p) == {"step": 1}
    assert step_stat(p, step=4) == {"step": 5}


def test_debias_by_hand():
    assert debias(0.9, 0.1, 1) == pytest.approx(0.1)
    assert debias(0.9, 0.1, 2) == pytest.approx(0.19)
    assert debias(0.9, 1.0, 2) == pytest.approx(1.9)


def test_adam_step_by_hand():
    # After one step from zero state with grad 2: grad_avg = 0.2, sqr_avg = 0.04,
    # debiased they are 2 and 4, so the step is lr * 2 / (sqrt(4) + eps).
    kw = dict(lr=0.1, mom=0.9, sqr_mom=0.99, step=1)
    p = param(1.0, 2.0)
    adam_step(p, grad_avg=torch.tensor([0.2]).double(), sqr_avg=torch.tensor([0.04]).double(),
              eps=0.0, **kw)
    assert p.item() == pytest.approx(0.9)
    p = param(1.0, 2.0)
    adam_step(p, grad_avg=torch.tensor([0.2]).double(), sqr_avg=torch.tensor([0.04]).double(),
              eps=1.0, **kw)
    assert p.item() == pytest.approx(1 - 0.1 * 2 / 3)


def test_denominators_are_right_whatever_the_order_of_tensor_sizes():
    torch.manual_seed(0)
    for n in (7, 3, 11, 1):
        p, sqr_avg = torch.randn(n, 2), torch.rand(n, 2)
        p.grad = torch.randn(n, 2)
        expected = p - 0.1 * p.grad / (sqr_avg.sqrt() + 1e-3)
        rms_prop_step(p, lr=0.1, sqr_avg=sqr_avg, eps=1e-3)
        torch.testing.assert_close(p, expected)


@settings(max_examples=30, deadline=None)
@given(value=finite, grad=finite, lr=st.floats(0, 1))
def test_weight_decay_with_zero_wd_changes_nothing(value, grad, lr):
    for f in (weight_decay, l2_reg):
        p = param(value, grad)
        f(p, lr=lr, wd=0.0)
        assert p.item() == value and p.grad.item() == grad


@settings(max_examples=50, deadline=None)
@given(mom=st.floats(0.0, 0.99), step=st.integers(1, 50))
def test_debias_grows_towards_one(mom, step):
    d = debias(mom, 1 - mom, step)
    assert 0 < d <= 1 + 1e-12
    assert debias(mom, 1 - mom, step + 1) >= d - 1e-12
    assert math.isclose(debias(mom, 1 - mom, 5000), 1.0, abs_tol=1e-9)
