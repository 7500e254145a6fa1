"""Metrics with fastai's API: `reset`, `accumulate(learn)`, `value`, `name`.

`accumulate` runs every batch and keeps its running totals (or, for `AccumMetric`, the batches
themselves) as tensors on the model's device, so no batch forces a device sync; `value` converts
to a Python number once, when it is read. Averages are weighted by batch size, so uneven last
batches are counted exactly.

Sections: core metrics; `AccumMetric` and scikit-learn adapters; classification; regression;
segmentation; NLP (corpus BLEU, perplexity); loss attributes (`LossMetric`). The scikit-learn and
SciPy based metrics import those packages only when built, and say how to install them if missing.
"""
from __future__ import annotations

import functools
import importlib
import math
import re
from collections import Counter
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _camel2snake(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)  # 'RNNMetric' -> 'RNN_Metric'
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _func_name(func: Callable) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def _find_bs(b: Any) -> int | None:
    """Size of the first dimension of the first tensor in a (nested) batch."""
    if isinstance(b, Tensor):
        return b.shape[0] if b.ndim else 1
    items = b.values() if isinstance(b, dict) else b if isinstance(b, (list, tuple)) else ()
    for item in items:
        bs = _find_bs(item)
        if bs is not None:
            return bs
    return None


def _batch_size(learn: Any) -> int:
    bs = _find_bs(getattr(learn, "yb", ()))
    if bs is None:  # no targets (e.g. a self-supervised loss): count the inputs instead
        bs = _find_bs(getattr(learn, "xb", ()))
    if bs is None:
        raise ValueError("Cannot find the batch size: learn.yb and learn.xb hold no tensor.")
    return bs


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        x = x.detach()
        return x if x.is_floating_point() else x.float()
    return x


def _to_float(x: Any) -> float:
    return x.item() if isinstance(x, Tensor) else float(x)


class Metric:
    """Base class: subclasses override `reset`, `accumulate` and the `value` property."""

    def reset(self) -> None:
        """Clear the state before an epoch."""

    def accumulate(self, learn: Any) -> None:
        """Update the state from `learn.pred`, `learn.yb`, `learn.loss` after a batch."""

    @property
    def value(self) -> Any:
        """The metric for everything accumulated since `reset`."""
        raise NotImplementedError(f"{type(self).__name__} must define the `value` property.")

    @property
    def name(self) -> str:
        """Column name: the class name in snake case, without a trailing 'Metric'."""
        cls = type(self).__name__
        return _camel2snake(re.sub(r"Metric$", "", cls) or cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class AvgMetric(Metric):
    """Batch-size-weighted average of `func(pred, *yb)` over the epoch."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.reset()

    def reset(self) -> None:
        """Zero the running total and count."""
        self.total, self.count = 0.0, 0

    def accumulate(self, learn: Any) -> None:
        """Add this batch's metric, weighted by its batch size."""
        bs = _batch_size(learn)
        self.total += _detach(self.func(learn.pred, *learn.yb)) * bs
        self.count += bs

    @property
    def value(self) -> float | None:
        """Weighted average as a float, or None before any batch."""
        return _to_float(self.total / self.count) if self.count else None

    @property
    def name(self) -> str:
        """The function's name."""
        return _func_name(self.func)


class AvgLoss(Metric):
    """Batch-size-weighted average of `learn.loss` over the epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero the running total and count."""
        self.total, self.count = 0.0, 0

    def accumulate(self, learn: Any) -> None:
        """Add this batch's mean loss, weighted by its batch size."""
        bs = _batch_size(learn)
        self.total += _detach(learn.loss).mean() * bs
        self.count += bs

    @property
    def value(self) -> float | None:
        """Weighted mean loss as a float, or None before any batch."""
        return _to_float(self.total / self.count) if self.count else None

    @property
    def name(self) -> str:
        """'loss'."""
        return "loss"


class AvgSmoothLoss(Metric):
    """Exponential moving average of the loss, debiased as in Adam.

    `value` is read every batch by the Recorder, so it stays a 0-d tensor (no device sync).
    """

    def __init__(self, beta: float = 0.98) -> None:
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        """Restart the average."""
        self.count, self.val = 0, torch.tensor(0.0)

    def accumulate(self, learn: Any) -> None:
        """Fold this batch's mean loss into the average."""
        loss = _detach(learn.loss).mean()
        if self.val.device != loss.device or self.val.dtype != loss.dtype:
            self.val = self.val.to(loss)
        self.count += 1
        self.val = torch.lerp(loss, self.val, self.beta)  # beta*val + (1-beta)*loss

    @property
    def value(self) -> Tensor | None:
        """Debiased average `val / (1 - beta**count)` as a 0-d tensor, or None before any batch."""
        return self.val / (1 - self.beta**self.count) if self.count else None


class ValueMetric(Metric):
    """A metric whose value is `func()`, computed elsewhere (e.g. by a callback)."""

    def __init__(self, func: Callable[[], Any], metric_name: str | None = None) -> None:
        self.func, self.metric_name = func, metric_name

    @property
    def value(self) -> Any:
        """Whatever `func()` returns now."""
        return self.func()

    @property
    def name(self) -> str:
        """`metric_name` if given, else the function's name."""
        return self.metric_name or _func_name(self.func)


class Perplexity(AvgLoss):
    """exp of the batch-size-weighted average loss: the usual language-model metric."""

    @property
    def value(self) -> float | None:
        """exp(mean loss) as a float, or None before any batch."""
        if not self.count:
            return None
        try:
            return math.exp(_to_float(self.total / self.count))
        except OverflowError:  # a diverged model: report inf rather than crash the epoch
            return math.inf

    @property
    def name(self) -> str:
        """'perplexity'."""
        return "perplexity"


perplexity = Perplexity()


def accuracy(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """Fraction of argmax predictions equal to the targets, as a 0-d tensor.

    Works for `(bs, n_class)` vs `(bs,)` and language-model `(bs, seq_len, vocab_sz)` vs
    `(bs, seq_len)`: both sides are flattened after the argmax.
    """
    pred = inp.argmax(dim=axis)
    if pred.numel() != targ.numel():
        raise ValueError(
            f"accuracy: predictions of shape {tuple(inp.shape)} (argmax over axis {axis}) give "
            f"{pred.numel()} values but the targets of shape {tuple(targ.shape)} have "
            f"{targ.numel()}; expected the same number."
        )
    return (pred.reshape(-1) == targ.reshape(-1)).float().mean()


def error_rate(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """1 - accuracy."""
    return 1 - accuracy(inp, targ, axis=axis)


def mk_metric(m: Any) -> Metric:
    """A Metric from a Metric instance (unchanged), a Metric class, or a function (AvgMetric)."""
    if isinstance(m, type):
        m = m()
    return m if isinstance(m, Metric) else AvgMetric(m)


# ---- AccumMetric: metrics computed once on all the predictions of the epoch ----

def flatten_check(inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
    """`inp` and `targ` flattened to 1-d, after checking they hold the same number of elements."""
    if inp.numel() != targ.numel():
        raise ValueError(
            f"flatten_check: the predictions of shape {tuple(inp.shape)} have {inp.numel()} elements but the "
            f"targets of shape {tuple(targ.shape)} have {targ.numel()}; expected the same number."
        )
    return inp.reshape(-1), targ.reshape(-1)


class ActivationType:
    """The activations `AccumMetric` can apply to the predictions (plain strings, as in fastai)."""

    No = "no"
    Sigmoid = "sigmoid"
    Softmax = "softmax"
    BinarySoftmax = "binarysoftmax"


_ACTIVATIONS = (ActivationType.No, ActivationType.Sigmoid, ActivationType.Softmax, ActivationType.BinarySoftmax)


def _target(learn: Any) -> Any:
    """`learn.y`: the single target, or the tuple of targets."""
    yb = learn.yb
    return yb[0] if len(yb) == 1 else yb


def _detached(x: Any) -> Any:
    """`x` detached from autograd and left on its device (fastai moves it to the CPU: a sync per batch)."""
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(o) for o in x)
    return x.detach() if isinstance(x, Tensor) else x


def _to_numpy(t: Tensor) -> Any:
    if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16; sklearn wants float32/64 anyway
        t = t.float()
    return t.cpu().numpy()


class AccumMetric(Metric):
    """Keep every batch's predictions and targets, then compute `func(preds, targs)` on all of them at once.

    For metrics that are not averages over batches (RMSE, ROC AUC ...). Each batch's `learn.pred`
    goes through `activation` (softmax along `dim_argmax`, or -1), or else an argmax over
    `dim_argmax`, then `>= thresh` when `thresh` is given. The batches stay on their device
    until `value` is read.

    Args:
        to_np: hand numpy arrays (on the CPU) to `func`, as scikit-learn needs.
        invert_arg: call `func(targs, preds)`, scikit-learn's order.
        flatten: flatten predictions and targets (checking they have the same size).
        name: the column name; by default the function's name.
        **kwargs: passed on to `func`.
    """

    def __init__(self, func: Callable[..., Any], dim_argmax: int | None = None,
                 activation: str | None = ActivationType.No, thresh: float | None = None, to_np: bool = False,
                 invert_arg: bool = False, flatten: bool = True, name: str | None = None, **kwargs: Any) -> None:
        activation = ActivationType.No if activation is None else activation
        if activation not in _ACTIVATIONS:
            raise ValueError(f"AccumMetric: unknown activation {activation!r}; use one of ActivationType.No, "
                             f".Sigmoid, .Softmax or .BinarySoftmax ({', '.join(map(repr, _ACTIVATIONS))}).")
        self.func, self.dim_argmax, self.activation, self.thresh = func, dim_argmax, activation, thresh
        self.to_np, self.invert_args, self.flatten, self.kwargs = to_np, invert_arg, flatten, kwargs
        self._name = _func_name(func) if name is None else name
        self.reset()

    def reset(self) -> None:
        """Forget the stored predictions and targets."""
        self.preds: list[Tensor] = []
        self.targs: list[Tensor] = []

    def accumulate(self, learn: Any) -> None:
        """Store this batch's predictions, after the activation, argmax and threshold, and its targets."""
        pred = learn.pred
        if self.activation in (ActivationType.Softmax, ActivationType.BinarySoftmax):
            pred = F.softmax(pred, dim=-1 if self.dim_argmax is None else self.dim_argmax)
            if self.activation == ActivationType.BinarySoftmax:
                pred = pred[:, -1]  # the probability of the positive class
        elif self.activation == ActivationType.Sigmoid:
            pred = torch.sigmoid(pred)
        elif self.dim_argmax is not None:  # fastai's truth test would ignore dim_argmax=0 (and thresh=0)
            pred = pred.argmax(dim=self.dim_argmax)
        if self.thresh is not None:
            pred = pred >= self.thresh
        self.accum_values(pred, _target(learn), learn)

    def accum_values(self, preds: Tensor, targs: Tensor, learn: Any = None) -> None:
        """Store `preds` and `targs` as they are (detached, flattened if `flatten`); `learn` is unused."""
        preds, targs = _detached(preds), _detached(targs)
        if self.flatten:
            preds, targs = flatten_check(preds, targs)
        self.preds.append(preds)
        self.targs.append(targs)

    def __call__(self, preds: Tensor, targs: Tensor) -> Any:
        """The metric on one batch (no activation or argmax applied), forgetting what was stored."""
        self.reset()
        self.accum_values(preds, targs)
        return self.value

    @property
    def value(self) -> Any:
        """`func` on everything stored since `reset`, or None before any batch."""
        if not self.preds:
            return None
        preds, targs = torch.cat(self.preds), torch.cat(self.targs)
        if self.to_np:
            preds, targs = _to_numpy(preds), _to_numpy(targs)
        args = (targs, preds) if self.invert_args else (preds, targs)
        return self.func(*args, **self.kwargs)

    @property
    def name(self) -> str:
        """`name` if given, else the function's name."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value


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

    _f.__name__ = f"opt_{_func_name(f)}"
    return _f


# ---- classification ----

def top_k_accuracy(inp: Tensor, targ: Tensor, k: int = 5, axis: int = -1) -> Tensor:
    """Fraction of targets found among the `k` highest predictions along `axis`."""
    top = inp.topk(k=k, dim=axis)[1]
    hits = top == targ.unsqueeze(dim=axis).expand_as(top)
    return hits.sum(dim=axis).float().mean()


def accuracy_multi(inp: Tensor, targ: Tensor, thresh: float = 0.5, sigmoid: bool = True) -> Tensor:
    """Multi-label accuracy: the fraction of (sigmoid of) `inp > thresh` equal to the 0/1 targets."""
    inp, targ = flatten_check(inp, targ)
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).float().mean()


# ---- regression ----

def mse(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared error."""
    return F.mse_loss(*flatten_check(inp, targ))


def _rmse(inp: Tensor, targ: Tensor) -> Tensor:
    return torch.sqrt(F.mse_loss(inp, targ))


# An AccumMetric so that the square root is taken of the mean over the whole set, not per batch.
# Its name is the function's, '_rmse', as in fastai (the column and the `monitor=` name).
rmse = AccumMetric(_rmse)
rmse.__doc__ = "Root mean squared error over the whole validation set."


def mae(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean absolute error."""
    inp, targ = flatten_check(inp, targ)
    return torch.abs(inp - targ).mean()


def msle(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared logarithmic error: the MSE of `log(1 + x)`."""
    inp, targ = flatten_check(inp, targ)
    return F.mse_loss(torch.log(1 + inp), torch.log(1 + targ))


def _exp_rmspe(inp: Tensor, targ: Tensor) -> Tensor:
    inp, targ = torch.exp(inp), torch.exp(targ)
    return torch.sqrt(((targ - inp) / targ).pow(2).mean())


exp_rmspe = AccumMetric(_exp_rmspe)  # name '_exp_rmspe', as in fastai
exp_rmspe.__doc__ = "Root mean squared percentage error of exp(predictions) against exp(targets)."


# ---- segmentation ----

def foreground_acc(inp: Tensor, targ: Tensor, bkg_idx: int = 0, axis: int = 1) -> Tensor:
    """Accuracy over the pixels whose target is not the background class `bkg_idx`."""
    targ = targ.squeeze(1)
    mask = targ != bkg_idx
    hits = (inp.argmax(dim=axis) == targ) & mask
    return hits.sum().float() / mask.sum()  # a ratio of sums, not a boolean index: no device sync


class Dice(Metric):
    """Dice coefficient `2|P∩T| / (|P|+|T|)` of the argmax predictions and a binary target mask."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.reset()

    def reset(self) -> None:
        """Zero the intersection and union totals."""
        self.inter: Any = 0
        self.union: Any = 0

    def accumulate(self, learn: Any) -> None:
        """Add this batch's intersection and summed areas."""
        pred, targ = flatten_check(learn.pred.detach().argmax(dim=self.axis), _target(learn))
        self.inter = self.inter + (pred * targ).float().sum()
        self.union = self.union + (pred + targ).float().sum()

    @property
    def value(self) -> float | None:
        """Dice as a float, or None while both masks are empty."""
        inter, union = _to_float(self.inter), _to_float(self.union)
        return 2.0 * inter / union if union > 0 else None


class JaccardCoeff(Dice):
    """Jaccard index (IoU) `|P∩T| / |P∪T|`, from the same totals as `Dice`."""

    @property
    def value(self) -> float | None:
        """IoU as a float, or None while both masks are empty."""
        inter, union = _to_float(self.inter), _to_float(self.union)
        return inter / (union - inter) if union > 0 else None


def _class_counts(idx: Tensor, n: int, keep: Tensor | None = None) -> Tensor:
    """How often each class 0..n-1 occurs in `idx` where `keep` (without bincount, which syncs on CUDA)."""
    if keep is not None:
        idx = idx.masked_fill(~keep, n)  # dropped entries go to an extra bin, cut off below
    return torch.zeros(n + 1, dtype=torch.long, device=idx.device).scatter_add_(0, idx, torch.ones_like(idx))[:n]


class DiceMulti(Metric):
    """Mean over classes of each class's Dice (macro F1) for multi-class segmentation.

    Classes absent from both predictions and targets are left out of the mean; target values
    outside `0..n_classes-1` (e.g. an ignore index) count for no class.
    """

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.reset()

    def reset(self) -> None:
        """Forget the per-class totals."""
        self.inter: Tensor | None = None
        self.union: Tensor | None = None

    def accumulate(self, learn: Any) -> None:
        """Add this batch's per-class intersections and summed areas."""
        n = learn.pred.shape[self.axis]
        pred, targ = flatten_check(learn.pred.detach().argmax(dim=self.axis), _target(learn).detach())
        targ_cls = targ.long()
        valid = (targ_cls == targ) & (targ_cls >= 0) & (targ_cls < n)
        inter = _class_counts(pred, n, valid & (pred == targ_cls))
        union = _class_counts(pred, n) + _class_counts(targ_cls, n, valid)
        if self.inter is None or self.union is None:
            self.inter, self.union = inter, union
        else:
            self.inter, self.union = self.inter + inter, self.union + union

    @property
    def value(self) -> float | None:
        """The mean Dice over the classes present (nan if none is), or None before any batch."""
        if self.inter is None or self.union is None:
            return None
        union = self.union.double()
        dice = torch.where(union > 0, 2 * self.inter.double() / union, torch.full_like(union, math.nan))
        return torch.nanmean(dice).item()


# ---- NLP ----

class CorpusBLEUMetric(Metric):
    """Corpus BLEU (Papineni et al., 2002) of the argmax token ids against the targets, on validation batches.

    Clipped n-gram matches for n = 1..4 and the brevity penalty are summed over every sentence
    (row) of the validation set. In a sentence, an n-gram order with no match counts 1/2**k
    matches, k being how many orders so far had none (smoothing method 3 of Chen & Cherry, 2014,
    as SacreBLEU and fastai). Batches are kept on their device and counted when `value` is read.
    `vocab_sz` is accepted for fastai's signature; n-grams are compared as tuples, so it is unused.
    """

    def __init__(self, vocab_sz: int = 5000, axis: int = -1) -> None:
        self.vocab_sz, self.axis = vocab_sz, axis
        self.reset()

    def reset(self) -> None:
        """Zero the lengths and n-gram counts."""
        self.pred_len, self.targ_len = 0, 0
        self.corrects: list[float] = [0] * 4
        self.counts: list[int] = [0] * 4
        self._pending: list[tuple[Tensor, Tensor]] = []

    def accumulate(self, learn: Any) -> None:
        """Keep this validation batch's predicted and target token ids; training batches are skipped."""
        if getattr(learn, "training", False):
            return
        self._pending.append((learn.pred.detach().argmax(dim=self.axis), _target(learn).detach()))

    @staticmethod
    def _matches(pred: Sequence[int], targ: Sequence[int], n: int) -> tuple[int, int]:
        """Clipped matches of the n-grams of `pred` in `targ`, and how many n-grams `pred` has."""
        pred_grams = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
        targ_grams = Counter(tuple(targ[i:i + n]) for i in range(len(targ) - n + 1))
        return sum(min(c, targ_grams[g]) for g, c in pred_grams.items()), max(len(pred) - n + 1, 0)

    def _count_pending(self) -> None:
        for preds, targs in self._pending:
            for pred, targ in zip(preds.tolist(), targs.tolist()):
                self.pred_len += len(pred)
                self.targ_len += len(targ)
                smooth = 1
                for i in range(4):
                    c, t = self._matches(pred, targ, i + 1)
                    if c == 0:
                        smooth *= 2
                        self.corrects[i] += 1 / smooth
                    else:
                        self.corrects[i] += c
                    self.counts[i] += t
        self._pending = []

    @property
    def value(self) -> float | None:
        """BLEU in [0, 1]; 0 when some n-gram order has no n-gram at all; None before any batch."""
        self._count_pending()
        if self.pred_len == 0:
            return None
        if min(self.counts) == 0:  # every sentence shorter than 4 tokens: that precision is undefined
            return 0.0
        precs = [c / t for c, t in zip(self.corrects, self.counts)]
        brevity = math.exp(1 - self.targ_len / self.pred_len) if self.pred_len < self.targ_len else 1.0
        return brevity * math.prod(precs) ** 0.25


# ---- attributes of the loss function ----

class LossMetric(AvgMetric):
    """Batch-size-weighted average of `learn.loss_func.<attr>` (e.g. one term of a combined loss), named `nm`."""

    def __init__(self, attr: str, nm: str | None = None) -> None:
        self.attr, self.nm = attr, nm
        self.reset()

    def accumulate(self, learn: Any) -> None:
        """Add the loss function's `attr` for this batch (0 if it has none), weighted by the batch size."""
        bs = _batch_size(learn)
        self.total += _detach(getattr(learn.loss_func, self.attr, 0)) * bs
        self.count += bs

    @property
    def name(self) -> str:
        """`nm` if given, else `attr`."""
        return self.attr if self.nm is None else self.nm


def LossMetrics(attrs: str | Sequence[str], nms: str | Sequence[str] | None = None) -> list[LossMetric]:
    """A `LossMetric` for each of `attrs` (a list or a comma-separated string), named by `nms`."""
    attrs = attrs.split(",") if isinstance(attrs, str) else list(attrs)
    names = attrs if nms is None else nms.split(",") if isinstance(nms, str) else list(nms)
    return [LossMetric(a, n) for a, n in zip(attrs, names)]


# ---- scikit-learn and SciPy metrics (fastai's names; the package is imported when one is built) ----

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
