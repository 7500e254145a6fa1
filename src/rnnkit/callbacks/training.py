"""Callbacks that change how training steps: `GradientAccumulation`."""
from __future__ import annotations

from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelBatchException
from rnnkit.utils import find_bs

__all__ = ["GradientAccumulation"]


class GradientAccumulation(Callback):
    """Step only once `n_acc` items were seen, accumulating gradients over the batches in between.

    Each batch's loss is scaled by `bs/n_acc` before the backward pass, so with a mean-reduced loss the
    accumulated gradient is the one of a single batch of `n_acc` items. Skipped batches raise
    `CancelBatchException` in `before_step`, which skips the step and the zeroing of the gradients.
    """

    order = MixedPrecision.order - 4  # scale the loss before MixedPrecision does; skip its unscale/step
    run_valid = False

    def __init__(self, n_acc: int = 32) -> None:
        super().__init__()
        if not n_acc > 0:
            raise ValueError(f"GradientAccumulation needs n_acc > 0 items, got {n_acc!r}")
        self.n_acc = n_acc
        self.count = 0

    def before_fit(self) -> None:
        self.count = 0

    def after_loss(self) -> None:
        if not self.learn.yb:
            return  # no loss, no backward
        self.learn.loss_grad = self.learn.loss_grad / (self.n_acc / find_bs(self.learn.yb))

    def before_step(self) -> None:
        bs = find_bs(self.learn.yb)
        self.learn.loss_grad = self.learn.loss_grad * (self.n_acc / bs)  # the batch's own loss again
        self.count += bs
        if self.count < self.n_acc:
            raise CancelBatchException()  # no step, no zero_grad: the next backward adds to these gradients
        self.count = 0
