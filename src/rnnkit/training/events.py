"""Event names of the training loop, in the order they fire, and the Cancel*Exceptions.

One `fit` runs::

    after_create                      (once, when the Learner is built)
    before_fit
      before_epoch                    (for each epoch)
        before_train
          before_batch                (for each training batch)
          after_pred
          after_loss
          before_backward
          after_backward
          before_step
          after_step
          after_batch
        after_train
        before_validate
          before_batch, after_pred, after_loss, after_batch   (for each valid batch)
        after_validate
      after_epoch
    after_fit

A `CancelXException` raised inside a phase ends that phase early, fires
`after_cancel_x`, then the phase's closing event (`after_batch`, `after_train`,
`after_validate`, `after_epoch`, `after_fit`) as usual. `CancelStepException` skips
the optimizer step, `CancelBackwardException` the backward pass.
"""
from __future__ import annotations

from enum import Enum

__all__ = [
    "event", "Event", "CancelBatchException", "CancelTrainException", "CancelValidException",
    "CancelEpochException", "CancelStepException", "CancelBackwardException",
    "CancelFitException", "ALL_EVENTS", "INNER_LOOP",
]


class Event(str, Enum):
    """All events of the loop; each member equals its own name (`event.after_fit == 'after_fit'`)."""

    after_create = "after_create"
    before_fit = "before_fit"
    before_epoch = "before_epoch"
    before_train = "before_train"
    before_batch = "before_batch"
    after_pred = "after_pred"
    after_loss = "after_loss"
    before_backward = "before_backward"
    after_backward = "after_backward"
    before_step = "before_step"
    after_step = "after_step"
    after_batch = "after_batch"
    after_train = "after_train"
    before_validate = "before_validate"
    after_validate = "after_validate"
    after_epoch = "after_epoch"
    after_fit = "after_fit"
    after_cancel_batch = "after_cancel_batch"
    after_cancel_train = "after_cancel_train"
    after_cancel_validate = "after_cancel_validate"
    after_cancel_epoch = "after_cancel_epoch"
    after_cancel_fit = "after_cancel_fit"
    after_cancel_step = "after_cancel_step"
    after_cancel_backward = "after_cancel_backward"

    def __str__(self) -> str:
        return self.value


event = Event  # fastai's spelling: `event.after_batch`
ALL_EVENTS: tuple[str, ...] = tuple(e.value for e in Event)
# Events that happen once per batch: a callback's run_train/run_valid flags apply to these.
INNER_LOOP: frozenset[str] = frozenset({
    "before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
    "before_step", "after_step", "after_cancel_batch", "after_batch",
    "after_cancel_step", "after_cancel_backward",
})


# Control flow, not errors: they derive from Exception (so `except Exception` in user
# code still sees them) but share no base with the library's error types.
class CancelBatchException(Exception):
    """Skip the rest of this batch and go to `after_batch`."""


class CancelTrainException(Exception):
    """Skip the rest of the training part of the epoch and go to `after_train`."""


class CancelValidException(Exception):
    """Skip the rest of the validation part of the epoch and go to `after_validate`."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch and go to `after_epoch`."""


class CancelStepException(Exception):
    """Skip stepping the optimizer."""


class CancelBackwardException(Exception):
    """Skip the backward pass."""


class CancelFitException(Exception):
    """Interrupt training and go to `after_fit`."""
