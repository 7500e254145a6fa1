"""`OptimWrapper`: a `torch.optim` optimizer behind the `Optimizer` interface, with fastai's hyper-parameter
names (`pytorch_hp_map`) and its helpers for torch parameter groups (`detuplify_pg`, `set_item_pg`)."""
from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any, Callable, Iterable

import numpy as np
import torch
from fastcore.foundation import L
from torch import Tensor

from rnnkit.optim.optimizer import BaseOptimizer
from rnnkit.optim.params import as_param_lists, check_lr, is_param_group, spread_hyper

__all__ = ["OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map"]


def _torch_state_to_param_devices(opt: torch.optim.Optimizer) -> None:
    """Move a torch optimizer's state to its parameters' devices as its `load_state_dict` places it: all
    of it, but a `step` count on the CPU stays there unless the group is `capturable` or `fused`."""
    for group in opt.param_groups:
        step_on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in st.items():
                if (isinstance(v, Tensor) and v.device != p.device
                        and not (k == "step" and v.device.type == "cpu" and not step_on_device)):
                    st[k] = v.to(p.device)


# torch hyper-parameter name -> rnnkit name; `name__i` is item i of a tuple such as `betas`.
pytorch_hp_map = {"momentum": "mom", "weight_decay": "wd", "alpha": "sqr_mom",
                  "betas__0": "mom", "betas__1": "sqr_mom"}


def detuplify_pg(d: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of torch param group `d` (all but 'params'), a tuple or list value
    `k=(a, b)` split into `k__0=a, k__1=b`."""
    res: dict[str, Any] = {}
    for k, v in d.items():
        if k == "params":
            continue
        if isinstance(v, (tuple, list, L)):
            res.update({f"{k}__{i}": x for i, x in enumerate(v)})
        else:
            res[k] = v
    return res


def set_item_pg(pg: dict[str, Any], k: str, v: Any) -> dict[str, Any]:
    """Set `k` of param group `pg` to `v` in place and return `pg`; `name__i` replaces item i of the
    tuple `pg[name]` (the inverse of `detuplify_pg` for one key)."""
    name, sep, idx = k.rpartition("__")
    if not sep or not idx.isdigit() or not isinstance(pg.get(name), (tuple, list, L)):
        pg[k] = v
        return pg
    items, i = pg[name], int(idx)
    if i >= len(items):
        raise ValueError(f"set_item_pg: `{k}` asks for item {i} of `{name}`, which has {len(items)} "
                         f"items ({items!r}); use an index below {len(items)}.")
    pg[name] = tuple(v if j == i else x for j, x in enumerate(items))
    return pg


def _torch_groups(items: list[Any]) -> list[dict[str, Any]]:
    """`params` for a torch optimizer, as fastai converts them: a torch-style dict group goes on as it
    is (torch fills in its defaults), any other group becomes `{'params': group}`."""
    if not any(isinstance(x, dict) for x in items):
        return [{"params": g} for g in as_param_lists(items)]
    groups = []
    for i, x in enumerate(items):
        if isinstance(x, dict):
            if "params" not in x:
                raise ValueError(f"Parameter group {i} is a dict without a 'params' key (keys: "
                                 f"{sorted(map(str, x))}); write it as {{'params': [...], 'lr': ...}}.")
            groups.append(x)
        elif is_param_group(x):
            groups.append({"params": list(x)})
        else:
            raise TypeError(f"Item {i} of params is a {type(x).__name__}, next to torch-style dict "
                            "groups; pass a list of groups only (dicts or lists of parameters).")
    return groups


def _split_kwargs(opt_cls: Callable[..., Any], hp_map: dict[str, str], kwargs: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kwargs `opt_cls` takes (renamed to torch names), and those to set once it is built."""
    try:
        accepted = set(inspect.signature(opt_cls).parameters)
    except (TypeError, ValueError):
        accepted = set()
    now, later = {}, {}
    for k, v in kwargs.items():
        torch_names = [t for t, r in hp_map.items() if r == k]
        direct = [t for t in torch_names if t in accepted]
        if isinstance(v, (slice, list, np.ndarray)):  # per-group values: spread by set_hyper
            later[k] = v
        elif k in accepted or (not accepted and not torch_names):
            now[k] = v
        elif direct:
            now[direct[0]] = v
        else:
            later[k] = v
    return now, later


class OptimWrapper(BaseOptimizer):
    """A `torch.optim` optimizer behind the `Optimizer` interface, with rnnkit hyper-parameter names."""

    def __init__(self, params: Any, opt: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
                 hp_map: dict[str, str] | None = None, convert_groups: bool = True,
                 **kwargs: Any) -> None:
        hp_map = dict(pytorch_hp_map if hp_map is None else hp_map)
        own: list[set[str]] = []  # the keys each torch-style dict group sets itself
        if isinstance(opt, torch.optim.Optimizer):
            if params is not None:
                raise ValueError("OptimWrapper got both `params` and an already built optimizer; "
                                 "pass params=None with a built optimizer, or pass its class.")
            self.opt = opt
        else:
            items = [params] if isinstance(params, (Tensor, dict)) else list(params)
            torch_params: Any = _torch_groups(items) if convert_groups else items
            if all(isinstance(g, dict) for g in torch_params):
                own = [set(g) for g in torch_params]  # before torch adds its defaults to them
            now, kwargs = _split_kwargs(opt, hp_map, kwargs)
            self.opt = opt(torch_params, **now)
        keys = detuplify_pg(self.opt.param_groups[0])
        self._fwd = {k: hp_map.get(k, k) for k in keys}
        self._bwd = {v: k for k, v in reversed(list(self._fwd.items()))}
        self.state = defaultdict(dict)
        self.train_bn = True
        self.frozen_idx = 0
        self._devices: tuple[Any, ...] = ()  # of each group's first parameter when last stepped
        for k, v in kwargs.items():
            self._set_default(k, v, own)

    def _set_default(self, k: str, v: Any, own: list[set[str]]) -> None:
        """Set a constructor kwarg that `opt` did not take: like torch's defaults, a scalar leaves
        the groups that set that hyper-parameter themselves alone; per-group values set every group."""
        if isinstance(v, (slice, list, np.ndarray)) or not any(len(o) > 1 for o in own):
            self.set_hyper(k, v)
            return
        torch_key = self._torch_key(k)
        values = spread_hyper(k, v, len(self.opt.param_groups))
        values = [detuplify_pg(g)[torch_key] if any(torch_key == o or torch_key.startswith(f"{o}__")
                                                    for o in mine) else x
                  for g, mine, x in zip(self.opt.param_groups, own, values)]
        if k == "lr":
            check_lr(values)
        self._set_hyper(k, values)

    @property
    def hypers(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The hyper-parameters of each group under rnnkit names (`lr, mom, sqr_mom, eps, wd`), and
        every other key of the torch group under its own name, as fastai's (see `detuplify_pg`)."""
        return [{self._fwd.get(k, k): v for k, v in detuplify_pg(g).items()}
                for g in self.opt.param_groups]

    def _torch_key(self, k: str) -> str:
        """The torch name (`betas__0` for an item of a tuple) of hyper-parameter `k`, an rnnkit or torch name."""
        torch_key = self._bwd.get(k, k if k in self._fwd else None)
        if torch_key is None:
            raise ValueError(f"{type(self.opt).__name__} has no hyper-parameter `{k}`; it has "
                             f"{', '.join(sorted(self._bwd))}.")
        return torch_key

    def _set_hyper(self, k: str, values: list[Any]) -> None:
        torch_key = self._torch_key(k)
        for group, v in zip(self.opt.param_groups, values):
            set_item_pg(group, torch_key, v)

    @property
    def param_lists(self) -> list[list[Tensor]]:
        """The parameters of each group of the wrapped optimizer; settable, as in fastai."""
        return [g["params"] for g in self.opt.param_groups]

    @param_lists.setter
    def param_lists(self, v: Iterable[Iterable[Tensor]]) -> None:
        for group, params in zip(self.opt.param_groups, v):  # like fastai, one list per group
            group["params"] = list(params)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's own `param_groups` (torch names)."""
        return self.opt.param_groups

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step the wrapped optimizer, leaving frozen groups untouched."""
        devices = tuple([g["params"][0].device if g["params"] else None for g in self.opt.param_groups])
        if devices != self._devices:  # first step, or the model moved since: its state follows
            _torch_state_to_param_devices(self.opt)
            self._devices = devices
        hidden = [(p, p.grad) for pl in self.param_lists[: self.frozen_idx] for p in pl
                  if p.grad is not None and not self._trains_when_frozen(p)]
        for p, _ in hidden:
            p.grad = None
        try:
            return self.opt.step(closure)
        finally:
            for p, g in hidden:
                p.grad = g

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (by default drop, as torch does) the gradients."""
        self.opt.zero_grad(set_to_none=set_to_none)

    def clear_state(self) -> None:
        """Drop the wrapped optimizer's state, keeping the per-parameter flags."""
        self.opt.state = defaultdict(dict)
        super().clear_state()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's `state_dict`."""
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Load a `state_dict` into the wrapped optimizer."""
        self.opt.load_state_dict(sd)
