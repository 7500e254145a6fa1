"""`Optimizer.step`'s dispatch: a fast path is declared by the recipe (`fused=`), never recognised; a chain
without one runs the foreach twins, or the per-parameter loop, which is logged once."""
from __future__ import annotations

import logging
from functools import partial

import pytest
import torch

from rnnkit.optim import SGD, Adam, Optimizer, RMSProp, Scratch, fused_adam
from rnnkit.optim.steppers import adam_step, average_grad, average_sqr_grad, sgd_step, step_stat, weight_decay

ADAM_CHAIN = [weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]


def sgd_cb(p, lr, **kwargs):  # the book's user-written stepper: no twin
    p.data.add_(p.grad.data, alpha=-lr)


def params(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g) for _ in range(n)]


def steps(opt, ps, n=3):
    for s in range(n):
        g = torch.Generator().manual_seed(100 + s)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("make", [partial(Adam, lr=1e-2), partial(SGD, lr=0.1, mom=0.9), partial(RMSProp, lr=1e-2)])
def test_the_recipes_declare_their_fused_step(make):
    opt = make(params())
    assert opt.fused is not None and opt.step_path == "fused"


def test_a_hand_composed_chain_is_not_recognised_but_runs_its_twins():
    ps, ref = params(), params()
    opt = Optimizer(ps, list(ADAM_CHAIN), lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    assert opt.fused is None and opt.step_path == "foreach"
    opt_ref = Adam(ref, lr=1e-2)
    steps(opt, ps), steps(opt_ref, ref)
    for p, q in zip(ps, ref):
        torch.testing.assert_close(p, q)


def test_a_declared_fused_step_is_the_one_that_runs():
    calls = []

    def fused(ps, grads, **kw):
        calls.append(len(ps))
        return fused_adam(ps, grads, **{**kw, "decouple_wd": True})

    ps, ref = params(), params()
    opt = Optimizer(ps, list(ADAM_CHAIN), fused=fused, lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    assert opt.step_path == "fused"
    steps(opt, ps)
    opt_ref = Adam(ref, lr=1e-2)
    opt_ref.impl = "per_param"
    steps(opt_ref, ref)
    assert [c for c in calls if c == 3] == [3, 3, 3]  # one call per step for the three parameters
    for p, q in zip(ps, ref):
        torch.testing.assert_close(p, q)


def test_changing_the_chain_after_declaring_drops_the_fused_step():
    ps, ref = params(), params()
    opt, opt_ref = Adam(ps, lr=1e-2), Adam(ref, lr=1e-2)
    steps(opt, ps, 1), steps(opt_ref, ref, 1)
    halve = partial(lambda p, lr, **_: p.grad.mul_(0.5))  # a user stepper: no twin
    for o in (opt, opt_ref):
        o.cbs.insert(0, halve)
    opt_ref.impl = "per_param"
    assert opt.step_path == "per_param"  # the fused step computes the old chain: not used any more
    steps(opt, ps), steps(opt_ref, ref)
    for p, q in zip(ps, ref):
        torch.testing.assert_close(p, q)


def test_fused_must_be_callable():
    with pytest.raises(TypeError, match="fused must be a function"):
        Optimizer(params(), [sgd_step], lr=0.1, fused="adam")


def test_the_per_parameter_loop_is_logged_once_with_its_cost_and_remedy(caplog):
    ps = params()
    opt = Optimizer(ps, [weight_decay, sgd_cb], lr=0.1)
    with caplog.at_level(logging.INFO, logger="rnnkit.optim.optimizer"):
        steps(opt, ps)
    msgs = [r.getMessage() for r in caplog.records if r.name == "rnnkit.optim.optimizer"]
    assert len(msgs) == 1
    assert "sgd_cb" in msgs[0] and "slower" in msgs[0] and "@foreach_of" in msgs[0]


def test_no_log_for_batched_chains_or_a_chosen_per_parameter_path(caplog):
    ps = params()
    with caplog.at_level(logging.INFO, logger="rnnkit.optim.optimizer"):
        steps(Adam(ps, lr=1e-2), ps)
        opt = SGD(ps, lr=0.1)
        opt.impl = "per_param"
        steps(opt, ps)
    assert not [r for r in caplog.records if r.name == "rnnkit.optim.optimizer"]


def test_each_optimizer_owns_its_scratch_buffers():
    a, b = RMSProp(params(), lr=1e-2), RMSProp(params(), lr=1e-2)
    assert isinstance(a.scratch, Scratch) and a.scratch is not b.scratch
    steps(a, a.param_lists[0])
    assert a.scratch._bufs and not b.scratch._bufs  # made by a's step only


def test_scratch_hands_out_views_of_one_reused_buffer():
    s = Scratch()
    ts = [torch.zeros(3, 2), torch.zeros(5)]
    first = s.like_all(ts)
    assert [v.shape for v in first] == [t.shape for t in ts]
    again = s.like_all(ts)
    assert again[0].data_ptr() == first[0].data_ptr()
    s.like_all([torch.zeros(100)])  # a larger request grows the buffer
    assert s.like_all(ts)[0].untyped_storage().nbytes() >= 400


def test_scratch_buffers_start_as_zeros_so_fused_rmsprop_never_reads_garbage(monkeypatch):
    # fused RMSProp runs the Adam kernel with beta1 = 0 on a scratch first moment: NaN or inf left in a fresh
    # buffer would make its `lerp_(grad, 1)` NaN (seen once in CI when the buffers came from `torch.empty`).
    full = torch.full
    monkeypatch.setattr(torch, "empty", lambda n, dtype=None, device=None, **_: full(
        (n,) if isinstance(n, int) else n, float("nan"), dtype=dtype, device=device))
    assert torch.equal(Scratch().like_all([torch.zeros(64, 64)], slot=2)[0], torch.zeros(64, 64))
    ps, ref = params(), params()
    opt, opt_ref = RMSProp(ps, lr=1e-2, wd=0.1, decouple_wd=False), RMSProp(ref, lr=1e-2, wd=0.1, decouple_wd=False)
    opt_ref.impl = "per_param"
    steps(opt, ps), steps(opt_ref, ref)
    for p, q in zip(ps, ref):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q)
