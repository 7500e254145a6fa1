"""`Lookahead` around any optimizer, and `ranger` (RAdam inside Lookahead).

Lookahead is from Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back" (2019):
the wrapped optimizer moves the fast weights for `k` steps, then the slow weights move `alpha`
of the way towards them and the fast weights restart from the slow ones.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from rnnkit.optim.more import RAdam

__all__ = ["Lookahead", "ranger"]


def _as_real(x: Any) -> float | None:
    """`x` as a float if it is a real number (Python or numpy), else None."""
    return float(x) if isinstance(x, numbers.Real) else None


class Lookahead:
    """Wrap an rnnkit optimizer: every `k` steps, pull the weights back towards slow weights."""

    def __init__(self, opt: Any, k: int = 6, alpha: float = 0.5) -> None:
        if _as_real(k) is None or int(k) != k or k < 1:  # fastai divides by k
            raise ValueError(f"Lookahead needs a whole number k >= 1 (steps between syncs), got {k!r}.")
        if _as_real(alpha) is None or math.isnan(alpha):  # any other alpha is fastai's rule
            raise ValueError(f"Lookahead needs a number alpha (how far the slow weights move; "
                             f"0.5 in the paper), got {alpha!r}.")
        if isinstance(opt, torch.optim.Optimizer):
            raise TypeError("Lookahead wraps an rnnkit optimizer; wrap a torch.optim optimizer "
                            "first: Lookahead(OptimWrapper(None, opt)).")
        self.opt: Any = opt
        self.k, self.alpha = int(k), float(alpha)
        self.count = 0
        self.slow_weights: list[Tensor] | None = None  # one per parameter, in param_lists order

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: anything else is the wrapped optimizer's.
        if name.startswith("__") or name == "opt":
            raise AttributeError(name)
        return getattr(self.opt, name)

    def _params(self) -> list[Tensor]:
        return [p for pl in self.opt.param_lists for p in pl]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step the wrapped optimizer; every `k`-th step, sync the slow and fast weights."""
        if self.slow_weights is None:
            self.slow_weights = [p.detach().clone() for p in self._params()]
        loss = self.opt.step(closure)
        self.count += 1
        if self.count % self.k == 0:
            fast = self._params()
            # the model may have moved since the slow weights were made or loaded: they follow it
            self.slow_weights = [s if s.device == p.device else s.to(p.device)
                                 for s, p in zip(self.slow_weights, fast)]
            torch._foreach_lerp_(self.slow_weights, fast, self.alpha)
            torch._foreach_copy_(fast, self.slow_weights)
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero (or drop) the gradients."""
        self.opt.zero_grad(set_to_none=set_to_none)

    def clear_state(self) -> None:
        """Drop the wrapped optimizer's state and the slow weights (made again at the next step)."""
        self.opt.clear_state()
        self.slow_weights, self.count = None, 0

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's `state_dict` plus `'lookahead'`: the step count and slow weights."""
        return {**self.opt.state_dict(),
                "lookahead": {"count": self.count, "slow_weights": self.slow_weights}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Load a `state_dict`, copying the slow weights to their parameters' devices."""
        sd = dict(sd)
        la = sd.pop("lookahead", None)
        self.opt.load_state_dict(sd)
        if la is None:
            self.count, self.slow_weights = 0, None
            return
        params, slow = self._params(), la["slow_weights"]
        if slow is not None and [tuple(s.shape) for s in slow] != [tuple(p.shape) for p in params]:
            raise ValueError(f"The state dict has {len(slow)} slow weights that do not match the "
                             f"shapes of this optimizer's {len(params)} parameters.")
        self.count = int(la["count"])
        self.slow_weights = None if slow is None else [
            s.to(device=p.device, dtype=p.dtype, copy=True) for s, p in zip(slow, params)]

    # The rest is the wrapped optimizer's interface, so Learner and schedulers see no difference.
    @property
    def param_lists(self) -> list[list[Tensor]]:
        """The parameter groups of the wrapped optimizer (settable, as in fastai)."""
        return self.opt.param_lists

    @param_lists.setter
    def param_lists(self, v: list[list[Tensor]]) -> None:
        self.opt.param_lists = v

    @property
    def hypers(self) -> list[dict[str, Any]]:
        """The hyper-parameters of each group of the wrapped optimizer."""
        return self.opt.hypers

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        """The wrapped optimizer's per-parameter state."""
        return self.opt.state

    @property
    def param_groups(self) -> Any:
        """The wrapped optimizer's `param_groups`."""
        return self.opt.param_groups

    @param_groups.setter
    def param_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        self.opt.param_groups = groups

    @property
    def impl(self) -> str:
        """The wrapped optimizer's step implementation ('auto', 'foreach' or 'per_param')."""
        return self.opt.impl

    @impl.setter
    def impl(self, v: str) -> None:
        self.opt.impl = v

    @property
    def frozen_idx(self) -> int:
        """The index of the first trained parameter group."""
        return self.opt.frozen_idx

    @property
    def train_bn(self) -> bool:
        """Whether `force_train` parameters (batch-norm) still train in frozen groups."""
        return self.opt.train_bn

    @train_bn.setter
    def train_bn(self, v: bool) -> None:
        self.opt.train_bn = v

    def all_params(self, n: slice | int = slice(None), with_grad: bool = False) -> list[Any]:
        """`(p, param_list, state, hypers)` for each parameter of the groups selected by `n`."""
        return self.opt.all_params(n, with_grad)

    def set_hyper(self, k: str, v: Any) -> None:
        """Set hyper-parameter `k` of the wrapped optimizer (a scalar, one per group, or a slice)."""
        self.opt.set_hyper(k, v)

    def set_hypers(self, **kwargs: Any) -> None:
        """Set several hyper-parameters of the wrapped optimizer."""
        self.opt.set_hypers(**kwargs)

    def freeze_to(self, n: int) -> None:
        """Freeze the parameter groups before `n`."""
        self.opt.freeze_to(n)

    def freeze(self) -> None:
        """Freeze every parameter group but the last."""
        self.opt.freeze()

    def unfreeze(self) -> None:
        """Make every parameter group trainable."""
        self.opt.unfreeze()


def ranger(params: Iterable[Tensor] | Iterable[Sequence[Tensor]], lr: float | slice,
           mom: float = 0.95, sqr_mom: float = 0.99, eps: float = 1e-6, wd: float = 0.01,
           beta: float = 0.0, k: int = 6, alpha: float = 0.5, decouple_wd: bool = True) -> Lookahead:
    """Ranger: `RAdam` inside `Lookahead`, with fastai's defaults."""
    return Lookahead(RAdam(params, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, beta=beta,
                           decouple_wd=decouple_wd), k=k, alpha=alpha)
