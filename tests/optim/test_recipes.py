"""Recipes against torch.optim on the same tiny net, and their invariants."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, l2_reg,
                                   momentum_step, rms_prop_step, sgd_step, step_stat, weight_decay)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def train(opt_func, steps: int = 6) -> nn.Module:
    """Train `tiny_net` on a fixed regression batch for `steps` steps of `opt_func`."""
    net = tiny_net()
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt = opt_func(net.parameters())
    for _ in range(steps):
        F.mse_loss(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return net


def assert_matches(ours: nn.Module, ref: nn.Module) -> None:
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    start = tiny_net()
    assert any(not torch.equal(p, s) for p, s in zip(ours.parameters(), start.parameters()))


def test_sgd_matches_torch_sgd():
    assert_matches(train(partial(SGD, lr=0.1)), train(partial(torch.optim.SGD, lr=0.1)))


def test_sgd_with_momentum_matches_torch_sgd_without_dampening():
    ours = train(partial(SGD, lr=0.05, mom=0.9))
    ref = train(partial(torch.optim.SGD, lr=0.05, momentum=0.9, dampening=0))
    assert_matches(ours, ref)


def test_sgd_with_l2_matches_torch_sgd_weight_decay():
    ours = train(partial(SGD, lr=0.05, mom=0.9, wd=0.1, decouple_wd=False))
    ref = train(partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.1))
    assert_matches(ours, ref)


def test_sgd_decoupled_wd_decays_before_the_step():
    p = torch.tensor([2.0])
    p.grad = torch.tensor([1.0])
    SGD([p], lr=0.1, wd=0.5).step()
    assert p.item() == pytest.approx(2.0 * (1 - 0.05) - 0.1)


def test_adam_matches_torch_adamw():
    ours = train(partial(Adam, lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01))
    ref = train(partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.99), eps=1e-5,
                        weight_decay=0.01))
    assert_matches(ours, ref)


def test_adam_with_l2_matches_torch_adam_weight_decay():
    ours = train(partial(Adam, lr=1e-2, mom=0.8, sqr_mom=0.95, eps=1e-6, wd=0.05,
                         decouple_wd=False))
    ref = train(partial(torch.optim.Adam, lr=1e-2, betas=(0.8, 0.95), eps=1e-6,
                        weight_decay=0.05))
    assert_matches(ours, ref)


def test_rmsprop_matches_torch_rmsprop():
    ours = train(partial(RMSProp, lr=1e-2, sqr_mom=0.9, eps=1e-6))
    ref = train(partial(torch.optim.RMSprop, lr=1e-2, alpha=0.9, eps=1e-6))
    assert_matches(ours, ref)


def test_rmsprop_with_l2_matches_torch_rmsprop_weight_decay():
    ours = train(partial(RMSProp, lr=1e-2, wd=0.1, decouple_wd=False))
    ref = train(partial(torch.optim.RMSprop, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1))
    assert_matches(ours, ref)


def test_recipes_are_stepper_lists_in_algorithm_order():
    ps = [torch.zeros(1)]
    assert SGD(ps, lr=0.1).cbs == [weight_decay, sgd_step]
    assert SGD(ps, lr=0.1, mom=0.9, decouple_wd=False).cbs == [l2_reg, average_grad, momentum_step]
    assert RMSProp(ps, lr=0.1).cbs == [weight_decay, average_sqr_grad, rms_prop_step]
    assert RMSProp(ps, lr=0.1, mom=0.9).cbs == [weight_decay, average_grad, average_sqr_grad,
                                                 rms_prop_step]
    cbs = Adam(ps, lr=0.1).cbs
    assert cbs[0] is weight_decay and cbs[2:] == [average_sqr_grad, step_stat, adam_step]
    assert cbs[1].func is average_grad and cbs[1].keywords == {"dampening": True}


def test_recipes_have_fastai_defaults_and_take_lr_as_a_keyword():
    ps = [torch.zeros(1)]
    assert Adam(ps, lr=1e-3).hypers == [dict(wd=0.01, mom=0.9, sqr_mom=0.99, lr=1e-3, eps=1e-5)]
    assert RMSProp(ps, lr=1e-3).hypers[0] == dict(wd=0.0, mom=0.0, sqr_mom=0.99, lr=1e-3,
                                                  eps=1e-8)
    opt = partial(Adam, wd=0.0)([[torch.zeros(1)], [torch.zeros(1)]], lr=slice(1e-4, 1e-2))
    assert [h["lr"] for h in opt.hypers] == [1e-4, 1e-2]


recipes = st.sampled_from([SGD, RMSProp, Adam])


@settings(max_examples=30, deadline=None)
@given(recipe=recipes, mom=st.floats(0.0, 0.99), wd=st.floats(0.0, 1.0),
       decouple_wd=st.booleans(), seed=st.integers(0, 2**16))
def test_zero_lr_leaves_params_unchanged(recipe, mom, wd, decouple_wd, seed):
    torch.manual_seed(seed)
    ps = [torch.randn(3), torch.randn(2, 2)]
    before = [p.clone() for p in ps]
    opt = recipe(ps, lr=0.0, mom=mom, wd=wd, decouple_wd=decouple_wd)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    for p, b in zip(ps, before):
        assert torch.equal(p, b)


@settings(max_examples=20, deadline=None)
@given(recipe=recipes, seed=st.integers(0, 2**16))
def test_zero_wd_makes_decoupled_and_l2_agree(recipe, seed):
    results = []
    for decouple_wd in (True, False):
        torch.manual_seed(seed)
        ps = [torch.randn(4)]
        opt = recipe(ps, lr=1e-2, wd=0.0, decouple_wd=decouple_wd)
        for _ in range(2):
            ps[0].grad = torch.randn(4)
            opt.step()
        results.append(ps[0])
    assert torch.equal(*results)
