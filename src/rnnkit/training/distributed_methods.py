"""The Learner's `distrib_ctx`: fastai's way to train on several processes; mixed into `Learner`."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, TypeVar

from rnnkit.callbacks.distributed import DistributedTrainer
from rnnkit.distributed import agree_on_seeds, setup_distrib, teardown_distrib

__all__ = ["DistributedMethods"]

_D = TypeVar("_D", bound="DistributedMethods")


class DistributedMethods:
    """`distrib_ctx`; mixed into `Learner`."""

    if TYPE_CHECKING:  # what this method uses of the Learner
        dls: Any

        def add_cb(self: _D, cb: Any) -> _D: ...
        def remove_cb(self: _D, cb: Any) -> _D: ...

    @contextlib.contextmanager
    def distrib_ctx(self: _D, sync_bn: bool = False, in_notebook: bool = False) -> Iterator[_D]:
        """Fit on every process `torchrun` started, as one process with the whole batch would:
        `with learn.distrib_ctx(): learn.fit_one_cycle(...)`.

        Sets the process group up from torchrun's environment if it is not (and tears down what it set
        up on exit), gives the loaders rank 0's seeds, and adds a `DistributedTrainer` for the block.
        In one process it changes nothing.
        `sync_bn` is accepted for fastai's signature and ignored (LSTMs have no BatchNorm); so is
        `in_notebook`: start the processes with torchrun, not from a notebook.
        """
        created = setup_distrib()
        agree_on_seeds(self.dls)
        cb = DistributedTrainer(sync_bn=sync_bn)
        self.add_cb(cb)
        try:
            yield self
        finally:
            cb.restore()  # a fit that raised never reached after_fit
            self.remove_cb(cb)
            if created:
                teardown_distrib()
