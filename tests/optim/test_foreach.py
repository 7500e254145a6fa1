"""The batched step (fused kernels, foreach twins) against the per-parameter protocol."""
from __future__ import annotations

import copy
import inspect
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.optim import adam as adam_module
from rnnkit.optim import buckets
from rnnkit.optim.buckets import ParamGrouping
from rnnkit.optim.lookahead import ranger
from rnnkit.optim.more import (Lamb, Larc, QHAdam, RAdam, lamb_step, larc_layer_lr, larc_step,
                               qhadam_step, radam_step)
from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.stepper import batched_form
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, foreach_of, l2_reg,
                                   momentum_step, rms_prop_step, sgd_step, step_stat, stepper,
                                   weight_decay)

BUILT_IN = [sgd_step, weight_decay, l2_reg, average_grad, average_sqr_grad, momentum_step,
            rms_prop_step, step_stat, adam_step, radam_step, qhadam_step, lamb_step,
            larc_layer_lr, larc_step]
HYPERS = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.1, beta=0.0, nu_1=0.7, nu_2=1.0,
              trust_coeff=0.02)


def sgd_cb(p, lr, **kwargs):  # the seed's user-written stepper
    p.data.add_(p.grad.data, alpha=-lr)


def make_params(shapes, groups=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    per = max(1, len(ps) // groups)
    return [ps[i * per:(i + 1) * per] if i < groups - 1 else ps[i * per:] for i in range(groups)]


def set_grads(groups, seed, skip=()):
    g = torch.Generator().manual_seed(seed)
    for i, p in enumerate(p for pl in groups for p in pl):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g, dtype=p.dtype)


def twin_copy(groups, opt):
    """Deep copies of the parameter groups and of `opt` stepping them (state carried over)."""
    groups2 = [[p.clone() for p in pl] for pl in groups]
    opt2 = copy.copy(opt)
    opt2.param_lists = groups2
    opt2.hypers = copy.deepcopy(opt.hypers)
    old = [p for pl in groups for p in pl]
    opt2.state = type(opt.state)(dict, {q: copy.deepcopy(dict(opt.state[p]))
                                       for p, q in zip(old, [q for pl in groups2 for q in pl])})
    opt2.grouping = ParamGrouping()
    return groups2, opt2


def assert_same(groups_a, opt_a, groups_b, opt_b, atol=1e-6, rtol=1e-5):
    for pl_a, pl_b in zip(groups_a, groups_b):
        for p, q in zip(pl_a, pl_b):
            torch.testing.assert_close(p, q, atol=atol, rtol=rtol)
            sa, sb = opt_a.state[p], opt_b.state[q]
            assert set(sa) == set(sb)
            for k in sa:
                if isinstance(sa[k], torch.Tensor):
                    torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=rtol)
                else:
                    assert sa[k] == sb[k] and type(sa[k]) is type(sb[k])


def run_both(opt_func, shapes=((3, 4), (5,), (2, 2, 2), (1,)), groups=2, steps=4,
             impls=("per_param", "foreach", "auto"), dtype=torch.float32, setup=None):
    results = []
    for impl in impls:
        ps = make_params(shapes, groups, dtype)
        opt = opt_func(ps)
        opt.impl = impl
        if setup is not None:
            setup(ps, opt)
        for s in range(steps):
            set_grads(ps, seed=s)
            opt.step()
        results.append((ps, opt))
    return results


def test_every_built_in_stepper_has_a_twin_with_its_keywords():
    for cb in BUILT_IN:
        twin = cb.foreach
        one = {k: v.default for k, v in list(inspect.signature(cb).parameters.items())[1:]}
        many = {k: v.default for k, v in list(inspect.signature(twin).parameters.items())[2:]}
        assert one == many, cb.__name__


def test_foreach_of_rejects_a_twin_with_other_keywords():
    @stepper()
    def f(p, *, lr, **_): ...

    with pytest.raises(TypeError, match="must take `\\(ps, grads\\)` and the keywords of `f`"):
        @foreach_of(f)
        def g(ps, grads, *, lr, mom, **_): ...


@pytest.mark.parametrize("cb", BUILT_IN, ids=lambda f: f.__name__)
def test_each_twin_agrees_with_its_stepper(cb):
    ps = make_params([(3, 4), (5,), (2,)])[0]
    set_grads([ps], seed=1)
    torch.manual_seed(2)
    state = dict(grad_avg=[torch.randn_like(p) for p in ps], sqr_avg=[torch.rand_like(p) for p in ps],
                 local_lr=[torch.rand(()) * 1e-2 for _ in ps])
    for step in (1, 7):  # RAdam's two branches
        qs = [p.clone() for p in ps]
        gs = [p.grad.clone() for p in ps]
        for q, g in zip(qs, gs):
            q.grad = g
        lists = {k: [t.clone() for t in v] for k, v in state.items()}
        out_many = cb.foreach(qs, gs, step=step, **HYPERS, **lists)
        for i, p in enumerate(ps):
            r = p.clone()
            r.grad = p.grad.clone()
            out_one = cb(r, step=step, **HYPERS, **{k: v[i].clone() for k, v in state.items()})
            torch.testing.assert_close(r, qs[i])
            torch.testing.assert_close(r.grad, qs[i].grad)
            for k, v in (out_one or {}).items():
                many = out_many[k]
                torch.testing.assert_close(v, many[i] if isinstance(many, list) else many)


RECIPES = {
    "Adam": partial(Adam, lr=1e-2, wd=0.1),
    "Adam-l2": partial(Adam, lr=1e-2, wd=0.1, decouple_wd=False),
    "SGD": partial(SGD, lr=0.1, wd=0.1),
    "SGD-mom": partial(SGD, lr=0.1, mom=0.9, wd=0.1),
    "SGD-mom-l2": partial(SGD, lr=0.1, mom=0.9, wd=0.1, decouple_wd=False),
    "RMSProp": partial(RMSProp, lr=1e-2, wd=0.1),
    "RMSProp-l2": partial(RMSProp, lr=1e-2, wd=0.1, decouple_wd=False),
    "RMSProp-mom": partial(RMSProp, lr=1e-2, mom=0.9),
    "RAdam": partial(RAdam, lr=1e-2, wd=0.1),
    "QHAdam": partial(QHAdam, lr=1e-2, wd=0.1),
    "Lamb": partial(Lamb, lr=1e-2, wd=0.1),
    "Larc": partial(Larc, lr=0.1, wd=0.1),
}


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_give_the_same_params_and_state_on_every_path(name):
    (a, opt_a), (b, opt_b), (c, opt_c) = run_both(RECIPES[name], steps=8)
    expected = "fused" if name in ("Adam", "Adam-l2", "SGD-mom", "SGD-mom-l2", "RMSProp",
                                     "RMSProp-l2") else "foreach"
    assert (opt_a.step_path, opt_b.step_path, opt_c.step_path) == ("per_param", "foreach", expected)
    assert_same(a, opt_a, b, opt_b)
    assert_same(a, opt_a, c, opt_c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_and_per_parameter_adam_agree_in_other_dtypes(dtype):
    (a, opt_a), (b, opt_b) = run_both(partial(Adam, lr=1e-2), impls=("per_param", "auto"), dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    assert_same(a, opt_a, b, opt_b, atol=tol, rtol=tol)


def test_step_is_a_python_int_on_every_path():
    for ps, opt in run_both(RECIPES["Adam"], steps=3):
        assert all(type(opt.state[p]["step"]) is int and opt.state[p]["step"] == 3
                   for pl in ps for p in pl)


def test_a_chain_with_a_user_stepper_takes_the_per_parameter_path():
    opt = Optimizer([torch.zeros(2)], [weight_decay, sgd_cb], lr=0.1)
    assert opt.step_path == "per_param"
    (a, opt_a), (b, opt_b) = run_both(partial(Optimizer, cbs=[weight_decay, sgd_cb], lr=0.1, wd=0.1),
                                      impls=("per_param", "auto"))
    assert opt_b.step_path == "per_param"
    assert_same(a, opt_a, b, opt_b, atol=0, rtol=0)


def test_a_user_stepper_with_a_registered_twin_is_batched():
    @stepper()
    def halve_grad(p, *, lr, **_):
        p.grad.mul_(0.5)

    @foreach_of(halve_grad)
    def _halve_grad(ps, grads, *, lr, **_):
        torch._foreach_mul_(grads, 0.5)

    cbs = [halve_grad, partial(average_grad, dampening=True), momentum_step]
    make = partial(Optimizer, cbs=cbs, lr=0.1)
    (a, opt_a), (b, opt_b) = run_both(make, impls=("per_param", "auto"))
    assert opt_b.step_path == "foreach"
    assert_same(a, opt_a, b, opt_b)


def test_impl_is_checked():
    opt = Adam([torch.zeros(1)], lr=0.1)
    with pytest.raises(ValueError, match="impl must be one of"):
        opt.impl = "fast"


def test_state_dict_from_one_path_continues_identically_on_another(tmp_path):
    ps, opt = run_both(RECIPES["Adam"], steps=3, impls=("auto",))[0]
    torch.save(opt.state_dict(), tmp_path / "o.pth")
    sd = torch.load(tmp_path / "o.pth", weights_only=True)
    for impl in ("per_param", "foreach"):
        qs, other = twin_copy(ps, opt)
        other.clear_state()
        other.impl = impl
        other.load_state_dict(sd)
        refs, ref = twin_copy(ps, opt)
        for s in range(3, 6):
            set_grads(qs, s)
            set_grads(refs, s)
            other.step()
            ref.step()
        assert_same(refs, ref, qs, other)


def test_changes_between_steps_are_seen_by_the_batched_path():
    def script(ps, opt):
        flat = [p for pl in ps for p in pl]
        orig = opt.step

        def step():
            n = step.n = getattr(step, "n", 0) + 1
            if n == 2:
                opt.state[flat[0]]["do_wd"] = False  # a bias gets no weight decay from now on
            if n == 3:
                opt.set_hyper("lr", slice(1e-3, 1e-2))  # discriminative lrs
                flat[1].grad = None  # a parameter with no gradient this step
            if n == 4:
                opt.freeze()
            if n == 5:
                opt.state[flat[0]]["force_train"] = True
            if n == 6:
                opt.unfreeze()
                opt.clear_state()
            if n == 7:
                opt.state[flat[2]]["grad_avg"] = torch.ones_like(flat[2])  # replaced state
            orig()

        opt.step = step

    def run(impl):
        ps = make_params([(3, 4), (5,), (2, 2), (1,)], groups=2)
        opt = Adam(ps, lr=1e-2, wd=0.1)
        opt.impl = impl
        script(ps, opt)
        for s in range(8):
            set_grads(ps, seed=s, skip=(1,) if s == 2 else ())
            opt.step()
        return ps, opt

    a, opt_a = run("per_param")
    b, opt_b = run("auto")
    assert_same(a, opt_a, b, opt_b)


def test_frozen_groups_get_no_step_on_the_batched_path():
    ps = make_params([(3,), (2,), (4,)], groups=3)
    opt = SGD(ps, lr=0.1, mom=0.9, wd=0.5)
    before = [p.clone() for pl in ps for p in pl]
    opt.freeze_to(2)
    opt.state[ps[0][0]]["force_train"] = True
    set_grads(ps, 0)
    opt.step()
    after = [p for pl in ps for p in pl]
    assert not torch.equal(after[0], before[0])  # force_train
    assert torch.equal(after[1], before[1]) and not torch.equal(after[2], before[2])
    assert opt.state[ps[1][0]] == {}


def test_missing_hyper_parameter_is_explained_on_the_batched_path():
    opt = Optimizer([torch.zeros(2)], [partial(average_grad, dampening=True), average_sqr_grad,
                                       step_stat, adam_step], lr=0.1, mom=0.9)
    opt.param_lists[0][0].grad = torch.ones(2)
    assert opt.step_path == "foreach"
    with pytest.raises(ValueError, match="Stepper `adam_step` needs 'eps'"):
        opt.step()
    opt = Adam([torch.zeros(2)], lr=0.1)
    del opt.hypers[0]["eps"]
    opt.param_lists[0][0].grad = torch.ones(2)
    with pytest.raises(ValueError, match="Stepper `adam_step` needs 'eps'"):
        opt.step()


def test_the_plan_is_kept_between_steps():
    ps = make_params([(3,), (2,)])
    opt = Adam(ps, lr=1e-2)
    set_grads(ps, 0)
    opt.step()
    plan = opt.grouping._plan
    for s in range(3):
        set_grads(ps, s)
        opt.step()
        opt.set_hyper("lr", 1e-3 * s + 1e-3)  # schedules change hypers: no new plan
    assert opt.grouping._plan is plan


def test_a_new_step_count_keeps_the_bucket_layout(monkeypatch):
    # Adam's state keys are fixed after the first step; only the step count changes. Rebuilding the
    # layout each step was wasted Python, and the kept layout must still see the new count.
    layouts = []
    set_layout = buckets._Bucket.set_layout
    monkeypatch.setattr(buckets._Bucket, "set_layout", lambda self, *a: layouts.append(1) or set_layout(self, *a))
    ps, ref = make_params([(3,), (2,)]), make_params([(3,), (2,)])
    opt, opt_ref = Adam(ps, lr=1e-2), Adam(ref, lr=1e-2)
    opt_ref.impl = "per_param"
    for s in range(5):
        for o, q in ((opt, ps), (opt_ref, ref)):
            set_grads(q, seed=s)
            o.step()
    assert len(layouts) == 2  # when the bucket is built, and when the first step adds the state
    assert all(opt.state[p]["step"] == 5 for g in ps for p in g)
    assert_same(ref, opt_ref, ps, opt)


def test_groups_with_equal_hypers_step_in_one_kernel_call(monkeypatch):
    from rnnkit.optim.fused import fused_supported

    fused_adam = adam_module.fused_adam
    if not fused_supported(fused_adam, torch.device("cpu")):
        pytest.skip("this PyTorch has no fused Adam kernel on the CPU (PyTorch < 2.4)")

    calls = []

    def counted(ps, grads, **kw):  # the recipe's declared fused step, counting its calls (not the probe's)
        if kw["lr"] != 0:
            calls.append(len(ps))
        return fused_adam(ps, grads, **kw)

    monkeypatch.setattr(adam_module, "fused_adam", counted)
    shapes = [(3, 4), (5,), (2, 2), (1,), (6,), (2, 3)]
    ps = make_params(shapes, groups=3)
    ref = make_params(shapes, groups=3)
    opt, opt_ref = Adam(ps, lr=1e-2, wd=0.1), Adam(ref, lr=1e-2, wd=0.1)
    opt_ref.impl = "per_param"
    for s in range(3):
        for o, q in ((opt, ps), (opt_ref, ref)):
            set_grads(q, seed=s)
            o.step()
    assert calls == [6, 6, 6]  # one call for all three groups' parameters, every step
    assert_same(ref, opt_ref, ps, opt)
    calls.clear()
    for o in (opt, opt_ref):
        o.set_hyper("lr", slice(1e-3, 1e-2))  # discriminative lrs: one call per group
    for o, q in ((opt, ps), (opt_ref, ref)):
        set_grads(q, seed=5)
        o.step()
    assert calls == [2, 2, 2]
    assert_same(ref, opt_ref, ps, opt)


def test_built_in_steps_allocate_no_parameter_sized_temporaries():
    ps = [[torch.randn(256, 256), torch.randn(256)]]
    for make in (partial(Adam, lr=1e-3), partial(SGD, lr=0.1, mom=0.9, wd=0.1), partial(RMSProp, lr=1e-3),
                 partial(RAdam, lr=1e-3), partial(Lamb, lr=1e-3), partial(QHAdam, lr=1e-3)):
        for impl in ("auto", "per_param"):
            opt = make(ps)
            opt.impl = impl
            for s in range(2):  # state and scratch buffers are made here
                set_grads(ps, s)
                opt.step()
            with torch.profiler.profile(profile_memory=True) as prof:
                opt.step()
            big = [e for e in prof.events() if e.cpu_memory_usage >= 256 * 256 * 4]
            assert not big, (make, impl, [e.name for e in big])


relevant_chains = st.sampled_from([
    [sgd_step], [average_grad, momentum_step], [partial(average_grad, dampening=True), momentum_step],
    [average_sqr_grad, rms_prop_step], [average_grad, average_sqr_grad, rms_prop_step],
    [partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step],
    [partial(average_grad, dampening=True), partial(average_sqr_grad, dampening=False), step_stat,
     adam_step],
    [partial(average_grad, dampening=True), average_sqr_grad, step_stat, radam_step],
    [partial(average_grad, dampening=True), average_sqr_grad, step_stat, qhadam_step],
    [partial(average_grad, dampening=True), average_sqr_grad, step_stat, lamb_step],
    [average_grad, larc_layer_lr, larc_step], [partial(larc_layer_lr, clip=False), larc_step],
])


@settings(max_examples=40, deadline=None)
@given(chain=relevant_chains, wd_cb=st.sampled_from([[], [weight_decay], [l2_reg]]),
       shapes=st.lists(st.lists(st.integers(1, 5), max_size=3).map(tuple), min_size=1, max_size=5),
       groups=st.integers(1, 3), lr=st.floats(1e-4, 0.1), mom=st.floats(0.0, 0.99),
       sqr_mom=st.floats(0.5, 0.999), wd=st.floats(0.0, 0.3), eps=st.floats(1e-8, 1e-3),
       no_wd=st.sets(st.integers(0, 4)), frozen=st.integers(0, 2), seed=st.integers(0, 1000))
def test_batched_and_per_parameter_paths_agree_on_random_chains(chain, wd_cb, shapes, groups, lr, mom,
                                                                sqr_mom, wd, eps, no_wd, frozen, seed):
    groups = min(groups, len(shapes))

    def setup(ps, opt):
        for i, p in enumerate(p for pl in ps for p in pl):
            if i in no_wd:
                opt.state[p]["do_wd"] = False
        if frozen and frozen < len(ps):
            opt.freeze_to(frozen)

    make = partial(Optimizer, cbs=wd_cb + chain, **{**HYPERS, "lr": lr, "mom": mom, "sqr_mom": sqr_mom,
                                                     "wd": wd, "eps": eps})
    results = run_both(make, shapes=shapes, groups=groups, steps=3, setup=setup,
                       dtype=torch.float64, impls=("per_param", "auto"))
    (a, opt_a), (b, opt_b) = results
    assert_same(a, opt_a, b, opt_b, atol=1e-9, rtol=1e-7)


def test_ranger_is_lookahead_around_radam_on_the_batched_path():
    opt = ranger([torch.zeros(3)], lr=1e-3)
    assert opt.step_path == "foreach" and opt.opt.cbs[-1] is radam_step
    assert isinstance(batched_form(partial(average_grad, dampening=True)), partial)


def test_learner_freeze_weight_decay_flags_and_discriminative_lrs_agree_on_every_path(make_learner):
    from torch import nn

    def run(impl):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

        def opt_func(ps, lr):
            opt = Adam(ps, lr=lr, wd=0.1)
            opt.impl = impl
            return opt

        learn = make_learner(model=model, opt_func=opt_func, wd=0.1,
                             splitter=lambda m: [list(m[0].parameters()) + list(m[1].parameters()),
                                                 list(m[3].parameters())])
        learn.freeze()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(1)
        learn.fit_one_cycle(1, slice(1e-3, 1e-2))
        assert torch.equal(model[0].weight, start["0.weight"])  # frozen
        assert not torch.equal(model[1].weight, start["1.weight"])  # batch norm still trains
        assert learn.opt.state[model[3].bias]["do_wd"] is False
        learn.unfreeze()
        torch.manual_seed(2)
        learn.fit_one_cycle(1, slice(1e-3, 1e-2))
        assert [h["lr"] for h in learn.opt.hypers][0] < learn.opt.hypers[1]["lr"]
        return model, learn.opt

    (m_a, opt_a), (m_b, opt_b) = run("per_param"), run("auto")
    assert opt_b.step_path == "fused"
    assert_same(opt_a.param_lists, opt_a, opt_b.param_lists, opt_b)


@pytest.mark.parametrize("name", ["RMSProp-mom", "RAdam", "Lamb", "QHAdam"])
def test_many_small_tensors_give_the_same_results_on_every_path(name):
    # more than 64 tensors: the twins' denominators use foreach operations, not one op per tensor
    (a, opt_a), (b, opt_b) = run_both(RECIPES[name], shapes=[(3, 2)] * 70 + [(5,)] * 10, groups=2,
                                      steps=8, impls=("per_param", "auto"))
    assert_same(a, opt_a, b, opt_b)
