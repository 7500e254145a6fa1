"""RNN callbacks: output splitting, AR/TAR against a hand computation, RNNTrainer's lr rescale."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit.callbacks.rnn import RNNCallback, RNNRegularizer, RNNTrainer, ar_tar, rnn_cbs
from rnnkit.data.core import DataLoaders
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.text.learner import TextLearner
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner


class TinyRNN(nn.Module):
    """Returns (logits, raw, dropped) with dropped = raw * 0.5 so AR and TAR are easy to compute."""

    def __init__(self, as_lists=False):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 7)
        self.as_lists = as_lists

    def forward(self, x):
        raw = torch.tanh(self.emb(x))  # (bs, seq_len, 4)
        out = raw * 0.5
        if self.as_lists:
            return self.lin(out), [raw * 9, raw], [out * 9, out]
        return self.lin(out), raw, out


def _dls(seq_lens=(5,)):
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 7, (sl,), generator=g), torch.randint(0, 7, (sl,), generator=g))
             for sl in seq_lens for _ in range(8)]
    return DataLoaders.from_dsets(items, items[:8], bs=8, shuffle=False, device="cpu")


class CaptureLoss(Callback):
    order = RNNRegularizer.order + 1

    def after_loss(self):
        if self.training:
            self.losses = getattr(self, "losses", []) + [(self.learn.loss.item(), self.learn.loss_grad.item(),
                                                           self.learn.pred, self.learn.xb[0])]


@pytest.mark.parametrize("as_lists", [False, True])
def test_ar_tar_added_to_loss_as_hand_computed(as_lists):
    model = TinyRNN(as_lists)
    cap = CaptureLoss()
    learn = Learner(_dls(), model, loss_func=CrossEntropyLossFlat(), cbs=rnn_cbs(alpha=2.0, beta=1.0) + [cap],
                    lr=1e-9)
    learn.fit(1)
    loss, loss_grad, pred, x = cap.losses[0]
    assert pred.shape == (8, 5, 7)  # the loss saw only the logits
    with torch.no_grad():
        raw = torch.tanh(model.emb(x))
        out = raw * 0.5
        expected = loss + 2.0 * out.pow(2).mean().item() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean().item()
    assert loss_grad == pytest.approx(expected, rel=1e-5)


def test_regularizer_skips_validation_and_brings_its_rnn_callback():
    cap = CaptureLoss()
    learn = Learner(_dls(), TinyRNN(), loss_func=CrossEntropyLossFlat(), cbs=rnn_cbs(2.0, 1.0) + [cap])
    learn.validate()
    assert not hasattr(cap, "losses")
    # the book passes RNNRegularizer alone: it adds the RNNCallback it needs
    bare = Learner(_dls(), TinyRNN(), loss_func=CrossEntropyLossFlat(), cbs=[RNNRegularizer(2.0, 1.0), cap])
    bare.fit(1)
    assert bare.get_cb(RNNCallback) is not None and cap.losses[0][2].shape == (8, 5, 7)


def test_rnn_callback_keeps_raw_and_dropped_of_last_layer():
    learn = Learner(_dls(), TinyRNN(as_lists=True), loss_func=CrossEntropyLossFlat(), cbs=RNNCallback())
    learn.fit(1)
    rnn = learn.rnn
    assert torch.allclose(rnn.out, rnn.raw_out * 0.5)


def test_text_learner_adds_resetter_and_regularizer_with_book_defaults():
    class WithReset(TinyRNN):
        def reset(self):
            pass

    learn = TextLearner(_dls(), WithReset(), loss_func=CrossEntropyLossFlat())
    reg = learn.get_cb(RNNRegularizer)
    assert (reg.alpha, reg.beta) == (2.0, 1.0) and learn.moms == (0.8, 0.7, 0.8)
    assert learn.model_resetter is not None and learn.rnn is not None


def test_rnn_trainer_rescales_lr_by_seq_len_for_the_step_and_restores():
    seen = []

    class Spy(Callback):
        order = 100

        def before_step(self):
            seen.append((self.xb[0].shape[1], self.opt.hypers[0]["lr"]))

    learn = Learner(_dls(seq_lens=(5, 10)), TinyRNN(), loss_func=CrossEntropyLossFlat(), lr=0.1, cbs=Spy())
    trainer = RNNTrainer(learn, bptt=10, alpha=1.0, beta=1.0)
    assert trainer in learn.cbs
    learn.add_cb(trainer)  # adding it again is harmless
    learn.fit(1)
    assert seen == [(5, pytest.approx(0.05)), (10, pytest.approx(0.1))]
    assert learn.opt.hypers[0]["lr"] == pytest.approx(0.1)  # restored after each step
    no_adjust = Learner(_dls(seq_lens=(5,)), TinyRNN(), loss_func=CrossEntropyLossFlat(), lr=0.1, cbs=Spy())
    seen.clear()
    RNNTrainer(no_adjust, bptt=10, adjust=False)
    no_adjust.fit(1)
    assert seen == [(5, pytest.approx(0.1))]


# ar_tar: the fused AR/TAR term against autograd on the plain formula


def _ar_tar_reference(out, raw, alpha, beta):
    loss = alpha * out.double().pow(2).mean()
    if raw.shape[1] > 1:
        loss = loss + beta * (raw[:, 1:] - raw[:, :-1]).double().pow(2).mean()
    return loss


@settings(max_examples=40, deadline=None)
@given(bs=st.integers(1, 4), seq_len=st.integers(1, 7), feat=st.lists(st.integers(1, 5), max_size=2),
       alpha=st.sampled_from([0.0, 0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, 3.0]), seed=st.integers(0, 99))
def test_ar_tar_value_and_gradients_match_autograd(bs, seq_len, feat, alpha, beta, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (bs, seq_len, *feat)  # (bs, seq_len), (bs, seq_len, n) or (bs, seq_len, n, m)
    out0, raw0 = torch.randn(shape, generator=g, dtype=torch.float64), \
        torch.randn(shape, generator=g, dtype=torch.float64)
    out, raw = out0.clone().requires_grad_(), raw0.clone().requires_grad_()
    ref_out, ref_raw = out0.clone().requires_grad_(), raw0.clone().requires_grad_()
    loss = ar_tar(out, raw, alpha, beta)
    ref = _ar_tar_reference(ref_out, ref_raw, alpha, beta)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    if not (alpha or (beta and seq_len > 1)):
        return  # nothing to differentiate
    (3 * loss).backward()
    (3 * ref).backward()
    for got, want in ((out.grad, ref_out.grad), (raw.grad, ref_raw.grad)):
        zeros = torch.zeros_like(out0)  # a term that is off sends no gradient (None) to its input
        torch.testing.assert_close(zeros if got is None else got, zeros if want is None else want,
                                   rtol=1e-9, atol=1e-12)


def test_ar_tar_on_one_tensor_for_both_terms_sums_the_gradients():
    # With output_p=0 the dropped activations are the raw tensor itself.
    x = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ar_tar(x, x, 2.0, 1.0).backward()
    _ar_tar_reference(x_ref, x_ref, 2.0, 1.0).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_ar_tar_in_bfloat16_keeps_the_dtype_and_sums_in_float32():
    torch.manual_seed(0)
    x = torch.randn(4, 9, 8)
    xb = x.bfloat16().requires_grad_()
    loss = ar_tar(xb, xb, 2.0, 1.0)
    loss.backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    x64 = xb.detach().double().requires_grad_()
    _ar_tar_reference(x64, x64, 2.0, 1.0).backward()
    assert loss.item() == pytest.approx(_ar_tar_reference(x64, x64, 2.0, 1.0).item(), rel=1e-2)
    torch.testing.assert_close(xb.grad.double(), x64.grad, rtol=2e-2, atol=1e-3)


def test_ar_tar_rejects_activations_without_a_time_axis():
    with pytest.raises(ValueError, match="seq_len"):
        ar_tar(torch.ones(3), torch.ones(3), 0.0, 1.0)


def test_rnn_cbs_bundles_the_resetter_and_adds_the_regularizer_only_when_asked():
    from rnnkit.callbacks.rnn import ModelResetter

    assert [type(c) for c in rnn_cbs()] == [ModelResetter, RNNCallback]
    full = rnn_cbs(alpha=2.0, beta=1.0)
    assert [type(c) for c in full] == [ModelResetter, RNNCallback, RNNRegularizer]
    assert (full[2].alpha, full[2].beta) == (2.0, 1.0)
    assert len(rnn_cbs(beta=1.0)) == 3 and len(rnn_cbs(alpha=0.5)) == 3


class _CountResets(TinyRNN):
    def __init__(self):
        super().__init__()
        self.resets = 0

    def reset(self):
        self.resets += 1


def test_a_model_trained_with_rnn_cbs_is_reset():
    model = _CountResets()
    learn = Learner(_dls(), model, loss_func=CrossEntropyLossFlat(), cbs=rnn_cbs())
    learn.fit(2)
    # TrainEvalCallback.before_fit, then ModelResetter: before_train + before_validate per epoch, after_fit
    assert model.resets == 1 + 2 * 2 + 1


def test_rnn_trainer_resets_the_model_at_the_start_of_every_epoch():
    model = _CountResets()
    learn = Learner(_dls(), model, loss_func=CrossEntropyLossFlat(), default_cbs=True)
    starts = []

    class Spy(Callback):
        order = RNNTrainer.order + 1

        def before_epoch(self):
            starts.append(model.resets)

    RNNTrainer(learn, bptt=5, alpha=0.0, beta=0.0)
    learn.add_cb(Spy())
    learn.fit(3)
    assert starts == [2, 3, 4]  # before_fit's reset, then one more at each epoch's start


def test_text_learner_has_one_model_resetter():
    from rnnkit.callbacks.rnn import ModelResetter

    learn = TextLearner(_dls(), _CountResets(), loss_func=CrossEntropyLossFlat())
    assert len([c for c in learn.cbs if isinstance(c, ModelResetter)]) == 1
    assert learn.get_cb(RNNRegularizer).alpha == 2.0
