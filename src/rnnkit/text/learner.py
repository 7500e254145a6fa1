"""`TextLearner`: a Learner with the RNN callbacks (hidden-state reset, AR/TAR) added."""
from __future__ import annotations

from typing import Any

from torch import nn

from rnnkit.callbacks.rnn import ModelResetter, rnn_cbs
from rnnkit.training.learner import Learner

__all__ = ["TextLearner"]


class TextLearner(Learner):
    """A `Learner` for recurrent text models: adds `ModelResetter` and `rnn_cbs(alpha, beta)`."""

    def __init__(self, dls: Any, model: nn.Module, alpha: float = 2.0, beta: float = 1.0,
                 moms: tuple[float, float, float] = (0.8, 0.7, 0.8), **kwargs: Any) -> None:
        super().__init__(dls, model, moms=moms, **kwargs)
        self.add_cbs(rnn_cbs(alpha, beta))
        if hasattr(model, "reset"):
            self.add_cb(ModelResetter())
