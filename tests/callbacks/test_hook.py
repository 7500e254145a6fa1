"""Hooks and the callbacks built on them: Hook, Hooks, hook_output(s), HookCallback, ActivationStats."""
from __future__ import annotations

import matplotlib
import pytest
import torch
from torch import nn

from rnnkit.callbacks.hook import (
    ActivationStats, Hook, HookCallback, Hooks, has_params, hook_output, hook_outputs,
)


def _mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


class LSTMClassifier(nn.Module):
    """Reads the 4 features of the tiny problem as a sequence of length 4."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(1, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x.unsqueeze(-1))  # (bs, 4, 6)
        return self.head(out[:, -1])


def test_hook_stores_what_the_function_returns_and_is_removed():
    m = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with Hook(m, lambda mod, i, o: (mod, i[0].clone(), o * 2)) as h:
        y = m(x)
        mod, inp, out2 = h.stored
        assert mod is m and torch.equal(inp, x) and torch.equal(out2, y.detach() * 2)
        assert not out2.requires_grad  # detach=True by default
    assert h.removed
    m(torch.zeros(2, 4))
    assert torch.equal(h.stored[1], x)  # no longer called
    h.remove()  # removing twice is fine


def test_hook_without_detach_keeps_the_graph_and_cpu_moves():
    m = nn.Linear(4, 3)
    h = Hook(m, lambda mod, i, o: o, detach=False)
    m(torch.randn(2, 4))
    assert h.stored.requires_grad
    h.remove()
    h = Hook(m, lambda mod, i, o: o, cpu=True)
    m(torch.randn(2, 4))
    assert h.stored.device.type == "cpu" and not h.stored.requires_grad
    h.remove()


def test_hook_output_and_its_gradient():
    m = _mlp()
    x = torch.randn(3, 4)
    with hook_output(m[0]) as h_out, hook_output(m[2], grad=True) as h_grad:
        y = m(x)
        assert torch.allclose(h_out.stored, m[0](x))
        y.sum().backward()
        (g,) = h_grad.stored  # the gradient of the output, as a tuple
        assert torch.equal(g, torch.ones(3, 3))


def test_hooks_are_indexable_iterable_and_removed_together():
    m = _mlp()
    x = torch.randn(3, 4)
    with hook_outputs([m[0], m[1], m[2]]) as hs:
        y = m(x)
        assert len(hs) == 3 and isinstance(hs[0], Hook) and len(list(hs)) == 3
        assert [o.shape for o in hs.stored] == [(3, 5), (3, 5), (3, 3)]
        assert torch.equal(hs.stored[2], y.detach())
    assert all(h.removed for h in hs)
    with Hooks(m, lambda mod, i, o: type(mod).__name__) as hs:  # any module iterable, any function
        m(x)
        assert list(hs.stored) == ["Linear", "ReLU", "Linear"]


def test_hook_output_keeps_an_lstm_tuple():
    lstm = nn.LSTM(2, 3, batch_first=True)
    with hook_output(lstm) as h:
        lstm(torch.randn(4, 5, 2))
    out, (hid, cell) = h.stored
    assert out.shape == (4, 5, 3) and hid.shape == cell.shape == (1, 4, 3)
    assert not out.requires_grad


def test_has_params():
    assert has_params(nn.Linear(2, 2)) and not has_params(nn.ReLU())


def test_hook_callback_hooks_param_layers_for_the_fit_only(make_learner):
    seen = []
    learn = make_learner(model=_mlp(), cbs=HookCallback(hook=lambda m, i, o: seen.append(type(m).__name__)))
    learn.fit(1)
    cb = learn.hook
    assert cb.modules == [learn.model[0], learn.model[2]]  # the ReLU has no parameters
    assert seen[:2] == ["Linear", "Linear"]
    n_batches = len(learn.dls.train) + len(learn.dls.valid)
    assert len(seen) == 2 * n_batches
    assert all(h.removed for h in cb.hooks)
    learn.validate()
    assert len(seen) == 2 * n_batches  # removed at the end of fit
    learn2 = make_learner(model=_mlp(), cbs=HookCallback(include_paramless=True))
    learn2.fit(1)
    assert len(learn2.hook.modules) == 3


def test_hook_callback_every_n_batches_hooks_training_batches_only(make_learner):
    iters = []

    class Rec(HookCallback):
        def hook(self, m, i, o):
            iters.append(self.learn.train_iter)

    learn = make_learner(cbs=Rec(every=2))
    learn.fit(2)  # 4 training batches per epoch: train_iter 0..7
    assert iters == [0, 2, 4, 6]


def test_hook_callback_rejects_a_bad_every():
    with pytest.raises(ValueError, match="every must be a positive int"):
        HookCallback(every=0)


def test_activation_stats_match_the_layer_outputs(make_learner):
    learn = make_learner(model=_mlp(), cbs=ActivationStats(with_hist=True))
    outs = []

    def keep(m, i, o):
        outs.append(o.detach())

    handle = learn.model[2].register_forward_hook(keep)
    learn.fit(1)
    handle.remove()
    stats = learn.activation_stats.stats
    assert len(stats) == len(learn.dls.train)  # one entry per training batch, none in validation
    assert len(stats[0]) == 2  # the two Linear layers
    o = outs[0]
    rec = stats[0][1]
    assert rec["mean"] == pytest.approx(o.mean().item(), abs=1e-6)
    assert rec["std"] == pytest.approx(o.std().item(), abs=1e-6)
    assert rec["near_zero"] == pytest.approx((o <= 0.05).float().mean().item())
    means, stds, near_zero = learn.activation_stats.layer_stats(1)
    assert len(means) == len(stats) and means[0] == rec["mean"]
    assert learn.activation_stats.hist(1).shape == (40, len(stats))


def test_activation_stats_every_and_plots(make_learner):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn = make_learner(model=_mlp(), cbs=ActivationStats(with_hist=True, every=2))
    learn.fit(2)
    cb = learn.activation_stats
    assert len(cb.stats) == 4  # train_iter 0, 2, 4, 6
    fig = cb.plot_layer_stats(0)
    assert [ax.get_title() for ax in fig.axes] == ["mean", "std", "% near zero"]
    assert len(fig.axes[0].lines[0].get_xdata()) == 4
    ax = cb.color_dim(0)
    assert ax.images[0].get_array().shape == (40, 4)
    plt.close("all")
    with pytest.raises(ValueError, match="with_hist=True"):
        ActivationStats().hist(0)


def test_activation_stats_on_an_lstm_record_each_tensor_of_its_tuple(make_learner):
    learn = make_learner(model=LSTMClassifier(), cbs=ActivationStats(with_hist=True))
    learn.fit(1)
    cb = learn.activation_stats
    assert cb.modules == [learn.model.rnn, learn.model.head]
    lstm_rec, head_rec = cb.stats[0]
    assert isinstance(lstm_rec, list) and len(lstm_rec) == 3  # output, h, c
    assert set(lstm_rec[0]) == {"mean", "std", "near_zero", "hist"} and isinstance(head_rec, dict)
    means, _, _ = cb.layer_stats(0)  # the output sequence of the LSTM
    assert list(means) == [batch[0][0]["mean"] for batch in cb.stats]
    assert cb.hist(0).shape == (40, len(cb.stats))
