"""`RecordedValue`: one column of the Recorder's rows, read once per new row. What the once-an-epoch
callbacks (`NTASGD`, `NonMonotoneStop`, `SaveBestWeights`) watch."""
from __future__ import annotations

import math
from typing import Any

from rnnkit.training.recorder import Recorder

__all__ = ["RecordedValue"]


class RecordedValue:
    """The value of `monitor` in each row the Recorder adds; an epoch skipped by `start_epoch` (a resume)
    adds no row and gives nothing."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self._idx = self._n_rows = 0  # column of `monitor`, rows of the Recorder already read

    def start(self, learn: Any, who: str) -> None:
        """Find the column in `learn`'s Recorder (ValueError, naming `who` and the choices, if it is not
        recorded); only rows added from now on are read."""
        rec = learn.get_cb(Recorder)
        names = rec.metric_names[1:] if rec is not None else []
        if self.monitor not in names:
            raise ValueError(f"{who} monitors {self.monitor!r}, which is not recorded; choose one "
                             f"of {[m for m in names if m != 'time']}")
        self._idx, self._n_rows = names.index(self.monitor), len(rec.values)

    def new(self, learn: Any) -> float | None:
        """The value in the row added since the last call, or None: no new row, or no finite value in it."""
        values = learn.get_cb(Recorder).values
        if len(values) == self._n_rows:
            return None
        self._n_rows = len(values)
        val = values[-1][self._idx]
        if val is None or not math.isfinite(float(val)):
            return None
        return float(val)
