"""The `Callback` base class and the train/eval bookkeeping callback every Learner has."""
from __future__ import annotations

import difflib
import inspect
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from rnnkit.training.events import (
    ALL_EVENTS, INNER_LOOP, CancelBackwardException, CancelBatchException, CancelEpochException,
    CancelFitException, CancelStepException, CancelTrainException, CancelValidException,
)
from rnnkit.utils import class2attr

if TYPE_CHECKING:
    from rnnkit.training.learner import Learner

__all__ = ["Callback", "TrainEvalCallback", "CastToTensor", "has_event", "check_event_names", "as_cb_list"]

_CANCELS = (CancelBatchException, CancelTrainException, CancelValidException, CancelEpochException,
            CancelStepException, CancelBackwardException, CancelFitException)
_EVENT_PREFIXES = ("before_", "after_")
_EVENT_SET = frozenset(ALL_EVENTS)


class Callback:
    """Base class for tweaks of the training loop: override the event methods you need.

    Reads of attributes a callback does not have go to its learner (`self.model`,
    `self.loss`, `self.epoch` ...), read-only: write `self.learn.loss_grad = ...`.
    """

    order: int = 0
    learn: Learner = None  # type: ignore[assignment]  # set by Learner.add_cb
    run: bool = True
    run_train: bool = True
    run_valid: bool = True
    run_before: Any = None
    run_after: Any = None
    # True for callbacks that must not see `lr_find`'s trial fit (trackers, averaging, plots of the run):
    # `Learner.lr_find` takes them out for its duration, as fastai's trackers switch themselves off.
    skip_in_lr_find: bool = False

    def __init__(self, **event_funcs: Callable) -> None:
        for name, func in event_funcs.items():
            if name not in ALL_EVENTS:
                raise ValueError(f"Callback() got {name!r}, which is not an event; "
                                 f"{_suggest(name)}valid names are in rnnkit.event")
            # `Callback(after_batch=f)`: f may take the callback as `self`, or nothing.
            takes_self = bool(inspect.signature(func).parameters)
            setattr(self, name, types.MethodType(func, self) if takes_self else func)

    # Every event is a documented no-op; the Learner only calls callbacks that override one.
    def after_create(self) -> None:
        """Called once, at the end of `Learner.__init__`."""

    def before_fit(self) -> None:
        """Called before training starts: set state up here."""

    def before_epoch(self) -> None:
        """Called at the start of each epoch."""

    def before_train(self) -> None:
        """Called at the start of the training part of an epoch."""

    def before_batch(self) -> None:
        """Called after a batch is drawn, before the model sees it (change `xb`/`yb` here)."""

    def after_pred(self) -> None:
        """Called after the forward pass (change `pred` before the loss here)."""

    def after_loss(self) -> None:
        """Called after the loss is computed (add penalties to `loss_grad` here)."""

    def before_backward(self) -> None:
        """Called before the backward pass, in training only."""

    def after_backward(self) -> None:
        """Called after the backward pass, before `before_step`."""

    def before_step(self) -> None:
        """Called before the optimizer step (change gradients here, e.g. clipping)."""

    def after_step(self) -> None:
        """Called after the optimizer step, before the gradients are zeroed."""

    def after_batch(self) -> None:
        """Called at the end of each batch."""

    def after_train(self) -> None:
        """Called at the end of the training part of an epoch."""

    def before_validate(self) -> None:
        """Called at the start of the validation part of an epoch."""

    def after_validate(self) -> None:
        """Called at the end of the validation part of an epoch."""

    def after_epoch(self) -> None:
        """Called at the end of each epoch."""

    def after_fit(self) -> None:
        """Called at the end of training: restore the learner here."""

    def after_cancel_batch(self) -> None:
        """Called when a `CancelBatchException` was raised, before `after_batch`."""

    def after_cancel_train(self) -> None:
        """Called when a `CancelTrainException` was raised, before `after_train`."""

    def after_cancel_validate(self) -> None:
        """Called when a `CancelValidException` was raised, before `after_validate`."""

    def after_cancel_epoch(self) -> None:
        """Called when a `CancelEpochException` was raised, before `after_epoch`."""

    def after_cancel_fit(self) -> None:
        """Called when a `CancelFitException` was raised, before `after_fit`."""

    def after_cancel_step(self) -> None:
        """Called when a `CancelStepException` skipped the optimizer step."""

    def after_cancel_backward(self) -> None:
        """Called when a `CancelBackwardException` skipped the backward pass."""

    def __call__(self, event_name: str) -> Any:
        """Run `self.<event_name>` if this callback should run now."""
        res = None
        learn = self.learn
        training = getattr(learn, "training", False)
        if self.run and (event_name not in INNER_LOOP
                         or (self.run_train if training else self.run_valid)):
            try:
                res = getattr(self, event_name)()
            except _CANCELS:
                raise
            except Exception as e:
                _annotate(e, type(self).__name__, event_name)
                raise
        return res

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: read through to the learner.
        if name.startswith("_"):
            raise AttributeError(name)
        learn = self.__dict__.get("learn", type(self).learn)
        if learn is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} "
                                 "(and is not attached to a Learner)")
        return getattr(learn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        learn = self.__dict__.get("learn")
        if (learn is not None and not name.startswith("_") and name not in self.__dict__
                and not hasattr(type(self), name) and hasattr(learn, name)):
            warnings.warn(f"You are shadowing an attribute ({name}) that exists in the learner. "
                          f"Use `self.learn.{name}` to avoid this", stacklevel=2)
        super().__setattr__(name, value)
        if name in _EVENT_SET and learn is not None:
            # `cb.after_batch = f` after the callback was added: the learner's per-event lists
            # must now include it, as fastai calls every callback for every event.
            reindex = getattr(learn, "_reindex", None)
            if reindex is not None:
                reindex()

    @property
    def name(self) -> str:
        """Snake-case class name without 'Callback': the learner attribute it is reachable as."""
        return class2attr(self, "Callback")

    @property
    def state_key(self) -> str:
        """The key a checkpoint keeps this callback's `state_dict()` under (`cb:<state_key>`): its `name`,
        unless the class declares a stable one (`state_key = "ntasgd"`) that survives a rename. Two
        callbacks with state in one learner need different keys; the `Checkpointer` says so at fit."""
        return self.name

    def __repr__(self) -> str:
        return type(self).__name__


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, ALL_EVENTS, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _annotate(e: Exception, cb_name: str, event_name: str) -> None:
    """Prefix the message of `e` with where it happened, keeping its type (once)."""
    if getattr(e, "_rnnkit_where", None):
        return
    where = f"Exception occured in `{cb_name}` when calling event `{event_name}`"
    if e.args and isinstance(e.args[0], str):
        e.args = (f"{where}:\n\t{e.args[0]}",) + tuple(e.args[1:])
    elif not e.args:
        e.args = (where,)
    try:
        e._rnnkit_where = where  # type: ignore[attr-defined]
    except AttributeError:  # some C exceptions take no new attributes
        pass


def as_cb_list(x: Any) -> list[Any]:
    """`cbs=` as a list: None is empty, one callback (or class) is a list of one, any other iterable is listed."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    if hasattr(x, "__iter__") and not isinstance(x, (str, Callback, type)):
        return list(x)
    return [x]


def has_event(cb: Callback, event_name: str) -> bool:
    """Whether `cb` may do something on `event_name`: it overrides the no-op, was given a function,
    or overrides `__call__` (then, as in fastai, it sees every event)."""
    if event_name in cb.__dict__ or type(cb).__call__ is not Callback.__call__:
        return True
    meth = getattr(type(cb), event_name, None)
    return meth is not None and meth is not getattr(Callback, event_name)


def check_event_names(cb: Callback) -> None:
    """Reject a callback with a misspelt event method such as `before_batchs`."""
    for klass in type(cb).__mro__:
        if klass is Callback or klass is object:
            continue
        for attr, val in vars(klass).items():
            if attr.startswith(_EVENT_PREFIXES) and callable(val) and attr not in ALL_EVENTS:
                raise ValueError(f"{type(cb).__name__}.{attr} is not an event and would never be "
                                 f"called; {_suggest(attr)}see rnnkit.event for all names")


def move_to_loaders_device(learn: Any) -> None:  # a Learner (or its evaluation mixin)
    """Put the model (and a loss module, e.g. with class weights) on the device the loaders send batches to,
    as fastai does at the start of `fit`; rnnkit also does it before `validate` and `get_preds`."""
    device = getattr(learn.dls, "device", None)
    if device is None:
        return
    learn.model.to(device)
    loss_to = getattr(learn.loss_func, "to", None)  # an nn.Module, or one of rnnkit's losses (BaseLoss.to)
    if callable(loss_to) and (isinstance(learn.loss_func, nn.Module) or hasattr(type(learn.loss_func), "to")):
        loss_to(device)


class TrainEvalCallback(Callback):
    """Keep the learner's training/eval mode, iteration counters and `pct_train` up to date."""

    order = -10

    def after_create(self) -> None:
        self.learn.n_epoch = 1

    def before_fit(self) -> None:
        learn = self.learn
        learn.epoch = 0
        learn.loss = torch.tensor(0.0)
        learn.train_iter = 0
        learn.pct_train = 0.0
        learn._n_train_batches = learn.n_epoch * max(len(learn.dls.train), 1)
        move_to_loaders_device(learn)
        reset = getattr(learn.model, "reset", None)
        if callable(reset):
            reset()  # no hidden state from before this fit

    def before_train(self) -> None:
        self.learn.pct_train = self.learn.epoch / self.learn.n_epoch
        self.learn.model.train()
        self.learn.training = True

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.learn.pct_train += 1.0 / self.learn._n_train_batches
        self.learn.train_iter += 1

    def before_validate(self) -> None:
        self.learn.model.eval()
        self.learn.training = False


def _plain_tensors(b: tuple) -> tuple:
    return tuple(_plain_tensors(o) if isinstance(o, tuple) else
                 o.as_subclass(torch.Tensor) if isinstance(o, torch.Tensor) and type(o) is not torch.Tensor else o
                 for o in b)


class CastToTensor(Callback):
    """Turn tensor subclasses in a batch into plain `torch.Tensor`s before the model sees them
    (fastai's default callback): a subclass sends every operation through Python, several times slower."""

    order = 9

    def before_batch(self) -> None:
        learn = self.learn
        if not (_all_plain(learn.xb) and _all_plain(learn.yb)):  # rare: plain batches cost one check
            learn.xb, learn.yb = _plain_tensors(learn.xb), _plain_tensors(learn.yb)


def _all_plain(b: tuple) -> bool:
    for o in b:  # a loop, not any(<generator>): this runs every batch
        if type(o) is not torch.Tensor:
            return False
    return True
