"""Hyper-parameter schedules and learning-rate suggestions, as pure functions.

A schedule is a callable ``f(pos)`` with ``pos`` in [0, 1], the fraction of training done.
The builders at the bottom give the dictionaries that ``ParamScheduler`` consumes:

- 1cycle: L. N. Smith, "A disciplined approach to neural network hyper-parameters", 2018.
- SGDR: I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017.
- LR range test: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017.

Start and end values may be per-parameter-group sequences; they are turned into numpy
arrays, so a schedule then returns one value per group.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "sched_lin", "sched_cos", "sched_no", "sched_exp", "sched_poly",
    "SchedLin", "SchedCos", "SchedNo", "SchedExp", "SchedPoly",
    "combine_scheds", "combined_cos",
    "one_cycle_scheds", "flat_cos_scheds", "sgdr_scheds", "sgdr_n_epoch",
    "valley", "slide", "minimum", "steep", "knee", "fall",
]

Schedule = Callable[[Any], Any]


def _cos(x: Any) -> Any:
    # math.cos keeps Python floats as floats; tensors and arrays need their own cos.
    if isinstance(x, Tensor):
        return torch.cos(x)
    if isinstance(x, np.ndarray):
        return np.cos(x)
    return math.cos(x)


def _as_value(v: Any) -> Any:
    """A per-group sequence becomes a float array so arithmetic is elementwise."""
    if isinstance(v, slice):
        raise TypeError(
            f"Got the slice {v!r}; a schedule needs a number or one value per parameter "
            "group. Let the Learner spread the slice over its groups first."
        )
    if isinstance(v, (list, tuple)):
        return np.asarray(v, dtype=float)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return float(v)
    return v


def _pos_for(start: Any, end: Any, pos: Any) -> Any:
    """Per-group numpy values cannot mix with a tensor position, so read it as a float."""
    if isinstance(pos, Tensor) and (isinstance(start, np.ndarray) or isinstance(end, np.ndarray)):
        return pos.item()
    return pos


# Plain formulas: (start, end, pos) -> value.

def sched_lin(start: Any, end: Any, pos: Any) -> Any:
    """Linear interpolation from `start` to `end`."""
    # Weighted form rather than start + pos*(end-start): it returns `end` exactly at pos=1.
    return start * (1 - pos) + end * pos


def sched_cos(start: Any, end: Any, pos: Any) -> Any:
    """Half-cosine from `start` (pos=0) to `end` (pos=1), flat at both ends."""
    w = (1 - _cos(math.pi * pos)) / 2  # = (1 + cos(pi*(1-pos)))/2, but exactly 0 and 1 at the ends
    return start * (1 - w) + end * w


def sched_no(start: Any, end: Any, pos: Any) -> Any:
    """Constant `start`; `end` is ignored."""
    return start


def sched_exp(start: Any, end: Any, pos: Any) -> Any:
    """Exponential (linear in log space) from `start` to `end`; both must be positive."""
    return start * (end / start) ** pos


def sched_poly(start: Any, end: Any, pos: Any, power: float) -> Any:
    """Polynomial `start + (end - start) * pos**power`."""
    return start + (end - start) * pos ** power


class _Annealer:
    """A schedule from `start` to `end` following one of the `sched_*` formulas."""

    _func = staticmethod(sched_lin)

    def __init__(self, start: Any, end: Any) -> None:
        self.start, self.end = _as_value(start), _as_value(end)

    def __call__(self, pos: Any) -> Any:
        return self._func(self.start, self.end, _pos_for(self.start, self.end, pos))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.start!r}, {self.end!r})"


class SchedLin(_Annealer):
    """Linear schedule from `start` to `end`."""

    _func = staticmethod(sched_lin)


class SchedCos(_Annealer):
    """Cosine schedule from `start` to `end`."""

    _func = staticmethod(sched_cos)


class SchedNo(_Annealer):
    """Constant schedule at `start`."""

    _func = staticmethod(sched_no)


class SchedExp(_Annealer):
    """Exponential schedule from `start` to `end`, as in the LR range test."""

    _func = staticmethod(sched_exp)


class SchedPoly(_Annealer):
    """Polynomial schedule `start + (end - start) * pos**power`."""

    def __init__(self, start: Any, end: Any, power: float) -> None:
        super().__init__(start, end)
        self.power = power

    def __call__(self, pos: Any) -> Any:
        return sched_poly(self.start, self.end, _pos_for(self.start, self.end, pos), self.power)

    def __repr__(self) -> str:
        return f"SchedPoly({self.start!r}, {self.end!r}, power={self.power!r})"


class _CombinedSched:
    """Piecewise schedule: piece i runs over [bounds[i], bounds[i+1]] of training."""

    def __init__(self, pcts: Sequence[float], scheds: Sequence[Schedule]) -> None:
        self.scheds = list(scheds)
        self.bounds = [0.0]
        for p in pcts:
            self.bounds.append(self.bounds[-1] + float(p))
        self.bounds[-1] = 1.0  # absorb rounding so pos=1 ends the last piece exactly
        # Zero-width pieces can never be entered; only pieces with width are candidates.
        self._live = [i for i in range(len(self.scheds)) if self.bounds[i + 1] > self.bounds[i]]
        self._starts = [self.bounds[i] for i in self._live]

    def __call__(self, pos: Any) -> Any:
        k = max(bisect_right(self._starts, float(pos)) - 1, 0)
        i = self._live[k]
        lo, hi = self.bounds[i], self.bounds[i + 1]
        return self.scheds[i]((pos - lo) / (hi - lo))

    def __repr__(self) -> str:
        pcts = [round(b - a, 6) for a, b in zip(self.bounds, self.bounds[1:])]
        return f"combine_scheds({pcts}, {self.scheds!r})"


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Chain `scheds`, the i-th running over the fraction `pcts[i]` of training."""
    pcts, scheds = list(pcts), list(scheds)
    if len(pcts) != len(scheds) or not pcts:
        raise ValueError(
            f"combine_scheds needs one pct per schedule, got {len(pcts)} pcts and "
            f"{len(scheds)} schedules."
        )
    if any(p < 0 for p in pcts):
        raise ValueError(f"combine_scheds pcts must be non-negative, got {pcts}.")
    if not math.isclose(sum(pcts), 1.0, rel_tol=0, abs_tol=1e-6):
        raise ValueError(f"combine_scheds pcts must sum to 1, got {pcts} (sum {sum(pcts)}).")
    return _CombinedSched(pcts, scheds)


def combined_cos(pct: float, start: Any, middle: Any, end: Any) -> Schedule:
    """Cosine from `start` to `middle` over the first `pct` of training, then to `end`."""
    start, middle, end = _as_value(start), _as_value(middle), _as_value(end)
    return combine_scheds([pct, 1 - pct], [SchedCos(start, middle), SchedCos(middle, end)])


# Builders for the Learner's fit_* methods: each returns {hyper-parameter name: schedule}.

def one_cycle_scheds(
    lr_max: Any,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: Sequence[Any] | None = (0.95, 0.85, 0.95),
) -> dict[str, Schedule]:
    """1cycle: lr warms up lr_max/div -> lr_max, then anneals to lr_max/div_final; mom mirrors it.

    `lr_max` is a number or one value per parameter group. With `moms=None` no 'mom' entry is made.
    """
    lr_max = _as_value(lr_max)
    scheds = {"lr": combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)}
    if moms is not None:
        scheds["mom"] = combined_cos(pct_start, *moms)
    return scheds


def flat_cos_scheds(
    lr: Any, div_final: float = 1e5, pct_start: float = 0.75, mom: Any = None
) -> dict[str, Schedule]:
    """Flat `lr` for `pct_start` of training, then cosine down to lr/div_final.

    Momentum is not scheduled (as in fastai); pass `mom` to pin it with a constant schedule.
    """
    lr = _as_value(lr)
    scheds = {"lr": combined_cos(pct_start, lr, lr, lr / div_final)}
    if mom is not None:
        scheds["mom"] = SchedNo(mom, mom)
    return scheds


def sgdr_n_epoch(n_cycles: int, cycle_len: int, cycle_mult: int = 2) -> int:
    """Epochs SGDR runs: cycle_len * (1 + cycle_mult + ... + cycle_mult**(n_cycles - 1))."""
    if n_cycles < 1 or cycle_len <= 0 or cycle_mult <= 0:
        raise ValueError(
            "SGDR needs n_cycles >= 1, cycle_len > 0 and cycle_mult > 0, got "
            f"n_cycles={n_cycles}, cycle_len={cycle_len}, cycle_mult={cycle_mult}."
        )
    return int(sum(cycle_len * cycle_mult**i for i in range(n_cycles)))


def sgdr_scheds(
    n_cycles: int, cycle_len: int, lr_max: Any, cycle_mult: int = 2
) -> dict[str, Schedule]:
    """SGDR: `n_cycles` cosine decays from lr_max to 0, each `cycle_mult` times longer.

    Train for `sgdr_n_epoch(n_cycles, cycle_len, cycle_mult)` epochs.
    """
    lr_max = _as_value(lr_max)
    sgdr_n_epoch(n_cycles, cycle_len, cycle_mult)  # validates the arguments
    lens = [cycle_len * cycle_mult**i for i in range(n_cycles)]
    pcts = [n / sum(lens) for n in lens]
    return {"lr": combine_scheds(pcts, [SchedCos(lr_max, 0) for _ in lens])}


# LR-finder suggestions. Each takes the recorded (lrs, losses) and the planned number of
# iterations, and returns (suggested_lr, (lr_of_point_to_mark, loss_of_point_to_mark)).

def _curve(lrs: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.asarray(lrs.detach().cpu() if isinstance(lrs, Tensor) else lrs, dtype=float)
    losses = np.asarray(
        losses.detach().cpu() if isinstance(losses, Tensor) else losses, dtype=float
    )
    if lrs.ndim != 1 or lrs.shape != losses.shape or len(lrs) < 2:
        raise ValueError(
            "LR suggestions need two 1-d sequences of the same length >= 2, got lrs of shape "
            f"{lrs.shape} and losses of shape {losses.shape}."
        )
    return lrs, losses


def minimum(lrs: Any, losses: Any, num_it: int | None = None) -> tuple[float, tuple[float, float]]:
    """One tenth of the lr at the lowest loss; marks the lowest-loss point itself."""
    lrs, losses = _curve(lrs, losses)
    i = int(np.nanargmin(losses))
    return float(lrs[i] / 10), (float(lrs[i]), float(losses[i]))


def knee(lrs: Any, losses: Any, num_it: int | None = None, frac: float = 0.8) -> tuple[float, tuple[float, float]]:
    """The lr at which the loss has made `frac` of its fall from the start of the curve to its lowest point:
    where the steep descent levels off, before the minimum (rnnkit's; not in fastai). `fall`'s answer for
    a curve that never falls 8%, such as a pretrained model's.

    On Penn Treebank it is the sweep's best lr (2.0e-2), but on Human Numbers, whose finder curve keeps
    falling for two decades of lr, 17x too high; `fall` is the suggestion rnnkit trains with. The point is
    interpolated in log-lr; a curve that never falls gives `minimum`'s answer."""
    lrs, losses = _curve(lrs, losses)
    if not 0 < frac <= 1:
        raise ValueError(f"knee needs 0 < frac <= 1, got {frac!r}")
    i_min = int(np.nanargmin(losses))
    start, low = float(losses[0]), float(losses[i_min])
    if not start > low:
        return minimum(lrs, losses, num_it)
    return _first_lr_down_to(lrs, losses, i_min, start - frac * (start - low))


def fall(lrs: Any, losses: Any, num_it: int | None = None, rel: float = 0.08) -> tuple[float, tuple[float, float]]:
    """The lr at which the LR finder's loss has fallen `rel` (8%) below where it started (rnnkit's suggestion
    for a model trained from scratch; not in fastai); `knee`'s answer when the loss never falls that far.

    A language model starts near log(vocabulary size) whatever the corpus, and the lr that trains it best
    with a one-cycle schedule is where the range test's first ~100 steps have taken 8% off that: within
    2x of the best lr of a sweep on Human Numbers, Penn Treebank and WikiText-2, where fastai's `valley` is
    10-100x low (README, "Training for a time budget"). Interpolated in log-lr."""
    lrs, losses = _curve(lrs, losses)
    if not 0 < rel < 1:
        raise ValueError(f"fall needs 0 < rel < 1, got {rel!r}")
    i_min = int(np.nanargmin(losses))
    start = float(losses[0])
    target = start - rel * abs(start)
    if not float(losses[i_min]) <= target:
        return knee(lrs, losses, num_it)
    return _first_lr_down_to(lrs, losses, i_min, target)


def _first_lr_down_to(lrs: np.ndarray, losses: np.ndarray, i_min: int, target: float
                      ) -> tuple[float, tuple[float, float]]:
    """The lr where the curve first comes down to `target` (at `i_min`, the lowest point, at the latest),
    interpolated in log-lr between the points either side; the first point when it starts there."""
    j = int(np.argmax(losses[: i_min + 1] <= target))
    if j == 0:
        return float(lrs[0]), (float(lrs[0]), float(losses[0]))
    x0, x1, y0, y1 = np.log(lrs[j - 1]), np.log(lrs[j]), float(losses[j - 1]), float(losses[j])
    lr = float(np.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0)))  # y0 > target >= y1: no division by 0
    return lr, (lr, float(target))


def steep(lrs: Any, losses: Any, num_it: int | None = None) -> tuple[float, tuple[float, float]]:
    """The lr where the loss falls fastest against log(lr)."""
    lrs, losses = _curve(lrs, losses)
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    i = int(np.nanargmin(slopes))  # slope i joins points i and i+1; mark the left one
    return float(lrs[i]), (float(lrs[i]), float(losses[i]))


def valley(lrs: Any, losses: Any, num_it: int | None = None) -> tuple[float, tuple[float, float]]:
    """An lr in the middle of the longest valley: the longest decreasing run of losses.

    The valley is the span of the longest strictly decreasing subsequence (O(n^2) dynamic
    programme); as in fastai, the suggestion is the middle of its middle third.
    """
    lrs, losses = _curve(lrs, losses)
    n = len(losses)
    length = np.ones(n, dtype=int)  # longest decreasing subsequence ending at i
    first = np.arange(n)  # where that subsequence starts (earliest among the longest)
    for i in range(1, n):
        higher = np.flatnonzero(losses[:i] > losses[i])
        if len(higher):
            best = length[higher].max()
            candidates = higher[length[higher] == best]
            length[i] = best + 1
            first[i] = first[candidates].min()
    end = int(np.argmax(length))  # first end reaching the maximum length
    start = int(first[end])
    third = (end - start) / 3
    i = start + int(third) + int(third / 2)
    return float(lrs[i]), (float(lrs[i]), float(losses[i]))


def slide(
    lrs: Any,
    losses: Any,
    num_it: int | None = None,
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> tuple[float, tuple[float, float]]:
    """The interval-slide rule: where the loss curve's slope stops changing, times `adjust_value`.

    A window `lr_diff` points wide starts at the right end of the curve and slides left while
    the loss gradients at its two ends differ by more than `thresh`. The suggestion is the lr
    at the left edge of the last window that still differed; its loss is interpolated in log-lr.
    """
    lrs, losses = _curve(lrs, losses)
    grad = np.gradient(losses)
    right = len(losses) - 1
    left = max(right - lr_diff, 0)
    found = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        found = lrs[left]
        left, right = left - 1, right - 1
    lr = float(found) * adjust_value
    loss = float(np.interp(np.log10(lr), np.log10(lrs), losses))
    return lr, (lr, loss)
