"""Callbacks that change how training steps: `ShortEpochCallback`, `GradientAccumulation`, `BnFreeze`."""
from __future__ import annotations

from torch import nn

from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.training.callback import Callback, TrainEvalCallback
from rnnkit.training.events import CancelBatchException, CancelTrainException, CancelValidException
from rnnkit.utils import find_bs

__all__ = ["ShortEpochCallback", "GradientAccumulation", "bn_types", "set_bn_eval", "BnFreeze"]


class ShortEpochCallback(Callback):
    """Run only the first `pct` of each epoch's batches, e.g. to check quickly that a fit runs end to end.

    A phase stops after the first batch whose index `i` has `i / n_iter >= pct` (fastai's count), so at
    least one batch always runs: with 10 batches and `pct=0.25`, batches 0 to 3. With `short_valid=False`
    the validation runs in full.
    """

    def __init__(self, pct: float = 0.01, short_valid: bool = True) -> None:
        super().__init__()
        self.pct, self.short_valid = pct, short_valid

    def after_batch(self) -> None:
        if self.learn.iter / self.learn.n_iter < self.pct:
            return
        if self.learn.training:
            raise CancelTrainException()  # the epoch goes on with the validation
        if self.short_valid:
            raise CancelValidException()


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


bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def set_bn_eval(m: nn.Module, use_eval: bool = True) -> None:
    """Put the frozen BatchNorm layers among the submodules of `m` in eval mode (train mode if not `use_eval`).

    A layer counts as frozen when its weight does not require a gradient, as in fastai; layers without
    parameters (`affine=False`) have nothing frozen and are left as they are. `m` itself is not changed.
    """
    for layer in list(m.modules())[1:]:  # every submodule, at any depth
        if not isinstance(layer, bn_types):
            continue
        weight = next(layer.parameters(), None)
        if weight is not None and not weight.requires_grad:
            layer.train(not use_eval)


class BnFreeze(Callback):
    """Keep the running statistics of frozen (non-trainable) BatchNorm layers fixed during training."""

    run_after = TrainEvalCallback  # its before_train puts the whole model in train mode again

    def before_train(self) -> None:
        set_bn_eval(self.learn.model)
