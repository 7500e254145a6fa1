"""NT-ASGD: the non-monotone trigger, the running average, swapping it in for evaluation, resuming."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.callbacks.ntasgd import NTASGD
from rnnkit.optim.recipes import SGD
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder


def first_trigger(values, n):
    """The paper's rule, written out: the first t with t > n and values[t] > min(values[:t-n])."""
    for t, v in enumerate(values):
        if t > n and v > min(values[: t - n]):
            return t
    return None


def test_trigger_fires_exactly_when_the_non_monotone_condition_first_holds():
    cb = NTASGD(n=2)
    # t:        0    1    2    3    4    5    6
    values = [5.0, 4.0, 3.0, 3.5, 3.2, 4.5, 2.0]
    fired = [cb.check(v) for v in values[:5]]
    assert fired == [False] * 5  # 3.5 > min(5.0) is false at t=3 ... 3.2 > min(5, 4)=4 is false
    assert cb.check(values[5])  # t=5: 4.5 > min(5, 4, 3) = 3
    assert first_trigger(values, 2) == 5
    cb.triggered_at = 0
    assert not cb.check(1e9)  # fires once
    assert cb.history == values[:6] + [1e9]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=20),
       n=st.integers(1, 6))
def test_trigger_matches_the_papers_rule_on_any_sequence(values, n):
    cb = NTASGD(n=n)
    fired_at = None
    for t, v in enumerate(values):
        if cb.check(v):
            fired_at = t
            cb.triggered_at = t
    assert fired_at == first_trigger(values, n)


def test_a_metric_to_maximise_triggers_when_it_drops_below_the_old_best():
    cb = NTASGD(monitor="accuracy", n=1)
    assert [cb.check(v) for v in (0.5, 0.7, 0.6, 0.65)] == [False, False, False, True]


def test_n_is_checked():
    with pytest.raises(ValueError, match="n >= 1"):
        NTASGD(n=0)


class Scripted(Callback):
    """Replace the recorded valid_loss of each epoch with a scripted value."""

    order = Recorder.order + 5  # after the Recorder writes the row, before NTASGD reads it

    def __init__(self, values):
        super().__init__()
        self.values = values

    def after_epoch(self):
        self.learn.recorder.values[-1][1] = self.values[self.learn.epoch]


class Spy(Callback):
    """Record the weights after every step, at the start of each validation and of each training phase."""

    order = NTASGD.order + 1

    def __init__(self):
        super().__init__()
        self.steps, self.valid, self.train = [], [], []

    def _w(self):
        return self.learn.model.weight.detach().clone()

    def after_step(self):
        self.steps.append(self._w())

    def before_validate(self):
        self.valid.append(self._w())

    def before_train(self):
        self.train.append(self._w())


def test_averaging_starts_at_the_trigger_and_evaluation_sees_the_mean_of_the_iterates(make_learner):
    learn = make_learner(opt_func=partial(SGD, mom=0.9), lr=0.1)
    losses = [2.0, 1.0, 3.0, 1.0, 1.0, 1.0]  # n=1: fires at epoch 2 (3.0 > min(2.0))
    nt, spy = NTASGD(n=1), Spy()
    learn.fit(6, cbs=[Scripted(losses), nt, spy])
    per_epoch = len(learn.dls.train)
    assert first_trigger(losses, 1) == 2 and nt.triggered_at == 3 * per_epoch
    assert nt.n_avg == 3 * per_epoch
    for e in range(3):  # before the trigger, validation sees the raw weights
        assert torch.equal(spy.valid[e], spy.steps[(e + 1) * per_epoch - 1])
    for e in range(3, 6):  # afterwards, the mean of the iterates since the trigger
        mean = torch.stack(spy.steps[3 * per_epoch:(e + 1) * per_epoch]).mean(0)
        torch.testing.assert_close(spy.valid[e], mean)
        # ... while training went on from the raw weights of the last step
        assert torch.equal(spy.train[e], spy.steps[e * per_epoch - 1])
    torch.testing.assert_close(learn.model.weight, torch.stack(spy.steps[3 * per_epoch:]).mean(0))


def test_validate_after_fit_evaluates_the_average(make_learner):
    learn = make_learner(opt_func=SGD, lr=0.1)
    nt = NTASGD(n=1)
    learn.fit(4, cbs=[Scripted([2.0, 1.0, 3.0, 1.0]), nt])
    assert nt.averaging and nt.n_avg > 0
    xs = torch.stack([x for x, _ in learn.dls.valid_ds])
    ys = torch.stack([y for _, y in learn.dls.valid_ds])
    avg = nt._other  # the raw weights wait in the callback while the model holds the average
    with torch.no_grad():
        expected = F.cross_entropy(learn.model(xs), ys).item()
    assert learn.validate()[0] == pytest.approx(expected, rel=1e-5)
    assert not torch.equal(avg[0], learn.model.weight)


def test_without_trigger_nothing_changes(make_learner):
    def run(cbs):
        torch.manual_seed(0)
        learn = make_learner(opt_func=SGD, lr=0.1)
        learn.model.load_state_dict({k: torch.zeros_like(v) for k, v in learn.model.state_dict().items()})
        torch.manual_seed(1)
        learn.fit(3, cbs=cbs)
        return learn.model.weight
    assert torch.equal(run([NTASGD(n=5)]), run([]))


def test_state_round_trip_resumes_identically(make_learner, tmp_path):
    losses = [2.0, 1.0, 3.0, 1.0, 1.0, 1.0]

    def fresh():
        torch.manual_seed(0)
        learn = make_learner(opt_func=partial(SGD, mom=0.9), lr=0.1)
        nt = NTASGD(n=1)
        learn.add_cbs([Scripted(losses), nt])
        return learn, nt

    learn, nt = fresh()
    torch.manual_seed(1)
    learn.fit(4)
    learn.save("ckpt")
    torch.save(nt.state_dict(), tmp_path / "ntasgd.pth")
    raw_state = [t.clone() for t in nt.state_dict()["other"]]

    other, nt2 = fresh()
    other.load("ckpt")
    nt2.load_state_dict(torch.load(tmp_path / "ntasgd.pth", weights_only=True))
    assert nt2.history == nt.history and nt2.triggered_at == nt.triggered_at and nt2.n_avg == nt.n_avg
    for a, b in zip(nt2._other, raw_state):
        assert torch.equal(a, b)

    class LateLoad(Callback):  # a resume that loads the callback state after its before_train
        order = 90

        def before_train(self):
            if not late_nt.history:
                late_nt.load_state_dict(torch.load(tmp_path / "ntasgd.pth", weights_only=True))

    late, late_nt = fresh()
    late.load("ckpt")
    late.add_cb(LateLoad())
    for lrn in (learn, other, late):
        torch.manual_seed(2)
        lrn.fit(1)
    assert torch.equal(learn.model.weight, other.model.weight)
    assert torch.equal(learn.model.weight, late.model.weight)
    assert torch.equal(nt._other[0], nt2._other[0]) and torch.equal(nt._other[0], late_nt._other[0])
    with pytest.raises(ValueError, match="missing"):
        nt2.load_state_dict({"history": []})


def test_unknown_monitor_is_a_clear_error(make_learner):
    learn = make_learner()
    with pytest.raises(ValueError, match="NTASGD monitors 'accuracy', which is not recorded"):
        learn.fit(1, cbs=NTASGD(monitor="accuracy"))
