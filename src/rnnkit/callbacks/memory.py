"""Resident memory that stays flat over long runs on the CPU."""
from __future__ import annotations

from rnnkit.training.callback import Callback
from rnnkit.utils import heap_free_bytes, release_freed_memory

__all__ = ["ReleaseFreedMemory"]


class ReleaseFreedMemory(Callback):
    """Keep the free memory inside glibc's heap near what a training step needs, so that resident memory
    stays flat however long the run.

    The heap keeps freed blocks for the next step (faster than mapping them afresh), but over thousands
    of steps the holes between blocks in use add up. For the first `warmup` training batches this
    records how much free memory a step leaves; afterwards, whenever the heap holds more than `slack`
    times that (plus 32 MiB), it gives the free memory back to the system (`release_freed_memory`),
    which costs a few milliseconds and one step's page faults. It also releases after each validation
    pass. Reading the heap's free bytes costs about a microsecond; where it cannot be read (glibc
    before 2.33) memory is released every `every` batches instead. A no-op where the C library is not
    glibc.
    """

    def __init__(self, warmup: int = 20, slack: float = 1.25, every: int = 50) -> None:
        super().__init__()
        if warmup < 1 or every < 1 or slack < 1:
            raise ValueError(f"ReleaseFreedMemory needs warmup >= 1, every >= 1 and slack >= 1, got "
                             f"warmup={warmup}, every={every}, slack={slack}")
        self.warmup, self.slack, self.every = warmup, slack, every

    def before_fit(self) -> None:
        self.count, self.step_free = 0, 0

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.count += 1
        free = heap_free_bytes()
        if free is None:
            if self.count % self.every == 0:
                release_freed_memory()
        elif self.count <= self.warmup:
            self.step_free = max(self.step_free, free)
        elif free > self.limit:
            release_freed_memory()

    @property
    def limit(self) -> int:
        """Free bytes the heap may hold after the warm-up before they are released."""
        return int(self.step_free * self.slack) + (32 << 20)

    def after_validate(self) -> None:
        release_freed_memory()
