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


class CallRecording(_Recording):
    """fastai's VerboseCallback pattern: no event methods, `__call__` overridden; it must see every event."""

    def __call__(self, event_name):
        self._record(event_name)
        return super().__call__(event_name)


@pytest.fixture(params=["event methods", "__call__ override"])
def fit_events(request, make_learner):
    """Fit with a recording callback of each kind; returns (events, learner)."""
    cls = RecordEvents if request.param == "event methods" else CallRecording

    def run(at=None, exc=None, n_epoch=1):
        learn = make_learner()
        rec = cls(at, exc)
        learn.add_cb(rec)
        learn.fit(n_epoch)
        return rec.events, learn

    return run


def _normal_epoch(n_train=4, n_valid=2):
    return (["before_epoch", "before_train"] + BATCH_TRAIN * n_train + ["after_train", "before_validate"]
            + BATCH_VALID * n_valid + ["after_validate", "after_epoch"])


def test_event_namespace_matches_names():
    assert event.after_batch == "after_batch"
    assert event.before_fit == "before_fit"
    assert "after_backward" in ALL_EVENTS and "after_cancel_validate" in ALL_EVENTS


def test_normal_fit_fires_events_in_documented_order(fit_events):
    events, _ = fit_events()
    assert events == ["before_fit"] + _normal_epoch() + ["after_fit"]


def test_after_create_fires_once_when_learner_is_built(make_learner):
    seen = []
    make_learner(cbs=Callback(after_create=lambda: seen.append(1)))
    assert seen == [1]


def test_cancel_batch_goes_to_after_batch(fit_events):
    events, _ = fit_events("after_pred", CancelBatchException)
    first = ["before_batch", "after_pred", "after_cancel_batch", "after_batch"]
    assert events == (["before_fit", "before_epoch", "before_train"] + first + BATCH_TRAIN * 3
                      + ["after_train", "before_validate"] + BATCH_VALID * 2
                      + ["after_validate", "after_epoch", "after_fit"])


def test_cancel_train_goes_to_after_train_then_validates(fit_events):
    events, _ = fit_events("before_train", CancelTrainException)
    assert events == (["before_fit", "before_epoch", "before_train", "after_cancel_train", "after_train",
                       "before_validate"] + BATCH_VALID * 2 + ["after_validate", "after_epoch", "after_fit"])


def test_cancel_valid_goes_to_after_validate(fit_events):
    events, _ = fit_events("before_validate", CancelValidException)
    assert events == (["before_fit", "before_epoch", "before_train"] + BATCH_TRAIN * 4
                      + ["after_train", "before_validate", "after_cancel_validate", "after_validate",
                         "after_epoch", "after_fit"])


def test_cancel_epoch_skips_rest_of_epoch(fit_events):
    events, _ = fit_events("before_train", CancelEpochException, n_epoch=2)
    assert events == (["before_fit", "before_epoch", "before_train", "after_cancel_epoch", "after_epoch"]
                      + _normal_epoch() + ["after_fit"])


def test_cancel_step_skips_optimizer_step(fit_events, make_learner):
    learn = make_learner()
    w0 = learn.model.weight.detach().clone()

    class NoStep(Callback):
        def before_step(self):
            raise CancelStepException()

    learn.fit(1, cbs=NoStep())
    assert torch.equal(learn.model.weight, w0)
    events, _ = fit_events("before_step", CancelStepException)
    assert events[3:12] == ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                            "before_step", "after_cancel_step", "after_step", "after_batch"]


def test_cancel_backward_skips_backward(fit_events, make_learner):
    events, _ = fit_events("before_backward", CancelBackwardException)
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


def test_cancel_fit_goes_to_after_fit(fit_events):
    events, _ = fit_events("after_step", CancelFitException, n_epoch=3)
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


def test_event_function_set_on_a_callback_after_it_was_added_is_called(make_learner):
    seen = []
    cb = Callback()
    learn = make_learner(cbs=cb)
    cb.after_epoch = lambda: seen.append(learn.epoch)  # fastai users attach event functions this way
    learn.fit(2)
    assert seen == [0, 1]


def test_event_method_patched_onto_a_callback_class_after_it_was_added_is_called(make_learner):
    class Late(Callback):
        pass

    seen = []
    learn = make_learner(cbs=Late())
    Late.after_fit = lambda self: seen.append("after_fit")  # what fastcore's @patch does
    learn.fit(1)
    assert seen == ["after_fit"]


def test_call_override_sees_every_event_in_callback_order(make_learner):
    order = []

    class Verbose(Callback):
        def __init__(self, tag, order_):
            self.tag, self.order = tag, order_  # fastai callbacks often skip super().__init__()

        def __call__(self, event_name):
            if event_name in ("before_fit", "after_batch"):
                order.append((self.tag, event_name))
            return super().__call__(event_name)

    learn = make_learner(cbs=[Verbose("late", 20), Verbose("early", -20)])
    learn("before_fit")
    learn(["after_batch"])
    assert order == [("early", "before_fit"), ("late", "before_fit"), ("early", "after_batch"),
                     ("late", "after_batch")]


def test_learner_calls_only_callbacks_that_act_on_an_event_when_none_override_call(make_learner):
    # The per-event lists that keep the batch loop cheap still skip callbacks with nothing to do.
    class EpochOnly(Callback):
        def after_epoch(self):
            pass

    learn = make_learner(cbs=EpochOnly())
    assert not any(isinstance(c, EpochOnly) for c in learn.ordered_cbs("before_batch"))
    assert any(isinstance(c, EpochOnly) for c in learn.ordered_cbs("after_epoch"))
