"""Callbacks for recurrent models."""
from __future__ import annotations

from rnnkit.training.callback import Callback

__all__ = ["ModelResetter", "ModelReseter"]


class ModelResetter(Callback):
    """Call `model.reset()` before training, before validation and after fitting, so the hidden
    state of one phase never leaks into the next."""

    def before_train(self) -> None:
        self.learn.model.reset()

    def before_validate(self) -> None:
        self.learn.model.reset()

    def after_fit(self) -> None:
        self.learn.model.reset()


ModelReseter = ModelResetter  # the spelling the chapter-12 notebook uses
