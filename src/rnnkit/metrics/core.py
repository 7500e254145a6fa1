"""Core metrics: the `Metric` API (`reset`, `accumulate(learn)`, `value`, `name`), the averages the
Recorder uses, accuracy and perplexity.

`accumulate` runs every batch and keeps its running totals as tensors on the model's device, so no
batch forces a device sync; `value` converts to a Python number once, when it is read. Averages are
weighted by batch size, so uneven last batches are counted exactly.

In distributed training each process sees its shard of the split; `sync()` adds up the totals and
counts of every process, so that `value` is the whole split's (the Recorder calls it).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import torch
from torch import Tensor

from rnnkit.distributed import all_reduce_sum, is_distributed

__all__ = [
    "Metric", "AvgMetric", "AvgLoss", "AvgSmoothLoss", "ValueMetric", "Perplexity",
    "accuracy", "error_rate", "perplexity", "mk_metric",
]


def _camel2snake(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)  # 'RNNMetric' -> 'RNN_Metric'
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def func_name(func: Callable) -> str:
    """A metric function's name, through `functools.partial` wrappers."""
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


def batch_size_of(learn: Any) -> int:
    """The batch size of `learn.yb` (the weight of this batch in an average)."""
    bs = _find_bs(getattr(learn, "yb", ()))
    if bs is None:  # no targets (e.g. a self-supervised loss): count the inputs instead
        bs = _find_bs(getattr(learn, "xb", ()))
    if bs is None:
        raise ValueError("Cannot find the batch size: learn.yb and learn.xb hold no tensor.")
    return bs


def detached(x: Any) -> Any:
    """`x` without autograd history, left on its device (no sync)."""
    if isinstance(x, Tensor):
        x = x.detach()
        return x if x.is_floating_point() else x.float()
    return x


def to_float(x: Any) -> float:
    """A Python float from a number or a one-element tensor."""
    return x.item() if isinstance(x, Tensor) else float(x)


class Metric:
    """Base class: subclasses override `reset`, `accumulate` and the `value` property."""

    def reset(self) -> None:
        """Clear the state before an epoch."""

    def accumulate(self, learn: Any) -> None:
        """Update the state from `learn.pred`, `learn.yb`, `learn.loss` after a batch."""

    def sync(self) -> None:
        """Combine the state of every process of a distributed run, so that `value` covers every shard.

        The Recorder calls it once per phase, on every process, after the last batch of a sharded
        loader. The base class keeps each process's own state (rank 0's value is the one shown):
        override it for a metric whose state can be summed or gathered.
        """

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


class _WeightedMean(Metric):
    """A batch-size-weighted mean over the epoch; subclasses say what each batch adds (`accumulate`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero the running total and count."""
        self.total, self.count = 0.0, 0

    def sync(self) -> None:
        """Sum the totals and counts of every process (in float64); a no-op in one process."""
        if not is_distributed():
            return
        total = self.total
        like = total if isinstance(total, Tensor) else None
        sums = torch.stack([torch.as_tensor(total, dtype=torch.float64).reshape(()).cpu(),
                            torch.tensor(float(self.count), dtype=torch.float64)])
        all_reduce_sum(sums)
        self.count = int(sums[1].item())
        self.total = sums[0].to(like) if like is not None else float(sums[0])

    @property
    def value(self) -> Any:
        """The weighted mean (a 0-d tensor for tensor values, as in fastai), or None before any batch."""
        return self.total / self.count if self.count else None


class AvgMetric(_WeightedMean):
    """Batch-size-weighted average of `func(pred, *yb)` over the epoch."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        super().__init__()

    def accumulate(self, learn: Any) -> None:
        """Add this batch's metric, weighted by its batch size."""
        bs = batch_size_of(learn)
        self.total += detached(self.func(learn.pred, *learn.yb)) * bs
        self.count += bs

    @property
    def name(self) -> str:
        """The function's name."""
        return func_name(self.func)


class AvgLoss(_WeightedMean):
    """Batch-size-weighted average of `learn.loss` over the epoch."""

    def accumulate(self, learn: Any) -> None:
        """Add this batch's mean loss, weighted by its batch size."""
        bs = batch_size_of(learn)
        self.total += detached(learn.loss).mean() * bs
        self.count += bs

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
        loss = detached(learn.loss).mean()
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
        return self.metric_name or func_name(self.func)


class Perplexity(AvgLoss):
    """exp of the batch-size-weighted average loss: the usual language-model metric."""

    @property
    def value(self) -> Any:
        """exp(mean loss) as a 0-d tensor (inf for a diverged model), or None before any batch."""
        if not self.count:
            return None
        mean = self.total / self.count
        return torch.exp(mean) if isinstance(mean, Tensor) else torch.tensor(math.exp(min(float(mean), 709.0)))

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
