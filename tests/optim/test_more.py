"""RAdam, QHAdam, LAMB, LARC and Lookahead against plain implementations of their published rules."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.optim.lookahead import Lookahead, ranger
from rnnkit.optim.more import Lamb, Larc, QHAdam, RAdam
from rnnkit.optim import OptimWrapper
from rnnkit.optim.recipes import SGD, Adam

STEPS = 10


def grads_for(step: int, shapes):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def start(shapes):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def run_ours(opt_func, shapes, impl, steps=STEPS):
    ps = start(shapes)
    opt = opt_func([ps])
    opt.impl = impl
    for t in range(1, steps + 1):
        for p, g in zip(ps, grads_for(t, shapes)):
            p.grad = g
        opt.step()
    return ps


def run_reference(update, shapes, steps=STEPS):
    """`update(p, g, state, t)` -> new p, with a dict of state per parameter."""
    ps, states = start(shapes), [{} for _ in shapes]
    for t in range(1, steps + 1):
        ps = [update(p, g, s, t) for p, g, s in zip(ps, grads_for(t, shapes), states)]
    return ps


SHAPES = [(4, 3), (5,), (1,)]


def check(opt_func, update, steps=STEPS):
    ref = run_reference(update, SHAPES, steps)
    for impl in ("per_param", "auto"):
        ours = run_ours(opt_func, SHAPES, impl, steps)
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-8)


def moments(g, s, b1, b2):
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    return s["m"], s["v"]


def radam_reference(lr, b1, b2, eps, wd):
    def update(p, g, s, t):
        p = p * (1 - lr * wd)
        m, v = moments(g, s, b1, b2)
        m_hat = m / (1 - b1**t)
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            return p - lr * r * m_hat / ((v / (1 - b2**t)).sqrt() + eps)
        return p - lr * m_hat
    return update


@pytest.mark.parametrize("b2", [0.99, 0.9])  # with 0.9 the rectified branch starts at step 6
def test_radam_follows_its_published_rule(b2):
    check(partial(RAdam, lr=1e-2, sqr_mom=b2, eps=1e-5, wd=0.1),
          radam_reference(1e-2, 0.9, b2, 1e-5, 0.1), steps=12)


def test_radam_matches_torch_radam_with_decoupled_weight_decay():
    # torch adds eps to sqrt(v) before debiasing, fastai after: with eps=0 they are the same rule.
    ours = run_ours(partial(RAdam, lr=1e-2, sqr_mom=0.9, eps=0.0, wd=0.1), SHAPES, "auto", steps=12)
    ps = start(SHAPES)
    opt = torch.optim.RAdam(ps, lr=1e-2, betas=(0.9, 0.9), eps=0.0, weight_decay=0.1,
                            decoupled_weight_decay=True)
    for t in range(1, 13):
        for p, g in zip(ps, grads_for(t, SHAPES)):
            p.grad = g
        opt.step()
    for p, q in zip(ours, ps):
        torch.testing.assert_close(p, q)


def test_radam_softplus_beta_smooths_the_denominator():
    def update(p, g, s, t):
        m, v = moments(g, s, 0.9, 0.9)
        rho_inf = 2 / 0.1 - 1
        rho = rho_inf - 2 * t * 0.9**t / (1 - 0.9**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            den = F.softplus((v / (1 - 0.9**t)).sqrt() + 1e-5, beta=50)
            return p - 1e-2 * r * m / (1 - 0.9**t) / den
        return p - 1e-2 * m / (1 - 0.9**t)
    check(partial(RAdam, lr=1e-2, sqr_mom=0.9, beta=50.0), update, steps=8)


def test_qhadam_follows_its_published_rule():
    lr, b1, b2, nu1, nu2, eps, wd = 1e-2, 0.9, 0.99, 0.7, 0.8, 1e-8, 0.1

    def update(p, g, s, t):
        p = p * (1 - lr * wd)
        m, v = moments(g, s, b1, b2)
        num = (1 - nu1) * g + nu1 * m / (1 - b1**t)
        den = ((1 - nu2) * g * g + nu2 * v / (1 - b2**t)).sqrt() + eps
        return p - lr * num / den
    check(partial(QHAdam, lr=lr, mom=b1, sqr_mom=b2, nu_1=nu1, nu_2=nu2, eps=eps, wd=wd), update)


def test_qhadam_with_nu_one_is_adamw():
    kw = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-6, wd=0.1)
    ours = run_ours(partial(QHAdam, nu_1=1.0, nu_2=1.0, **kw), SHAPES, "auto")
    ref = run_ours(partial(Adam, **kw), SHAPES, "per_param")
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q)


def test_lamb_follows_its_published_rule():
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.99, 1e-6, 0.1

    def update(p, g, s, t):
        p = p * (1 - lr * wd)  # fastai's chain decays the weights before the LAMB step
        m, v = moments(g, s, b1, b2)
        u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        p_norm, u_norm = p.norm(), u.norm()
        trust = 1.0 if p_norm == 0 or u_norm == 0 else min(p_norm / u_norm, 10.0)
        return p - lr * trust * u
    check(partial(Lamb, lr=lr, mom=b1, sqr_mom=b2, eps=eps, wd=wd), update)


def test_lamb_trust_ratio_is_one_for_a_zero_parameter_and_clipped_at_ten():
    for impl in ("per_param", "auto"):
        p, q = torch.zeros(3), torch.full((3,), 1e3)
        p.grad, q.grad = torch.ones(3), torch.ones(3)
        opt = Lamb([p, q], lr=0.1, eps=0.0)
        opt.impl = impl
        opt.step()  # the Adam update is all ones after one step
        torch.testing.assert_close(p, torch.full((3,), -0.1))
        torch.testing.assert_close(q, torch.full((3,), 1e3 - 0.1 * 10))


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("mom", [0.0, 0.9])
def test_larc_follows_the_lars_rule(clip, mom):
    lr, tc, eps, wd = 0.5, 0.02, 1e-8, 0.1

    def update(p, g, s, t):
        p = p * (1 - lr * wd)
        p_norm, g_norm = p.norm(), g.norm()
        local = lr * tc * p_norm / (g_norm + p_norm * wd + eps)
        if clip:
            local = min(local, lr)
        s["m"] = mom * s.get("m", 0) + g
        return p - local * (s["m"] if mom else g)
    check(partial(Larc, lr=lr, mom=mom, clip=clip, trust_coeff=tc, eps=eps, wd=wd), update)


def test_larc_clip_caps_the_layer_lr_at_lr():
    p = torch.full((4,), 100.0)
    p.grad = torch.full((4,), 1e-3)
    opt = Larc([p], lr=0.1, mom=0.0)
    opt.step()
    assert opt.state[p]["local_lr"].item() == pytest.approx(0.1)


def test_recipes_have_fastai_defaults():
    ps = [torch.zeros(1)]
    assert RAdam(ps, lr=1e-3).hypers[0] == dict(lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.0,
                                                beta=0.0)
    assert QHAdam(ps, lr=1e-3).hypers[0] == dict(lr=1e-3, mom=0.999, sqr_mom=0.999, nu_1=0.7,
                                                 nu_2=1.0, eps=1e-8, wd=0.0)
    assert Lamb(ps, lr=1e-3).hypers[0] == dict(lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.0)
    assert Larc(ps, lr=1e-3).hypers[0] == dict(lr=1e-3, mom=0.9, trust_coeff=0.02, eps=1e-8, wd=0.0)


# ---- Lookahead ----

def lookahead_reference(inner_update, k, alpha):
    """Lookahead on top of `inner_update`: slow weights start at the initial weights."""
    def update(p, g, s, t):
        s.setdefault("slow", p.clone())
        p = inner_update(p, g, s, t)
        if t % k == 0:
            s["slow"] = s["slow"] + alpha * (p - s["slow"])
            p = s["slow"].clone()
        return p
    return update


def test_lookahead_follows_its_published_rule():
    def sgd_mom(p, g, s, t):
        s["m"] = 0.9 * s.get("m", 0) + g
        return p - 0.1 * s["m"]
    check(lambda ps: Lookahead(SGD(ps, lr=0.1, mom=0.9), k=3, alpha=0.4),
          lookahead_reference(sgd_mom, 3, 0.4), steps=10)


def test_ranger_is_radam_inside_lookahead():
    inner = radam_reference(1e-2, 0.95, 0.99, 1e-6, 0.01)
    check(partial(ranger, lr=1e-2), lookahead_reference(inner, 6, 0.5), steps=13)


def test_lookahead_wraps_optim_wrapper():
    ours = run_ours(lambda ps: Lookahead(OptimWrapper(ps, torch.optim.SGD, lr=0.1, mom=0.9), k=2),
                    SHAPES, "auto", steps=6)

    def sgd_mom(p, g, s, t):
        s["m"] = 0.9 * s.get("m", 0) + g
        return p - 0.1 * s["m"]
    ref = run_reference(lookahead_reference(sgd_mom, 2, 0.5), SHAPES, steps=6)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q)


def test_lookahead_has_the_wrapped_optimizers_interface():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    groups = [list(net[0].parameters()), list(net[1].parameters())]
    opt = Lookahead(Adam(groups, lr=slice(1e-3, 1e-2)))
    assert [h["lr"] for h in opt.hypers] == [1e-3, 1e-2]
    opt.set_hyper("mom", [0.8, 0.85])
    assert opt.opt.hypers[1]["mom"] == 0.85 and opt.param_groups[1]["mom"] == 0.85
    assert opt.param_lists is opt.opt.param_lists and opt.state is opt.opt.state
    assert opt.step_path == "fused" and opt.cbs is opt.opt.cbs  # read through to the wrapped one
    opt.freeze()
    assert opt.frozen_idx == 1 and not net[0].weight.requires_grad
    opt.unfreeze()
    assert net[0].weight.requires_grad
    with pytest.raises(ValueError, match="k >= 1"):
        Lookahead(opt, k=0)
    with pytest.raises(TypeError, match="Lookahead\\(OptimWrapper\\(None, opt\\)\\)"):
        Lookahead(torch.optim.SGD(net.parameters(), lr=0.1))


def test_lookahead_state_dict_round_trip_keeps_the_slow_weights(tmp_path):
    def make():
        ps = start(SHAPES)
        return ps, Lookahead(Adam([ps], lr=1e-2), k=4)
    ps, opt = make()
    for t in range(1, 6):
        for p, g in zip(ps, grads_for(t, SHAPES)):
            p.grad = g
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "la.pth")
    qs, other = make()
    for p, q in zip(ps, qs):
        q.data.copy_(p)
    other.load_state_dict(torch.load(tmp_path / "la.pth", weights_only=True))
    assert other.count == 5
    for t in range(6, 10):
        for o, params in ((opt, ps), (other, qs)):
            for p, g in zip(params, grads_for(t, SHAPES)):
                p.grad = g
            o.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    other.clear_state()
    assert other.slow_weights is None and other.count == 0 and other.state[qs[0]] == {}


def test_a_learner_trains_saves_and_loads_with_ranger(make_learner):
    learn = make_learner(opt_func=ranger, lr=1e-2)
    before = learn.validate()[0]
    learn.fit_one_cycle(3)
    assert learn.validate()[0] < before
    assert learn.opt.count == 3 * len(learn.dls.train) and learn.opt.slow_weights is not None
    learn.save("r")
    other = make_learner(opt_func=ranger, lr=1e-2)
    other.load("r")
    assert other.opt.count == learn.opt.count
    for a, b in zip(other.opt.slow_weights, learn.opt.slow_weights):
        assert torch.equal(a, b)
    learn.freeze_to(0)  # the Learner clears the optimizer state when (un)freezing
    assert learn.opt.slow_weights is None
