"""Hyper-parameter scheduling during training (`ParamScheduler`) and the LR range test
(`LRFinder`; Smith, "Cyclical Learning Rates for Training Neural Networks", 2015)."""
from __future__ import annotations

import collections
import copy
import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rnnkit.schedules import SchedExp
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelEpochException, CancelFitException, CancelValidException
from rnnkit.training.recorder import Recorder

__all__ = ["ParamScheduler", "LRFinder", "SuggestedLRs", "SkipToEpoch"]

log = logging.getLogger(__name__)


def _plain(v: Any) -> Any:
    """Schedules may return numpy arrays (one value per group): hand plain Python values to the optimizer."""
    if isinstance(v, np.ndarray):
        return v.item() if v.size == 1 else v.tolist()
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class ParamScheduler(Callback):
    """Set hyper-parameters from schedules of `pct_train` before each training batch."""

    order = 60
    run_valid = False

    def __init__(self, scheds: dict[str, Callable[[float], Any]]) -> None:
        super().__init__()
        self.scheds = scheds
        self.hps: dict[str, list[Any]] = {}

    def before_fit(self) -> None:
        self.hps = {k: [] for k in self.scheds}

    def before_batch(self) -> None:
        pct = self.learn.pct_train
        for name, sched in self.scheds.items():
            v = _plain(sched(pct))
            self.learn.opt.set_hyper(name, v)
            self.hps[name].append(v)

    def after_fit(self) -> None:
        rec = self.learn.get_cb(Recorder)
        if rec is not None:
            rec.hps = self.hps


class SkipToEpoch(Callback):
    """Skip the epochs before `start_epoch`: `fit(..., start_epoch=)` adds it, and it is the one way a
    resume skips the epochs a checkpoint has done (the `Checkpointer` restores the rest).

    As in fastai, a skipped epoch is cancelled in `before_epoch`: only `before_epoch`,
    `after_cancel_epoch` and `after_epoch` fire for it, and `train_iter` does not advance
    (the schedules read `pct_train`, which `before_train` sets from the epoch number).
    """

    order = 70  # fastai's: the callbacks before it (Recorder, schedulers) still see before_epoch

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self._skip_to = epoch

    @property
    def start_epoch(self) -> int:
        """The first epoch that runs."""
        return self._skip_to

    def before_epoch(self) -> None:
        if self.learn.epoch < self._skip_to:
            raise CancelEpochException()


def SuggestedLRs(names: Sequence[str]) -> type:
    """A named tuple type with one field per suggestion function name."""
    return collections.namedtuple("SuggestedLRs", list(names), rename=True)


class LRFinder(Callback):
    """Grow the lr exponentially from `start_lr` to `end_lr` over `num_it` batches; restore the model after."""

    order = 61  # after ParamScheduler, so nothing overwrites the lr it sets
    run_valid = False

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100,
                 stop_div: bool = True) -> None:
        super().__init__()
        if not 0 < start_lr < end_lr:
            raise ValueError(f"LRFinder needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
        if num_it < 2:
            raise ValueError(f"LRFinder needs num_it >= 2, got {num_it}")
        self.start_lr, self.end_lr, self.num_it, self.stop_div = start_lr, end_lr, num_it, stop_div
        self.sched = SchedExp(start_lr, end_lr)

    def before_fit(self) -> None:
        learn = self.learn
        # Everything we change is restored in after_fit: weights, optimizer, RNG streams.
        self._model_state = copy.deepcopy(learn.model.state_dict())
        self._opt_state = copy.deepcopy(learn.opt.state_dict())
        self._rng = torch.get_rng_state()
        self.best_loss = math.inf

    def before_batch(self) -> None:
        self.learn.opt.set_hyper("lr", self.sched(self.learn.train_iter / self.num_it))

    def after_batch(self) -> None:
        sl = self.learn.smooth_loss
        loss = float(sl) if sl is not None else math.inf
        if loss < self.best_loss:
            self.best_loss = loss
        if self.stop_div and (loss > 4 * self.best_loss or math.isnan(loss)):
            raise CancelFitException()
        if self.learn.train_iter >= self.num_it - 1:
            raise CancelFitException()

    def before_validate(self) -> None:
        raise CancelValidException()

    def after_fit(self) -> None:
        learn = self.learn
        learn.opt.zero_grad()
        learn.model.load_state_dict(self._model_state)
        learn.opt.load_state_dict(self._opt_state)
        torch.set_rng_state(self._rng)

    def suggest(self, rec: Recorder, funcs: Sequence[Callable], show_plot: bool = True) -> Any:
        """Suggested learning rates from the curve `rec` recorded, one per function in `funcs`."""
        lo, hi = self.num_it // 10, len(rec.losses) - 5
        lrs = torch.tensor(rec.lrs[lo:hi], dtype=torch.float64)
        losses = torch.tensor([float(v) for v in rec.losses[lo:hi]], dtype=torch.float64)
        names = [f.__name__ for f in funcs]
        if len(losses) < 2:
            log.warning("lr_find: the loss diverged too early to suggest a learning rate; "
                        "try a smaller start_lr or stop_div=False")
            return SuggestedLRs(names)(*[float("nan")] * len(funcs))
        sugg = {}
        for f in funcs:
            res = f(lrs, losses, self.num_it)
            sugg[f.__name__] = float(res[0] if isinstance(res, tuple) else res)
        if show_plot:
            import matplotlib
            import matplotlib.pyplot as plt

            rec.plot_lr_find(suggestions=sugg)
            if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template"):
                plt.show()
        return SuggestedLRs(names)(**sugg)
