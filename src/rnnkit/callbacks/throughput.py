"""Training speed in tokens (target elements) per second, per epoch: what a run reports to compare devices.
With several processes it counts the tokens of all of them: the job's speed, the same on every process."""
from __future__ import annotations

import time

import torch

from rnnkit.distributed import all_reduce_sum, is_distributed
from rnnkit.training.callback import Callback

__all__ = ["Throughput"]


class Throughput(Callback):
    """Count the target elements of each training batch and time the training phase of each epoch.

    `epoch_tokens`, `epoch_seconds` and `tokens_per_s` hold one value per epoch. The count reads shapes
    only (no device synchronisation per batch); the clock waits for the GPU once, at the end of the phase.
    """

    order = 95  # after the step and everything that times itself
    run_valid = False

    def before_fit(self) -> None:
        self.epoch_tokens: list[int] = []
        self.epoch_seconds: list[float] = []

    def before_train(self) -> None:
        self._tokens, self._start = 0, time.perf_counter()

    def after_batch(self) -> None:
        yb = self.learn.yb
        if yb:
            self._tokens += yb[0].numel()

    def after_train(self) -> None:
        p = next(self.learn.model.parameters(), None)
        if p is not None and p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        if is_distributed():  # each process counted its own rows; one sum per epoch
            self._tokens = int(all_reduce_sum(torch.tensor([self._tokens], dtype=torch.float64)).item())
        self.epoch_tokens.append(self._tokens)
        self.epoch_seconds.append(time.perf_counter() - self._start)

    @property
    def tokens_per_s(self) -> list[float]:
        """Tokens per second of each epoch's training phase."""
        return [n / s if s > 0 else 0.0 for n, s in zip(self.epoch_tokens, self.epoch_seconds)]
