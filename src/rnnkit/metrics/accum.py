"""`AccumMetric`, computed once on all the predictions of the epoch, and the classification and
regression metrics of fastai that are plain functions of `(pred, targ)` or `AccumMetric`s.

The batches an `AccumMetric` stores stay on their device until `value` is read; in distributed
training `sync()` gathers every process's predictions and targets (rank by rank).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.distributed import all_gather_cat, is_distributed
from rnnkit.metrics.core import Metric, func_name

__all__ = [
    "flatten_check", "ActivationType", "AccumMetric",
    "top_k_accuracy", "accuracy_multi", "mse", "rmse", "mae", "msle", "exp_rmspe",
]


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


def target_of(learn: Any) -> Any:
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
        self._name = func_name(func) if name is None else name
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
        self.accum_values(pred, target_of(learn), learn)

    def accum_values(self, preds: Tensor, targs: Tensor, learn: Any = None) -> None:
        """Store `preds` and `targs` as they are (detached, flattened if `flatten`); `learn` is unused."""
        preds, targs = _detached(preds), _detached(targs)
        if self.flatten:
            preds, targs = flatten_check(preds, targs)
        self.preds.append(preds)
        self.targs.append(targs)

    def sync(self) -> None:
        """Replace the stored batches by every process's, concatenated in rank order; a no-op in one process.

        Sharded loaders give every process the same number of batches, so either all have some or none.
        """
        if not is_distributed() or not self.preds:
            return
        self.preds = [all_gather_cat(torch.cat(self.preds))]
        self.targs = [all_gather_cat(torch.cat(self.targs))]

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
