"""ShortEpochCallback, GradientAccumulation, BnFreeze, ReduceLROnPlateau and ShowGraphCallback on a tiny learner."""
from __future__ import annotations

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.callbacks.graph import ShowGraphCallback
from rnnkit.callbacks.schedule import LRFinder
from rnnkit.callbacks.tracker import ReduceLROnPlateau
from rnnkit.callbacks.training import BnFreeze, GradientAccumulation, ShortEpochCallback, set_bn_eval
from rnnkit.data.core import DataLoaders
from rnnkit.optim.recipes import SGD
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelValidException
from conftest import make_classification

matplotlib.use("Agg")


class KeepBatches(Callback):
    """Keep each training batch, its recorded loss and the weights after it."""

    order = 100
    run_valid = False

    def before_fit(self):
        self.batches, self.losses, self.weights = [], [], []

    def after_batch(self):
        self.batches.append((self.learn.xb[0].clone(), self.learn.yb[0].clone()))
        self.losses.append(float(self.learn.loss))
        self.weights.append(self.learn.model.weight.detach().clone())


class CountBatches(Callback):
    """Count the batches each phase of each epoch starts, and the cancelled phases."""

    def before_fit(self):
        self.counts, self.cancelled = [], []

    def before_train(self):
        self.counts.append([0, 0])

    def before_batch(self):  # not after_batch: ShortEpochCallback may stop that event before us
        self.counts[-1][0 if self.learn.training else 1] += 1

    def after_cancel_train(self):
        self.cancelled.append("train")

    def after_cancel_validate(self):
        self.cancelled.append("valid")


@pytest.fixture
def dls_8_batches():
    """8 training and 8 validation batches of 8 items."""
    return DataLoaders.from_dsets(make_classification(64), make_classification(64, seed=1), bs=8)


def test_short_epoch_stops_train_and_valid_at_the_first_batch_reaching_pct(make_learner, dls_8_batches):
    learn = make_learner(dls=dls_8_batches, cbs=CountBatches())
    learn.fit(2, cbs=ShortEpochCallback(pct=0.25))
    # batch i runs and then stops the phase once i/8 >= 0.25: batches 0, 1 and 2
    assert learn.count_batches.counts == [[3, 3], [3, 3]]
    assert learn.count_batches.cancelled == ["train", "valid"] * 2
    assert len(learn.recorder.values) == 2  # each epoch still validated and recorded
    learn.fit(1, cbs=ShortEpochCallback())  # default pct=0.01: batch 1 already reaches it
    assert learn.count_batches.counts == [[2, 2]]


def test_short_epoch_without_short_valid_validates_in_full(make_learner, dls_8_batches):
    learn = make_learner(dls=dls_8_batches, cbs=CountBatches())
    learn.fit(2, cbs=ShortEpochCallback(pct=0.25, short_valid=False))
    assert learn.count_batches.counts == [[3, 8], [3, 8]]
    assert learn.count_batches.cancelled == ["train", "train"]


def _bn_model():
    """Linear, trainable BatchNorm1d, Linear, frozen BatchNorm1d, Linear."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), nn.BatchNorm1d(6),
                          nn.Linear(6, 3))
    model[4].requires_grad_(False)
    return model


def _bn_stats(bn):
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


@pytest.mark.parametrize("order", [0, -20])  # run_after keeps it after TrainEvalCallback whatever its order
def test_bn_freeze_keeps_the_running_stats_of_frozen_batchnorm_only(make_learner, order):
    model = _bn_model()
    trainable, frozen = _bn_stats(model[1]), _bn_stats(model[4])
    cb = BnFreeze()
    cb.order = order
    learn = make_learner(model=model, opt_func=SGD, lr=0.1, cbs=cb)
    learn.fit(2)
    for before, after in zip(frozen, _bn_stats(model[4])):
        assert torch.equal(before, after)
    assert not torch.equal(trainable[0], model[1].running_mean)
    assert model[1].num_batches_tracked.item() == 2 * len(learn.dls.train)
    # without BnFreeze the frozen layer's statistics move in the same fit
    model = _bn_model()
    frozen = _bn_stats(model[4])
    make_learner(model=model, opt_func=SGD, lr=0.1).fit(1)
    assert not torch.equal(frozen[0], model[4].running_mean)


def test_set_bn_eval_switches_frozen_batchnorm_at_any_depth_and_back():
    frozen, trainable, no_params = nn.BatchNorm2d(3), nn.BatchNorm1d(3), nn.BatchNorm1d(3, affine=False)
    frozen.requires_grad_(False)
    model = nn.Sequential(nn.Sequential(nn.Sequential(frozen)), trainable, no_params)
    set_bn_eval(model)
    assert not frozen.training
    assert trainable.training and no_params.training and model.training
    set_bn_eval(model, use_eval=False)
    assert frozen.training


def test_gradient_accumulation_matches_one_step_on_the_doubled_batch(make_learner):
    lr = 0.5
    learn = make_learner(opt_func=SGD, lr=lr, cbs=[GradientAccumulation(n_acc=32), KeepBatches()])
    w0 = learn.model.weight.detach().clone()
    b0 = learn.model.bias.detach().clone()
    learn.fit(1)  # 4 training batches of 16
    keep = learn.keep_batches
    # the weights move only every second batch
    assert torch.equal(keep.weights[0], w0)
    assert not torch.allclose(keep.weights[1], w0)
    assert torch.equal(keep.weights[2], keep.weights[1])
    assert not torch.allclose(keep.weights[3], keep.weights[2])
    # ... by one plain SGD step on the two batches together
    ref = nn.Linear(4, 3)
    with torch.no_grad():
        ref.weight.copy_(w0)
        ref.bias.copy_(b0)
    x = torch.cat([keep.batches[0][0], keep.batches[1][0]])
    y = torch.cat([keep.batches[0][1], keep.batches[1][1]])
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(keep.weights[1], w0 - lr * ref.weight.grad, rtol=1e-5, atol=1e-6)
    # the recorded loss is each batch's own, not the scaled one used for the gradients
    with torch.no_grad():
        ref.weight.copy_(w0)
        ref.bias.copy_(b0)
        assert keep.losses[0] == pytest.approx(F.cross_entropy(ref(keep.batches[0][0]), keep.batches[0][1]).item(),
                                               rel=1e-5)


def test_gradient_accumulation_never_steps_before_n_acc_items(make_learner):
    learn = make_learner(opt_func=SGD, lr=0.5)
    w0 = learn.model.weight.detach().clone()
    valid_before = learn.validate()[0]
    learn.fit(1, cbs=GradientAccumulation(n_acc=1000))
    assert torch.equal(learn.model.weight, w0)
    assert learn.recorder.values[-1][1] == pytest.approx(valid_before)


def test_gradient_accumulation_rejects_a_bad_n_acc():
    with pytest.raises(ValueError, match="n_acc > 0"):
        GradientAccumulation(0)


def test_reduce_lr_on_plateau_divides_the_lr_and_stops_at_min_lr(make_learner, capsys):
    # min_delta=100: only the first epoch counts as an improvement
    cb = ReduceLROnPlateau(min_delta=100, patience=1, factor=10, min_lr=0.002)
    learn = make_learner(opt_func=SGD, lr=0.1, cbs=cb)
    learn.fit(4)
    lrs = learn.recorder.lrs
    n = len(learn.dls.train)
    assert lrs[:n] == [0.1] * n  # epoch 0 improved on inf
    assert lrs[n:2 * n] == [0.1] * n  # epoch 1 is the first without improvement: lr reduced after it
    assert lrs[2 * n:3 * n] == [pytest.approx(0.01)] * n
    assert lrs[3 * n:] == [0.002] * n  # 0.001 would be below min_lr
    out = capsys.readouterr().out
    assert "Epoch 1: reducing lr to 0.01" in out
    assert "Epoch 2: reducing lr to 0.002" in out
    assert "Epoch 3" not in out  # already at min_lr: nothing said


def test_reduce_lr_on_plateau_waits_for_patience_and_reduces_every_group(make_learner, capsys):
    cb = ReduceLROnPlateau(min_delta=100, patience=2, factor=2)
    learn = make_learner(opt_func=SGD, splitter=lambda m: [[m.weight], [m.bias]], cbs=cb)
    learn.fit(3, lr=slice(0.01, 0.1))
    assert [h["lr"] for h in learn.opt.hypers] == [pytest.approx(0.005), pytest.approx(0.05)]
    assert capsys.readouterr().out.count("reducing lr") == 1  # after epoch 2 only
    with pytest.raises(ValueError, match="factor > 0"):
        ReduceLROnPlateau(factor=0)


def test_show_graph_plots_train_and_valid_losses(make_learner):
    learn = make_learner(cbs=ShowGraphCallback())
    learn.fit(2)
    cb = learn.show_graph
    train, valid = cb.ax.lines
    assert train.get_label() == "train" and valid.get_label() == "valid"
    assert list(train.get_ydata()) == pytest.approx([float(v) for v in learn.recorder.losses])
    n = len(learn.dls.train)
    assert list(valid.get_xdata()) == [n, 2 * n]
    assert list(valid.get_ydata()) == pytest.approx([row[1] for row in learn.recorder.values])
    assert cb.ax.get_xlim() == (0, 2 * n)


def test_show_graph_without_validation_plots_the_training_loss_only(make_learner):
    class NoValid(Callback):
        def before_validate(self):
            raise CancelValidException()

    learn = make_learner(cbs=[ShowGraphCallback(), NoValid()])
    learn.fit(1)
    assert [line.get_label() for line in learn.show_graph.ax.lines] == ["train"]


def test_show_graph_is_skipped_during_lr_find(make_learner):
    learn = make_learner(cbs=ShowGraphCallback())
    learn.lr_find(num_it=5, show_plot=False)
    assert learn.show_graph.fig is None
    learn.fit(1, cbs=LRFinder(num_it=3))  # an LRFinder added by hand: skipped as well
    assert learn.show_graph.fig is None
    learn.fit(1)
    assert learn.show_graph.fig is not None  # on again for a normal fit
