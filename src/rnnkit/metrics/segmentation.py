"""Segmentation metrics: `foreground_acc`, `Dice`, `JaccardCoeff`, `DiceMulti`.

Totals are kept as tensors on the device (no per-batch `.item()`); `value` reads them once.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnnkit.metrics.accum import target_of, flatten_check
from rnnkit.metrics.core import Metric, to_float

__all__ = ["foreground_acc", "Dice", "JaccardCoeff", "DiceMulti"]


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
        pred, targ = flatten_check(learn.pred.detach().argmax(dim=self.axis), target_of(learn))
        self.inter = self.inter + (pred * targ).float().sum()
        self.union = self.union + (pred + targ).float().sum()

    @property
    def value(self) -> float | None:
        """Dice as a float, or None while both masks are empty."""
        inter, union = to_float(self.inter), to_float(self.union)
        return 2.0 * inter / union if union > 0 else None


class JaccardCoeff(Dice):
    """Jaccard index (IoU) `|P∩T| / |P∪T|`, from the same totals as `Dice`."""

    @property
    def value(self) -> float | None:
        """IoU as a float, or None while both masks are empty."""
        inter, union = to_float(self.inter), to_float(self.union)
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
        pred, targ = flatten_check(learn.pred.detach().argmax(dim=self.axis), target_of(learn).detach())
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
