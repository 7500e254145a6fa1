"""fastai 2.8 parity of the optimizer (issue 14): steppers called positionally and outside
`torch.no_grad()`, `Optimizer` over any list, settable `param_lists`, LARC's `local_lr`, `lr=0`,
torch-style dict groups in `OptimWrapper`, `detuplify_pg`, `set_item_pg` and `pytorch_hp_map`.

Expected values are worked out by hand on one-element tensors, as fastai's optimizer notebook does.
"""
from __future__ import annotations

import inspect
import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.optim.lookahead import Lookahead, ranger
from rnnkit.optim.more import (Lamb, Larc, QHAdam, RAdam, lamb_step, larc_layer_lr, larc_step,
                               qhadam_step, radam_step)
from rnnkit.optim import (OptimWrapper, Optimizer, detuplify_pg, pytorch_hp_map,
                                      set_item_pg)
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, debias, l2_reg,
                                   momentum_step, rms_prop_step, sgd_step, step_stat, weight_decay)

IMPLS = ["auto", "foreach", "per_param"]


def param(value: float | list[float], grad: float | list[float]) -> torch.Tensor:
    """A float64 parameter holding `value` with gradient `grad` (no autograd history)."""
    p = torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float64)
    p.grad = torch.tensor(grad if isinstance(grad, list) else [grad], dtype=torch.float64)
    return p


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def tst_param(val: float, grad: float | None = None) -> torch.Tensor:
    """fastai's notebook helper: a one-element float parameter whose gradient is `val/10` by default."""
    p = torch.tensor([val]).float()
    p.grad = torch.tensor([val / 10 if grad is None else grad]).float()
    return p


def tst_params() -> list[torch.Tensor]:
    return [tst_param(i) for i in range(4)]


# ---- 1. Steppers take fastai's positional order ----

FASTAI_SIGNATURES = {  # the names and order of fastai's `fastai/optimizer.py`, `**kwargs` left out
    sgd_step: "p lr",
    weight_decay: "p lr wd do_wd",
    l2_reg: "p lr wd do_wd",
    average_grad: "p mom dampening grad_avg",
    average_sqr_grad: "p sqr_mom dampening sqr_avg",
    momentum_step: "p lr grad_avg",
    rms_prop_step: "p lr sqr_avg eps grad_avg",
    step_stat: "p step",
    debias: "mom damp step",
    adam_step: "p lr mom step sqr_mom grad_avg sqr_avg eps",
    radam_step: "p lr mom step sqr_mom grad_avg sqr_avg eps beta",
    qhadam_step: "p lr mom sqr_mom sqr_avg nu_1 nu_2 step grad_avg eps",
    larc_layer_lr: "p lr trust_coeff wd eps clip",
    larc_step: "p local_lr grad_avg",
    lamb_step: "p lr mom step sqr_mom grad_avg sqr_avg eps",
}


@pytest.mark.parametrize("f", list(FASTAI_SIGNATURES), ids=lambda f: f.__name__)
def test_steppers_take_fastais_parameters_positionally_in_its_order(f):
    params = inspect.signature(f).parameters.values()
    positional = [q.name for q in params if q.kind == q.POSITIONAL_OR_KEYWORD]
    assert positional == FASTAI_SIGNATURES[f].split()
    assert all(q.kind in (q.POSITIONAL_OR_KEYWORD, q.VAR_KEYWORD) for q in params)


def test_steppers_keep_fastais_optional_defaults():
    def default(f, name):
        return inspect.signature(f).parameters[name].default
    assert default(weight_decay, "do_wd") is True and default(l2_reg, "do_wd") is True
    assert default(average_grad, "dampening") is False and default(average_sqr_grad, "dampening") is True
    assert default(average_grad, "grad_avg") is None and default(rms_prop_step, "grad_avg") is None
    assert default(step_stat, "step") == 0 and default(larc_layer_lr, "clip") is True
    assert larc_layer_lr.defaults == {"trust_coeff": 0.02, "wd": 0.0, "eps": 1e-8}


def test_sgd_step_positionally():
    p = param(1.0, 0.1)
    sgd_step(p, 1.0)
    assert p.item() == pytest.approx(0.9) and p.grad.item() == pytest.approx(0.1)


def test_weight_decay_positionally():
    p = param(1.0, 0.1)
    weight_decay(p, 1.0, 0.1)  # 1 * (1 - 1*0.1)
    assert p.item() == pytest.approx(0.9) and p.grad.item() == pytest.approx(0.1)
    weight_decay(p, 1.0, 0.1, False)
    assert p.item() == pytest.approx(0.9)


def test_l2_reg_positionally():
    p = param(1.0, 0.1)
    l2_reg(p, 1.0, 0.1)  # grad 0.1 + 0.1*1
    assert p.item() == 1.0 and p.grad.item() == pytest.approx(0.2)
    l2_reg(p, 1.0, 0.1, False)
    assert p.grad.item() == pytest.approx(0.2)


def test_average_grad_positionally():
    p = param(0.0, 2.0)
    state = average_grad(p, 0.9)
    assert state["grad_avg"].item() == pytest.approx(2.0)
    state = average_grad(p, 0.9, False, state["grad_avg"])  # 0.9*2 + 2
    assert state["grad_avg"].item() == pytest.approx(3.8)
    assert average_grad(p, 0.9, True)["grad_avg"].item() == pytest.approx(0.2)  # (1-0.9)*2


def test_average_sqr_grad_positionally():
    p = param(0.0, 2.0)
    assert average_sqr_grad(p, 0.99)["sqr_avg"].item() == pytest.approx(0.04)  # 0.01 * 2**2
    assert average_sqr_grad(p, 0.99, False)["sqr_avg"].item() == pytest.approx(4.0)
    state = average_sqr_grad(p, 0.5, True, t(1.0))  # 0.5*1 + 0.5*4
    assert state["sqr_avg"].item() == pytest.approx(2.5)


def test_momentum_step_positionally():
    p = param(1.0, 0.5)
    momentum_step(p, 0.1, t(2.0))  # 1 - 0.1*2
    assert p.item() == pytest.approx(0.8)


def test_rms_prop_step_positionally():
    p = param(1.0, 0.5)
    rms_prop_step(p, 0.1, t(0.25), 0.5)  # 1 - 0.1 * 0.5 / (sqrt(0.25) + 0.5)
    assert p.item() == pytest.approx(0.95)
    p = param(1.0, 0.5)
    rms_prop_step(p, 0.1, t(0.25), 0.0, t(2.0))  # 1 - 0.1 * 2 / 0.5
    assert p.item() == pytest.approx(0.6)


def test_step_stat_and_debias_positionally():
    assert step_stat(param(1.0, 0.1), 4) == {"step": 5}
    assert debias(0.9, 0.1, 2) == pytest.approx(0.19)  # 0.1 * (1 - 0.81) / 0.1


def test_adam_step_positionally():
    # step 2: debias1 = 1 - 0.9**2 = 0.19, debias2 = 1 - 0.99**2 = 0.0199, so grad_avg 0.19 and
    # sqr_avg 0.0199*4 debias to 1 and 4: p = 1 - 0.1 * 1 / (sqrt(4) + 1)
    p = param(1.0, 0.5)
    adam_step(p, 0.1, 0.9, 2, 0.99, t(0.19), t(0.0199 * 4), 1.0)
    assert p.item() == pytest.approx(1 - 0.1 / 3)


def test_radam_step_positionally_in_both_branches():
    # step 1: r = r_inf - 2*0.99/0.01 = 1 <= 5, so plain momentum: p = 1 - 0.1 * 0.2/0.1
    p = param(1.0, 0.5)
    radam_step(p, 0.1, 0.9, 1, 0.99, t(0.2), t(0.04), 1e-5, 0.0)
    assert p.item() == pytest.approx(0.8)
    # step 100: the rectified Adam step with the published factor
    step, b1, b2 = 100, 0.9, 0.99
    r_inf = 2 / (1 - b2) - 1
    r = r_inf - 2 * step * b2**step / (1 - b2**step)
    rect = math.sqrt((r - 4) * (r - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * r))
    d1, d2 = 1 - b1**step, 1 - b2**step
    p = param(1.0, 0.5)
    radam_step(p, 0.1, b1, step, b2, t(d1 * 1.0), t(d2 * 4.0), 1.0, 0.0)
    assert p.item() == pytest.approx(1 - 0.1 * rect * 1.0 / (2.0 + 1.0))


def test_qhadam_step_positionally():
    # step 1, grad 0.3: grad_avg 0.01 and sqr_avg 1e-4 debias to 0.1 and 0.01;
    # num = 0.5*0.3 + 0.5*0.1 = 0.2, den = sqrt(0.2*0.09 + 0.8*0.01) = sqrt(0.026)
    p = param(1.0, 0.3)
    qhadam_step(p, 0.1, 0.9, 0.99, t(1e-4), 0.5, 0.8, 1, t(0.01), 0.0)
    assert p.item() == pytest.approx(1 - 0.1 * 0.2 / math.sqrt(0.026))


def test_larc_layer_lr_and_larc_step_positionally():
    p = param([3.0, 4.0], [0.6, 0.8])  # ||p|| = 5, ||g|| = 1
    # 0.5 * 0.02 * 5 / (1 + 5*0.1 + 0)
    assert larc_layer_lr(p, 0.5, 0.02, 0.1, 0.0)["local_lr"].item() == pytest.approx(0.05 / 1.5)
    # 0.5 * 1 * 5 / 1.5 = 1.67: clipped at lr, or not
    assert larc_layer_lr(p, 0.5, 1.0, 0.1, 0.0)["local_lr"] == 0.5
    assert larc_layer_lr(p, 0.5, 1.0, 0.1, 0.0, False)["local_lr"].item() == pytest.approx(2.5 / 1.5)
    q = param(1.0, 0.5)
    larc_step(q, torch.tensor(0.1, dtype=torch.float64))  # 1 - 0.1*0.5
    assert q.item() == pytest.approx(0.95)
    larc_step(q, 0.1, t(2.0))  # a number works too; 0.95 - 0.1*2
    assert q.item() == pytest.approx(0.75)


def test_lamb_step_positionally_as_in_fastais_notebook():
    # fastai: Lamb(tst_param([1,2,3], [0.1,0.2,0.3]), lr=0.1) gives [0.784, 1.784, 2.784] after a step
    g = t(0.1, 0.2, 0.3)
    p = param([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    lamb_step(p, 0.1, 0.9, 1, 0.99, 0.1 * g, 0.01 * g**2, 1e-5)
    torch.testing.assert_close(p, t(0.784, 1.784, 2.784), atol=1e-3, rtol=0)


# ---- 1b. ... and work outside torch.no_grad() on parameters that require grad ----

def _state(n: int) -> dict[str, torch.Tensor]:
    return {"grad_avg": torch.full((n,), 0.05), "sqr_avg": torch.full((n,), 0.01)}


HYPERS = dict(lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.1, step=3, beta=0.0, nu_1=0.7,
              nu_2=1.0, trust_coeff=0.02, local_lr=torch.tensor(0.05))
STEPPERS = [sgd_step, weight_decay, l2_reg, average_grad, average_sqr_grad, momentum_step,
            rms_prop_step, step_stat, adam_step, radam_step, qhadam_step, lamb_step, larc_layer_lr,
            larc_step, partial(average_grad, dampening=True), partial(rms_prop_step, grad_avg=None)]


@pytest.mark.parametrize("cb", STEPPERS, ids=lambda f: getattr(f, "__name__", "partial"))
def test_steppers_work_outside_no_grad_on_a_parameter_that_requires_grad(cb):
    torch.manual_seed(0)
    ref = torch.randn(3)
    ref.grad = torch.randn(3)
    p = ref.clone().requires_grad_(True)
    p.grad = ref.grad.clone()
    assert torch.is_grad_enabled()
    out = cb(p, **HYPERS, **_state(3))  # fastai's users do this in notebooks
    with torch.no_grad():
        expected = cb(ref, **HYPERS, **_state(3))
    assert p.is_leaf and p.requires_grad and p.grad_fn is None
    assert p.grad.grad_fn is None and not p.grad.requires_grad
    torch.testing.assert_close(p.detach(), ref)
    torch.testing.assert_close(p.grad, ref.grad)
    for k, v in (out or {}).items():
        assert not getattr(v, "requires_grad", False)
        torch.testing.assert_close(v, expected[k])


# ---- 2. Optimizer over any list, as fastai's ----

def tst_arg(p, lr=0, **kwargs): return p


tst_arg.defaults = dict(lr=1e-2)


def tst_arg2(p, lr2=0, **kwargs): return p


tst_arg2.defaults = dict(lr2=1e-3)


def noop(x=None, *args, **kwargs): return x


def test_optimizer_takes_plain_objects_and_lists_of_lists_like_fastai():
    assert Optimizer([1, 2, 3], noop).param_lists == [[1, 2, 3]]
    assert Optimizer(range(3), noop).param_lists == [[0, 1, 2]]
    assert Optimizer([[1, 2], [3]], noop).param_lists == [[1, 2], [3]]
    assert Optimizer(([o, o + 1] for o in range(0, 4, 2)), noop).param_lists == [[0, 1], [2, 3]]
    assert Optimizer(["a", "b"], noop).param_lists == [["a", "b"]]


def test_hypers_over_plain_objects_merge_defaults_like_fastai():
    assert Optimizer([1, 2, 3], [tst_arg, tst_arg2]).hypers == [{"lr2": 1e-3, "lr": 1e-2}]
    assert Optimizer([1, 2, 3], tst_arg, lr=0.1).hypers == [{"lr": 0.1}]
    assert Optimizer([[1, 2], [3]], tst_arg).hypers == [{"lr": 1e-2}, {"lr": 1e-2}]
    assert Optimizer([[1, 2], [3]], tst_arg, lr=[0.1, 0.2]).hypers == [{"lr": 0.1}, {"lr": 0.2}]


def test_set_hyper_with_a_list_or_a_slice_over_plain_objects():
    opt = Optimizer([[1, 2], [3], [4]], tst_arg, lr=slice(1e-2))
    assert opt.hypers == [{"lr": 1e-3}, {"lr": 1e-3}, {"lr": 1e-2}]
    opt = Optimizer([[1, 2], [3], [4]], tst_arg, lr=slice(1e-4, 1e-2))
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert opt.param_groups[0]["params"] == [1, 2] and opt.param_groups[2]["params"] == [4]
    opt.set_hyper("mom", [0.9, 0.8, 0.7])
    assert [h["mom"] for h in opt.hypers] == [0.9, 0.8, 0.7]
    opt.set_hypers(lr=0.5, wd=[0.0, 0.1, 0.2])
    assert opt.hypers[1] == {"lr": 0.5, "mom": 0.8, "wd": 0.1}
    with pytest.raises(ValueError, match="got 2 values for 3 parameter groups"):
        Optimizer([[1, 2], [3], [4]], tst_arg, lr=np.array([0.1, 0.2]))


def test_state_freezing_and_serialising_work_over_plain_objects():
    opt = Optimizer([[1, 2], [3]], tst_arg)
    assert opt.state[1] == {}
    opt.state[3] = {"force_train": True, "x": torch.ones(1)}
    opt.freeze()
    assert opt.frozen_idx == 1
    opt.unfreeze()
    assert opt.frozen_idx == 0
    sd = opt.state_dict()
    assert sd["state"][2]["x"] is opt.state[3]["x"]
    opt2 = Optimizer([[4, 5], [6]], tst_arg, lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.hypers == [{"lr": 1e-2}, {"lr": 1e-2}]
    assert torch.equal(opt2.state[6]["x"], torch.ones(1)) and opt2.state[6]["x"] is not opt.state[3]["x"]
    opt.clear_state()
    assert opt.state[3] == {"force_train": True}


class _WithGrad:
    """A parameter-like object that is not a tensor (fastai steps whatever has a `.grad`)."""

    def __init__(self, grad: float | None) -> None:
        self.grad = grad


def test_step_and_zero_grad_skip_objects_without_a_grad_like_fastai():
    seen = []

    def record(p, lr, **kwargs):
        seen.append((p, lr))

    objs = [1, "two", _WithGrad(None), _WithGrad(0.5)]
    opt = Optimizer(objs, record, lr=0.1)
    opt.step()
    assert seen == [(objs[3], 0.1)]
    assert [p for p, *_ in opt.all_params(with_grad=True)] == [objs[3]]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_group_mixing_tensors_and_other_objects_steps_the_tensors(impl):
    p = tst_param(2.0)
    opt = SGD([p, 1, None], lr=0.1)
    opt.impl = impl
    opt.step()
    assert p.item() == pytest.approx(2.0 - 0.1 * 0.2)
    opt.zero_grad()
    assert p.grad.item() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_fastais_notebook_steps_on_tst_params(impl):
    def run(params, cbs, **kw):
        opt = Optimizer(params, cbs, **kw)
        opt.impl = impl
        return opt

    params = tst_params()
    run(params, sgd_step, lr=0.1).step()
    assert [p.item() for p in params] == pytest.approx([i * 0.99 for i in range(4)])
    params = tst_params()
    run(params, [weight_decay, sgd_step], lr=0.1, wd=0.1).step()
    assert [p.item() for p in params] == pytest.approx([i * 0.98 for i in range(4)])
    params = tst_params()
    opt = run(params, sgd_step, lr=0.1)
    params[-1].grad = None
    opt.step()
    assert [p.item() for p in params] == pytest.approx([0.0, 0.99, 1.98, 3.0])
    params = tst_params()
    opt = run([params[:2], params[2:]], sgd_step, lr=0.1)
    opt.hypers[0]["lr"] = 0.01
    opt.step()
    assert [p.item() for p in params] == pytest.approx([0.0, 0.999, 1.98, 2.97])
    opt.zero_grad()
    assert all(p.grad.item() == 0 for p in params)


def test_a_single_tensor_is_one_group_and_its_state_round_trips_as_in_fastai():
    p = torch.tensor([[1.0, 2.0, 3.0]])
    p.grad = torch.tensor([[4.0, 5.0, 6.0]])
    opt = Optimizer(p, average_grad)
    assert opt.param_lists == [[p]]
    opt.step()
    sd = opt.state_dict()
    p1 = torch.tensor([[10.0, 20.0, 30.0]])
    opt = Optimizer(p1, average_grad, mom=0.99)
    assert opt.hypers[0]["mom"] == 0.99 and dict(opt.state) == {}
    opt.load_state_dict(sd)
    assert opt.hypers[0]["mom"] == 0.9
    assert torch.equal(opt.state[p1]["grad_avg"], torch.tensor([[4.0, 5.0, 6.0]]))


# ---- 2b. settable param_lists ----

def test_optim_wrapper_param_lists_is_settable_as_in_fastai():
    wrapped = OptimWrapper(None, torch.optim.SGD([torch.tensor([1.0, 2, 3])], lr=1e-3, momentum=0.9))
    new = torch.tensor([4.0, 5, 6])
    wrapped.param_lists = [[new]]
    assert wrapped.opt.param_groups[0]["params"] == [new] and wrapped.param_lists == [[new]]
    a, b = torch.tensor([1.0, 2, 3]), torch.tensor([4.0, 5, 6])
    wrapped = OptimWrapper(None, torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}]))
    wrapped.param_lists = [[b], [a]]
    assert wrapped.opt.param_groups[0]["params"] == [b] and wrapped.opt.param_groups[1]["params"] == [a]
    assert [h["lr"] for h in wrapped.hypers] == [1e-3, 1e-2]


def test_optim_wrapper_steps_the_params_set_through_param_lists():
    old, new = tst_param(1.0, 1.0), tst_param(2.0, 1.0)
    wrapped = OptimWrapper([old], torch.optim.SGD, lr=0.5)
    wrapped.param_lists = [(new,)]
    wrapped.step()
    assert old.item() == 1.0 and new.item() == pytest.approx(1.5)


def test_lookahead_param_lists_is_settable_and_reaches_the_wrapped_optimizer():
    p, q = tst_param(1.0), tst_param(2.0)
    opt = Lookahead(SGD([p], lr=0.1))
    opt.param_lists = [[q]]
    assert opt.opt.param_lists == [[q]] and opt.param_lists == [[q]]


# ---- 2c. LARC keeps local_lr as fastai users compare it ----

@pytest.mark.parametrize("impl", IMPLS)
def test_larc_local_lr_as_in_fastais_notebook(impl):
    ps = [torch.tensor([[1.0, 2, 3]]), torch.tensor([[1.0, 2, 3]])]
    ps[0].grad, ps[1].grad = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.01, 0.02, 0.03]])
    opt = Larc(ps, lr=0.1)
    opt.impl = impl
    opt.step()
    local = [opt.state[p]["local_lr"] for p in ps]
    assert float(local[0]) == pytest.approx(0.02)  # 0.1 * 0.02 * ||p|| / ||g||: not clipped
    assert local[1] == 0.1 and float(local[1]) == 0.1  # 0.2 clipped at lr: exactly lr
    assert np.array_equal(local[1], 0.1)  # what fastcore's test_eq sees
    torch.testing.assert_close(ps[0], torch.tensor([[0.998, 1.996, 2.994]]))
    torch.testing.assert_close(ps[1], torch.tensor([[0.999, 1.998, 2.997]]))

    ps = [torch.tensor([[1.0, 2, 3]]), torch.tensor([[1.0, 2, 3]])]
    ps[0].grad, ps[1].grad = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.01, 0.02, 0.03]])
    opt = Larc(ps, lr=0.1, clip=False)
    opt.impl = impl
    opt.step()
    assert [float(opt.state[p]["local_lr"]) for p in ps] == pytest.approx([0.02, 0.2])
    for p in ps:
        torch.testing.assert_close(p, torch.tensor([[0.998, 1.996, 2.994]]))


# ---- 3. lr=0 is a valid learning rate ----

RECIPES = {"SGD": SGD, "RMSProp": RMSProp, "Adam": Adam, "RAdam": RAdam, "QHAdam": QHAdam,
           "Lamb": Lamb, "Larc": Larc, "ranger": partial(ranger, k=2)}


def _zero_lr_opt(recipe, ps, how, **kw):
    if how == "scalar":
        return recipe(ps, lr=0.0, **kw)
    if how == "list":
        return recipe(ps, lr=[0.0, 0], **kw)
    if how == "slice":
        return recipe(ps, lr=slice(0.0), **kw)
    opt = recipe(ps, lr=1e-2, **kw)
    opt.set_hyper("lr", 0)
    return opt


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(RECIPES)), impl=st.sampled_from(IMPLS),
       how=st.sampled_from(["scalar", "list", "slice", "set_hyper"]), mom=st.floats(0.0, 0.99),
       wd=st.floats(0.0, 1.0), decouple_wd=st.booleans(), seed=st.integers(0, 2**16))
def test_zero_lr_leaves_params_unchanged_for_every_recipe_and_path(name, impl, how, mom, wd,
                                                                   decouple_wd, seed):
    torch.manual_seed(seed)
    ps = [[torch.randn(3)], [torch.randn(2, 2), torch.randn(1)]]
    before = [p.clone() for g in ps for p in g]
    opt = _zero_lr_opt(RECIPES[name], ps, how, mom=mom, wd=wd, decouple_wd=decouple_wd)
    opt.impl = impl
    assert [h["lr"] for h in opt.hypers] == [0, 0]
    for _ in range(3):
        for g in ps:
            for p in g:
                p.grad = torch.randn_like(p)
        opt.step()
    for p, b in zip([p for g in ps for p in g], before):
        assert torch.equal(p, b)


def test_zero_lr_through_the_steppers_changes_nothing():
    p = param(1.0, 0.5)
    sgd_step(p, 0)
    weight_decay(p, 0, 0.5)
    momentum_step(p, 0.0, t(3.0))
    rms_prop_step(p, 0.0, t(0.25), 1e-8)
    adam_step(p, 0.0, 0.9, 1, 0.99, t(0.1), t(0.01), 1e-5)
    assert p.item() == 1.0


def test_nan_lr_is_rejected_and_negative_lr_is_kept():
    with pytest.raises(ValueError, match="lr is NaN for parameter group 0"):
        SGD([tst_param(1.0)], lr=float("nan"))
    opt = SGD([[tst_param(1.0)], [tst_param(2.0)]], lr=0.1)
    with pytest.raises(ValueError, match="lr is NaN for parameter group 1"):
        opt.set_hyper("lr", [0.1, float("nan")])
    p = tst_param(1.0, 1.0)
    SGD([p], lr=-0.5).step()  # gradient ascent, as fastai allows
    assert p.item() == pytest.approx(1.5)


def test_slices_spread_like_fastai_including_zero_and_a_step():
    opt = Optimizer([[1], [2], [3]], tst_arg)
    opt.set_hyper("lr", slice(1e-3, 1e-1, 7))  # fastai ignores the step
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-2, 1e-1])
    opt.set_hyper("lr", slice(1e-2, 0))  # geometric towards 0
    assert [h["lr"] for h in opt.hypers] == [1e-2, 0, 0]
    opt.set_hyper("lr", slice(0, 1e-2))  # no start: hi/10 for all but the last, as fastai
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-3, 1e-2])
    with pytest.raises(ValueError, match="lo and hi of the same sign"):
        opt.set_hyper("lr", slice(-1e-2, 1e-2))


def test_lookahead_takes_any_alpha_fastai_takes():
    p = tst_param(1.0, 1.0)
    opt = Lookahead(SGD([p], lr=0.1), k=2, alpha=0.0)  # the slow weights never move
    opt.step()
    opt.step()
    assert p.item() == 1.0
    with pytest.raises(ValueError, match="needs a number alpha"):
        Lookahead(SGD([p], lr=0.1), alpha=float("nan"))
    with pytest.raises(ValueError, match="whole number k >= 1"):
        Lookahead(SGD([p], lr=0.1), k=0)


# ---- 4. OptimWrapper takes torch-style dict groups; detuplify_pg, set_item_pg, pytorch_hp_map ----

def test_optim_wrapper_passes_dict_groups_to_torch_with_per_group_lrs():
    w1, w2 = tst_param(1.0, 1.0), tst_param(1.0, 1.0)
    g1, g2 = {"params": [w1]}, {"params": [w2], "lr": 0.1}
    opt = OptimWrapper([g1, g2], opt=torch.optim.SGD, lr=0.01)
    assert opt.opt.param_groups[0] is g1 and opt.opt.param_groups[1] is g2  # unchanged, as fastai
    assert [h["lr"] for h in opt.hypers] == [0.01, 0.1] and opt.param_lists == [[w1], [w2]]
    opt.step()
    assert (w1.item(), w2.item()) == (pytest.approx(0.99), pytest.approx(0.9))  # 1 - lr * grad 1
    v1, v2 = tst_param(1.0, 1.0), tst_param(1.0, 1.0)  # the same with torch alone
    torch.optim.SGD([{"params": [v1]}, {"params": [v2], "lr": 0.1}], lr=0.01).step()
    assert (w1.item(), w2.item()) == (v1.item(), v2.item())


def test_optim_wrapper_converts_lists_next_to_dict_groups_as_fastai():
    w1, w2 = tst_param(1.0, 1.0), tst_param(1.0, 1.0)
    opt = OptimWrapper([[w1], {"params": [w2], "lr": 0.1}], torch.optim.SGD, lr=0.01)
    assert opt.param_lists == [[w1], [w2]] and [h["lr"] for h in opt.hypers] == [0.01, 0.1]
    opt.set_hyper("lr", slice(0.2, 0.4))  # set_hyper still reaches every group
    assert [h["lr"] for h in opt.hypers] == pytest.approx([0.2, 0.4])
    single = OptimWrapper({"params": [w1], "lr": 0.3}, torch.optim.SGD)  # one dict: one group
    assert single.param_lists == [[w1]] and single.hypers[0]["lr"] == 0.3


def test_optim_wrapper_rnnkit_kwargs_are_defaults_for_dict_groups_as_torch_kwargs():
    w1, w2 = tst_param(1.0, 1.0), tst_param(1.0, 1.0)
    # mom is betas[0] for Adam: set after construction, but like torch's kwargs it must leave alone
    # the group that gives its own betas
    opt = OptimWrapper([{"params": [w1], "betas": (0.5, 0.6)}, {"params": [w2]}], torch.optim.Adam,
                       lr=0.01, mom=0.8)
    assert [(h["mom"], h["sqr_mom"]) for h in opt.hypers] == [(0.5, 0.6), (0.8, 0.999)]
    opt = OptimWrapper([{"params": [w1], "betas": (0.5, 0.6)}, {"params": [w2]}], torch.optim.Adam,
                       lr=0.01, mom=[0.7, 0.8])  # one value per group sets every group
    assert [h["mom"] for h in opt.hypers] == [0.7, 0.8]


def test_optim_wrapper_explains_malformed_dict_groups():
    w = tst_param(1.0)
    with pytest.raises(ValueError, match="group 1 is a dict without a 'params' key"):
        OptimWrapper([{"params": [w]}, {"lr": 0.1}], torch.optim.SGD, lr=0.01)
    with pytest.raises(TypeError, match="Item 0 of params is a Tensor, next to torch-style dict"):
        OptimWrapper([w, {"params": [tst_param(2.0)]}], torch.optim.SGD, lr=0.01)


def test_plain_optimizer_still_refuses_dict_groups_and_points_to_optim_wrapper():
    with pytest.raises(TypeError, match="use OptimWrapper"):
        SGD([{"params": [tst_param(1.0)]}], lr=0.1)


def test_detuplify_pg_splits_tuples_and_lists_and_drops_params():
    assert detuplify_pg({"lr": 1e-2, "mom": 0.9, "params": [0, 1, 2]}) == {"lr": 1e-2, "mom": 0.9}
    assert detuplify_pg({"lr": 1e-2, "betas": (0.9, 0.999), "params": [0]}) == {
        "lr": 1e-2, "betas__0": 0.9, "betas__1": 0.999}
    assert detuplify_pg({"nus": [0.7, 1.0]}) == {"nus__0": 0.7, "nus__1": 1.0}


def test_set_item_pg_sets_a_key_or_one_item_of_a_tuple_in_place():
    pg = {"lr": 1e-2, "mom": 0.9, "params": [0, 1, 2]}
    assert set_item_pg(pg, "lr", 1e-3) is pg and pg == {"lr": 1e-3, "mom": 0.9, "params": [0, 1, 2]}
    pg = {"lr": 1e-2, "betas": (0.9, 0.999), "params": [0, 1, 2]}
    set_item_pg(pg, "betas__0", 0.95)
    assert pg == {"lr": 1e-2, "betas": (0.95, 0.999), "params": [0, 1, 2]}
    set_item_pg(pg, "betas__1", 0.99)
    assert pg["betas"] == (0.95, 0.99)
    for k in detuplify_pg(pg):  # the inverse of detuplify_pg, key by key
        assert detuplify_pg(set_item_pg(dict(pg), k, 0.5)) == {**detuplify_pg(pg), k: 0.5}
    with pytest.raises(ValueError, match="item 2 of `betas`, which has 2 items"):
        set_item_pg(pg, "betas__2", 0.5)  # fastai silently sets nothing


def test_pytorch_hp_map_names_torch_hypers_as_fastai():
    assert pytorch_hp_map == {"momentum": "mom", "weight_decay": "wd", "alpha": "sqr_mom",
                              "betas__0": "mom", "betas__1": "sqr_mom"}
    import rnnkit.optim  # rnnkit.all star-imports it
    assert {"detuplify_pg", "set_item_pg", "pytorch_hp_map"} <= set(rnnkit.optim.__all__)
    assert rnnkit.optim.pytorch_hp_map is pytorch_hp_map


def test_optim_wrapper_hypers_are_every_torch_key_renamed_through_the_map_as_fastai():
    # fastai 2.8: {fwd_map.get(k, k): v for k, v in detuplify_pg(pg).items()}, so recent torch's
    # foreach, fused, capturable, differentiable, decoupled_weight_decay ... are in hypers too
    opt = OptimWrapper([tst_param(1.0)], torch.optim.Adam, lr=1e-2, betas=(0.9, 0.99))
    group, h = opt.opt.param_groups[0], opt.hypers[0]
    assert (h["lr"], h["mom"], h["sqr_mom"], h["eps"], h["wd"]) == (1e-2, 0.9, 0.99, 1e-8, 0)
    others = {k: v for k, v in group.items() if k not in ("params", "lr", "betas", "eps", "weight_decay")}
    assert {k: v for k, v in h.items() if k not in ("lr", "mom", "sqr_mom", "eps", "wd")} == others
    assert "amsgrad" in others and "maximize" in others
    mapped = OptimWrapper([tst_param(1.0)], torch.optim.Adam, hp_map={"betas__0": "beta1"}, lr=0.1)
    assert mapped.hypers[0]["beta1"] == 0.9 and "mom" not in mapped.hypers[0]
    mapped.set_hyper("beta1", 0.5)
    assert mapped.opt.param_groups[0]["betas"] == (0.5, 0.999)
