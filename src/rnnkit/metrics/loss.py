"""Metrics reading attributes of the loss function (`LossMetric`, `LossMetrics`)."""
from __future__ import annotations

from typing import Any, Sequence

from rnnkit.metrics.core import AvgMetric, batch_size_of, detached

__all__ = ["LossMetric", "LossMetrics"]


class LossMetric(AvgMetric):
    """Batch-size-weighted average of `learn.loss_func.<attr>` (e.g. one term of a combined loss), named `nm`."""

    def __init__(self, attr: str, nm: str | None = None) -> None:
        self.attr, self.nm = attr, nm
        self.reset()

    def accumulate(self, learn: Any) -> None:
        """Add the loss function's `attr` for this batch (0 if it has none), weighted by the batch size."""
        bs = batch_size_of(learn)
        self.total += detached(getattr(learn.loss_func, self.attr, 0)) * bs
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
