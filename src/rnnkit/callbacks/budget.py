"""Train for a time budget: the schedule is fitted to the number of steps that fit in it.

`TimeBudget(seconds)` (or `learn.fit_one_cycle(n_epoch, budget=seconds)`) times the training steps,
plans how many steps fit in the budget, and sets `pct_train` (what `ParamScheduler` reads) from the
step count over that plan, so a one-cycle schedule warms up, peaks and anneals within the budget and
reaches its end on the last step. `n_epoch` stays an upper bound: a budget longer than `n_epoch`
epochs plans `n_epoch` epochs. Validation is not counted in the budget; its time is reported.

The plan: the first `warmup` steps (allocations, caches, the first autocast casts) are not timed; the
next `measure` steps give the first estimate of the step time, and the plan is made again every
`replan_every` steps from the pace of the steps since the last plan, so a machine that slows down or speeds
up moves the end with it. Until the first plan the schedule follows the clock (`pct_train` = time used / budget, or the
share of the `n_epoch` epochs done when that is larger); after it, the clock stays a floor under the plan's
position, so on a machine that slows down after the last plan the schedule still ends with the budget.
Training stops when the plan's last step is done or the budget is spent, whichever comes first; the
epoch it stops in is validated and logged like any other, and the fit ends.

With several processes the plan is made from the slowest process's clock (one all-reduce per plan), and
the stop is decided by the step count alone, so all processes stop at the same step. A resumed run
(`Checkpointer`) continues with what was left of the budget (`state_key`).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from rnnkit.distributed import all_reduce_max, is_distributed, num_distrib
from rnnkit.training.callback import Callback, TrainEvalCallback
from rnnkit.training.events import CancelFitException, CancelTrainException
from rnnkit.training.recorder import Recorder

__all__ = ["TimeBudget"]

log = logging.getLogger(__name__)


def _sync(learn: Any) -> None:
    """Wait for the GPU, so that the clock reads work done, not work queued (never on CPU)."""
    p = next(learn.model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


class TimeBudget(Callback):
    """Fit the training schedule to `seconds` of training and stop on time.

    After the fit, `report()` says how much was used: training and validation seconds, steps, tokens,
    epochs (fractional) and why training stopped.
    """

    order = TrainEvalCallback.order + 1  # sets pct_train before the schedulers (60) read it
    skip_in_lr_find = True
    state_key = "time_budget"

    def __init__(self, seconds: float, warmup: int = 3, measure: int = 10, replan_every: int = 25) -> None:
        super().__init__()
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"TimeBudget needs a positive number of seconds, got {seconds!r}")
        if warmup < 0 or measure < 1 or replan_every < 1:
            raise ValueError("TimeBudget needs warmup >= 0, measure >= 1 and replan_every >= 1")
        self.seconds, self.warmup, self.measure, self.replan_every = float(seconds), warmup, measure, replan_every
        self._epoch_len = 1
        self._reset()

    def _reset(self) -> None:
        self.train_s = self.valid_s = 0.0  # time used by training and by validation
        self.steps = self.tokens = 0
        self.timed_steps = 0  # steps after the warm-up, up to the last plan
        self.planned: int | None = None  # the number of steps the schedule is fitted to
        self.stopped_by = ""
        self._pct = 0.0
        self._t0: float | None = None  # start of the current training phase
        self._phase_s = 0.0  # train_s at the start of the current phase
        self._last_clock = 0.0  # train time when the last timed step ended
        self._synced_used = 0.0  # the slowest process's train time at the last plan

    # ---- clock ----
    def _used(self) -> float:
        """Training seconds used so far (validation excluded)."""
        return self.train_s if self._t0 is None else self._phase_s + time.perf_counter() - self._t0

    def before_fit(self) -> None:
        self._reset()
        self._epoch_len = max(len(self.learn.dls.train), 1)
        self._max_steps = self.learn.n_epoch * self._epoch_len

    def before_epoch(self) -> None:
        if self.stopped_by:
            raise CancelFitException()  # the last epoch was validated and logged; the fit ends here

    def before_train(self) -> None:
        self._phase_s, self._t0 = self.train_s, time.perf_counter()  # the clock goes on where it stopped

    def after_train(self) -> None:
        _sync(self.learn)
        self.train_s, self._t0 = self._used(), None
        rec = self.learn.get_cb(Recorder)
        if self.stopped_by and rec is not None:
            # A budget stop ends the epoch's training normally (it is raised as CancelTrainException to
            # leave the batch loop): its row keeps its training loss, which a cancelled phase would drop.
            rec.cancel_train = False

    def before_validate(self) -> None:
        self._v0 = time.perf_counter()

    def after_validate(self) -> None:
        _sync(self.learn)
        self.valid_s += time.perf_counter() - self._v0

    # ---- schedule ----
    def before_batch(self) -> None:
        if not self.learn.training:
            return
        if self.stopped_by:  # the step that ended the plan ran all its after_batch callbacks; this one is not run
            raise CancelTrainException()
        # A floor: a machine slower than planned still ends the schedule. With several processes, the clock
        # read at the last plan (the same on all), so that every process steps at the same lr.
        clock = self._synced_used / self.seconds if is_distributed() else self._used() / self.seconds
        if self.planned is None:  # until the first plan: the clock, or the epochs when they end first
            pct = max(clock, self.steps / self._max_steps)
        else:
            pct = max(self.steps / self.planned, clock)
        self._pct = max(self._pct, min(pct, 1.0))  # never backwards, even when a new plan is longer
        self.learn.pct_train = self._pct

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.steps += 1
        yb = self.learn.yb
        if yb:
            self.tokens += yb[0].numel() * num_distrib()
        timing = self.steps > self.warmup
        if timing and (self.steps - self.warmup) % (self.measure if self.planned is None else self.replan_every) == 0:
            self._plan()
        elif not timing:
            self._last_clock = self._used()
        if self.planned is not None and self.steps >= self.planned:
            self._stop("schedule end" if self.planned < self._max_steps else "epochs")
        elif not is_distributed() and self._used() >= self.seconds:  # a guard; the plan normally ends first
            self._stop("budget")

    def _plan(self) -> None:
        _sync(self.learn)
        used = self._used()
        window_s, window_steps = used - self._last_clock, self.steps - self.warmup - self.timed_steps
        self.timed_steps = self.steps - self.warmup
        self._last_clock = used
        if is_distributed():  # the slowest process sets the pace of all
            t = all_reduce_max(torch.tensor([used, window_s], dtype=torch.float64))
            used, window_s = float(t[0]), float(t[1])
        self._synced_used = used
        # The pace of the steps since the last plan: a machine that slows down or speeds up moves the end now,
        # where the mean since the start would follow it only slowly.
        step_s = window_s / max(window_steps, 1)
        left = max(self.seconds - used, 0.0)
        self.planned = min(self.steps + int(left / step_s) if step_s > 0 else self._max_steps, self._max_steps)
        self.planned = max(self.planned, self.steps)

    def _stop(self, why: str) -> None:
        self.stopped_by = why  # the next batch leaves the loop; or the next epoch ends the fit

    def after_fit(self) -> None:
        if not self.stopped_by:
            self.stopped_by = "epochs"
        log.info("time budget: %s", self.describe())

    # ---- report ----
    def report(self) -> dict[str, Any]:
        """What the budget bought: seconds of training (`train_s`) and validation (`valid_s`), steps,
        tokens, epochs (fractional), the plan and why training stopped."""
        n = self._epoch_len
        return {"budget_s": self.seconds, "train_s": self.train_s, "valid_s": self.valid_s, "steps": self.steps,
                "tokens": self.tokens, "epochs": self.steps / n, "planned_steps": self.planned,
                "stopped_by": self.stopped_by}

    def describe(self) -> str:
        """The report in one line."""
        r = self.report()
        return (f"{r['train_s']:.0f}s of the {r['budget_s']:.0f}s budget used ({100 * r['train_s'] / r['budget_s']:.0f}%)"
                f" for {r['steps']} steps, {r['tokens']:,} tokens, {r['epochs']:.2f} epochs; validation "
                f"{r['valid_s']:.0f}s (not counted); stopped by {r['stopped_by'] or 'nothing yet'}")

    # ---- resume ----
    def state_dict(self) -> dict[str, Any]:
        """The budget used so far and the plan (what a resumed run continues from)."""
        return {"train_s": self._used(), "valid_s": self.valid_s, "steps": self.steps, "tokens": self.tokens,
                "timed_steps": self.timed_steps, "planned": self.planned,
                "pct": self._pct, "seconds": self.seconds}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the budget left is the one the saved run had left."""
        self.train_s = self._phase_s = self._last_clock = float(sd["train_s"])
        self.valid_s, self.steps, self.tokens = float(sd["valid_s"]), int(sd["steps"]), int(sd["tokens"])
        self.timed_steps = int(sd["timed_steps"])
        self.planned = None if sd["planned"] is None else int(sd["planned"])
        self._pct = float(sd["pct"])
        if self._t0 is not None:
            self._t0 = time.perf_counter()
