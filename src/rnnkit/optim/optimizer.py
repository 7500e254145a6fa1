"""`Optimizer`, built from stepper functions, and `OptimWrapper` around `torch.optim` optimizers."""
from __future__ import annotations

import inspect
import math
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from fastcore.foundation import L
from torch import Tensor

from rnnkit.optim.foreach import IMPLS, _explain_stepper_error, _stepper_defaults, batched_step
from rnnkit.optim.foreach import step_path as _step_path

__all__ = ["Optimizer", "OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map"]

Stepper = Callable[..., Any]


def _to_plain(v: Any) -> Any:
    """A one-element tensor or numpy scalar as a Python number; anything else unchanged."""
    if isinstance(v, (Tensor, np.ndarray, np.generic)) and np.size(v) == 1:
        return v.item()
    return v


def _spread(k: str, v: Any, n: int) -> list[Any]:
    """One value of hyper-parameter `k` per parameter group, from a scalar, a sequence or a slice."""
    if isinstance(v, slice):
        lo, hi = _to_plain(v.start), _to_plain(v.stop)
        if not lo:  # fastai: the last group gets hi, the others hi/10
            return [hi / 10] * (n - 1) + [hi]
        if n == 1:
            return [hi]
        if lo * hi < 0:  # fastai's geometric spread would give complex numbers
            raise ValueError(f"set_hyper('{k}', {v!r}): use slice(lo, hi) with lo and hi of the "
                             "same sign (spread geometrically) or slice(None, hi).")
        ratio = (hi / lo) ** (1 / (n - 1))  # as fastai, `v.step` is ignored; hi=0 gives [lo, 0, ...]
        return [lo] + [lo * ratio**i for i in range(1, n - 1)] + [hi]
    if isinstance(v, (Tensor, np.ndarray)):
        v = [v.item()] if np.size(v) == 1 else v.flatten().tolist()
    if isinstance(v, (list, tuple)):
        values = [_to_plain(x) for x in v]
        if len(values) == 1:  # like fastai, a single value goes to every group
            return values * n
        if len(values) != n:
            raise ValueError(f"set_hyper('{k}', ...) got {len(values)} values for {n} parameter "
                             "groups; pass one value, one value per group, or a slice.")
        return values
    return [_to_plain(v)] * n


def _is_group(x: Any) -> bool:
    """Whether `x`, an item of `params`, is a parameter group rather than a parameter."""
    if isinstance(x, (list, tuple)):
        return True
    return not isinstance(x, (Tensor, np.ndarray, str, bytes, dict)) and isinstance(x, Iterable)


def _as_param_lists(params: Any) -> list[list[Any]]:
    """Parameter groups as fastai makes them: one group, or one per item if the first item is a list.

    Parameters are usually tensors, but like fastai's any object is kept (its bookkeeping works;
    `step` skips what has no `.grad`). A generator or tuple of parameters counts as a group too.
    """
    items = [params] if isinstance(params, Tensor) else list(params)
    if not items:
        raise ValueError("The optimizer got no parameters; pass model.parameters() or a list of "
                         "parameter groups (lists of tensors).")
    if isinstance(items[0], dict):
        raise TypeError("Optimizer takes parameters or lists of parameters, not torch-style "
                        "{'params': ...} dicts; pass [group['params'] for group in groups] and set "
                        "per-group values with set_hyper, or use OptimWrapper.")
    groups = [list(g) for g in items] if _is_group(items[0]) else [items]
    if not any(groups):
        raise ValueError(f"The optimizer got {len(groups)} parameter groups but no parameters.")
    tensors = [p for g in groups for p in g if isinstance(p, Tensor)]
    if len({id(p) for p in tensors}) != len(tensors):
        warnings.warn("Some parameters appear more than once in the parameter groups; as in fastai, "
                      "each step updates them once per appearance. Give each parameter to one group.",
                      stacklevel=3)
    return groups


def _check_lr(values: list[Any]) -> None:
    for i, v in enumerate(values):
        if isinstance(v, float) and math.isnan(v):
            raise ValueError(f"lr is NaN for parameter group {i}; pass a number (lr=0 leaves the "
                             "parameters unchanged).")


class _BaseOptimizer:
    """What `Optimizer` and `OptimWrapper` share: parameter access, hyper-parameter setting, freezing."""

    _keep_on_clear = ["force_train", "do_wd"]
    param_lists: list[list[Tensor]]
    hypers: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]
    train_bn: bool
    frozen_idx: int

    def all_params(self, n: slice | int = slice(None), with_grad: bool = False
                   ) -> list[tuple[Tensor, list[Tensor], dict[str, Any], dict[str, Any]]]:
        """`(p, param_list, state, hypers)` for each parameter of the groups selected by `n`
        (only those with a `.grad` that is not None if `with_grad`)."""
        if isinstance(n, int):
            n = slice(n, n + 1 if n != -1 else None)
        return [(p, pl, self.state[p], hyper)
                for pl, hyper in zip(self.param_lists[n], self.hypers[n]) for p in pl
                if not with_grad or getattr(p, "grad", None) is not None]

    def set_hypers(self, **kwargs: Any) -> None:
        """Set several hyper-parameters, each as in `set_hyper`."""
        for k, v in kwargs.items():
            self.set_hyper(k, v)

    def set_hyper(self, k: str, v: Any) -> None:
        """Set hyper-parameter `k` for all groups: a scalar, one value per group, or a slice to spread."""
        values = _spread(k, v, len(self.param_lists))
        if k == "lr":
            _check_lr(values)
        self._set_hyper(k, values)

    def _set_hyper(self, k: str, values: list[Any]) -> None:
        raise NotImplementedError

    def clear_state(self) -> None:
        """Drop the optimizer state, keeping only the per-parameter flags in `_keep_on_clear`."""
        for p, _, state, _ in self.all_params():
            self.state[p] = {k: state[k] for k in self._keep_on_clear if k in state}

    def _trains_when_frozen(self, p: Tensor) -> bool:
        return bool(self.train_bn and self.state[p].get("force_train", False))

    def freeze_to(self, n: int) -> None:
        """Freeze the parameter groups before `n` (counted from the end if negative; as in fastai,
        a negative `n` past the first group freezes nothing)."""
        n_groups = len(self.param_lists)
        idx = n if n >= 0 else n_groups + n
        if idx >= n_groups:
            warnings.warn(f"freeze_to({n}) freezes all {n_groups} parameter groups; only "
                          "force_train parameters will train.")
        self.frozen_idx = idx
        for i, pl in enumerate(self.param_lists):
            for p in pl:
                if isinstance(p, Tensor):  # other objects: bookkeeping only
                    p.requires_grad_(i >= idx or self._trains_when_frozen(p))

    def freeze(self) -> None:
        """Freeze every parameter group but the last."""
        if len(self.param_lists) < 2:
            raise ValueError("freeze() needs more than one parameter group, got "
                             f"{len(self.param_lists)}; split the model into groups (a splitter) "
                             "or use freeze_to(n).")
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Make every parameter group trainable."""
        self.freeze_to(0)


class Optimizer(_BaseOptimizer):
    """An optimizer whose update is the steppers `cbs` applied in order to each parameter.

    `step` runs a fused kernel or the steppers' foreach twins when the chain has them, else
    each stepper on each parameter (see `rnnkit.optim.foreach`); set `impl` to 'foreach' or
    'per_param' to force a slower path.
    """

    _impl = "auto"

    def __init__(self, params: Iterable[Tensor] | Iterable[Sequence[Tensor]],
                 cbs: Stepper | Iterable[Stepper], train_bn: bool = True, **defaults: Any) -> None:
        self.param_lists = _as_param_lists(params)
        self.cbs: list[Stepper] = [cbs] if callable(cbs) else list(cbs)
        for cb in self.cbs:
            if not callable(cb):
                raise TypeError(f"Steppers must be callables like sgd_step, got {cb!r}.")
        self.train_bn = train_bn
        self.state = defaultdict(dict)
        self.frozen_idx = 0
        self.hypers = [{} for _ in self.param_lists]
        self._plan: Any = None  # how the batched path buckets the parameters; see foreach.py
        merged: dict[str, Any] = {}
        for cb in self.cbs:
            merged.update(_stepper_defaults(cb))
        self.set_hypers(**{**merged, **defaults})

    def _set_hyper(self, k: str, values: list[Any]) -> None:
        for hyper, v in zip(self.hypers, values):
            hyper[k] = v

    @property
    def impl(self) -> str:
        """'auto' (fused kernel, else foreach twins, else per parameter), 'foreach' or 'per_param'."""
        return self._impl

    @impl.setter
    def impl(self, v: str) -> None:
        if v not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {v!r}.")
        self._impl = v

    @property
    def step_path(self) -> str:
        """The path `step` takes with these steppers: 'fused', 'foreach' or 'per_param'."""
        return _step_path(self.cbs, self.impl)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """torch-style view of the groups: `{'params': [...], **hypers}` (a copy; write with `set_hyper`)."""
        return [{"params": list(pl), **hyper} for pl, hyper in zip(self.param_lists, self.hypers)]

    @param_groups.setter
    def param_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        if len(groups) != len(self.param_lists):
            raise ValueError(f"Expected {len(self.param_lists)} parameter groups, received "
                             f"{len(groups)}.")
        self.param_lists = _as_param_lists([g["params"] for g in groups])
        for hyper, g in zip(self.hypers, groups):
            hyper.update({k: _to_plain(v) for k, v in g.items() if k != "params"})

    def _call(self, cb: Stepper, p: Tensor, kwargs: dict[str, Any]) -> Any:
        try:
            return cb(p, **kwargs)
        except TypeError as e:
            reason = _explain_stepper_error(cb, kwargs)
            if reason is None:
                raise
            raise ValueError(reason) from e

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the steppers on every parameter that has a gradient, skipping frozen groups."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not batched_step(self):
            self._step_per_param()
        return loss

    def _step_per_param(self) -> None:
        for i, (pl, hyper) in enumerate(zip(self.param_lists, self.hypers)):
            frozen = i < self.frozen_idx
            for p in pl:
                if getattr(p, "grad", None) is None or (frozen and not self._trains_when_frozen(p)):
                    continue
                state = self.state[p]
                for cb in self.cbs:
                    new_state = self._call(cb, p, {**state, **hyper})
                    if isinstance(new_state, dict):
                        state.update(new_state)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in place, as fastai does (or drop them if `set_to_none`)."""
        grads = []
        for pl in self.param_lists:
            for p in pl:
                g = getattr(p, "grad", None)
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if g.grad_fn is not None:  # a gradient built with create_graph=True
                    g.detach_()
                grads.append(g)
        if grads:
            # One batched call instead of a Python loop over all_params (which builds a state entry per
            # parameter), as torch.optim zeroes: the Learner calls this every batch. Zeroing in place cost
            # 14 us a batch more than dropping the gradients before, 5 us now (`bench_learner.py --overhead`).
            torch._foreach_zero_(grads)

    def state_dict(self) -> dict[str, Any]:
        """`{'state': [state per parameter], 'hypers': [dict per group]}`, loadable with weights_only."""
        return {"state": [dict(state) for _, _, state, _ in self.all_params()],
                "hypers": [dict(h) for h in self.hypers]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Load a `state_dict`, copying state tensors to the device of their parameter."""
        if not isinstance(sd, dict) or "state" not in sd or "hypers" not in sd:
            raise ValueError("Expected a dict with keys 'state' and 'hypers' as made by "
                             f"Optimizer.state_dict(), received {str(sd)[:80]}.")
        n_groups, params = len(self.param_lists), [p for pl in self.param_lists for p in pl]
        if len(sd["hypers"]) != n_groups:
            raise ValueError(f"The state dict has {len(sd['hypers'])} parameter groups but this "
                             f"optimizer has {n_groups}; expected {n_groups}.")
        if len(sd["state"]) != len(params):
            raise ValueError(f"The state dict has state for {len(sd['state'])} parameters but this "
                             f"optimizer has {len(params)}; expected {len(params)}.")
        self.hypers = [{k: _to_plain(v) for k, v in h.items()} for h in sd["hypers"]]
        self.state = defaultdict(dict)
        for p, s in zip(params, sd["state"]):
            self.state[p] = {k: _copy_to(v, getattr(p, "device", None)) for k, v in s.items()}


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


def _copy_to(v: Any, device: torch.device | None) -> Any:
    """A copy of `v` with its tensors on `device` (where they are if None): no shared buffers."""
    if isinstance(v, Tensor):
        return v.clone() if device is None else v.to(device, copy=True)
    if isinstance(v, dict):
        return {k: _copy_to(x, device) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_copy_to(x, device) for x in v)
    return v


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
        return [{"params": g} for g in _as_param_lists(items)]
    groups = []
    for i, x in enumerate(items):
        if isinstance(x, dict):
            if "params" not in x:
                raise ValueError(f"Parameter group {i} is a dict without a 'params' key (keys: "
                                 f"{sorted(map(str, x))}); write it as {{'params': [...], 'lr': ...}}.")
            groups.append(x)
        elif _is_group(x):
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


class OptimWrapper(_BaseOptimizer):
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
        values = _spread(k, v, len(self.opt.param_groups))
        values = [detuplify_pg(g)[torch_key] if any(torch_key == o or torch_key.startswith(f"{o}__")
                                                    for o in mine) else x
                  for g, mine, x in zip(self.opt.param_groups, own, values)]
        if k == "lr":
            _check_lr(values)
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
