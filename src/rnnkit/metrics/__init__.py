"""Metrics with fastai's API: `reset`, `accumulate(learn)`, `value`, `name`.

The package re-exports every metric, so `from rnnkit.metrics import accuracy` works as before the
split; each name is defined in exactly one of its modules:

- `core`: `Metric` and the averages the Recorder uses, `accuracy`, `error_rate`, `perplexity`.
- `accum`: `AccumMetric` (metrics on the whole epoch's predictions), `flatten_check`, and the
  classification and regression metrics (`top_k_accuracy`, `accuracy_multi`, `mse`, `rmse` ...).
- `segmentation`: `foreground_acc`, `Dice`, `JaccardCoeff`, `DiceMulti`.
- `text`: `CorpusBLEUMetric`.
- `loss`: `LossMetric`, `LossMetrics` (attributes of the loss function).
- `external`: `skm_to_fastai`, `optim_metric` and the scikit-learn / SciPy metrics, which import
  those packages only when built.
"""
from rnnkit.metrics.accum import (
    AccumMetric, ActivationType, accuracy_multi, exp_rmspe, flatten_check, mae, mse, msle, rmse, top_k_accuracy,
)
from rnnkit.metrics.core import (
    AvgLoss, AvgMetric, AvgSmoothLoss, Metric, Perplexity, ValueMetric, accuracy, error_rate, mk_metric, perplexity,
)
from rnnkit.metrics.external import (
    APScoreBinary, APScoreMulti, BalancedAccuracy, BrierScore, BrierScoreMulti, CohenKappa, ExplainedVariance,
    F1Score, F1ScoreMulti, FBeta, FBetaMulti, HammingLoss, HammingLossMulti, Jaccard, JaccardMulti,
    MatthewsCorrCoef, MatthewsCorrCoefMulti, PearsonCorrCoef, Precision, PrecisionMulti, R2Score, Recall,
    RecallMulti, RocAuc, RocAucBinary, RocAucMulti, SpearmanCorrCoef, optim_metric, skm_to_fastai,
)
from rnnkit.metrics.loss import LossMetric, LossMetrics
from rnnkit.metrics.segmentation import Dice, DiceMulti, JaccardCoeff, foreground_acc
from rnnkit.metrics.text import CorpusBLEUMetric

__all__ = [
    "Metric", "AvgMetric", "AvgLoss", "AvgSmoothLoss", "ValueMetric", "Perplexity",
    "accuracy", "error_rate", "perplexity", "mk_metric",
    "flatten_check", "ActivationType", "AccumMetric", "skm_to_fastai", "optim_metric",
    "top_k_accuracy", "accuracy_multi", "mse", "rmse", "mae", "msle", "exp_rmspe", "foreground_acc",
    "Dice", "DiceMulti", "JaccardCoeff", "CorpusBLEUMetric", "LossMetric", "LossMetrics",
    "APScoreBinary", "BalancedAccuracy", "BrierScore", "CohenKappa", "F1Score", "FBeta", "HammingLoss",
    "Jaccard", "Precision", "Recall", "RocAuc", "RocAucBinary", "MatthewsCorrCoef",
    "APScoreMulti", "BrierScoreMulti", "F1ScoreMulti", "FBetaMulti", "HammingLossMulti", "JaccardMulti",
    "MatthewsCorrCoefMulti", "PrecisionMulti", "RecallMulti", "RocAucMulti",
    "ExplainedVariance", "R2Score", "PearsonCorrCoef", "SpearmanCorrCoef",
]
