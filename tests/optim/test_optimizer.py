"""Optimizer and OptimWrapper: the contract the Learner and schedulers rely on."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit.optim import OptimWrapper, Optimizer
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.optim.steppers import sgd_step, stepper, weight_decay


# The seed notebook's user-written steppers, exactly as a user writes them (fastai book, ch. 16).
def sgd_cb(p, lr, **kwargs): p.data.add_(-lr, p.grad.data)


def average_grad(p, mom, grad_avg=None, **kwargs):
    # Set starting average to zero for all parameters
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
    return {'grad_avg': grad_avg*mom + p.grad.data}


def momentum_step(p, lr, grad_avg, **kwargs): p.data.add_(-lr, grad_avg)


def average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
    # Set starting average to zero for all parameters
    if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad.data)
    return {'sqr_avg': sqr_mom*sqr_avg + (1-sqr_mom)*p.grad.data**2}


def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
    denom = sqr_avg.sqrt().add_(eps)
    p.data.addcdiv_(-lr, p.grad, denom)


# The seed's steppers use torch's deprecated (alpha, other) overloads, which warn but still work.
seed_overloads = pytest.mark.filterwarnings(
    r"ignore:This overload of (add_|addcdiv_) is deprecated:UserWarning")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def train(opt_func, steps: int = 5, groups: bool = False) -> tuple[nn.Module, object]:
    """Train `tiny_net` for `steps` steps with `opt_func`; return the net and the optimizer."""
    net = tiny_net()
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    params = [list(net[0].parameters()), list(net[2].parameters())] if groups else net.parameters()
    opt = opt_func(params)
    for _ in range(steps):
        F.mse_loss(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return net, opt


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0)


def with_grads(*values: float, groups: int = 1) -> list[list[torch.Tensor]]:
    """`groups` parameter groups of one-element parameters with gradient 1."""
    out = []
    for _ in range(groups):
        ps = [torch.tensor([v], requires_grad=True) for v in values]
        for p in ps:
            p.grad = torch.ones(1)
        out.append(ps)
    return out


@seed_overloads
def test_seed_sgd_cb_matches_torch_sgd():
    opt_func = partial(Optimizer, cbs=[sgd_cb])
    ours, _ = train(partial(opt_func, lr=0.1))
    ref, _ = train(lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert_same_params(ours, ref)


@seed_overloads
def test_seed_momentum_steppers_match_torch_sgd_with_momentum():
    opt_func = partial(Optimizer, cbs=[average_grad, momentum_step], mom=0.9)
    ours, _ = train(partial(opt_func, lr=0.05))
    ref, _ = train(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0))
    assert_same_params(ours, ref)


@seed_overloads
def test_seed_rms_prop_steppers_match_torch_rmsprop():
    opt_func = partial(Optimizer, cbs=[average_sqr_grad, rms_prop_step], sqr_mom=0.99, eps=1e-7)
    ours, _ = train(partial(opt_func, lr=0.01))
    ref, _ = train(lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-7))
    assert_same_params(ours, ref)


def test_empty_params_are_a_clear_error():
    with pytest.raises(ValueError, match="got no parameters"):
        Optimizer([], [sgd_step], lr=0.1)
    with pytest.raises(ValueError, match="2 parameter groups but no parameters"):
        Optimizer([[], []], [sgd_step], lr=0.1)


def test_torch_style_dict_groups_are_a_clear_error():
    # fastai would keep the dicts as parameters and silently never step them
    with pytest.raises(TypeError, match=r"not torch-style \{'params': \.\.\.\} dicts"):
        Optimizer([{"params": [torch.zeros(1)]}], [sgd_step], lr=0.1)


@pytest.mark.parametrize("impl", ["auto", "per_param"])
def test_a_repeated_parameter_warns_and_is_stepped_once_per_appearance_as_in_fastai(impl):
    p = torch.zeros(1)
    p.grad = torch.ones(1)
    with pytest.warns(UserWarning, match="more than once"):
        opt = SGD([[p], [p]], lr=0.1)
    opt.impl = impl
    opt.step()
    assert p.item() == pytest.approx(-0.2)


def test_params_become_param_lists_and_hypers_per_group():
    net = tiny_net()
    opt = Optimizer(net.parameters(), [sgd_step], lr=0.1)
    assert len(opt.param_lists) == 1 and len(opt.param_lists[0]) == 4
    groups = [list(net[0].parameters()), tuple(net[2].parameters())]
    opt = Optimizer(groups, [sgd_step], lr=0.1)
    assert [len(pl) for pl in opt.param_lists] == [2, 2]
    assert opt.hypers == [{"lr": 0.1}, {"lr": 0.1}]
    assert opt.state[net[0].weight] == {} and opt.frozen_idx == 0 and opt.train_bn


def test_defaults_merge_stepper_defaults_then_kwargs():
    @stepper(mom=0.9, beta=0.5)
    def f(p, *, mom, beta, **_): ...

    opt = Optimizer([torch.zeros(1)], [f, partial(weight_decay, do_wd=True)], mom=0.8, lr=1e-3)
    assert opt.hypers == [{"mom": 0.8, "beta": 0.5, "wd": 0.0, "lr": 1e-3}]


def test_set_hyper_with_scalar_list_and_slice():
    opt = Optimizer(with_grads(1.0, groups=3), [sgd_step], lr=0.1)
    opt.set_hyper("lr", 0.5)
    assert [h["lr"] for h in opt.hypers] == [0.5, 0.5, 0.5]
    opt.set_hyper("lr", [1, 2, 3])
    assert [h["lr"] for h in opt.hypers] == [1, 2, 3]
    opt.set_hyper("lr", slice(1e-3, 1e-1))
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert opt.hypers[0]["lr"] == 1e-3 and opt.hypers[-1]["lr"] == 1e-1
    opt.set_hyper("lr", slice(None, 1e-2))
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-3, 1e-2])
    opt.set_hypers(mom=np.array([0.9, 0.8, 0.7]), wd=torch.tensor(0.1))
    assert [h["mom"] for h in opt.hypers] == pytest.approx([0.9, 0.8, 0.7])
    assert all(type(h["mom"]) is float and type(h["wd"]) is float for h in opt.hypers)


def test_set_hyper_with_wrong_length_is_a_clear_error():
    opt = Optimizer(with_grads(1.0, groups=3), [sgd_step], lr=0.1)
    with pytest.raises(ValueError, match="got 2 values for 3 parameter groups"):
        opt.set_hyper("lr", [0.1, 0.2])


def test_a_slice_with_one_group_gives_its_stop():
    opt = Optimizer(with_grads(1.0), [sgd_step], lr=slice(1e-4, 1e-2))
    assert opt.hypers == [{"lr": 1e-2}]


def test_param_groups_look_like_torch_groups():
    (ps,) = with_grads(1.0, 2.0)
    opt = Optimizer([[ps[0]], [ps[1]]], [sgd_step], lr=0.1)
    assert opt.param_groups == [{"params": [ps[0]], "lr": 0.1}, {"params": [ps[1]], "lr": 0.1}]
    opt.param_groups = [{"params": [ps[1]], "lr": 0.2}, {"params": [ps[0]], "lr": 0.3}]
    assert opt.param_lists == [[ps[1]], [ps[0]]] and opt.hypers == [{"lr": 0.2}, {"lr": 0.3}]


def test_grad_scaler_steps_our_optimizer():
    net = tiny_net()
    opt = SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler (with a CPU scaler) came in PyTorch 2.3")
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(net(torch.ones(3, 4)).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_all_params_selects_groups_and_grads():
    groups = with_grads(1.0, 2.0, groups=3)
    groups[2][1].grad = None
    opt = Optimizer(groups, [sgd_step], lr=0.1)
    assert len(opt.all_params()) == 6
    assert [p for p, *_ in opt.all_params(slice(1, None))] == groups[1] + groups[2]
    assert [p for p, *_ in opt.all_params(-1)] == groups[2]
    assert len(opt.all_params(with_grad=True)) == 5
    p, pl, state, hyper = opt.all_params()[0]
    assert pl is opt.param_lists[0] and state is opt.state[p] and hyper is opt.hypers[0]


def test_step_runs_steppers_in_order_and_skips_params_without_grad():
    (ps,) = with_grads(1.0, 2.0)
    ps[1].grad = None
    calls = []

    def record(p, **kw):
        calls.append(sorted(kw))
        return {"seen": kw.get("seen", 0) + 1}

    opt = Optimizer(ps, [record, sgd_step, lambda p, **_: p], lr=0.5, mom=0.9)
    opt.step()
    opt.step()
    assert calls == [["lr", "mom"], ["lr", "mom", "seen"]]
    assert opt.state[ps[0]] == {"seen": 2} and opt.state[ps[1]] == {}
    assert ps[0].item() == pytest.approx(0.0) and ps[1].item() == 2.0


def test_step_evaluates_a_closure_with_grad_enabled():
    (ps,) = with_grads(1.0)
    opt = Optimizer(ps, [sgd_step], lr=0.1)
    opt.zero_grad()

    def closure():
        loss = (ps[0] * 3).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 3.0 and ps[0].item() == pytest.approx(0.7)


def test_zero_grad_zeroes_or_drops_gradients():
    (ps,) = with_grads(1.0, 2.0)
    opt = Optimizer(ps, [sgd_step], lr=0.1)
    opt.zero_grad()
    assert all(p.grad is not None and p.grad.item() == 0 for p in ps)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in ps)


def test_missing_hyper_parameter_names_the_stepper_and_key():
    (ps,) = with_grads(1.0)
    with pytest.raises(ValueError, match=r"Stepper `sgd_step` needs 'lr'"):
        Optimizer(ps, [sgd_step]).step()
    with pytest.raises(ValueError, match=r"Stepper `momentum_step` needs 'grad_avg'"):
        Optimizer(ps, [momentum_step], lr=0.1).step()


def test_stepper_without_kwargs_is_explained():
    (ps,) = with_grads(1.0)
    with pytest.raises(ValueError, match=r"has no `\*\*kwargs`"):
        Optimizer(ps, [lambda p, lr: None], lr=0.1, mom=0.9).step()


def test_type_error_inside_a_stepper_is_not_disguised():
    def broken(p, **_): raise TypeError("bug in stepper")
    (ps,) = with_grads(1.0)
    with pytest.raises(TypeError, match="bug in stepper"):
        Optimizer(ps, [broken]).step()


def test_do_wd_false_disables_weight_decay_for_that_param():
    (ps,) = with_grads(1.0, 1.0)
    opt = Optimizer(ps, [weight_decay], lr=0.5, wd=0.2)
    opt.state[ps[1]]["do_wd"] = False
    opt.step()
    assert ps[0].item() == pytest.approx(0.9) and ps[1].item() == 1.0


def test_clear_state_keeps_do_wd_and_force_train():
    (ps,) = with_grads(1.0)
    opt = Adam(ps, lr=0.1)
    opt.state[ps[0]].update(do_wd=False, force_train=True)
    opt.step()
    assert {"grad_avg", "sqr_avg", "step"} <= set(opt.state[ps[0]])
    opt.clear_state()
    assert opt.state[ps[0]] == {"do_wd": False, "force_train": True}


def test_freeze_to_leaves_frozen_groups_unchanged():
    groups = with_grads(1.0, 2.0, groups=3)
    opt = SGD(groups, lr=0.5)
    opt.freeze_to(2)
    assert opt.frozen_idx == 2
    assert [p.requires_grad for g in groups for p in g] == [False] * 4 + [True] * 2
    for g in groups:  # stale gradients in frozen groups must not move them
        for p in g:
            p.grad = torch.ones(1)
    opt.step()
    assert [p.item() for g in groups for p in g] == pytest.approx([1.0, 2.0] * 2 + [0.5, 1.5])
    opt.freeze_to(-1)
    assert opt.frozen_idx == 2
    opt.unfreeze()
    assert opt.frozen_idx == 0 and all(p.requires_grad for g in groups for p in g)


def test_freeze_keeps_force_train_params_trainable():
    groups = with_grads(1.0, 2.0, groups=2)
    opt = SGD(groups, lr=0.5)
    opt.state[groups[0][1]]["force_train"] = True
    opt.freeze()
    assert [p.requires_grad for g in groups for p in g] == [False, True, True, True]
    opt.step()
    assert [p.item() for g in groups for p in g] == pytest.approx([1.0, 1.5, 0.5, 1.5])
    opt.train_bn = False
    opt.freeze()
    assert not groups[0][1].requires_grad


def test_freeze_needs_more_than_one_group():
    opt = SGD(with_grads(1.0), lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group, got 1"):
        opt.freeze()
    with pytest.warns(UserWarning, match="freezes all 1 parameter groups"):
        opt.freeze_to(1)
    assert not opt.param_lists[0][0].requires_grad
    opt.freeze_to(-3)  # fastai: a negative n past the first group freezes nothing
    assert opt.frozen_idx == -2 and all(p.requires_grad for g in opt.param_lists for p in g)
    opt.step()
    assert opt.param_lists[0][0].item() == pytest.approx(0.9)


@pytest.mark.parametrize("opt_func", [partial(SGD, mom=0.9), RMSProp, Adam])
def test_state_round_trip_gives_an_identical_next_step(opt_func, tmp_path):
    net, opt = train(partial(opt_func, lr=1e-2), steps=3, groups=True)
    torch.save(opt.state_dict(), tmp_path / "opt.pth")
    sd = torch.load(tmp_path / "opt.pth", weights_only=True)
    net2 = tiny_net()
    net2.load_state_dict(net.state_dict())
    opt2 = opt_func([list(net2[0].parameters()), list(net2[2].parameters())], lr=1.0)
    opt2.load_state_dict(sd)
    assert opt2.hypers == opt.hypers
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).sum().backward()
        o.step()
    assert_same_params(net, net2, atol=0)
    for p, q in zip(net.parameters(), net2.parameters()):  # the loaded state is a copy
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(v, opt2.state[q][k], atol=0, rtol=0)
                assert v.data_ptr() != opt2.state[q][k].data_ptr()


@settings(max_examples=10, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), mom=st.floats(0.0, 0.95), wd=st.floats(0.0, 0.1))
def test_state_dict_holds_only_plain_values(lr, mom, wd):
    _, opt = train(partial(Adam, lr=lr, mom=mom, wd=wd), steps=2)
    sd = opt.state_dict()
    assert all(type(v) in (float, int, bool) for h in sd["hypers"] for v in h.values())
    assert all(isinstance(v, (torch.Tensor, int, bool)) for s in sd["state"] for v in s.values())


def test_load_state_dict_checks_group_and_param_counts():
    opt = SGD(with_grads(1.0, 2.0, groups=2), lr=0.1)
    with pytest.raises(ValueError, match="1 parameter groups but this optimizer has 2"):
        opt.load_state_dict({"state": [{}] * 4, "hypers": [{}]})
    with pytest.raises(ValueError, match="state for 3 parameters but this optimizer has 4"):
        opt.load_state_dict({"state": [{}] * 3, "hypers": [{}, {}]})
    with pytest.raises(ValueError, match="keys 'state' and 'hypers'"):
        opt.load_state_dict({"state": []})


def test_optim_wrapper_exposes_rnnkit_hypers():
    net = tiny_net()
    opt = OptimWrapper(net.parameters(), torch.optim.AdamW, lr=1e-3, mom=0.8, sqr_mom=0.95, wd=0.1)
    h = opt.hypers[0]
    assert (h["lr"], h["mom"], h["sqr_mom"], h["eps"], h["wd"]) == (1e-3, 0.8, 0.95, 1e-8, 0.1)
    opt.set_hyper("mom", 0.7)
    assert opt.opt.param_groups[0]["betas"] == (0.7, 0.95)
    assert opt.param_groups is opt.opt.param_groups and opt.param_lists[0][0] is net[0].weight


def test_optim_wrapper_maps_rmsprop_and_sgd_names():
    (ps,) = with_grads(1.0)
    opt = OptimWrapper(ps, torch.optim.RMSprop, lr=0.1, mom=0.5, sqr_mom=0.9, wd=0.01)
    g = opt.opt.param_groups[0]
    assert (g["momentum"], g["alpha"], g["weight_decay"]) == (0.5, 0.9, 0.01)
    with pytest.raises(ValueError, match="SGD has no hyper-parameter `sqr_mom`"):
        OptimWrapper(ps, torch.optim.SGD, lr=0.1, sqr_mom=0.9)


def test_optim_wrapper_step_matches_our_adam():
    kw = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    ours, _ = train(partial(Adam, **kw))
    wrapped, opt = train(partial(OptimWrapper, opt=torch.optim.AdamW, **kw))
    assert_same_params(ours, wrapped)


def test_optim_wrapper_spreads_slices_and_freezes(tmp_path):
    net, opt = train(partial(OptimWrapper, opt=torch.optim.AdamW, lr=slice(1e-3, 1e-2)),
                     groups=True)
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-2])
    opt.freeze()
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad
    before = net[0].weight.detach().clone()
    net[0].weight.grad = torch.ones_like(before)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert torch.equal(net[0].weight, before) and net[0].weight.grad is not None
    opt.state[net[0].weight]["force_train"] = True
    opt.clear_state()
    assert opt.state[net[0].weight] == {"force_train": True} and len(opt.opt.state) == 0
    torch.save(opt.state_dict(), tmp_path / "w.pth")
    opt.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))


def test_optim_wrapper_takes_a_built_optimizer():
    net = tiny_net()
    built = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt = OptimWrapper(None, built, lr=0.2)
    assert opt.hypers[0]["lr"] == 0.2 and opt.hypers[0]["mom"] == 0.9
    with pytest.raises(ValueError, match="both `params` and an already built optimizer"):
        OptimWrapper(net.parameters(), built)
