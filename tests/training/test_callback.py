"""Callback API: delegation to the learner, names, ordering, registration checks."""
from __future__ import annotations

import pytest
import torch

from rnnkit.training.callback import Callback, TrainEvalCallback
from rnnkit.training.recorder import Recorder


class ReadsLearner(Callback):
    def before_fit(self):
        self.seen = (self.model, self.dls, self.loss_func, self.opt, self.n_epoch, self.cbs)

    def after_loss(self):
        self.last = (self.x.shape, self.y.shape, self.xb, self.yb, self.pred.shape,
                     self.loss_grad, self.loss, self.epoch, self.iter, self.n_iter, self.training, self.dl)


def test_callback_reads_learner_attributes(make_learner):
    learn = make_learner(cbs=ReadsLearner())
    learn.fit(1)
    cb = learn.reads_learner
    assert cb.seen[0] is learn.model and cb.seen[1] is learn.dls and cb.seen[4] == 1
    x_shape, y_shape, xb, yb, pred_shape, *_ , training, dl = cb.last
    assert x_shape == (4, 4) and y_shape == (4,)  # last valid batch: 20 items, bs 16
    assert isinstance(xb, tuple) and isinstance(yb, tuple) and training is False
    assert dl is learn.dls.valid


def test_setting_a_learner_attribute_on_a_callback_warns(make_learner):
    class Shadow(Callback):
        def before_fit(self):
            self.model = None

    learn = make_learner(cbs=Shadow())
    with pytest.warns(UserWarning, match=r"shadowing an attribute \(model\)"):
        learn.fit(1)


def test_callback_own_attributes_do_not_warn(make_learner, recwarn):
    class Own(Callback):
        def before_fit(self):
            self.count = 0

        def after_batch(self):
            self.count += 1

    learn = make_learner(cbs=Own())
    learn.fit(1)
    assert learn.own.count == 6
    assert not [w for w in recwarn if "shadowing" in str(w.message)]


def test_name_is_snake_case_without_callback_and_reachable_on_learner(make_learner):
    class MyFancyCallback(Callback):
        pass

    learn = make_learner(cbs=MyFancyCallback)
    assert MyFancyCallback().name == "my_fancy"
    assert isinstance(learn.my_fancy, MyFancyCallback)
    assert isinstance(learn.train_eval, TrainEvalCallback) and isinstance(learn.recorder, Recorder)


def test_unknown_learner_attributes_read_through_to_model(make_learner):
    learn = make_learner()
    assert list(learn.parameters())[0] is learn.model.weight
    with pytest.raises(AttributeError):
        learn.no_such_thing


def test_misspelt_event_method_is_rejected_with_suggestion(make_learner):
    class Typo(Callback):
        def before_batchs(self):
            pass

    with pytest.raises(ValueError, match="did you mean 'before_batch'"):
        make_learner(cbs=Typo())


def test_constructor_form_binds_event_functions(make_learner):
    seen = []
    learn = make_learner(cbs=Callback(after_epoch=lambda self: seen.append(self.epoch)))
    learn.fit(2)
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="not an event"):
        Callback(after_epok=lambda: None)


def test_exception_in_callback_keeps_type_and_names_callback_and_event(make_learner):
    class Boom(Callback):
        def after_pred(self):
            raise KeyError("missing thing")

    learn = make_learner(cbs=Boom())
    with pytest.raises(KeyError, match="in `Boom` when calling event `after_pred`"):
        learn.fit(1)


def test_run_before_and_run_after_order_callbacks(make_learner):
    # rnnkit honours them over `order` (fastai 2.8 sorts by order only; see docs/differences-from-fastai.md)
    class Fit(Callback):
        def before_fit(self):
            pass

    class A(Fit):
        order = 5

    class B(Fit):
        order = 0
        run_after = A

    class C(Fit):
        order = 9
        run_before = "A"

    learn = make_learner(cbs=[A(), B(), C()], default_cbs=False)
    assert [type(c).__name__ for c in learn.cbs] == ["A", "B", "C"]  # learn.cbs: the order they were added in
    names = [type(c).__name__ for c in learn.ordered_cbs("before_fit")]
    assert names.index("C") < names.index("A") < names.index("B")


def test_add_remove_and_temporary_callbacks(make_learner):
    class Tmp(Callback):
        pass

    learn = make_learner()
    n = len(learn.cbs)
    with learn.added_cbs(Tmp):
        assert len(learn.cbs) == n + 1 and isinstance(learn.tmp, Tmp)
    assert len(learn.cbs) == n and not any(isinstance(c, Tmp) for c in learn.cbs)
    learn.add_cb(Tmp())
    learn.remove_cb(Tmp)
    assert len(learn.cbs) == n
    with learn.removed_cbs(Recorder):
        assert learn.get_cb(Recorder) is None
    assert learn.get_cb(Recorder) is not None
    assert learn.ordered_cbs("after_create") == [learn.train_eval]


def test_callbacks_only_called_on_events_they_override(make_learner):
    class OnlyFit(Callback):
        pass

    learn = make_learner(cbs=OnlyFit())
    assert all(not isinstance(c, OnlyFit) for c in learn.ordered_cbs("after_batch"))


def test_learner_call_fires_named_event(make_learner):
    seen = []
    learn = make_learner(cbs=Callback(before_fit=lambda: seen.append("x")))
    learn("before_fit")
    assert seen == ["x"]
    with pytest.raises(ValueError, match="not an event"):
        learn("before_fitt")


def test_train_eval_sets_modes_and_counters(make_learner):
    modes = []
    learn = make_learner(cbs=Callback(before_batch=lambda self: modes.append(self.model.training)))
    learn.fit(2)
    assert modes == ([True] * 4 + [False] * 2) * 2
    assert learn.train_iter == 8 and learn.pct_train == pytest.approx(1.0)
