"""The Learner's schedule methods: `fit_one_cycle` (1cycle, Smith 2018), `fit_flat_cos`, `fit_sgdr`
(SGDR, Loshchilov & Hutter 2016), `fine_tune`, and `lr_find` (the LR range test, Smith 2015). Each builds
a `ParamScheduler` or `LRFinder` and calls `fit`; `Learner` inherits them, so they are ordinary methods."""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from rnnkit.callbacks.budget import TimeBudget
from rnnkit.callbacks.schedule import LRFinder, ParamScheduler
from rnnkit.schedules import flat_cos_scheds, one_cycle_scheds, sgdr_n_epoch, sgdr_scheds, valley
from rnnkit.training.callback import Callback, as_cb_list
from rnnkit.training.recorder import Recorder

__all__ = ["ScheduleMethods"]


class ScheduleMethods:
    """`fit` with a schedule, and the LR finder; mixed into `Learner`."""

    if TYPE_CHECKING:  # what these methods use of the Learner
        opt: Any
        lr: Any
        moms: tuple[float, float, float]
        dls: Any
        _cbs: list[Callback]

        def create_opt(self) -> None: ...
        def fit(self, n_epoch: int, lr: Any = None, wd: float | None = None, cbs: Any = None,
                reset_opt: bool = False, start_epoch: int = 0) -> None: ...
        def freeze(self) -> None: ...
        def unfreeze(self) -> None: ...
        def get_cb(self, cls: type) -> Any: ...
        def no_logging(self) -> Any: ...
        def removed_cbs(self, cbs: Any) -> Any: ...

    def _lr_max(self, lr_max: Any) -> np.ndarray:
        if self.opt is None:
            self.create_opt()
        self.opt.set_hyper("lr", self.lr if lr_max is None else lr_max)
        return np.array([h["lr"] for h in self.opt.hypers], dtype=np.float64)

    def fit_one_cycle(self, n_epoch: int, lr_max: Any = None, div: float = 25.0,
                      div_final: float = 1e5, pct_start: float = 0.25, wd: float | None = None,
                      moms: tuple[float, float, float] | None = None, cbs: Any = None,
                      reset_opt: bool = False, start_epoch: int = 0, budget: float | None = None) -> None:
        """Train with the 1cycle policy (Smith, 2018): cosine lr warm-up then annealing, momentum the other way.

        With `budget` (seconds of training, validation not counted) the cycle is fitted to the steps that
        fit in it and training stops on time (`TimeBudget`); `n_epoch` is then an upper bound."""
        if reset_opt:
            self.opt = None
        lrs = self._lr_max(lr_max)
        moms = self.moms if moms is None else moms
        scheds = one_cycle_scheds(_groups(lrs), div=div, div_final=div_final, pct_start=pct_start,
                                  moms=moms)
        self.fit(n_epoch, cbs=[ParamScheduler(scheds)] + _budget(budget) + as_cb_list(cbs), wd=wd,
                 start_epoch=start_epoch)

    def fit_flat_cos(self, n_epoch: int, lr: Any = None, div_final: float = 1e5,
                     pct_start: float = 0.75, wd: float | None = None, cbs: Any = None,
                     reset_opt: bool = False, start_epoch: int = 0, budget: float | None = None) -> None:
        """Train at a flat lr, then anneal it with a cosine for the last `1-pct_start` of the steps (of the
        steps that fit in `budget` seconds, when given: see `fit_one_cycle`)."""
        if reset_opt:
            self.opt = None
        lrs = self._lr_max(lr)
        sched = flat_cos_scheds(_groups(lrs), div_final=div_final, pct_start=pct_start)
        self.fit(n_epoch, cbs=[ParamScheduler(sched)] + _budget(budget) + as_cb_list(cbs), wd=wd,
                 start_epoch=start_epoch)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, lr_max: Any = None, cycle_mult: int = 2,
                 cbs: Any = None, reset_opt: bool = False, wd: float | None = None,
                 start_epoch: int = 0) -> None:
        """Train with cosine annealing and warm restarts (SGDR), cycles growing by `cycle_mult`."""
        if reset_opt:
            self.opt = None
        n_epoch = sgdr_n_epoch(n_cycles, cycle_len, cycle_mult)
        sched = sgdr_scheds(n_cycles, cycle_len, _groups(self._lr_max(lr_max)), cycle_mult=cycle_mult)
        self.fit(n_epoch, cbs=[ParamScheduler(sched)] + as_cb_list(cbs), wd=wd, start_epoch=start_epoch)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1,
                  lr_mult: float = 100, pct_start: float = 0.3, div: float = 5.0, **kwargs: Any) -> None:
        """Train the head with the body frozen, then everything with discriminative lrs."""
        self.freeze()
        self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99, **kwargs)
        base_lr /= 2
        self.unfreeze()
        self.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start,
                           div=div, **kwargs)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100,
                stop_div: bool = True, show_plot: bool = True,
                suggest_funcs: Sequence[Callable] = (valley,)) -> Any:
        """The LR range test (Smith, 2015): grow the lr exponentially, watch the loss, restore everything."""
        n_epoch = max(1, math.ceil(num_it / max(len(self.dls.train), 1)))
        cb = LRFinder(start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)
        if self.opt is None:
            self.create_opt()
        opt_state = copy.deepcopy(self.opt.state_dict())  # before fit changes the hypers
        with self.no_logging(), self.removed_cbs([c for c in self._cbs if c.skip_in_lr_find]):
            self.fit(n_epoch, cbs=cb)
        self.opt.load_state_dict(opt_state)
        return cb.suggest(self.get_cb(Recorder), suggest_funcs, show_plot=show_plot)


def _budget(seconds: float | None) -> list[Callback]:
    """A `TimeBudget` for `seconds`, or none."""
    if seconds is None:
        return []
    return [TimeBudget(seconds)]


def _groups(lrs: np.ndarray) -> Any:
    """One lr per group as a list, or a float when there is one group (schedules stay scalar)."""
    return float(lrs[0]) if len(lrs) == 1 else lrs.tolist()

