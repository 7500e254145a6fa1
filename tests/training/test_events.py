"""The event order of fit, with and without each Cancel*Exception."""
from __future__ import annotations

import pytest
import torch

from rnnkit.training.callback import Callback
from rnnkit.training.events import (
    ALL_EVENTS, CancelBackwardException, CancelBatchException, CancelEpochException,
    CancelFitException, CancelStepException, CancelTrainException, CancelValidException, event,
)

BATCH_TRAIN = ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
               "before_step", "after_step", "after_batch"]
BATCH_VALID = ["before_batch", "after_pred", "after_loss", "after_batch"]


class _Recording(Callback):
    """Records every event; optionally raises `exc` the first time `at` fires."""

    def __init__(self, at=None, exc=None):
        super().__init__()
        self.events, self.at, self.exc, self.raised = [], at, exc, False

    def _record(self, name):
        self.events.append(name)
        if name == self.at and not self.raised:
            self.raised = True
            raise self.exc()


def _recorder_method(name):
    return lambda self: self._record(name)


# One method per event, so the learner calls this callback on every event.
RecordEvents = type("RecordEvents", (_Recording,), {e: _recorder_method(e) for e in ALL_EVENTS})


def _fit_events(make_learner, at=None, exc=None, n_epoch=1):
    learn = make_learner()
    rec = RecordEvents(at, exc)
    learn.add_cb(rec)
    learn.fit(n_epoch)
    return rec.events, learn


def _normal_epoch(n_train=4, n_valid=2):
    return (["before_epoch", "before_train"] + BATCH_TRAIN * n_train + ["after_train", "before_validate"]
            + BATCH_VALID * n_valid + ["after_validate", "after_epoch"])


def test_event_namespace_matches_names():
    assert event.after_batch == "after_batch"
    assert event.before_fit == "before_fit"
    assert "after_backward" in ALL_EVENTS and "after_cancel_validate" in ALL_EVENTS


def test_normal_fit_fires_events_in_documented_order(make_learner):
    events, _ = _fit_events(make_learner)
    assert events == ["before_fit"] + _normal_epoch() + ["after_fit"]


def test_after_create_fires_once_when_learner_is_built(make_learner):
    seen = []
    make_learner(cbs=Callback(after_create=lambda: seen.append(1)))
    assert seen == [1]


def test_cancel_batch_goes_to_after_batch(make_learner):
    events, _ = _fit_events(make_learner, "after_pred", CancelBatchException)
    first = ["before_batch", "after_pred", "after_cancel_batch", "after_batch"]
    assert events == (["before_fit", "before_epoch", "before_train"] + first + BATCH_TRAIN * 3
                      + ["after_train", "before_validate"] + BATCH_VALID * 2
                      + ["after_validate", "after_epoch", "after_fit"])


def test_cancel_train_goes_to_after_train_then_validates(make_learner):
    events, _ = _fit_events(make_learner, "before_train", CancelTrainException)
    assert events == (["before_fit", "before_epoch", "before_train", "after_cancel_train", "after_train",
                       "before_validate"] + BATCH_VALID * 2 + ["after_validate", "after_epoch", "after_fit"])


def test_cancel_valid_goes_to_after_validate(make_learner):
    events, _ = _fit_events(make_learner, "before_validate", CancelValidException)
    assert events == (["before_fit", "before_epoch", "before_train"] + BATCH_TRAIN * 4
                      + ["after_train", "before_validate", "after_cancel_validate", "after_validate",
                         "after_epoch", "after_fit"])


def test_cancel_epoch_skips_rest_of_epoch(make_learner):
    events, _ = _fit_events(make_learner, "before_train", CancelEpochException, n_epoch=2)
    assert events == (["before_fit", "before_epoch", "before_train", "after_cancel_epoch", "after_epoch"]
                      + _normal_epoch() + ["after_fit"])


def test_cancel_step_skips_optimizer_step(make_learner):
    learn = make_learner()
    w0 = learn.model.weight.detach().clone()

    class NoStep(Callback):
        def before_step(self):
            raise CancelStepException()

    learn.fit(1, cbs=NoStep())
    assert torch.equal(learn.model.weight, w0)
    events, _ = _fit_events(make_learner, "before_step", CancelStepException)
    assert events[3:12] == ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                            "before_step", "after_cancel_step", "after_step", "after_batch"]


def test_cancel_backward_skips_backward(make_learner):
    events, _ = _fit_events(make_learner, "before_backward", CancelBackwardException)
    assert events[3:12] == ["before_batch", "after_pred", "after_loss", "before_backward",
                            "after_cancel_backward", "after_backward", "before_step", "after_step",
                            "after_batch"]
    learn = make_learner()
    w0 = learn.model.weight.detach().clone()

    class NoBackward(Callback):
        def before_backward(self):
            raise CancelBackwardException()

    learn.fit(1, cbs=NoBackward())
    assert torch.equal(learn.model.weight, w0)  # no gradients, so nothing to step on


def test_cancel_fit_goes_to_after_fit(make_learner):
    events, _ = _fit_events(make_learner, "after_step", CancelFitException, n_epoch=3)
    assert events == ["before_fit", "before_epoch", "before_train"] + BATCH_TRAIN[:7] + [
        "after_cancel_fit", "after_fit"]


def test_run_train_false_skips_training_batches(make_learner):
    calls = []

    class ValidOnly(Callback):
        run_train = False

        def after_batch(self):
            calls.append(self.training)

    make_learner(cbs=ValidOnly()).fit(1)
    assert calls == [False, False]


def test_callback_switched_off_runs_again_next_fit(make_learner):
    calls = []

    class Once(Callback):
        def before_epoch(self):
            calls.append(self.epoch)
            self.run = False

    learn = make_learner(cbs=Once())
    learn.fit(2)
    learn.fit(2)
    assert calls == [0, 0]
