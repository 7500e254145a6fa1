"""`Optimizer`, an update rule composed of stepper functions (fastai's design), and the base it shares with
`OptimWrapper`.

`Optimizer.step` is a dispatcher over three paths, chosen per chain of steppers:
1. `fused`: the recipe declared a function computing the whole chain on a list of parameters
   (`Optimizer(params, cbs, fused=partial(fused_adam, decouple_wd=True))`, as `Adam`, `SGD` and `RMSProp`
   do); it runs once per batch of parameters where PyTorch has its kernel (`fused.py`);
2. `foreach`: every stepper has a batched twin (`stepper.py`); the twins run in order once per batch;
3. `per_param`: every stepper on every parameter, `cb(p, **{**state, **hypers})`, the protocol user
   steppers (such as the book's `sgd_cb`) are written for. It is logged once per optimizer, with its
   cost and how to get a batched path.
The optimizer owns what the batched paths need: its `ParamGrouping` (`buckets.py`) and its `Scratch`
buffers.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from rnnkit.optim.buckets import Batch, ParamGrouping, state_to_param_devices
from rnnkit.optim.params import as_param_lists, check_lr, copy_to, spread_hyper, to_plain
from rnnkit.optim.stepper import (Scratch, batched_form, explain_stepper_error, stepper_defaults, stepper_name,
                                  takes_scratch)

__all__ = ["BaseOptimizer", "Optimizer", "IMPLS"]

Stepper = Callable[..., Any]
IMPLS = ("auto", "foreach", "per_param")
logger = logging.getLogger(__name__)


class BaseOptimizer:
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
        values = spread_hyper(k, v, len(self.param_lists))
        if k == "lr":
            check_lr(values)
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


_BaseOptimizer = BaseOptimizer  # fastai's name for it


class _Chain(NamedTuple):
    """How `step` runs one chain of steppers: worked out once per chain (and `impl`), not per step."""
    key: tuple[Any, ...]
    path: str
    twins: list[Stepper]
    fused: Stepper | None
    fused_needs: frozenset[str]
    scratch_at: tuple[list[bool], list[bool], bool]  # which steppers, twins, fused step declare `scratch`


def _required_keywords(f: Stepper) -> frozenset[str]:
    """Keyword-only parameters of `f` that have no default (a partial's keywords count as given)."""
    params = inspect.signature(f).parameters.values()
    return frozenset(q.name for q in params if q.kind == q.KEYWORD_ONLY and q.default is q.empty)


class Optimizer(BaseOptimizer):
    """An optimizer whose update is the steppers `cbs` applied in order to each parameter.

    `fused`, if given, is the chain's fast path: a function `fused(ps, grads, **state, **hypers)` that
    computes the whole chain on a list of parameters and returns the new state (or None where it cannot,
    e.g. SGD without momentum: the twins run instead). It is used while `cbs` is the chain it was
    declared with. Set `impl` to 'foreach' or 'per_param' to force a slower path.
    """

    _impl = "auto"

    def __init__(self, params: Iterable[Tensor] | Iterable[Sequence[Tensor]],
                 cbs: Stepper | Iterable[Stepper], train_bn: bool = True, fused: Stepper | None = None,
                 **defaults: Any) -> None:
        self.param_lists = as_param_lists(params)
        self.cbs: list[Stepper] = [cbs] if callable(cbs) else list(cbs)
        for cb in self.cbs:
            if not callable(cb):
                raise TypeError(f"Steppers must be callables like sgd_step, got {cb!r}.")
        if fused is not None and not callable(fused):
            raise TypeError(f"fused must be a function computing the whole chain, got {fused!r}.")
        self.train_bn = train_bn
        self.state = defaultdict(dict)
        self.frozen_idx = 0
        self.hypers = [{} for _ in self.param_lists]
        self.fused, self._fused_for = fused, tuple(self.cbs)
        self.grouping, self.scratch = ParamGrouping(), Scratch()
        self._chain: _Chain | None = None
        self._said_slow = False
        self._devices: tuple[Any, ...] = ()  # of each group's first parameter when last stepped
        merged: dict[str, Any] = {}
        for cb in self.cbs:
            merged.update(stepper_defaults(cb))
        self.set_hypers(**{**merged, **defaults})

    def _set_hyper(self, k: str, values: list[Any]) -> None:
        for hyper, v in zip(self.hypers, values):
            hyper[k] = v

    @property
    def impl(self) -> str:
        """'auto' (fused, else foreach twins, else per parameter), 'foreach' or 'per_param'."""
        return self._impl

    @impl.setter
    def impl(self, v: str) -> None:
        if v not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {v!r}.")
        self._impl = v

    def _chain_plan(self) -> _Chain:
        key = (self._impl, self.fused, *map(id, self.cbs))
        chain = self._chain
        if chain is not None and chain.key == key:
            return chain
        twins = [batched_form(cb) for cb in self.cbs]
        declared = self.fused is not None and len(self.cbs) == len(self._fused_for) and all(
            a is b for a, b in zip(self.cbs, self._fused_for))
        if self._impl == "per_param" or any(t is None for t in twins):
            path = "per_param"
        else:
            path = "fused" if self._impl == "auto" and declared else "foreach"
        fused = self.fused if path == "fused" else None
        needs = frozenset() if fused is None else _required_keywords(fused)
        found = [t for t in twins if t is not None]
        scratch_at = ([takes_scratch(cb) for cb in self.cbs], [takes_scratch(t) for t in found],
                      fused is not None and takes_scratch(fused))
        self._chain = _Chain(key, path, found, fused, needs, scratch_at)
        return self._chain

    @property
    def step_path(self) -> str:
        """The path `step` takes with these steppers: 'fused', 'foreach' or 'per_param'."""
        return self._chain_plan().path

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """torch-style view of the groups: `{'params': [...], **hypers}` (a copy; write with `set_hyper`)."""
        return [{"params": list(pl), **hyper} for pl, hyper in zip(self.param_lists, self.hypers)]

    @param_groups.setter
    def param_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        if len(groups) != len(self.param_lists):
            raise ValueError(f"Expected {len(self.param_lists)} parameter groups, received "
                             f"{len(groups)}.")
        self.param_lists = as_param_lists([g["params"] for g in groups])
        for hyper, g in zip(self.hypers, groups):
            hyper.update({k: to_plain(v) for k, v in g.items() if k != "params"})

    def _call(self, cb: Stepper, p: Tensor, kwargs: dict[str, Any]) -> Any:
        try:
            return cb(p, **kwargs)
        except TypeError as e:
            reason = explain_stepper_error(cb, kwargs)
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
        devices = tuple([getattr(pl[0], "device", None) if pl else None for pl in self.param_lists])
        if devices != self._devices:  # first step, or the model moved since: its state follows
            state_to_param_devices(self)
            self.grouping.reset()  # its buckets are per device
            self._devices = devices
        chain = self._chain_plan()
        batches = None if chain.path == "per_param" else self.grouping.batches(self, chain.fused)
        if batches is None:
            self._say_slow(chain)
            self._step_per_param(chain)
            return loss
        for b in batches:
            kwargs = {**b.state, **b.hyper}
            new = None
            if b.fused and chain.fused is not None and chain.fused_needs <= kwargs.keys():
                if chain.scratch_at[2]:
                    kwargs["scratch"] = self.scratch
                new = chain.fused(b.params, b.grads, **kwargs)
            b.write_back(self._run_twins(chain, b) if new is None else new)
        return loss

    def _run_twins(self, chain: _Chain, b: Batch) -> dict[str, Any]:
        """The twins in order on batch `b`, as the per-parameter path runs the steppers; the new state."""
        new: dict[str, Any] = {}
        for cb, twin, scratch in zip(self.cbs, chain.twins, chain.scratch_at[1]):
            kwargs = {**b.state, **b.hyper}
            if scratch:
                kwargs["scratch"] = self.scratch
            try:
                out = twin(b.params, b.grads, **kwargs)
            except TypeError as e:
                reason = explain_stepper_error(cb, kwargs)
                if reason is None:
                    raise
                raise ValueError(reason) from e
            if isinstance(out, dict):
                b.state.update(out)
                new.update(out)
        return new

    def _say_slow(self, chain: _Chain) -> None:
        """Log once that this optimizer steps parameter by parameter, why, and what it costs."""
        if self._said_slow or self._impl == "per_param":
            return
        self._said_slow = True
        plain = [stepper_name(cb) for cb in self.cbs if batched_form(cb) is None]
        why = (f"steppers without a foreach twin: {', '.join(plain)}" if plain else
               "a parameter is not a dense real tensor, or appears twice")
        logger.info("Optimizer.step runs each stepper on each parameter (%s). That is one Python call per "
                    "stepper and parameter: 5-14x slower than the batched path on 400 small tensors, 1.9x on "
                    "fastai's AWD-LSTM (benchmarks/bench_optim.py). For a batched step, register a twin with "
                    "@foreach_of(stepper), or use a recipe (Adam, SGD, RMSProp) whose fused step is declared.",
                    why)

    def clear_state(self) -> None:
        """Drop the optimizer state, keeping only the per-parameter flags in `_keep_on_clear`."""
        super().clear_state()
        self.grouping.reset()

    def _step_per_param(self, chain: _Chain) -> None:
        extra = [{"scratch": self.scratch} if declared else {} for declared in chain.scratch_at[0]]
        for i, (pl, hyper) in enumerate(zip(self.param_lists, self.hypers)):
            frozen = i < self.frozen_idx
            for p in pl:
                if getattr(p, "grad", None) is None or (frozen and not self._trains_when_frozen(p)):
                    continue
                state = self.state[p]
                for cb, more in zip(self.cbs, extra):
                    new_state = self._call(cb, p, {**state, **hyper, **more})
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
        self.hypers = [{k: to_plain(v) for k, v in h.items()} for h in sd["hypers"]]
        self.state = defaultdict(dict)
        self.grouping.reset()
        for p, s in zip(params, sd["state"]):
            self.state[p] = {k: copy_to(v, getattr(p, "device", None)) for k, v in s.items()}


def __getattr__(name: str) -> Any:
    """`OptimWrapper` and its helpers lived here before the optimizer redesign: keep that import path."""
    if name in ("OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map"):
        from rnnkit.optim import wrapper

        return getattr(wrapper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
