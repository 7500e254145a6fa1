from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from rnnkit.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat


@pytest.fixture
def lm_batch():
    g = torch.Generator().manual_seed(0)
    inp = torch.randn(2, 5, 7, generator=g)  # (bs, seq_len, vocab_sz)
    targ = torch.randint(0, 7, (2, 5), generator=g)  # (bs, seq_len)
    return inp, targ


def test_cross_entropy_flat_on_lm_output_equals_flattened_cross_entropy(lm_batch):
    inp, targ = lm_batch
    expected = F.cross_entropy(inp.view(-1, 7), targ.view(-1))
    torch.testing.assert_close(CrossEntropyLossFlat()(inp, targ), expected)


def test_cross_entropy_flat_reduction_none_gives_one_loss_per_token(lm_batch):
    inp, targ = lm_batch
    loss_func = CrossEntropyLossFlat()
    assert loss_func.reduction == "mean"
    loss_func.reduction = "none"
    out = loss_func(inp, targ)
    assert out.shape == (10,)
    expected = F.cross_entropy(inp.view(-1, 7), targ.view(-1), reduction="none")
    torch.testing.assert_close(out, expected)
    total = CrossEntropyLossFlat(reduction="sum")(inp, targ)
    assert total.item() == pytest.approx(out.sum().item(), rel=1e-6)


def test_cross_entropy_flat_with_class_axis_first(lm_batch):
    inp, targ = lm_batch
    channels_first = inp.permute(0, 2, 1)  # (bs, vocab_sz, seq_len)
    torch.testing.assert_close(
        CrossEntropyLossFlat(axis=1)(channels_first, targ), CrossEntropyLossFlat()(inp, targ)
    )


def test_cross_entropy_flat_converts_small_int_targets_and_honours_ignore_index(lm_batch):
    inp, targ = lm_batch
    torch.testing.assert_close(
        CrossEntropyLossFlat()(inp, targ.int()), CrossEntropyLossFlat()(inp, targ)
    )
    masked = targ.clone()
    masked[0] = -100
    expected = F.cross_entropy(inp[1], targ[1])
    torch.testing.assert_close(CrossEntropyLossFlat()(inp, masked), expected)


def test_cross_entropy_flat_accepts_weights_and_probability_targets(lm_batch):
    inp, targ = lm_batch
    w = torch.linspace(0.5, 2.0, 7)
    expected = F.cross_entropy(inp.view(-1, 7), targ.view(-1), weight=w)
    torch.testing.assert_close(CrossEntropyLossFlat(w)(inp, targ), expected)
    probs = F.one_hot(targ, 7).float()
    torch.testing.assert_close(
        CrossEntropyLossFlat()(inp, probs), CrossEntropyLossFlat()(inp, targ)
    )


def test_cross_entropy_flat_activation_and_decodes(lm_batch):
    inp, _ = lm_batch
    loss_func = CrossEntropyLossFlat()
    torch.testing.assert_close(loss_func.activation(inp), F.softmax(inp, dim=-1))
    assert torch.equal(loss_func.decodes(inp), inp.argmax(-1))
    assert torch.equal(CrossEntropyLossFlat(axis=1).decodes(inp), inp.argmax(1))


def test_bce_with_logits_flat():
    g = torch.Generator().manual_seed(0)
    inp = torch.randn(4, 3, generator=g)
    targ = torch.randint(0, 2, (4, 3), generator=g)  # integer targets are made float
    loss_func = BCEWithLogitsLossFlat()
    expected = F.binary_cross_entropy_with_logits(inp.view(-1), targ.float().view(-1))
    torch.testing.assert_close(loss_func(inp, targ), expected)
    torch.testing.assert_close(loss_func.activation(inp), torch.sigmoid(inp))
    assert torch.equal(loss_func.decodes(torch.tensor([0.2, 0.7])), torch.tensor([False, True]))
    low = BCEWithLogitsLossFlat(thresh=0.1)
    assert torch.equal(low.decodes(torch.tensor([0.2])), torch.tensor([True]))
    loss_func.reduction = "none"
    assert loss_func(inp, targ).shape == (12,)


def test_mse_loss_flat():
    loss_func = MSELossFlat()
    assert loss_func.reduction == "mean"
    inp = torch.tensor([[1.0], [2.0], [4.0]])
    targ = torch.tensor([1, 1, 1])  # shape (3,) against (3, 1): both flatten to (3,)
    assert loss_func(inp, targ).item() == pytest.approx((0 + 1 + 9) / 3)
    assert torch.equal(loss_func.activation(inp), inp) and torch.equal(loss_func.decodes(inp), inp)


def test_losses_pickle_and_copy(lm_batch):
    inp, targ = lm_batch
    for loss_func in (CrossEntropyLossFlat(), BCEWithLogitsLossFlat(), MSELossFlat()):
        for clone in (pickle.loads(pickle.dumps(loss_func)), copy.deepcopy(loss_func)):
            assert type(clone) is type(loss_func) and clone.reduction == "mean"
    clone = pickle.loads(pickle.dumps(CrossEntropyLossFlat()))
    torch.testing.assert_close(clone(inp, targ), CrossEntropyLossFlat()(inp, targ))
    clone.reduction = "none"
    assert clone(inp, targ).shape == (10,)
