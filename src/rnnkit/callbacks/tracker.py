"""Callbacks that watch a recorded value: early stopping, saving the best model, NaN guard."""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable

import numpy as np

from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelFitException
from rnnkit.training.recorder import Recorder

__all__ = ["TerminateOnNaNCallback", "TrackerCallback", "EarlyStoppingCallback", "SaveModelCallback",
           "ReduceLROnPlateau"]

log = logging.getLogger(__name__)


class TerminateOnNaNCallback(Callback):
    """Stop training (`CancelFitException`) when the loss becomes NaN or infinite."""

    order = -9

    def after_batch(self) -> None:
        loss = self.learn.loss
        if not bool(loss.isfinite().all()):
            warnings.warn(f"Loss is {float(loss.detach().float().mean())} at epoch {self.learn.epoch}, "
                          f"batch {self.learn.iter}: training stopped. Lower the learning rate "
                          "or add GradientClip.", RuntimeWarning, stacklevel=2)
            self.learn.nan_stopped = True
            raise CancelFitException()


class TrackerCallback(Callback):
    """Track the best value of `monitor` (a column of the epoch table) across epochs."""

    order = Recorder.order + 10  # reads the row the Recorder writes in after_epoch
    skip_in_lr_find = True

    def __init__(self, monitor: str = "valid_loss", comp: Callable | None = None,
                 min_delta: float = 0.0, reset_on_fit: bool = True) -> None:
        super().__init__()
        if comp is None:
            comp = np.less if ("loss" in monitor or "error" in monitor or "perplexity" in monitor) else np.greater
        if comp is np.less:
            min_delta *= -1
        self.monitor, self.comp, self.min_delta, self.reset_on_fit = monitor, comp, min_delta, reset_on_fit
        self.best: float | None = None
        self.new_best = self.skipped = False

    def before_fit(self) -> None:
        if self.reset_on_fit or self.best is None:
            self.best = math.inf if self.comp is np.less else -math.inf
        rec = self.learn.get_cb(Recorder)
        names = rec.metric_names[1:] if rec is not None else []
        if self.monitor not in names:
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which is not "
                             f"recorded; choose one of {[n for n in names if n != 'time']}")
        self.idx = names.index(self.monitor)

    def before_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        self._n_rows = len(rec.values) if rec is not None else 0

    def after_epoch(self) -> None:
        values = self.learn.get_cb(Recorder).values
        row = values[-1] if len(values) > getattr(self, "_n_rows", 0) else None
        if row is None or self.idx >= len(row):  # a skipped epoch (start_epoch, resume)
            self.skipped, self.new_best = True, False
            return
        self.skipped = False
        val = row[self.idx]
        self.new_best = val is not None and bool(self.comp(float(val) - self.min_delta, float(self.best or 0)))
        if self.new_best:
            self.best = val


class EarlyStoppingCallback(TrackerCallback):
    """Stop training when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor: str = "valid_loss", comp: Callable | None = None,
                 min_delta: float = 0.0, patience: int = 1, reset_on_fit: bool = True) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        self.patience = patience

    def before_fit(self) -> None:
        self.wait = 0
        super().before_fit()

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.skipped:
            return
        if self.new_best:
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                print(f"No improvement since epoch {self.learn.epoch - self.wait}: early stopping")
                raise CancelFitException()


class SaveModelCallback(TrackerCallback):
    """Save the model when `monitor` improves (or every epoch), and load the best one at the end."""

    def __init__(self, monitor: str = "valid_loss", comp: Callable | None = None,
                 min_delta: float = 0.0, fname: str = "model", every_epoch: bool | int = False,
                 at_end: bool = False, with_opt: bool = False, reset_on_fit: bool = True) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        self.fname, self.every_epoch, self.at_end, self.with_opt = fname, every_epoch, at_end, with_opt
        self.last_saved_path: Any = None

    def _save(self, name: str) -> None:
        self.last_saved_path = self.learn.save(name, with_opt=self.with_opt)

    def after_epoch(self) -> None:
        if self.every_epoch:
            if (self.learn.epoch % int(self.every_epoch)) == 0:
                self._save(f"{self.fname}_{self.learn.epoch}")
            return
        super().after_epoch()
        if self.new_best and not self.skipped:
            print(f"Better model found at epoch {self.learn.epoch} with {self.monitor} value: {self.best}.")
            self._save(self.fname)

    def after_fit(self) -> None:
        if self.at_end:
            self._save(self.fname)
        elif not self.every_epoch and self.last_saved_path is not None:
            self.learn.load(self.fname, with_opt=self.with_opt)


class ReduceLROnPlateau(TrackerCallback):
    """Divide the learning rate of every group by `factor` when `monitor` has not improved for
    `patience` epochs, never below `min_lr`."""

    def __init__(self, monitor: str = "valid_loss", comp: Callable | None = None, min_delta: float = 0.0,
                 patience: int = 1, factor: float = 10.0, min_lr: float = 0, reset_on_fit: bool = True) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        if not factor > 0:
            raise ValueError(f"ReduceLROnPlateau needs factor > 0 (the lr is divided by it), got {factor!r}")
        self.patience, self.factor, self.min_lr = patience, factor, min_lr

    def before_fit(self) -> None:
        self.wait = 0
        super().before_fit()

    def after_epoch(self) -> None:
        super().after_epoch()
        if getattr(self, "skipped", False):
            return  # an epoch skipped when resuming says nothing about a plateau
        if self.new_best:
            self.wait = 0
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        self.wait = 0
        opt = self.learn.opt
        old_lr = opt.hypers[-1]["lr"]
        new_lrs = [max(h["lr"] / self.factor, self.min_lr) for h in opt.hypers]
        if hasattr(opt, "set_hyper"):
            opt.set_hyper("lr", new_lrs)
        else:  # a user's own optimizer with plain `hypers` dicts
            for h, lr in zip(opt.hypers, new_lrs):
                h["lr"] = lr
        if new_lrs[-1] < old_lr:
            print(f"Epoch {self.learn.epoch}: reducing lr to {new_lrs[-1]}")
