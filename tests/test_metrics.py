from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rnnkit.metrics import (
    AvgLoss, AvgMetric, AvgSmoothLoss, Metric, Perplexity, ValueMetric, accuracy, error_rate,
    mk_metric, perplexity,
)


def _learn(pred=None, targ=None, loss=None):
    return SimpleNamespace(pred=pred, yb=(targ,), loss=loss, training=True)


def test_accuracy_on_classification_output():
    inp = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    targ = torch.tensor([1, 0, 0, 1])
    assert accuracy(inp, targ).item() == pytest.approx(0.5)
    assert error_rate(inp, targ).item() == pytest.approx(0.5)
    assert accuracy(inp, torch.tensor([1, 0, 1, 0])).item() == 1.0


def test_accuracy_on_language_model_output():
    # (bs=2, seq_len=3, vocab_sz=4); argmax tokens are [[0, 1, 2], [3, 3, 0]]
    inp = torch.zeros(2, 3, 4)
    for b, row in enumerate([[0, 1, 2], [3, 3, 0]]):
        for t, tok in enumerate(row):
            inp[b, t, tok] = 1.0
    targ = torch.tensor([[0, 1, 1], [3, 0, 0]])
    assert accuracy(inp, targ).item() == pytest.approx(4 / 6)
    assert error_rate(inp, targ).item() == pytest.approx(2 / 6)


def test_accuracy_over_another_axis():
    inp = torch.tensor([[0.1, 0.9], [0.8, 0.2]])  # argmax over axis 0: [1, 0]
    assert accuracy(inp, torch.tensor([1, 1]), axis=0).item() == pytest.approx(0.5)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"6 values but the targets of shape \(2, 2\) have 4"):
        accuracy(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_avg_metric_over_uneven_batches_equals_metric_on_all_data():
    g = torch.Generator().manual_seed(0)
    preds = torch.randn(23, 5, generator=g)
    targs = torch.randint(0, 5, (23,), generator=g)
    m = AvgMetric(accuracy)
    m.reset()
    for lo, hi in [(0, 10), (10, 20), (20, 23)]:
        m.accumulate(_learn(preds[lo:hi], targs[lo:hi]))
    assert m.count == 23
    assert isinstance(m.value, torch.Tensor) and m.value.dim() == 0  # as fastai: `.value.item()` works
    assert m.value == pytest.approx(accuracy(preds, targs).item(), abs=1e-6)
    assert m.name == "accuracy"


def test_avg_metric_names_and_empty_value():
    assert AvgMetric(partial(accuracy, axis=-1)).name == "accuracy"
    assert AvgMetric(error_rate).value is None


def test_avg_metric_accepts_functions_returning_python_numbers():
    m = AvgMetric(lambda pred, targ: float(pred.sum()))
    m.accumulate(_learn(torch.ones(2), torch.zeros(2)))
    m.accumulate(_learn(torch.ones(4) * 2, torch.zeros(4)))
    assert m.value == pytest.approx((2 * 2 + 8 * 4) / 6)


def test_avg_loss_weights_by_batch_size():
    m = AvgLoss()
    m.accumulate(_learn(targ=torch.zeros(3), loss=torch.tensor(1.0)))
    m.accumulate(_learn(targ=torch.zeros(1), loss=torch.tensor(5.0)))
    assert m.count == 4
    assert m.value == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)
    assert m.name == "loss"
    m.reset()
    assert m.value is None and m.count == 0


def test_avg_loss_means_an_unreduced_loss_and_keeps_no_graph():
    w = torch.tensor(2.0, requires_grad=True)
    m = AvgLoss()
    m.accumulate(_learn(targ=torch.zeros(2), loss=w * torch.tensor([1.0, 3.0])))
    assert not m.total.requires_grad
    assert m.value == pytest.approx(4.0)


def test_avg_smooth_loss_is_debiased_moving_average():
    beta, losses = 0.9, [2.0, 1.0, 4.0]
    m = AvgSmoothLoss(beta=beta)
    assert m.count == 0 and m.val.item() == 0.0
    val = 0.0
    for i, x in enumerate(losses, 1):
        m.accumulate(_learn(targ=torch.zeros(2), loss=torch.tensor(x)))
        val = beta * val + (1 - beta) * x
        assert m.count == i
        assert m.val.item() == pytest.approx(val)
        assert m.value.item() == pytest.approx(val / (1 - beta**i))
    assert AvgSmoothLoss(beta=0.5).beta == 0.5
    # the first debiased value is the first loss itself
    first = AvgSmoothLoss()
    first.accumulate(_learn(targ=torch.zeros(1), loss=torch.tensor(3.0)))
    assert first.value.item() == pytest.approx(3.0)


def test_perplexity_is_exp_of_weighted_mean_loss():
    m = Perplexity()
    m.accumulate(_learn(targ=torch.zeros(3, 7), loss=torch.tensor(1.0)))
    m.accumulate(_learn(targ=torch.zeros(1, 7), loss=torch.tensor(2.0)))
    assert m.value == pytest.approx(math.exp((3 * 1.0 + 2.0) / 4))
    assert m.name == "perplexity" and perplexity.name == "perplexity"
    assert isinstance(perplexity, Perplexity) and isinstance(perplexity, AvgLoss)
    assert Perplexity().value is None


def test_perplexity_overflows_to_inf():
    m = Perplexity()
    m.accumulate(_learn(targ=torch.zeros(1), loss=torch.tensor(1000.0)))
    assert m.value == math.inf


def test_value_metric_reads_its_function():
    m = ValueMetric(lambda: 42, "answer")
    assert m.value == 42 and m.name == "answer"

    def best_loss():
        return 0.5

    assert ValueMetric(best_loss).name == "best_loss"


def test_metric_name_is_snake_case_class_name():
    class MyFancyMetric(Metric):
        pass

    class RNNScore(Metric):
        pass

    assert MyFancyMetric().name == "my_fancy"
    assert RNNScore().name == "rnn_score"
    assert AvgSmoothLoss().name == "avg_smooth_loss"
    with pytest.raises(NotImplementedError):
        MyFancyMetric().value


def test_mk_metric_wraps_functions_and_classes():
    assert isinstance(mk_metric(accuracy), AvgMetric)
    assert isinstance(mk_metric(Perplexity), Perplexity)
    assert mk_metric(perplexity) is perplexity


def test_metrics_accept_language_model_batches():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 6, 10, generator=g)
    targ = torch.randint(0, 10, (4, 6), generator=g)
    loss = F.cross_entropy(pred.view(-1, 10), targ.view(-1))
    acc, ppl = AvgMetric(accuracy), Perplexity()
    for m in (acc, ppl):
        m.accumulate(_learn(pred, targ, loss))
    assert acc.value == pytest.approx(accuracy(pred, targ).item())
    assert ppl.value == pytest.approx(math.exp(loss.item()), rel=1e-5)
