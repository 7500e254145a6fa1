"""Learner details fastai users rely on (issue 14, point 7 and lr=0): what a fastai notebook does
with the Learner, Recorder and trackers behaves the same here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rnnkit.callbacks.tracker import TrackerCallback
from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.metrics import accuracy
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelTrainException
from rnnkit.training.learner import Learner
from rnnkit.utils import L


class _TwoInputs(nn.Module):
    """forward(x1, x2): fails loudly if a batch's second element is not passed as an input."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x1, x2):
        return self.lin(x1 + x2)


def _triples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x1[i], x2[i], y[i]) for i in range(n)]


def test_batches_inputs_are_all_but_the_last_element_by_default():
    dls = DataLoaders.from_dsets(_triples(32), _triples(16, seed=1), bs=8)
    assert dls.n_inp == 2
    learn = Learner(dls, _TwoInputs(), loss_func=nn.functional.cross_entropy, lr=0.1)
    learn.fit(1)  # would raise a TypeError if x2 went to the loss as a second target
    assert len(learn.recorder.values) == 1
    inps, preds, targs = learn.get_preds(with_input=True)
    assert isinstance(inps, (tuple, list)) and len(inps) == 2
    assert torch.equal(inps[1], torch.stack([t[1] for t in _triples(16, seed=1)]))
    assert preds.shape == (16, 3) and targs.shape == (16,)


def test_explicit_n_inp_makes_the_rest_targets(make_learner):
    dls = DataLoaders.from_dsets(_triples(32), _triples(16, seed=1), bs=8)
    dls.n_inp = 1
    seen = []

    def loss(pred, y1, y2):
        seen.append((y1.shape, y2.shape))
        return pred.pow(2).mean()

    learn = Learner(dls, nn.Linear(4, 4), loss_func=loss)
    learn.get_preds()
    assert seen and seen[0] == (torch.Size([8, 4]), torch.Size([8]))
    _, targs = learn.get_preds()
    assert isinstance(targs, tuple) and len(targs) == 2
    with pytest.raises(ValueError, match="n_inp"):
        dls.n_inp = -1


def test_get_preds_gives_none_targets_when_batches_have_none(make_learner):
    learn = make_learner()
    x = torch.randn(20, 4)
    dl = DataLoader([(x[i],) for i in range(20)], bs=8)
    preds, targs = learn.get_preds(dl=dl)
    assert targs is None
    torch.testing.assert_close(preds, learn.model(x).detach())


def test_fit_from_a_start_epoch_only_fires_epoch_events_for_skipped_epochs(make_learner):
    events = []

    class Log(Callback):
        def __call__(self, event_name):
            events.append((self.learn.epoch, event_name))
            return super().__call__(event_name)

    learn = make_learner(cbs=Log(), lr=0.1)
    learn.fit(3, start_epoch=2)
    for skipped in (0, 1):
        fired = [e for ep, e in events if ep == skipped and e not in ("after_create", "before_fit")]
        assert fired == ["before_epoch", "after_cancel_epoch", "after_epoch"]
    assert [e for ep, e in events if ep == 2].count("before_batch") == len(learn.dls.train) + len(learn.dls.valid)
    assert learn.train_iter == len(learn.dls.train)  # skipped epochs do not advance it
    assert len(learn.recorder.values) == 1  # one row, for the epoch that ran


def test_cbs_is_an_L_with_fastcore_methods(make_learner):
    learn = make_learner(metrics=accuracy)
    assert isinstance(learn.cbs, L)
    assert learn.cbs.attrgot("name")[0] == "train_eval"
    assert learn.cbs.filter(lambda c: c.order > 0).map(type).map(lambda t: t.__name__)[0] == "Recorder"
    learn.add_cb(Callback())
    assert type(learn.cbs[-1]) is Callback  # the order they were added in, as fastai keeps it
    assert [type(c).__name__ for c in learn.cbs[:4]] == ["TrainEvalCallback", "Recorder", "CastToTensor",
                                                         "ProgressCallback"]  # fastai 2.8's defaults
    learn.cbs = L(reversed(learn.cbs))  # events still go by `order`
    assert learn.cbs[0].name == "" or type(learn.cbs[0]) is Callback
    assert learn.ordered_cbs("before_fit")[0].name == "train_eval"


def test_load_creates_the_optimizer_when_the_learner_has_none(make_learner):
    learn = make_learner(lr=0.1)
    learn.fit(1)
    learn.save("tmp", with_opt=False)
    other = make_learner()
    assert other.opt is None
    other.load("tmp")
    assert other.opt is not None
    torch.testing.assert_close(other.model.weight, learn.model.weight)
    assert other.opt.state_dict() != learn.opt.state_dict()


def test_lr_zero_is_accepted_and_leaves_the_weights_alone(make_learner):
    learn = make_learner(lr=0.0, wd=0.1)
    w0 = learn.model.weight.detach().clone()
    learn.fit(1)
    learn.fit(1, lr=0)
    assert torch.equal(learn.model.weight, w0)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        learn.fit(1, lr=float("nan"))


def test_recorder_names_train_and_valid_metrics_as_fastai_does(make_learner):
    learn = make_learner(metrics=accuracy)
    learn.recorder.train_metrics = True
    learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "train_accuracy", "valid_loss",
                                           "valid_accuracy", "time"]
    assert len(learn.recorder.values[-1]) == 4
    learn.recorder.valid_metrics = False
    assert learn.recorder.metric_names == ["epoch", "train_loss", "accuracy", "time"]


def test_final_record_after_fit_is_the_row_and_after_validate_the_valid_values(make_learner):
    learn = make_learner(metrics=accuracy, lr=0.1)
    learn.fit(1)
    assert learn.final_record == learn.recorder.values[-1] and len(learn.final_record) == 3
    assert len(learn.validate()) == 2


def test_a_cancelled_training_phase_is_left_out_of_the_row(make_learner):
    class NoTrain(Callback):
        def before_train(self):
            raise CancelTrainException()

    learn = make_learner(metrics=accuracy)
    learn.fit(1, cbs=NoTrain())
    valid_loss, acc = learn.validate()
    assert learn.recorder.values[-1] == pytest.approx([valid_loss, acc])
    learn.lr_find(num_it=5, show_plot=False)  # cancels the validation phases
    assert len(learn.validate()) == 2  # a later validate() still reports


class _FakeRecords(Callback):
    """Overwrites the recorded `valid_loss` with given values, after the Recorder wrote its row."""

    order = 51

    def __init__(self, values):
        super().__init__()
        self.vals, self.i = values, 0

    def after_epoch(self):
        rec = self.learn.recorder
        rec.values[-1][rec.metric_names[1:].index("valid_loss")] = self.vals[self.i]
        self.i += 1


class _Bests(Callback):
    order = 61

    def before_fit(self):
        self.bests = []

    def after_epoch(self):
        self.bests.append(self.learn.tracker.best)


def test_tracker_without_reset_on_fit_keeps_its_best_across_fits_and_ignores_lr_find(make_learner):
    tracker, bests = TrackerCallback(reset_on_fit=False), _Bests()
    learn = make_learner(cbs=[tracker, bests, _FakeRecords([0.7, 0.8, 0.9, 0.5])])
    learn.fit(2)
    assert bests.bests == [0.7, 0.7]
    learn.lr_find(num_it=5, show_plot=False)
    assert tracker.best == 0.7
    learn.fit(2)
    assert bests.bests == [0.7, 0.5]
    reset = TrackerCallback()
    learn = make_learner(cbs=[reset, _Bests(), _FakeRecords([0.7, 0.8, 0.9, 0.95])])
    learn.fit(2)
    learn.fit(2)
    assert reset.best == 0.9 and np.isfinite(reset.best)


def test_before_fit_resets_a_model_that_has_reset(make_learner):
    class Stateful(nn.Linear):
        resets = 0

        def reset(self):
            self.resets += 1

    learn = make_learner(model=Stateful(4, 3))
    learn.fit(1)
    learn.fit(1)
    assert learn.model.resets == 2


def test_learner_to_detach_and_show_training_loop(make_learner, capsys):
    learn = make_learner()
    t = torch.ones(2, requires_grad=True) * 2
    d = learn.to_detach((t, [t]))
    assert not d[0].requires_grad and not d[1][0].requires_grad
    learn.show_training_loop()
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Start Fit"
    assert "   - before_fit     : [TrainEvalCallback, Recorder" in out
    assert "End Fit" in out.splitlines()[-3]


def test_get_preds_gives_one_loss_per_item_and_takes_fastai_keywords(make_learner):
    seq_dls = DataLoaders.from_dsets([(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(12)],
                                     [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(6)], bs=4)

    def flat_ce(pred, y, reduction="mean"):
        return nn.functional.cross_entropy(pred.view(-1, 3), y.view(-1), reduction=reduction)

    learn = Learner(seq_dls, nn.Linear(4, 3), loss_func=flat_ce)
    preds, targs, losses = learn.get_preds(with_loss=True, reorder=False, inner=True)
    assert losses.shape == (6,)  # one per sequence, the mean of its 5 token losses
    full = flat_ce(preds, targs, reduction="none").view(6, 5).mean(1)
    torch.testing.assert_close(losses, full)
    only_preds = learn.get_preds(with_targs=False)
    assert only_preds[1] is None and only_preds[0].shape == (6, 5, 3)


def test_fetch_preds_callback_gets_predictions_after_each_validation(make_learner):
    from rnnkit.callbacks.preds import FetchPredsCallback

    fetch = FetchPredsCallback(ds_idx=0)
    learn = make_learner(cbs=fetch, metrics=accuracy)
    learn.fit(1)
    preds, targs = fetch.preds
    assert preds.shape == (64, 3) and targs.shape == (64,)
    assert len(learn.recorder.values) == 1 and len(learn.recorder.values[0]) == 3  # the epoch's row intact


def test_trackers_ignore_epochs_skipped_by_start_epoch(make_learner):
    from rnnkit.callbacks.tracker import EarlyStoppingCallback

    stop = EarlyStoppingCallback(patience=1)
    learn = make_learner(cbs=stop, lr=0.1)
    learn.fit(3, start_epoch=2)  # two skipped epochs must not count as "no improvement"
    assert learn.epoch == 2 and len(learn.recorder.values) == 1 and stop.wait == 0


def test_defaults_give_the_default_lr_and_callbacks(make_learner):
    from fastcore.basics import defaults

    from rnnkit.training.callback import CastToTensor

    import inspect

    assert defaults.lr == 1e-3 and inspect.signature(Learner).parameters["lr"].default == 1e-3
    assert CastToTensor in defaults.callbacks
    learn = make_learner()
    assert isinstance(learn.cast_to_tensor, CastToTensor)


def test_cast_to_tensor_gives_the_model_plain_tensors(make_learner):
    class Sub(torch.Tensor):
        pass

    seen = []

    class Look(Callback):
        order = 10

        def before_batch(self):
            seen.append(type(self.learn.xb[0]))

    learn = make_learner(cbs=Look())
    x, y = learn.dls.one_batch()
    learn.opt = None
    learn.create_opt()
    learn.training = True
    learn.one_batch(0, (x.as_subclass(Sub), y))
    assert seen == [torch.Tensor]


def test_save_model_load_model_and_before_batch_cb(make_learner, tmp_path):
    from rnnkit.checkpoint import load_model, save_model
    from rnnkit.training.learner import before_batch_cb

    learn = make_learner(lr=0.1)
    learn.fit(1)
    save_model(tmp_path / "m.pth", learn.model, learn.opt)
    other = make_learner()
    other.create_opt()
    load_model(tmp_path / "m.pth", other.model, other.opt)
    assert torch.equal(other.model.weight, learn.model.weight)
    assert other.opt.state_dict()["state"][0].keys() == learn.opt.state_dict()["state"][0].keys()
    save_model(tmp_path / "w.pth", learn.model, learn.opt, with_opt=False)
    with pytest.warns(UserWarning, match="no optimizer state"):
        load_model(tmp_path / "w.pth", other.model, other.opt)

    seen = []

    @before_batch_cb
    def shift(self, xb, yb):
        seen.append(1)
        return (xb[0] + 1000,), yb

    learn.add_cb(shift)
    learn.validate()
    assert len(seen) == len(learn.dls.valid)
