"""Write the per-epoch table to a CSV file (in distributed training, rank 0 alone writes it)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any

from rnnkit.distributed import is_rank0
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Append each epoch's row (`epoch, train_loss, valid_loss, *metrics, time`) to `learn.path/fname`."""

    order = Recorder.order + 1  # the Recorder fills the row in after_epoch

    def __init__(self, fname: str | Path = "history.csv", append: bool = False) -> None:
        super().__init__()
        self.fname, self.append = Path(fname), append
        self._file: IO[str] | None = None

    @property
    def path(self) -> Path:
        """Where the CSV file is written."""
        return self.fname if self.fname.is_absolute() else self.learn.path / self.fname

    def before_fit(self) -> None:
        if not is_rank0():  # every process records the same rows; one writes them
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = csv.writer(self._file)
        if not (self.append and exists):
            self._writer.writerow(self.learn.get_cb(Recorder).metric_names)
            self._file.flush()

    def before_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        self._n_rows = len(rec.values) if rec is not None else 0

    def after_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        if self._file is None or len(rec.values) == getattr(self, "_n_rows", -1):
            return  # not rank 0, or an epoch skipped (start_epoch, resume): the Recorder wrote no row
        self._writer.writerow(["" if v is None else v for v in rec.log])
        self._file.flush()

    def after_fit(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_log(self) -> list[dict[str, Any]]:
        """The rows written so far, as dicts."""
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))
