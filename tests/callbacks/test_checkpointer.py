"""The Checkpointer: exact mid-epoch resume, the hidden-state protocol and callback state keys."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.callbacks.checkpoint import (
    Checkpointer, hidden_state_attrs, load_model_hidden_state, model_hidden_state, stateful_callbacks,
)
from rnnkit.callbacks.rnn import ModelResetter
from rnnkit.checkpoint import latest_checkpoint, load_checkpoint, restore_checkpoint
from rnnkit.data.text import TextDataLoaders
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.models.awd_lstm import AWD_LSTM
from rnnkit.models.book import LMModel3, LMModel5, LMModel7
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner


class DeclaredLSTM(nn.Module):
    """A user's model that keeps its LSTM state under its own name and declares it."""

    hidden_attrs = ("memory",)

    def __init__(self, vocab_sz: int, n_hidden: int = 32) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.rnn = nn.LSTM(n_hidden, n_hidden, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.h_o = nn.Linear(n_hidden, vocab_sz)
        self.memory: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x):
        raw, h = self.rnn(self.i_h(x), self.memory)
        self.memory = (h[0].detach(), h[1].detach())
        return self.h_o(self.drop(raw))

    def reset(self):
        self.memory = None


class UndeclaredLSTM(DeclaredLSTM):
    """The book's LMModel7 as a user copies it into a notebook: `self.h`, no `hidden_attrs`."""

    hidden_attrs = None  # as if never declared

    def forward(self, x):
        raw, h = self.rnn(self.i_h(x), getattr(self, "h", None))
        self.h = (h[0].detach(), h[1].detach())
        return self.h_o(self.drop(raw))

    def reset(self):
        self.h = None


class _InterruptAt(Callback):
    """Act as a SIGINT after training batch `n`: the Checkpointer saves and stops the fit."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def after_batch(self) -> None:
        if self.learn.training and self.learn.train_iter == self.n:
            self.learn.get_cb(Checkpointer).interrupted = True


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")  # Human Numbers is written once for the module


@pytest.fixture
def dls(home, monkeypatch):
    monkeypatch.setenv("RNNKIT_HOME", str(home))
    return lambda: TextDataLoaders.from_corpus("human_numbers", bs=32, seq_len=16, seed=0, device="cpu")


def _learner(dls, make_model, cbs=()):
    torch.manual_seed(0)
    d = dls()
    return Learner(d, make_model(len(d.vocab)), loss_func=CrossEntropyLossFlat(), cbs=[ModelResetter(), *cbs])


def _resume_mid_epoch(dls, make_model, tmp_path, n_epoch=2):
    """An uninterrupted fit, and one interrupted mid-epoch 1 and resumed from its checkpoint."""
    full = _learner(dls, make_model)
    full.fit_one_cycle(n_epoch, 1e-2)
    stop = len(full.dls.train) + 3  # inside the second epoch, with a hidden state carried into the next batch
    part = _learner(dls, make_model, [_InterruptAt(stop), Checkpointer(tmp_path / "ck", handle_signals=False)])
    part.fit_one_cycle(n_epoch, 1e-2)
    resumed = _learner(dls, make_model)
    state = restore_checkpoint(resumed, tmp_path / "ck")
    assert (state["epoch"], state["batch"]) == (1, 3)
    resumed.fit_one_cycle(n_epoch, 1e-2, start_epoch=state["epoch"],
                          cbs=Checkpointer(tmp_path / "ck2", resume=state, handle_signals=False))
    return full, resumed, state


def _assert_same_training(full, resumed):
    assert resumed.recorder.losses == full.recorder.losses[-len(resumed.recorder.losses):]
    assert resumed.recorder.values == full.recorder.values[-1:]
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_a_model_declaring_its_own_hidden_attr_resumes_mid_epoch_bitwise(dls, tmp_path):
    full, resumed, state = _resume_mid_epoch(dls, DeclaredLSTM, tmp_path)
    assert list(state["hidden"]) == [":memory"]  # exactly the declared attribute
    _assert_same_training(full, resumed)


def test_a_model_declaring_nothing_falls_back_to_h_and_still_resumes_bitwise(dls, tmp_path):
    full, resumed, state = _resume_mid_epoch(dls, UndeclaredLSTM, tmp_path)
    assert list(state["hidden"]) == [":h"]
    _assert_same_training(full, resumed)


def test_hidden_state_is_found_by_declaration_only():
    m = DeclaredLSTM(10)
    m(torch.zeros(2, 3, dtype=torch.long))
    m.h = torch.ones(1)  # not declared: a declaring module's other attributes are not state
    assert list(model_hidden_state(m)) == [":memory"]
    m.hidden_attrs = ()  # declares that it carries nothing
    assert model_hidden_state(m) == {}
    assert hidden_state_attrs(AWD_LSTM(10, 8, 8, 1)) == ("hidden",)
    assert hidden_state_attrs(LMModel3(10, 8)) == hidden_state_attrs(LMModel5(10, 8, 1)) == ("h",)
    assert hidden_state_attrs(LMModel7(10, 8, 1, 0.0)) == ("h",)
    assert hidden_state_attrs(nn.Linear(2, 2)) is None


def test_a_hidden_state_keeps_its_tuple_and_a_misspelt_declaration_is_refused():
    m = LMModel7(10, 8, 1, 0.0)
    m(torch.zeros(2, 3, dtype=torch.long))
    saved = model_hidden_state(m)
    m.reset()
    load_model_hidden_state(m, saved)
    assert isinstance(m.h, tuple) and len(m.h) == 2
    m.hidden_attrs = "h"
    with pytest.raises(TypeError, match=r"hidden_attrs must be a tuple of attribute names, got 'h'"):
        model_hidden_state(m)


def test_a_resume_must_start_the_fit_at_the_checkpoints_epoch(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Checkpointer(tmp_path / "ck", handle_signals=False)])
    learn.fit(2, 1e-3)
    state = restore_checkpoint(learn, tmp_path / "ck")
    assert state["epoch"] == 2
    resumed = _learner(dls, DeclaredLSTM)
    with pytest.raises(ValueError, match=r"continues epoch 2 of its checkpoint, but this fit starts at epoch 0; "
                                         r"pass start_epoch=2"):
        resumed.fit(3, 1e-3, cbs=Checkpointer(tmp_path / "ck2", resume=state, handle_signals=False))


def test_epochs_skipped_by_start_epoch_write_no_checkpoint(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Checkpointer(tmp_path / "ck", handle_signals=False)])
    learn.fit(3, 1e-3, start_epoch=2)
    _, _, state = load_checkpoint(latest_checkpoint(tmp_path / "ck"))
    assert state["epoch"] == 3 and len(list((tmp_path / "ck").glob("ckpt-*"))) == 1
    assert int(latest_checkpoint(tmp_path / "ck").name.split("-")[1]) == 1  # the only save: after epoch 2


class Counter(Callback):
    """A callback with state to checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def after_batch(self) -> None:
        self.n += self.learn.training

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, sd):
        self.n = sd["n"]


class OtherCounter(Counter):
    state_key = "counter"


def test_callback_state_is_kept_under_its_state_key_and_only_for_callbacks_with_state(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Counter(), Checkpointer(tmp_path / "ck", handle_signals=False)])
    learn.fit(1, 1e-3)
    _, _, state = load_checkpoint(latest_checkpoint(tmp_path / "ck"))
    # The Recorder, ModelResetter ... define no state_dict: the model's (read through the learner) is not theirs.
    assert [k for k in state if k.startswith("cb:")] == ["cb:counter"]
    assert state["cb:counter"] == {"n": len(learn.dls.train)}


def test_a_checkpoint_keyed_by_class_name_still_restores_callback_state(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Counter(), _InterruptAt(5),
                                         Checkpointer(tmp_path / "ck", handle_signals=False)])
    learn.fit(1, 1e-3)
    _, _, state = load_checkpoint(latest_checkpoint(tmp_path / "ck"))
    state["cb:Counter"] = state.pop("cb:counter")  # as checkpoints before state_key wrote it
    counter = Counter()
    resumed = _learner(dls, DeclaredLSTM, [counter])
    restore_checkpoint(resumed, tmp_path / "ck")
    resumed.fit(1, 1e-3, cbs=Checkpointer(tmp_path / "ck2", resume=state, handle_signals=False))
    assert counter.n == len(resumed.dls.train)


def test_two_callbacks_with_one_state_key_are_refused_naming_both(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Counter(), OtherCounter()])
    with pytest.raises(ValueError, match=r"Counter and OtherCounter both keep their checkpoint state under "
                                         r"state_key 'counter'; give one of them another state_key"):
        learn.fit(1, 1e-3, cbs=Checkpointer(tmp_path / "ck", handle_signals=False))
    assert stateful_callbacks([Counter(), OtherCounter()][:1]).keys() == {"counter"}


def test_lr_find_writes_no_checkpoint(dls, tmp_path):
    learn = _learner(dls, DeclaredLSTM, [Checkpointer(tmp_path / "ck", handle_signals=False)])
    learn.lr_find(num_it=5, show_plot=False)
    assert not (tmp_path / "ck").exists()
