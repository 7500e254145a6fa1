"""`Recorder`: smoothed train loss, validation loss and metrics, per-batch hyper-parameters."""
from __future__ import annotations

import time
from typing import Any, Sequence

from rnnkit.metrics import AvgLoss, AvgSmoothLoss, Metric, mk_metric
from rnnkit.training.callback import Callback

__all__ = ["Recorder"]


def _value(m: Metric) -> Any:
    """A metric's value as a Python number, or None when it saw no batch."""
    if getattr(m, "count", 1) == 0:
        return None
    v = m.value
    return v.item() if hasattr(v, "item") else v


def _fmt_time(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


class Recorder(Callback):
    """Record losses, metrics and hyper-parameters during `fit`; log one row per epoch.

    Each epoch the row `[epoch, train_loss, valid_loss, *metrics, 'mm:ss']` goes to
    `learn.logger`. `train_loss` is the smoothed training loss at the end of the epoch.

    In distributed training (`Learner.distrib_ctx`) the loader is one process's shard: the Recorder
    `sync`s its metrics across the processes before reading them, so every process records the
    values of the whole split; the per-batch training loss is already global (`DistributedTrainer`).
    """

    order = 50
    remove_on_fetch = True  # FetchPredsCallback's prediction pass must not overwrite the epoch's values

    def __init__(self, add_time: bool = True, train_metrics: bool = False,
                 valid_metrics: bool = True, beta: float = 0.98) -> None:
        super().__init__()
        self.add_time, self.train_metrics, self.valid_metrics = add_time, train_metrics, valid_metrics
        self.loss, self.smooth_loss = AvgLoss(), AvgSmoothLoss(beta=beta)
        self.lrs: list[float] = []
        self.moms: list[float] = []
        self.losses: list[Any] = []
        self.iters: list[int] = []
        self.values: list[list[Any]] = []
        self.hps: dict[str, list[Any]] = {}
        self.log: list[Any] = []
        self.metrics: list[Metric] = []

    def set_metrics(self, metrics: Sequence[Any]) -> None:
        """Use `metrics` (functions, Metric classes or instances) from now on."""
        self.metrics = [mk_metric(m) for m in metrics]

    @property
    def _train_mets(self) -> list[Metric]:
        if getattr(self, "cancel_train", False):
            return []  # a cancelled training phase (as in lr_find) leaves its values out of the row
        return [self.smooth_loss] + (self.metrics if self.train_metrics else [])

    @property
    def _valid_mets(self) -> list[Metric]:
        if getattr(self, "cancel_valid", False):
            return []
        return [self.loss] + (self.metrics if self.valid_metrics else [])

    @property
    def metric_names(self) -> list[str]:
        """Column names of the per-epoch table, as fastai names them."""
        names = [m.name for m in self.metrics]
        if self.train_metrics and self.valid_metrics:
            cols = [f"train_{n}" for n in ["loss"] + names] + [f"valid_{n}" for n in ["loss"] + names]
        elif self.valid_metrics:
            cols = ["train_loss", "valid_loss"] + names
        else:
            cols = ["train_loss"] + names
        return ["epoch"] + cols + (["time"] if self.add_time else [])

    def before_fit(self) -> None:
        self.lrs, self.moms, self.losses, self.iters, self.values = [], [], [], [], []
        self.smooth_loss.reset()
        self._hyper_keys_warned = False

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.yb:
            return
        for met in (self._train_mets if learn.training else self._valid_mets):
            met.accumulate(learn)
        if not learn.training:
            return
        hyper = learn.opt.hypers[-1]
        self.lrs.append(hyper.get("lr"))
        self.moms.append(hyper.get("mom"))
        self.losses.append(self.smooth_loss.value)
        learn.smooth_loss = self.losses[-1]

    def before_epoch(self) -> None:
        self.start_epoch = time.time()
        self.cancel_train = self.cancel_valid = self.cancel_epoch = False
        self.log = [getattr(self.learn, "epoch", 0)]

    def before_train(self) -> None:
        self.cancel_train = False
        for m in self._train_mets[1:]:
            m.reset()

    def before_validate(self) -> None:
        self.cancel_valid = False  # also for a validate() outside fit, after an lr_find cancelled one
        for m in self._valid_mets:
            m.reset()

    def _sync(self, mets: list[Metric]) -> None:
        # Only a shard's values are partial; an unsharded loader (validate() outside a distributed fit)
        # saw everything, and a collective there would wait for processes that may not be validating.
        if getattr(self.learn.dl, "world_size", 1) > 1:
            for m in mets:
                m.sync()

    def after_train(self) -> None:
        self._sync(self._train_mets)
        self.log += [_value(m) for m in self._train_mets]

    def after_validate(self) -> None:
        mets = self._valid_mets
        self._sync(mets)
        self.learn.final_record = [_value(m) for m in mets]
        if self.valid_metrics:
            self.log += self.learn.final_record

    def after_cancel_train(self) -> None:
        self.cancel_train = True

    def after_cancel_validate(self) -> None:
        self.cancel_valid = True

    def after_cancel_epoch(self) -> None:
        self.cancel_epoch = True

    def after_epoch(self) -> None:
        if getattr(self, "cancel_epoch", False) and len(self.log) == 1:
            self.cancel_epoch = False
            return  # skipped before anything ran (e.g. epochs already done when resuming)
        self.learn.final_record = self.log[1:].copy()  # fastai's: the row without epoch and time
        self.values.append(self.learn.final_record.copy())
        if self.add_time:
            self.log.append(_fmt_time(time.time() - self.start_epoch))
        self.learn.logger(self.log)
        self.iters.append(len(self.losses))

    # -- plots (matplotlib is imported only when a plot is asked for) --
    def plot_loss(self, skip_start: int = 5, with_valid: bool = True, ax: Any = None) -> Any:
        """Plot the smoothed training loss per batch and the validation loss per epoch."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        losses = [float(v) for v in self.losses]
        ax.plot(list(range(skip_start, len(losses))), losses[skip_start:], label="train")
        if with_valid and self.values and "valid_loss" in self.metric_names:
            idx = self.metric_names.index("valid_loss") - 1
            pts = [(it, row[idx]) for it, row in zip(self.iters, self.values)
                   if idx < len(row) and row[idx] is not None and it > skip_start]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label="valid")
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        return ax.figure

    def plot_sched(self, keys: Sequence[str] | None = None, figsize: tuple[float, float] | None = None) -> Any:
        """Plot the hyper-parameters scheduled during the last fit (lr and mom by default)."""
        import matplotlib.pyplot as plt

        hps = self.hps or {"lr": self.lrs, "mom": self.moms}
        keys = list(hps) if keys is None else list(keys)
        keys = [k for k in keys if k in hps and any(v is not None for v in hps[k])]
        if not keys:
            raise ValueError("Recorder.plot_sched: nothing was scheduled; run fit_one_cycle "
                             "(or fit with a ParamScheduler) first")
        fig, axs = plt.subplots(1, len(keys), figsize=figsize or (6 * len(keys), 4), squeeze=False)
        for key, ax in zip(keys, axs[0]):
            vals = [v[-1] if isinstance(v, (list, tuple)) else v for v in hps[key]]
            ax.plot(vals)
            ax.set_ylabel(key)
            ax.set_xlabel("batch")
        return fig

    def plot_lr_find(self, skip_end: int = 5, suggestions: dict[str, float] | None = None,
                     ax: Any = None) -> Any:
        """Plot loss against learning rate (log scale) after `lr_find`, with suggested points."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        end = len(self.losses) - skip_end if skip_end else len(self.losses)
        lrs = self.lrs[:end]
        ax.plot(lrs, [float(v) for v in self.losses[:end]])
        ax.set_xscale("log")
        ax.set_xlabel("Learning Rate")
        ax.set_ylabel("Loss")
        for i, (name, lr) in enumerate((suggestions or {}).items()):
            ax.axvline(lr, linestyle="--", color=f"C{i + 1}", label=f"{name}: {lr:.2e}")
        if suggestions:
            ax.legend()
        return ax.figure
