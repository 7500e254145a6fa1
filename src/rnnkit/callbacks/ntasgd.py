"""NT-ASGD: non-monotonically triggered averaging of the weights.

From Merity et al., "Regularizing and Optimizing LSTM Language Models" (2017), section 3.
Train with the learner's optimizer (the paper uses plain SGD; any optimizer works) and check
the monitored validation value once per epoch, the paper's logging interval. As soon as a
value is worse than the best one from before the last `n` checks (`t > n and
val > min(logs[:-n])`), start averaging: after every optimizer step from then on, a running
mean of the weights is updated. Validation, and whatever runs in `after_epoch` (trackers,
`SaveModelCallback`), sees the averaged weights; training continues on the raw ones.

`NTASGD(start=True)` averages from the first optimizer step instead (ASGD with t0=0): the paper's
fine-tuning, which `NonMonotoneStop` ends with the same non-monotone test (section 5).

After `fit` the model holds the averaged weights, so `learn.save` after fitting saves them;
the raw weights stay in the callback and come back for the next `fit`. To resume a run,
checkpoint `cb.state_dict()` (history, trigger point, step count and the weights not in the
model) next to the model and load both: the next `fit` continues where the run stopped.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from rnnkit.callbacks.monitor import RecordedValue
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelFitException
from rnnkit.training.recorder import Recorder

__all__ = ["NTASGD", "NonMonotoneStop"]

log = logging.getLogger(__name__)


class NTASGD(Callback):
    """Average the weights from the point where `monitor` stopped improving for `n` checks."""

    order = Recorder.order + 10  # reads the row the Recorder writes in after_epoch
    skip_in_lr_find = True
    state_key = "ntasgd"  # checkpoints keep state_dict() under cb:ntasgd

    def __init__(self, monitor: str = "valid_loss", n: int = 5, comp: Callable | None = None,
                 start: bool = False) -> None:
        super().__init__()
        self.monitor, self.n, self.comp = monitor, _check_n("NTASGD", n), _comp(monitor, comp)
        self.start = start  # average from the first step of the fit (ASGD with t0=0), without waiting for the test
        self.history: list[float] = []
        self.triggered_at: int | None = None  # the learner's train_iter when averaging began
        self.n_avg = 0  # optimizer steps averaged so far
        self._other: list[Tensor] | None = None  # the average, or the raw weights while swapped
        self._swapped = False  # whether the model holds the average
        self._skip_step = False
        self._watch = RecordedValue(monitor)

    @property
    def averaging(self) -> bool:
        """Whether the trigger has fired and the weights are being averaged."""
        return self.triggered_at is not None

    def check(self, value: float) -> bool:
        """Record one validation value; True if it fires the trigger (the paper's non-monotone test)."""
        fire = not self.averaging and _worse_than_before(self.history, value, self.n, self.comp)
        self.history.append(float(value))
        return fire

    def trigger(self) -> None:
        """Start averaging from the next optimizer step (what the non-monotone test does when it fires)."""
        self.triggered_at, self.n_avg, self._other = self.learn.train_iter, 0, None

    def _params(self) -> list[Tensor]:
        return [p for p in self.learn.model.parameters()]

    def before_fit(self) -> None:
        self._watch.start(self.learn, "NTASGD")  # a check per new row: skipped epochs add none
        self._place()
        if self.start and not self.averaging:
            self.trigger()

    def _place(self) -> None:
        """Check the kept weights against the model and put them on its devices."""
        if self._other is None:
            return
        params = self._params()
        if [o.shape for o in self._other] != [p.shape for p in params]:
            raise ValueError("NTASGD's saved weights do not match the model's parameters; load "
                             "the callback state saved with this model.")
        self._other = [o.to(device=p.device, dtype=p.dtype) for o, p in zip(self._other, params)]

    def before_train(self) -> None:
        if self._swapped:
            self._swap()

    def before_batch(self) -> None:
        # A resume may load the state after before_train (Checkpointer runs later): swap here too.
        if self._swapped and self.learn.training:
            self._swap()

    def after_cancel_step(self) -> None:
        self._skip_step = True

    def after_step(self) -> None:
        if self._skip_step or not self.averaging:
            self._skip_step = False
            return
        self.n_avg += 1
        with torch.no_grad():
            params = [p.detach() for p in self._params()]
            if self._other is None or self.n_avg == 1:  # the first iterate since the trigger
                self._other = [p.clone() for p in params]
            else:  # running mean: avg += (p - avg) / n, in place
                torch._foreach_lerp_(self._other, params, 1.0 / self.n_avg)

    def before_validate(self) -> None:
        if self.averaging and self.n_avg > 0 and not self._swapped:
            self._swap()

    def after_epoch(self) -> None:
        val = self._watch.new(self.learn)
        if val is None:
            return
        if self.check(val):
            self.trigger()
            log.info("NT-ASGD: %s %.4f did not improve on the best before the last %d checks; "
                     "averaging the weights from epoch %d.", self.monitor, val, self.n,
                     self.learn.epoch + 1)

    def after_fit(self) -> None:
        if self.averaging and self.n_avg > 0 and not self._swapped:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the model's weights with `_other` in place, one tensor at a time."""
        assert self._other is not None
        for p, o in zip(self._params(), self._other):  # copies, so every view of p stays valid
            t = p.detach().clone()  # one tensor at a time: at most the largest one extra
            p.detach().copy_(o)
            o.copy_(t)
        self._swapped = not self._swapped

    def state_dict(self) -> dict[str, Any]:
        """History, trigger point, step count and the weights not in the model (tensors and plain values)."""
        return {"history": list(self.history), "triggered_at": self.triggered_at,
                "n_avg": self.n_avg, "swapped": self._swapped, "other": self._other}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; load the model weights saved with it too."""
        missing = {"history", "triggered_at", "n_avg", "swapped", "other"} - set(sd)
        if missing:
            raise ValueError(f"Not an NTASGD state dict: missing {sorted(missing)}.")
        self.history = [float(v) for v in sd["history"]]
        self.triggered_at = None if sd["triggered_at"] is None else int(sd["triggered_at"])
        self.n_avg, self._swapped = int(sd["n_avg"]), bool(sd["swapped"])
        self._other = None if sd["other"] is None else [t.clone() for t in sd["other"]]
        if self.learn is not None:
            self._place()


class NonMonotoneStop(Callback):
    """Stop the fit when `monitor` is worse than its best value from before the last `n` checks: NT-ASGD's
    non-monotone test, which ends the paper's fine-tuning (finetune.py: `val > min(logs[:-n])`)."""

    order = NTASGD.order + 5  # last of the epoch's trackers: SaveBestWeights (NTASGD.order + 1) has saved
    skip_in_lr_find = True
    state_key = "nonmono_stop"

    def __init__(self, monitor: str = "valid_loss", n: int = 5, comp: Callable | None = None) -> None:
        super().__init__()
        self.monitor, self.n, self.comp = monitor, _check_n("NonMonotoneStop", n), _comp(monitor, comp)
        self.history: list[float] = []
        self.stopped_epoch: int | None = None  # the epoch after which the test stopped the fit
        self._watch = RecordedValue(monitor)

    def before_fit(self) -> None:
        self._watch.start(self.learn, "NonMonotoneStop")

    def after_epoch(self) -> None:
        val = self._watch.new(self.learn)
        if val is None:
            return
        stop = _worse_than_before(self.history, val, self.n, self.comp)
        self.history.append(val)
        if stop:
            self.stopped_epoch = int(self.learn.epoch)
            log.info("%s %.4f is worse than the best before the last %d checks: stopping after epoch %d.",
                     self.monitor, val, self.n, self.learn.epoch)
            raise CancelFitException()

    def state_dict(self) -> dict[str, Any]:
        """The values checked so far and where the test stopped."""
        return {"history": list(self.history), "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.history = [float(v) for v in sd["history"]]
        self.stopped_epoch = None if sd.get("stopped_epoch") is None else int(sd["stopped_epoch"])


def _check_n(who: str, n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{who} needs n >= 1 (the non-monotone interval), got {n!r}.")
    return n


def _comp(monitor: str, comp: Callable | None) -> Callable:
    if comp is not None:
        return comp
    return np.less if any(s in monitor for s in ("loss", "error", "perplexity")) else np.greater


def _worse_than_before(history: list[float], value: float, n: int, comp: Callable) -> bool:
    """The paper's non-monotone test: more than `n` earlier values, and `value` worse than the best of those
    from before the last `n` (`t > n and value > min(history[:-n])` for a loss)."""
    return len(history) > n and bool(comp(_best(history[:-n], comp), value))


def _best(values: list[float], comp: Callable) -> float:
    best = values[0]
    for v in values[1:]:
        if comp(v, best):
            best = v
    return best
