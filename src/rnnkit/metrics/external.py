"""Metrics computed by scikit-learn or SciPy (fastai's names), `skm_to_fastai` and `optim_metric`.

The packages are imported only when such a metric is built, with a message saying how to install
them if missing, so rnnkit itself does not depend on them.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Callable

from rnnkit.metrics.accum import AccumMetric, ActivationType
from rnnkit.metrics.core import func_name

__all__ = [
    "skm_to_fastai", "optim_metric",
    "APScoreBinary", "BalancedAccuracy", "BrierScore", "CohenKappa", "F1Score", "FBeta", "HammingLoss",
    "Jaccard", "Precision", "Recall", "RocAuc", "RocAucBinary", "MatthewsCorrCoef",
    "APScoreMulti", "BrierScoreMulti", "F1ScoreMulti", "FBetaMulti", "HammingLossMulti", "JaccardMulti",
    "MatthewsCorrCoefMulti", "PrecisionMulti", "RecallMulti", "RocAucMulti",
    "ExplainedVariance", "R2Score", "PearsonCorrCoef", "SpearmanCorrCoef",
]


def skm_to_fastai(func: Callable[..., Any], is_class: bool = True, thresh: float | None = None, axis: int = -1,
                  activation: str | None = None, **kwargs: Any) -> AccumMetric:
    """An `AccumMetric` calling the scikit-learn style `func(y_true, y_pred, **kwargs)` on numpy arrays.

    Classification (`is_class`): without `thresh`, the argmax over `axis` is compared with the
    targets; with `thresh` (multi-label), a sigmoid (unless `activation` says otherwise) then
    `>= thresh`. Regression (`is_class=False`): the raw predictions.
    """
    dim_argmax = axis if is_class and thresh is None else None
    if activation is None:
        activation = ActivationType.Sigmoid if is_class and thresh is not None else ActivationType.No
    return AccumMetric(func, dim_argmax=dim_argmax, activation=activation, thresh=thresh, to_np=True,
                       invert_arg=True, **kwargs)


def _require(module: str, what: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs {package}, which is not installed: pip install {package}") from e


def optim_metric(f: Callable[..., Any], argname: str, bounds: tuple[float, float], tol: float = 0.01,
                 do_neg: bool = True, get_x: bool = False) -> Callable[[Any, Any], Any]:
    """`f` at the value of its argument `argname`, within `bounds`, that maximizes it (minimizes if not `do_neg`).

    Uses SciPy's bounded scalar minimizer with tolerance `tol`; with `get_x` the result is `(best, x)`.
    """
    optimize = _require("scipy.optimize", "optim_metric", "scipy")

    def _f(preds: Any, targs: Any) -> Any:
        def minfunc(x: float) -> Any:
            res = f(preds, targs, **{argname: x})
            return -res if do_neg else res

        optres = optimize.minimize_scalar(minfunc, bounds=bounds, method="bounded", options={"xatol": tol})
        fun = -optres.fun if do_neg else optres.fun
        return (fun, optres.x) if get_x else fun

    _f.__name__ = f"opt_{func_name(f)}"
    return _f


# ---- scikit-learn and SciPy metrics ----

def _skm() -> Any:
    return _require("sklearn.metrics", "This metric", "scikit-learn")


def _sigmoid_or_no(sigmoid: bool) -> str:
    return ActivationType.Sigmoid if sigmoid else ActivationType.No


def APScoreBinary(axis: int = -1, average: str = "macro", pos_label: int = 1, sample_weight: Any = None) -> AccumMetric:
    """Average precision for single-label binary classification (`average_precision_score`)."""
    return skm_to_fastai(_skm().average_precision_score, axis=axis, activation=ActivationType.BinarySoftmax,
                         average=average, pos_label=pos_label, sample_weight=sample_weight)


def BalancedAccuracy(axis: int = -1, sample_weight: Any = None, adjusted: bool = False) -> AccumMetric:
    """Balanced accuracy for single-label classification (`balanced_accuracy_score`)."""
    return skm_to_fastai(_skm().balanced_accuracy_score, axis=axis, sample_weight=sample_weight, adjusted=adjusted)


def BrierScore(axis: int = -1, sample_weight: Any = None, pos_label: Any = None) -> AccumMetric:
    """Brier score for single-label classification (`brier_score_loss`)."""
    return skm_to_fastai(_skm().brier_score_loss, axis=axis, sample_weight=sample_weight, pos_label=pos_label)


def CohenKappa(axis: int = -1, labels: Any = None, weights: str | None = None,
               sample_weight: Any = None) -> AccumMetric:
    """Cohen's kappa for single-label classification (`cohen_kappa_score`)."""
    return skm_to_fastai(_skm().cohen_kappa_score, axis=axis, labels=labels, weights=weights,
                         sample_weight=sample_weight)


def F1Score(axis: int = -1, labels: Any = None, pos_label: int = 1, average: str = "binary",
            sample_weight: Any = None) -> AccumMetric:
    """F1 score for single-label classification (`f1_score`)."""
    return skm_to_fastai(_skm().f1_score, axis=axis, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)


def FBeta(beta: float, axis: int = -1, labels: Any = None, pos_label: int = 1, average: str = "binary",
          sample_weight: Any = None) -> AccumMetric:
    """F-beta score for single-label classification (`fbeta_score`)."""
    return skm_to_fastai(_skm().fbeta_score, axis=axis, beta=beta, labels=labels, pos_label=pos_label,
                         average=average, sample_weight=sample_weight)


def HammingLoss(axis: int = -1, sample_weight: Any = None) -> AccumMetric:
    """Hamming loss for single-label classification (`hamming_loss`)."""
    return skm_to_fastai(_skm().hamming_loss, axis=axis, sample_weight=sample_weight)


def Jaccard(axis: int = -1, labels: Any = None, pos_label: int = 1, average: str = "binary",
            sample_weight: Any = None) -> AccumMetric:
    """Jaccard score for single-label classification (`jaccard_score`)."""
    return skm_to_fastai(_skm().jaccard_score, axis=axis, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)


def Precision(axis: int = -1, labels: Any = None, pos_label: int = 1, average: str = "binary",
              sample_weight: Any = None) -> AccumMetric:
    """Precision for single-label classification (`precision_score`)."""
    return skm_to_fastai(_skm().precision_score, axis=axis, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)


def Recall(axis: int = -1, labels: Any = None, pos_label: int = 1, average: str = "binary",
           sample_weight: Any = None) -> AccumMetric:
    """Recall for single-label classification (`recall_score`)."""
    return skm_to_fastai(_skm().recall_score, axis=axis, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)


def RocAuc(axis: int = -1, average: str = "macro", sample_weight: Any = None, max_fpr: float | None = None,
           multi_class: str = "ovr") -> AccumMetric:
    """ROC AUC for single-label multi-class classification, on softmax probabilities (`roc_auc_score`)."""
    if multi_class not in ("ovr", "ovo"):
        raise ValueError(f"RocAuc: multi_class must be 'ovr' or 'ovo', got {multi_class!r}; "
                         "for two classes use RocAucBinary.")
    return skm_to_fastai(_skm().roc_auc_score, axis=axis, activation=ActivationType.Softmax, flatten=False,
                         average=average, sample_weight=sample_weight, max_fpr=max_fpr, multi_class=multi_class)


def RocAucBinary(axis: int = -1, average: str = "macro", sample_weight: Any = None, max_fpr: float | None = None,
                 multi_class: str = "raise") -> AccumMetric:
    """ROC AUC for single-label binary classification, on the positive class's probability (`roc_auc_score`)."""
    return skm_to_fastai(_skm().roc_auc_score, axis=axis, activation=ActivationType.BinarySoftmax,
                         average=average, sample_weight=sample_weight, max_fpr=max_fpr, multi_class=multi_class)


def MatthewsCorrCoef(sample_weight: Any = None, **kwargs: Any) -> AccumMetric:
    """Matthews correlation coefficient for single-label classification (`matthews_corrcoef`)."""
    return skm_to_fastai(_skm().matthews_corrcoef, sample_weight=sample_weight, **kwargs)


def APScoreMulti(sigmoid: bool = True, average: str = "macro", pos_label: int = 1,
                 sample_weight: Any = None) -> AccumMetric:
    """Average precision for multi-label classification (`average_precision_score`)."""
    return skm_to_fastai(_skm().average_precision_score, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         average=average, pos_label=pos_label, sample_weight=sample_weight)


def BrierScoreMulti(thresh: float = 0.5, sigmoid: bool = True, sample_weight: Any = None,
                    pos_label: Any = None) -> AccumMetric:
    """Brier score for multi-label classification (`brier_score_loss`)."""
    return skm_to_fastai(_skm().brier_score_loss, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         sample_weight=sample_weight, pos_label=pos_label)


def F1ScoreMulti(thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, pos_label: int = 1,
                 average: str = "macro", sample_weight: Any = None) -> AccumMetric:
    """F1 score for multi-label classification (`f1_score`)."""
    return skm_to_fastai(_skm().f1_score, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)


def FBetaMulti(beta: float, thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, pos_label: int = 1,
               average: str = "macro", sample_weight: Any = None) -> AccumMetric:
    """F-beta score for multi-label classification (`fbeta_score`)."""
    return skm_to_fastai(_skm().fbeta_score, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         beta=beta, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)


def HammingLossMulti(thresh: float = 0.5, sigmoid: bool = True, labels: Any = None,
                     sample_weight: Any = None) -> AccumMetric:
    """Hamming loss for multi-label classification (`hamming_loss`; `labels` is unused, as in fastai)."""
    return skm_to_fastai(_skm().hamming_loss, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         sample_weight=sample_weight)


def JaccardMulti(thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, pos_label: int = 1,
                 average: str = "macro", sample_weight: Any = None) -> AccumMetric:
    """Jaccard score for multi-label classification (`jaccard_score`)."""
    return skm_to_fastai(_skm().jaccard_score, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)


def MatthewsCorrCoefMulti(thresh: float = 0.5, sigmoid: bool = True, sample_weight: Any = None) -> AccumMetric:
    """Matthews correlation coefficient for multi-label classification (`matthews_corrcoef`)."""
    return skm_to_fastai(_skm().matthews_corrcoef, thresh=thresh, activation=_sigmoid_or_no(sigmoid),
                         flatten=False, sample_weight=sample_weight)


def PrecisionMulti(thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, pos_label: int = 1,
                   average: str = "macro", sample_weight: Any = None) -> AccumMetric:
    """Precision for multi-label classification (`precision_score`)."""
    return skm_to_fastai(_skm().precision_score, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)


def RecallMulti(thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, pos_label: int = 1,
                average: str = "macro", sample_weight: Any = None) -> AccumMetric:
    """Recall for multi-label classification (`recall_score`)."""
    return skm_to_fastai(_skm().recall_score, thresh=thresh, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight)


def RocAucMulti(sigmoid: bool = True, average: str = "macro", sample_weight: Any = None,
                max_fpr: float | None = None) -> AccumMetric:
    """ROC AUC for multi-label classification (`roc_auc_score`)."""
    return skm_to_fastai(_skm().roc_auc_score, activation=_sigmoid_or_no(sigmoid), flatten=False,
                         average=average, sample_weight=sample_weight, max_fpr=max_fpr)


def ExplainedVariance(sample_weight: Any = None) -> AccumMetric:
    """Explained variance for regression (`explained_variance_score`)."""
    return skm_to_fastai(_skm().explained_variance_score, is_class=False, sample_weight=sample_weight)


def R2Score(sample_weight: Any = None) -> AccumMetric:
    """Coefficient of determination R² for regression (`r2_score`)."""
    return skm_to_fastai(_skm().r2_score, is_class=False, sample_weight=sample_weight)


def PearsonCorrCoef(dim_argmax: int | None = None, **kwargs: Any) -> AccumMetric:
    """Pearson correlation of predictions and targets (SciPy's `pearsonr`); `kwargs` go to `AccumMetric`."""
    stats = _require("scipy.stats", "PearsonCorrCoef", "scipy")

    def pearsonr(x: Any, y: Any) -> Any:
        return stats.pearsonr(x, y)[0]

    return AccumMetric(pearsonr, invert_arg=False, dim_argmax=dim_argmax, **kwargs)


def SpearmanCorrCoef(dim_argmax: int | None = None, axis: int = 0, nan_policy: str = "propagate",
                     **kwargs: Any) -> AccumMetric:
    """Spearman rank correlation of predictions and targets (SciPy's `spearmanr`); `kwargs` go to `AccumMetric`."""
    stats = _require("scipy.stats", "SpearmanCorrCoef", "scipy")

    def spearmanr(a: Any, b: Any = None, **kw: Any) -> Any:
        return stats.spearmanr(a, b, **kw)[0]

    return AccumMetric(functools.partial(spearmanr, axis=axis, nan_policy=nan_policy), invert_arg=False,
                       dim_argmax=dim_argmax, **kwargs)
