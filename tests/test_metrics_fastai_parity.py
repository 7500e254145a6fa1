"""fastai 2.8's metrics (`fastai.metrics`) in rnnkit: hand-checked values, batch-split invariance, Learner use."""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from functools import partial
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rnnkit.metrics as metrics_module
from rnnkit.metrics import (
    APScoreBinary, APScoreMulti, AccumMetric, ActivationType, AvgMetric, BalancedAccuracy, BrierScore,
    BrierScoreMulti, CohenKappa, CorpusBLEUMetric, Dice, DiceMulti, ExplainedVariance, F1Score, F1ScoreMulti, FBeta,
    FBetaMulti, HammingLoss, HammingLossMulti, Jaccard, JaccardCoeff, JaccardMulti, LossMetric, LossMetrics,
    MatthewsCorrCoef, MatthewsCorrCoefMulti, PearsonCorrCoef, Precision, PrecisionMulti, R2Score, Recall, RecallMulti,
    RocAuc, RocAucBinary, RocAucMulti, SpearmanCorrCoef, accuracy, accuracy_multi, exp_rmspe, flatten_check,
    foreground_acc, mae, mk_metric, mse, msle, optim_metric, rmse, skm_to_fastai, top_k_accuracy,
)
from rnnkit.test_utils import synth_learner

LN3 = math.log(3.0)  # sigmoid(LN3) = 3/4; softmax([0, LN3]) = [1/4, 3/4]


def _learn(pred, targ, training=False, loss_func=None):
    return SimpleNamespace(pred=pred, yb=(targ,), training=training, loss_func=loss_func)


def _feed(met, pred, targ, cuts=()):
    """reset, then accumulate `pred`/`targ` cut into batches at the indices `cuts`; return the value."""
    met.reset()
    bounds = [0, *cuts, len(pred)]
    for lo, hi in zip(bounds, bounds[1:]):
        met.accumulate(_learn(pred[lo:hi], targ[lo:hi]))
    return met.value


def _l2(p, t):
    return torch.sqrt((p.float() - t.float()).pow(2).mean())


# ---- flatten_check, AccumMetric ----

def test_flatten_check_flattens_both_sides_and_rejects_different_sizes():
    inp, targ = flatten_check(torch.arange(6.0).view(2, 3), torch.arange(6).view(3, 2))
    assert inp.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and targ.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"shape \(2, 3\) have 6 elements but the targets of shape \(7,\) have 7"):
        flatten_check(torch.zeros(2, 3), torch.zeros(7))


def test_accum_metric_computes_func_once_on_all_batches_not_per_batch():
    # squared errors 0, 0, 0 | 4: the whole-set RMSE is sqrt(4/4) = 1; the batch-size-weighted
    # average of the batches' RMSEs (0 and 2) would be 0.5
    pred, targ = torch.ones(4, 1), torch.tensor([[1.0], [1.0], [1.0], [3.0]])
    met = AccumMetric(_l2)
    assert _feed(met, pred, targ, cuts=[3]).item() == pytest.approx(1.0)
    assert _feed(AvgMetric(_l2), pred, targ, cuts=[3]) == pytest.approx(0.5)
    assert torch.equal(torch.cat(met.preds), pred.view(-1)) and torch.equal(torch.cat(met.targs), targ.view(-1))


def test_accum_metric_over_partial_batches_equals_func_on_the_concatenation():
    g = torch.Generator().manual_seed(3)
    pred, targ = torch.randn(11, 4, generator=g), torch.randn(11, 4, generator=g)
    met = AccumMetric(_l2)
    assert _feed(met, pred, targ, cuts=[2, 3, 9]).item() == pytest.approx(_l2(pred, targ).item(), rel=1e-6)
    assert [p.shape for p in met.preds] == [(8,), (4,), (24,), (8,)]  # flattened batch by batch


def test_accum_metric_argmax_threshold_and_activations():
    def preds_of(p, t):
        return p

    argmaxed = _feed(AccumMetric(preds_of, dim_argmax=-1), torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.zeros(2))
    assert argmaxed.tolist() == [1, 0]
    thresholded = _feed(AccumMetric(preds_of, thresh=0.5), torch.tensor([0.2, 0.5, 0.9]), torch.zeros(3))
    assert thresholded.tolist() == [False, True, True]
    logits = torch.tensor([[0.0, LN3]])
    sig = _feed(AccumMetric(preds_of, activation=ActivationType.Sigmoid), logits, torch.zeros(1, 2))
    assert sig.tolist() == pytest.approx([0.5, 0.75])
    sig_thresh = _feed(AccumMetric(preds_of, activation="sigmoid", thresh=0.6), logits, torch.zeros(1, 2))
    assert sig_thresh.tolist() == [False, True]
    # softmax gives probabilities, not an argmax, even with dim_argmax (fastai's behaviour)
    soft = _feed(AccumMetric(preds_of, dim_argmax=-1, activation=ActivationType.Softmax, flatten=False),
                 logits, torch.zeros(1))
    assert soft.shape == (1, 2) and soft[0].tolist() == pytest.approx([0.25, 0.75])
    binary = _feed(AccumMetric(preds_of, activation=ActivationType.BinarySoftmax),
                   torch.tensor([[0.0, LN3], [LN3, 0.0]]), torch.zeros(2))
    assert binary.tolist() == pytest.approx([0.75, 0.25])
    assert ActivationType.No == "no" and ActivationType.BinarySoftmax == "binarysoftmax"


def test_accum_metric_to_np_invert_arg_and_kwargs():
    pred, targ = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0])
    types = _feed(AccumMetric(lambda p, t: (type(p), type(t)), to_np=True), pred, targ)
    assert types == (np.ndarray, np.ndarray)
    assert _feed(AccumMetric(lambda a, b: a.sum()), pred, targ).item() == 3.0
    assert _feed(AccumMetric(lambda a, b: a.sum(), invert_arg=True), pred, targ).item() == 12.0
    assert _feed(AccumMetric(lambda p, t, scale: scale * p.sum(), scale=10), pred, targ).item() == 30.0
    assert _feed(AccumMetric(lambda p, t: p.dtype, to_np=True), pred.bfloat16(), targ) == np.float32


def test_accum_metric_names_value_before_batches_and_bad_activation():
    def my_score(p, t):
        return p.sum()

    assert AccumMetric(my_score).name == "my_score"
    assert AccumMetric(partial(my_score)).name == "my_score"
    met = AccumMetric(my_score, name="score")
    assert met.name == "score"
    met.name = "renamed"
    assert met.name == "renamed"
    assert met.value is None
    with pytest.raises(ValueError, match=r"unknown activation 'softmx'"):
        AccumMetric(my_score, activation="softmx")


def test_accum_metric_called_directly_uses_only_that_batch_without_activation():
    met = AccumMetric(lambda p, t: p, dim_argmax=-1)
    met.accumulate(_learn(torch.tensor([[0.0, 1.0]]), torch.zeros(1)))
    out = met(torch.tensor([[0.3, 0.7]]), torch.zeros(2))
    assert out.tolist() == pytest.approx([0.3, 0.7]) and len(met.preds) == 1


def test_accum_metric_stores_detached_predictions():
    w = torch.tensor(2.0, requires_grad=True)
    met = AccumMetric(_l2)
    met.accumulate(_learn(w * torch.ones(3), torch.zeros(3)))
    assert not met.preds[0].requires_grad
    assert met.value.item() == pytest.approx(2.0)


# ---- scikit-learn and SciPy adapters ----

def test_skm_to_fastai_passes_numpy_in_sklearn_argument_order():
    def precision_like(y_true, y_pred):  # sklearn's order: targets first
        assert isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)
        return float(((y_pred == 1) & (y_true == 1)).sum() / (y_pred == 1).sum())

    single = skm_to_fastai(precision_like)  # argmax of [[.1,.9],[.6,.4],[.8,.2],[.3,.7]] is [1, 0, 0, 1]
    pred = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]])
    assert _feed(single, pred, torch.tensor([1, 1, 0, 0])) == pytest.approx(1 / 2)
    assert single.name == "precision_like" and single.to_np and single.invert_args
    logits, targ = torch.tensor([-2.0, 0.0, 2.0]), torch.tensor([1, 1, 0])
    # sigmoid: [.12, .5, .88] >= .2 -> [0, 1, 1]: 1 true positive of 2
    assert _feed(skm_to_fastai(precision_like, thresh=0.2), logits, targ) == pytest.approx(0.5)
    # raw logits >= .2 -> [0, 0, 1]: 0 of 1
    assert _feed(skm_to_fastai(precision_like, thresh=0.2, activation=ActivationType.No), logits, targ) == 0.0

    def mean_diff(y_true, y_pred, offset=0.0):
        return float(np.mean(y_true - y_pred)) + offset

    reg = skm_to_fastai(mean_diff, is_class=False, offset=1.0)
    assert _feed(reg, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2), cuts=[1]) == pytest.approx(-1.5)


_SKM_NAMES = [
    "average_precision_score", "balanced_accuracy_score", "brier_score_loss", "cohen_kappa_score", "f1_score",
    "fbeta_score", "hamming_loss", "jaccard_score", "precision_score", "recall_score", "roc_auc_score",
    "matthews_corrcoef", "explained_variance_score", "r2_score",
]


@pytest.fixture
def fake_sklearn(monkeypatch):
    """A stand-in `sklearn.metrics` whose functions record their arguments and return 0.25."""
    calls = []

    def make(name):
        def func(y_true, y_pred, **kwargs):
            calls.append((name, y_true, y_pred, kwargs))
            return 0.25

        func.__name__ = name
        return func

    skm = ModuleType("sklearn.metrics")
    for name in _SKM_NAMES:
        setattr(skm, name, make(name))
    sklearn = ModuleType("sklearn")
    sklearn.metrics = skm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", skm)
    return calls


_TARGETS = {"single": torch.tensor([1, 0]), "multi": torch.tensor([[0, 1], [1, 0]]),
            "regression": torch.tensor([[0.5, 1.0], [1.5, 2.0]])}


@pytest.mark.parametrize("factory, skm_name, kind", [
    (APScoreBinary, "average_precision_score", "single"), (BalancedAccuracy, "balanced_accuracy_score", "single"),
    (BrierScore, "brier_score_loss", "single"), (CohenKappa, "cohen_kappa_score", "single"),
    (F1Score, "f1_score", "single"), (partial(FBeta, 2), "fbeta_score", "single"),
    (HammingLoss, "hamming_loss", "single"), (Jaccard, "jaccard_score", "single"),
    (Precision, "precision_score", "single"), (Recall, "recall_score", "single"),
    (RocAuc, "roc_auc_score", "single"), (RocAucBinary, "roc_auc_score", "single"),
    (MatthewsCorrCoef, "matthews_corrcoef", "single"), (APScoreMulti, "average_precision_score", "multi"),
    (BrierScoreMulti, "brier_score_loss", "multi"), (F1ScoreMulti, "f1_score", "multi"),
    (partial(FBetaMulti, 2), "fbeta_score", "multi"), (HammingLossMulti, "hamming_loss", "multi"),
    (JaccardMulti, "jaccard_score", "multi"), (MatthewsCorrCoefMulti, "matthews_corrcoef", "multi"),
    (PrecisionMulti, "precision_score", "multi"), (RecallMulti, "recall_score", "multi"),
    (RocAucMulti, "roc_auc_score", "multi"), (ExplainedVariance, "explained_variance_score", "regression"),
    (R2Score, "r2_score", "regression"),
])
def test_sklearn_metrics_wrap_their_sklearn_function(fake_sklearn, factory, skm_name, kind):
    met = factory()
    assert isinstance(met, AccumMetric) and met.name == skm_name
    targ = _TARGETS[kind]
    assert _feed(met, torch.tensor([[0.0, LN3], [LN3, 0.0]]), targ) == 0.25
    name, y_true, y_pred, _ = fake_sklearn[-1]
    assert name == skm_name and isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)
    assert y_true.tolist() == targ.view(-1).tolist() or y_true.tolist() == targ.tolist()


def test_sklearn_metrics_prepare_predictions_as_fastai_does(fake_sklearn):
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # sigmoid: [[.5, .75], [.75, .5]]
    _feed(F1ScoreMulti(thresh=0.6, average="micro"), logits, torch.tensor([[0, 1], [1, 1]]))
    _, _, y_pred, kwargs = fake_sklearn[-1]
    assert y_pred.tolist() == [[False, True], [True, False]]  # not flattened
    assert kwargs == {"labels": None, "pos_label": 1, "average": "micro", "sample_weight": None}
    _feed(F1Score(), logits, torch.tensor([1, 0]))
    assert fake_sklearn[-1][2].tolist() == [1, 0] and fake_sklearn[-1][3]["average"] == "binary"
    _feed(APScoreBinary(), logits, torch.tensor([1, 0]))
    assert fake_sklearn[-1][2].tolist() == pytest.approx([0.75, 0.25])
    _feed(RocAuc(), logits, torch.tensor([1, 0]))
    assert fake_sklearn[-1][2].tolist() == [pytest.approx([0.25, 0.75]), pytest.approx([0.75, 0.25])]
    assert fake_sklearn[-1][3]["multi_class"] == "ovr"
    _feed(FBeta(0.5), logits, torch.tensor([1, 0]))
    assert fake_sklearn[-1][3]["beta"] == 0.5
    _feed(R2Score(), torch.tensor([[1.5], [2.5]]), torch.tensor([[1.0], [2.0]]))
    assert fake_sklearn[-1][2].tolist() == [1.5, 2.5]
    with pytest.raises(ValueError, match=r"multi_class must be 'ovr' or 'ovo', got 'raise'"):
        RocAuc(multi_class="raise")


def test_sklearn_metrics_without_sklearn_raise_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    with pytest.raises(ImportError, match=r"needs scikit-learn, which is not installed: pip install scikit-learn"):
        F1Score()
    assert isinstance(skm_to_fastai(lambda y_true, y_pred: 0.0), AccumMetric)  # needs only the function


@pytest.fixture
def fake_scipy(monkeypatch):
    """Stand-ins for `scipy.optimize.minimize_scalar` (a grid search) and `scipy.stats`' correlations."""
    seen = {}

    def minimize_scalar(fun, bounds, method, options):
        seen.update(method=method, options=options)
        xs = [bounds[0] + i * (bounds[1] - bounds[0]) / 100 for i in range(101)]
        x = min(xs, key=fun)
        return SimpleNamespace(x=x, fun=fun(x))

    def pearsonr(x, y):
        return float(np.corrcoef(np.asarray(x), np.asarray(y))[0, 1]), 0.0

    def spearmanr(a, b=None, axis=0, nan_policy="propagate"):
        seen.update(axis=axis, nan_policy=nan_policy)
        ranks = [np.argsort(np.argsort(np.asarray(v))) for v in (a, b)]
        return float(np.corrcoef(*ranks)[0, 1]), 0.0

    scipy, optimize, stats = ModuleType("scipy"), ModuleType("scipy.optimize"), ModuleType("scipy.stats")
    optimize.minimize_scalar = minimize_scalar  # type: ignore[attr-defined]
    stats.pearsonr, stats.spearmanr = pearsonr, spearmanr  # type: ignore[attr-defined]
    for name, mod in [("scipy", scipy), ("scipy.optimize", optimize), ("scipy.stats", stats)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return seen


def test_optim_metric_maximizes_over_the_named_argument(fake_scipy):
    def closeness(preds, targs, thresh=0.5):
        return -((thresh - 0.3) ** 2)

    best = optim_metric(closeness, "thresh", bounds=(0.0, 1.0), tol=0.05)
    assert best.__name__ == "opt_closeness"
    assert best(None, None) == pytest.approx(0.0)
    assert fake_scipy == {"method": "bounded", "options": {"xatol": 0.05}}
    fun, x = optim_metric(closeness, "thresh", bounds=(0.0, 1.0), get_x=True)(None, None)
    assert x == pytest.approx(0.3)
    # minimizing instead: the far end of the bounds, -(1 - 0.3)**2
    assert optim_metric(closeness, "thresh", (0.0, 1.0), do_neg=False)(None, None) == pytest.approx(-0.49)


def test_scipy_metrics_without_scipy_raise_a_clear_import_error(monkeypatch):
    for name in ("scipy", "scipy.optimize", "scipy.stats"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"optim_metric needs scipy.*pip install scipy"):
        optim_metric(lambda p, t, x: x, "x", (0, 1))
    with pytest.raises(ImportError, match=r"PearsonCorrCoef needs scipy"):
        PearsonCorrCoef()


def test_pearson_and_spearman_correlations(fake_scipy):
    pred, targ = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 6.0, 9.0])
    pearson = PearsonCorrCoef()
    assert pearson.name == "pearsonr"
    assert _feed(pearson, pred, targ, cuts=[1]) == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 6, 9])[0, 1])
    spearman = SpearmanCorrCoef(nan_policy="omit")
    assert spearman.name == "spearmanr"
    assert _feed(spearman, pred, targ, cuts=[2]) == pytest.approx(1.0)  # same order: rank correlation 1
    assert fake_scipy["nan_policy"] == "omit" and fake_scipy["axis"] == 0


# ---- classification, regression ----

def test_top_k_accuracy_by_hand():
    inp = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    targ = torch.tensor([2, 2, 1])  # top-2 sets: {1, 2} hit, {0, 1} miss, {2, 1} hit
    assert top_k_accuracy(inp, targ, k=2).item() == pytest.approx(2 / 3)
    assert top_k_accuracy(inp, targ, k=1).item() == 0.0
    assert top_k_accuracy(inp, targ, k=3).item() == 1.0
    assert top_k_accuracy(inp.T, targ, k=2, axis=0).item() == pytest.approx(2 / 3)  # a fraction of samples


def test_accuracy_multi_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-2.0, 0.0]])  # sigmoid: [[.5, .88], [.12, .5]]
    targ = torch.tensor([[0, 1], [1, 0]])
    assert accuracy_multi(logits, targ).item() == 0.75  # > .5: [[0, 1], [0, 0]]
    assert accuracy_multi(logits, targ, thresh=0.4).item() == 0.25  # [[1, 1], [0, 1]]
    assert accuracy_multi(logits, targ, thresh=-1.0).item() == 0.5  # sigmoid > -1 everywhere
    assert accuracy_multi(logits, targ, thresh=-1.0, sigmoid=False).item() == 0.25  # raw > -1: [[1, 1], [0, 1]]


def test_regression_functions_by_hand():
    assert mse(torch.tensor([1.0, 2.0]), torch.tensor([[1.0], [4.0]])).item() == 2.0
    assert mae(torch.tensor([1.0, 2.0]), torch.tensor([[1.0], [4.0]])).item() == 1.0
    assert msle(torch.tensor([0.0, math.e - 1]), torch.zeros(2)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="flatten_check"):
        mse(torch.zeros(3), torch.zeros(2))


def test_rmse_and_exp_rmspe_accumulate_and_carry_fastais_names():
    assert rmse.name == "_rmse" and exp_rmspe.name == "_exp_rmspe"
    assert isinstance(rmse, AccumMetric) and isinstance(exp_rmspe, AccumMetric)
    assert _feed(rmse, torch.ones(4), torch.tensor([1.0, 1.0, 1.0, 3.0]), cuts=[3]).item() == pytest.approx(1.0)
    # exp: [1, 2] against [2, 2]: relative errors [1/2, 0], root mean square sqrt(1/8)
    value = _feed(exp_rmspe, torch.tensor([0.0, math.log(2)]), torch.tensor([math.log(2)] * 2), cuts=[1])
    assert value.item() == pytest.approx(math.sqrt(1 / 8))
    assert rmse(torch.tensor([3.0]), torch.tensor([0.0])).item() == pytest.approx(3.0)


# ---- segmentation ----

def _seg_logits(classes, n_classes):
    """(1, n_classes, 1, n_pixels) logits whose argmax over dim 1 is `classes`."""
    return F.one_hot(torch.tensor(classes), n_classes).float().T[None, :, None, :]


def test_foreground_acc_ignores_background_pixels():
    inp = _seg_logits([0, 1, 2, 1], 3)
    targ = torch.tensor([0, 1, 1, 2]).view(1, 1, 1, 4)  # non-background: pixels 1, 2, 3; one hit
    assert foreground_acc(inp, targ).item() == pytest.approx(1 / 3)
    assert foreground_acc(inp, torch.tensor([2, 1, 1, 2]).view(1, 1, 1, 4)).item() == pytest.approx(1 / 4)


def test_dice_and_jaccard_by_hand_over_two_batches():
    pred = torch.cat([_seg_logits([1, 1, 0, 0], 2), _seg_logits([1, 1, 1, 1], 2)])
    targ = torch.tensor([[[1, 0, 1, 0]], [[1, 1, 1, 1]]])
    # batch 1: intersection 1, areas 2 + 2; batch 2: intersection 4, areas 4 + 4
    assert _feed(Dice(), pred[:1], targ[:1]) == pytest.approx(2 * 1 / 4)
    assert _feed(JaccardCoeff(), pred[:1], targ[:1]) == pytest.approx(1 / 3)
    assert _feed(Dice(), pred, targ, cuts=[1]) == pytest.approx(2 * 5 / 12)
    assert _feed(JaccardCoeff(), pred, targ, cuts=[1]) == pytest.approx(5 / 7)
    empty = _feed(Dice(), _seg_logits([0, 0], 2), torch.zeros(1, 1, 2, dtype=torch.long))
    assert empty is None
    assert Dice().name == "dice" and JaccardCoeff().name == "jaccard_coeff"


def test_dice_multi_averages_class_dice_over_present_classes():
    pred = _seg_logits([0, 0, 1, 2], 4)
    targ = torch.tensor([0, 1, 1, 255]).view(1, 1, 4)  # 255: an ignore index, no class
    # class 0: 2*1/(2+1); class 1: 2*1/(1+2); class 2: 0/(1+0); class 3 absent from both: left out
    assert _feed(DiceMulti(), pred, targ) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    same = _feed(DiceMulti(), _seg_logits([0, 0], 3), torch.zeros(1, 1, 2))  # float targets, as in fastai
    assert same == 1.0
    assert _feed(DiceMulti(), _seg_logits([0, 0], 3), torch.ones(1, 1, 2)) == 0.0
    assert DiceMulti().value is None and DiceMulti().name == "dice_multi"


# ---- NLP ----

def _token_logits(ids, vocab_sz=12):
    return F.one_hot(torch.tensor(ids), vocab_sz).float()


def test_corpus_bleu_by_hand():
    targ = torch.tensor([[1, 2, 3, 4, 5, 6, 1, 7, 8]] * 2)
    pred = _token_logits([[1, 9, 3, 4, 5, 6, 1, 10, 8]] * 2)
    # clipped n-gram matches: 7 of 9 unigrams, 4 of 8 bigrams, 3 of 7 trigrams, 2 of 6 4-grams
    expected = (7 / 9 * 4 / 8 * 3 / 7 * 2 / 6) ** 0.25
    assert _feed(CorpusBLEUMetric(), pred, targ) == pytest.approx(expected)
    assert _feed(CorpusBLEUMetric(), pred, targ, cuts=[1]) == pytest.approx(expected)
    assert CorpusBLEUMetric().name == "corpus_bleu"


def test_corpus_bleu_smooths_orders_without_matches():
    # unigrams 4/5, bigrams 2/4, trigrams 1/3, 4-grams 0/2 -> counted as 1/2 a match
    met = CorpusBLEUMetric()
    value = _feed(met, _token_logits([[1, 2, 3, 9, 5]]), torch.tensor([[1, 2, 3, 4, 5]]))
    assert value == pytest.approx((4 / 5 * 2 / 4 * 1 / 3 * 0.5 / 2) ** 0.25)
    assert met.corrects == [4, 2, 1, 0.5] and met.counts == [5, 4, 3, 2]
    assert met.value == pytest.approx(value)  # reading twice counts nothing twice
    assert _feed(CorpusBLEUMetric(), _token_logits([[1, 2, 3]]), torch.tensor([[1, 2, 3]])) == 0.0  # no 4-grams


def test_corpus_bleu_skips_training_batches():
    met = CorpusBLEUMetric()
    met.accumulate(_learn(_token_logits([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 4]]), training=True))
    assert met.value is None


# ---- loss attributes ----

def test_loss_metric_averages_a_loss_function_attribute_by_batch_size():
    met = LossMetric("l1")
    met.reset()
    met.accumulate(_learn(None, torch.zeros(3), loss_func=SimpleNamespace(l1=torch.tensor(2.0))))
    met.accumulate(_learn(None, torch.zeros(1), loss_func=SimpleNamespace(l1=torch.tensor(6.0))))
    assert met.value == pytest.approx((3 * 2.0 + 1 * 6.0) / 4)
    missing = LossMetric("nope", "other")
    missing.accumulate(_learn(None, torch.zeros(2), loss_func=SimpleNamespace()))
    assert missing.value == 0.0 and missing.name == "other" and met.name == "l1"
    assert [m.name for m in LossMetrics("l1,l2")] == ["l1", "l2"]
    assert [(m.attr, m.name) for m in LossMetrics(["a", "b"], "x,y")] == [("a", "x"), ("b", "y")]


class _CombineL1L2(nn.Module):
    def forward(self, out, targ):
        self.l1, self.l2 = F.l1_loss(out, targ), F.mse_loss(out, targ)
        return self.l1 + self.l2


def _valid_preds(learn):
    learn.model.eval()
    with torch.no_grad():
        return [(learn.model(x), y) for x, y in learn.dls.valid]


def test_loss_metrics_report_each_term_of_a_combined_loss_in_a_fit():
    learn = synth_learner(metrics=LossMetrics("l1,l2"))
    learn.loss_func = _CombineL1L2()
    with learn.no_logging():
        learn.fit(1)
    assert learn.recorder.metric_names[2:5] == ["valid_loss", "l1", "l2"]
    _, valid_loss, l1, l2 = learn.recorder.values[-1]
    batches = _valid_preds(learn)
    n = sum(len(y) for _, y in batches)
    assert l1 == pytest.approx(sum(F.l1_loss(p, y).item() * len(y) for p, y in batches) / n, rel=1e-5)
    assert l2 == pytest.approx(sum(F.mse_loss(p, y).item() * len(y) for p, y in batches) / n, rel=1e-5)
    assert valid_loss == pytest.approx(l1 + l2, rel=1e-5)


def test_rmse_in_a_learner_fit_is_the_whole_validation_set_rmse():
    learn = synth_learner(metrics=[rmse, mse])
    with learn.no_logging():
        learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "valid_loss", "_rmse", "mse", "time"]
    _, _, value, mse_value = learn.recorder.values[-1]
    batches = _valid_preds(learn)
    preds, targs = torch.cat([p for p, _ in batches]), torch.cat([y for _, y in batches])
    whole = torch.sqrt(F.mse_loss(preds, targs)).item()
    assert value == pytest.approx(whole, rel=1e-5)
    assert value == pytest.approx(math.sqrt(mse_value), rel=1e-5)
    per_batch = sum(torch.sqrt(F.mse_loss(p, y)).item() * len(y) for p, y in batches) / len(targs)
    assert abs(per_batch - whole) > 1e-3 * whole  # the check above tells the two apart


def test_mk_metric_keeps_metric_objects_and_builds_classes():
    assert mk_metric(rmse) is rmse
    assert isinstance(mk_metric(Dice), Dice) and isinstance(mk_metric(CorpusBLEUMetric), CorpusBLEUMetric)
    wrapped = mk_metric(mse)
    assert isinstance(wrapped, AvgMetric) and wrapped.name == "mse"


def test_every_new_name_is_exported_through_rnnkit_all():
    import rnnkit.all as rnnkit_all

    new = ["flatten_check", "ActivationType", "AccumMetric", "skm_to_fastai", "optim_metric", "accuracy_multi",
           "APScoreMulti", "top_k_accuracy", "mse", "rmse", "mae", "msle", "exp_rmspe", "LossMetric", "LossMetrics",
           "CorpusBLEUMetric", "Dice", "DiceMulti", "JaccardCoeff", "foreground_acc", "R2Score", "PearsonCorrCoef"]
    for name in new:
        assert name in metrics_module.__all__, name
        assert getattr(rnnkit_all, name) is getattr(metrics_module, name), name
    assert all(hasattr(metrics_module, name) for name in metrics_module.__all__)


# ---- no host sync while accumulating ----

@contextmanager
def _no_host_sync(monkeypatch):
    """Make the Tensor methods that copy a value to the host raise."""
    def sync(*args, **kwargs):
        raise AssertionError("a metric synced the device inside accumulate")

    with monkeypatch.context() as m:
        for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, attr, sync)
        yield


def _accumulate_cases(device):
    """(metric, pred, targ) for each metric that accumulates on the device; the inputs are on `device`."""
    g = torch.Generator().manual_seed(0)
    reg, seg = torch.randn(4, 3, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    seg_targ = torch.randint(0, 3, (4, 2, 2), generator=g)
    tokens, token_targ = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    cases = [
        (AccumMetric(_l2), reg, torch.randn(4, 3)), (AccumMetric(_l2, dim_argmax=-1), reg, torch.zeros(4)),
        (AccumMetric(_l2, activation="sigmoid", thresh=0.5), reg, torch.zeros(4, 3)),
        (AvgMetric(mse), reg, torch.randn(4, 3)), (Dice(), seg[:, :2], seg_targ.clamp(max=1)),
        (JaccardCoeff(), seg[:, :2], seg_targ.clamp(max=1)), (DiceMulti(), seg, seg_targ),
        (CorpusBLEUMetric(), tokens, token_targ),
    ]
    return [(met, pred.to(device), targ.to(device)) for met, pred, targ in cases]


def _accumulate_twice(cases, loss_metric, loss_func):
    for met, pred, targ in cases:
        met.accumulate(_learn(pred, targ))
        met.accumulate(_learn(pred, targ))
    loss_metric.accumulate(_learn(cases[0][1], cases[0][2], loss_func=loss_func))


def test_accumulate_never_copies_values_to_the_host(monkeypatch):
    cases, loss_metric = _accumulate_cases("cpu"), LossMetric("l1")
    loss_func = SimpleNamespace(l1=torch.tensor(1.5))
    with _no_host_sync(monkeypatch):
        _accumulate_twice(cases, loss_metric, loss_func)
    for met, _, _ in cases:
        assert met.value is not None, met
    assert loss_metric.value == 1.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accumulate_on_cuda_never_synchronizes():
    cases, loss_metric = _accumulate_cases("cuda"), LossMetric("l1")
    loss_func = SimpleNamespace(l1=torch.tensor(1.5, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronization raises
    try:
        _accumulate_twice(cases, loss_metric, loss_func)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_cases, cpu_loss_metric = _accumulate_cases("cpu"), LossMetric("l1")
    _accumulate_twice(cpu_cases, cpu_loss_metric, SimpleNamespace(l1=torch.tensor(1.5)))
    for (met, _, _), (cpu_met, _, _) in zip(cases, cpu_cases):
        assert float(met.value) == pytest.approx(float(cpu_met.value), rel=1e-5), met
    assert loss_metric.value == cpu_loss_metric.value == 1.5


# ---- property: accumulating any batch split gives the whole-set value ----

@settings(deadline=None, max_examples=40)
@given(n=st.integers(1, 20), cuts=st.sets(st.integers(1, 19), max_size=4), seed=st.integers(0, 2**16))
def test_accumulated_metrics_equal_the_whole_set_value_for_any_batch_split(n, cuts, seed):
    g = torch.Generator().manual_seed(seed)
    pred, reg_targ = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    cls_targ = torch.randint(0, 3, (n,), generator=g)
    seg, seg_targ = torch.randn(n, 3, 2, generator=g), torch.randint(0, 3, (n, 2), generator=g)
    split = sorted(c for c in cuts if c < n)
    checks = [
        (AvgMetric(accuracy), pred, cls_targ, accuracy(pred, cls_targ).item()),
        (AvgMetric(mse), pred, reg_targ, mse(pred, reg_targ).item()),
        (AccumMetric(_l2), pred, reg_targ, _l2(pred, reg_targ).item()),
        (AccumMetric(_l2, dim_argmax=-1), pred, cls_targ, _l2(pred.argmax(-1), cls_targ).item()),
        (DiceMulti(), seg, seg_targ, _feed(DiceMulti(), seg, seg_targ)),
        (Dice(), seg[:, :2], seg_targ.clamp(max=1), _feed(Dice(), seg[:, :2], seg_targ.clamp(max=1))),
    ]
    for met, p, t, whole in checks:
        value = _feed(met, p, t, cuts=split)
        value = value.item() if isinstance(value, torch.Tensor) else value
        if whole is None or (isinstance(whole, float) and math.isnan(whole)):
            assert value is None or math.isnan(value), met
        else:
            assert value == pytest.approx(whole, rel=1e-5, abs=1e-6), met
