"""Resident memory that stays flat over long runs on the CPU."""
from __future__ import annotations

from rnnkit.training.callback import Callback
from rnnkit.utils import release_freed_memory

__all__ = ["ReleaseFreedMemory"]


class ReleaseFreedMemory(Callback):
    """Give the free memory inside glibc's heap back to the system every `every` training batches and
    after each validation pass (`rnnkit.utils.release_freed_memory`), so that resident memory stays
    flat however long the run. A no-op where the C library is not glibc."""

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"ReleaseFreedMemory(every=) must be a positive number of batches, got {every}")
        self.every = every

    def before_fit(self) -> None:
        self.count = 0

    def after_batch(self) -> None:
        if self.learn.training:
            self.count += 1
            if self.count % self.every == 0:
                release_freed_memory()

    def after_validate(self) -> None:
        release_freed_memory()
