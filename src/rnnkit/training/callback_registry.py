"""The Learner's callback registry: adding, removing and ordering callbacks, and firing events.

Callbacks are kept in the order they were added (`learn.cbs`, as in fastai); events reach them sorted by
`order`, with `run_before`/`run_after` honoured. Per-event lists let the batch loop call only the callbacks
that act on an event; one that overrides `__call__` (or gets an event function later) receives every event.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, TypeVar

from rnnkit.training.callback import Callback, as_cb_list, check_event_names, has_event
from rnnkit.training.events import ALL_EVENTS
from rnnkit.training.recorder import Recorder
from rnnkit.utils import L

__all__ = ["CallbackRegistry"]

_R = TypeVar("_R", bound="CallbackRegistry")  # methods return the learner they were called on


# The loop as `show_training_loop` prints it: fastai's outline, with every event rnnkit fires.
_LOOP = ("Start Fit", "before_fit", "Start Epoch Loop", "before_epoch", "Start Train", "before_train",
         "Start Batch Loop", "before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
         "before_step", "after_step", "after_cancel_batch", "after_batch", "End Batch Loop", "End Train",
         "after_cancel_train", "after_train", "Start Valid", "before_validate", "Start Batch Loop",
         "**CBs same as train batch**", "End Batch Loop", "End Valid", "after_cancel_validate",
         "after_validate", "End Epoch Loop", "after_cancel_epoch", "after_epoch", "End Fit",
         "after_cancel_fit", "after_fit")


def _sort_cbs(cbs: list[Callback]) -> list[Callback]:
    """Order callbacks by `order`, honouring `run_before`/`run_after` (classes or names)."""

    def matches(cb: Callback, spec: Any) -> bool:
        specs = spec if isinstance(spec, (list, tuple)) else [spec]
        return any(s is not None and (isinstance(cb, s) if isinstance(s, type) else type(cb).__name__ == s)
                   for s in specs)

    after: dict[int, set[int]] = {i: set() for i in range(len(cbs))}  # i must run after these
    for i, a in enumerate(cbs):
        for j, b in enumerate(cbs):
            if i == j:
                continue
            if matches(b, a.run_after) or matches(a, b.run_before):
                after[i].add(j)
    out: list[Callback] = []
    done: set[int] = set()
    while len(out) < len(cbs):
        ready = [i for i in range(len(cbs)) if i not in done and after[i] <= done]
        if not ready:
            raise ValueError(f"Callbacks {[cbs[i] for i in range(len(cbs)) if i not in done]} "
                             "have circular run_before/run_after constraints")
        i = min(ready, key=lambda k: (cbs[k].order, k))
        out.append(cbs[i])
        done.add(i)
    return out


class CallbackRegistry:
    """`add_cb(s)`, `remove_cb(s)`, `added_cbs`/`removed_cbs`, `cbs`, `get_cb`, `ordered_cbs`, calling
    `learn('event')`; mixed into `Learner`, which sets `_cbs`, `_event_cbs`, `_cb_by_name` first."""

    _cbs: list[Callback]
    _event_cbs: dict[str, list[Callback]]
    _cb_by_name: dict[str, Callback]
    _metrics: list[Any]

    @property
    def cbs(self) -> L:
        """The callbacks in the order they were added, as a fastcore `L` (`.filter`, `.map`, `.attrgot`,
        `.sorted('order')` ...); events reach them sorted by `order`."""
        return L(self._cbs)

    @cbs.setter
    def cbs(self, cbs: Any) -> None:
        self.remove_cbs(self.cbs)
        self.add_cbs(cbs)

    def add_cb(self: _R, cb: Any) -> _R:
        """Add a callback (a class is instantiated with no arguments)."""
        if isinstance(cb, type):
            cb = cb()
        if not isinstance(cb, Callback):
            raise TypeError(f"cbs must be Callback instances or classes, got {cb!r}")
        if any(c is cb for c in self._cbs):
            return self  # e.g. RNNTrainer(learn, ...) already added itself
        check_event_names(cb)
        cb.learn = self  # type: ignore[assignment]  # a Learner: the only class this is mixed into
        self._cbs.append(cb)
        self._cb_by_name[cb.name] = cb
        if isinstance(cb, Recorder) and hasattr(self, "_metrics"):
            cb.set_metrics(self._metrics)
        self._reindex()
        return self

    def add_cbs(self: _R, cbs: Any) -> _R:
        """Add several callbacks."""
        for cb in as_cb_list(cbs):
            self.add_cb(cb)
        return self

    def remove_cb(self: _R, cb: Any) -> _R:
        """Remove a callback instance, or every callback of a class."""
        targets = [c for c in self._cbs if (isinstance(c, cb) if isinstance(cb, type) else c is cb)]
        for c in targets:
            self._cbs.remove(c)
            c.learn = None  # type: ignore[assignment]
            if self._cb_by_name.get(c.name) is c:
                del self._cb_by_name[c.name]
        self._reindex()
        return self

    def remove_cbs(self: _R, cbs: Any) -> _R:
        """Remove several callbacks."""
        for cb in as_cb_list(cbs):
            self.remove_cb(cb)
        return self

    @contextlib.contextmanager
    def added_cbs(self: _R, cbs: Any) -> Iterator[_R]:
        """Add callbacks for the duration of a `with` block."""
        cbs = [cb() if isinstance(cb, type) else cb for cb in as_cb_list(cbs)]
        self.add_cbs(cbs)
        try:
            yield self
        finally:
            self.remove_cbs(cbs)

    @contextlib.contextmanager
    def removed_cbs(self: _R, cbs: Any) -> Iterator[_R]:
        """Remove callbacks for the duration of a `with` block."""
        cbs = [c for c in self._cbs if any(c is s or (isinstance(s, type) and isinstance(c, s))
                                           for s in as_cb_list(cbs))]
        self.remove_cbs(cbs)
        try:
            yield self
        finally:
            self.add_cbs(cbs)

    def get_cb(self, cls: type) -> Any:
        """The first callback of class `cls`, or None."""
        return next((c for c in self._cbs if isinstance(c, cls)), None)

    def ordered_cbs(self, event: str) -> list[Callback]:
        """Callbacks that act on `event`, in the order they run."""
        return list(self._event_cbs.get(event, []))

    def show_training_loop(self) -> None:
        """Print the training loop's events, each with the callbacks that act on it, in order (as fastai does)."""
        indent = 0
        for step in _LOOP:
            if step.startswith("Start"):
                print(f"{' ' * indent}{step}")
                indent += 2
            elif step.startswith("End"):
                indent -= 2
                print(f"{' ' * indent}{step}")
            else:
                print(f"{' ' * indent} - {step:15}:", self.ordered_cbs(step) if step in ALL_EVENTS else [])

    def _reindex(self) -> None:
        # `learn.cbs` keeps the order callbacks were added in, as fastai's does; events go to them
        # sorted by `order`. Per-event lists, so the batch loop only calls callbacks that act on each event.
        ordered = _sort_cbs(self._cbs)
        self._event_cbs = {e: [c for c in ordered if has_event(c, e)] for e in ALL_EVENTS}

    def __call__(self, event_name: str | Iterable[str]) -> None:
        """Fire an event (or a list of events) on every callback that acts on it."""
        if not isinstance(event_name, str):
            for e in event_name:
                self(e)
            return
        try:
            cbs = self._event_cbs[event_name]
        except KeyError:
            raise ValueError(f"{event_name!r} is not an event; see rnnkit.event") from None
        for cb in cbs:
            cb(event_name)
