"""Gradient clipping."""
from __future__ import annotations

from torch import nn

from rnnkit.training.callback import Callback

__all__ = ["GradientClip"]


class GradientClip(Callback):
    """Clip the gradients' global norm to `max_norm` before each optimizer step."""

    order = 20  # after MixedPrecision (order 10) has unscaled the gradients

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        super().__init__()
        if not max_norm > 0:
            raise ValueError(f"GradientClip max_norm must be positive, got {max_norm}")
        self.max_norm, self.norm_type = max_norm, norm_type

    def before_step(self) -> None:
        nn.utils.clip_grad_norm_(self.learn.model.parameters(), self.max_norm, self.norm_type)
