"""`SaveBestWeights`: keep the weights of the best validation epoch in a file while training goes on.

What AWD-LSTM's main.py does with `model_save` each time the validation loss improves (Merity et al.,
2017): with NT-ASGD averaging, the weights validated, and so saved, are the averaged ones (NTASGD swaps
them into the model for validation and leaves them there until the next epoch trains). The file is
safetensors, written atomically (`rnnkit.files.atomic_write`): a crash leaves the previous best whole.
Its metadata records what it is the best of (`read_best`): monitor, value, epoch, plus any `meta` given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from rnnkit.callbacks.checkpoint import plain_model
from rnnkit.callbacks.ntasgd import NTASGD
from rnnkit.checkpoint import model_state_for_save
from rnnkit.distributed import is_rank0
from rnnkit.files import atomic_write
from rnnkit.callbacks.monitor import RecordedValue
from rnnkit.training.callback import Callback

__all__ = ["SaveBestWeights", "read_best"]


class SaveBestWeights(Callback):
    """Write the model's weights to `fname` (relative to `learn.path`) whenever `monitor` improves.

    Args:
        best: the value to beat from the start (None: the first epoch's value is saved); a fine-tuning run
            passes the loss of the weights it starts from, so only an improvement replaces the file.
        meta: extra metadata strings stored in the file (e.g. `{"stage": "finetune"}`).
    """

    order = NTASGD.order + 1  # NTASGD has read the row, and the model holds the weights just validated
    skip_in_lr_find = True
    state_key = "best_weights"  # checkpoints keep state_dict() under cb:best_weights: a resume keeps the best

    def __init__(self, fname: str | Path = "best.safetensors", monitor: str = "valid_loss",
                 comp: Callable | None = None, best: float | None = None,
                 meta: dict[str, str] | None = None) -> None:
        super().__init__()
        if comp is None:
            comp = np.less if any(s in monitor for s in ("loss", "error", "perplexity")) else np.greater
        self.fname, self.monitor, self.comp, self.meta = Path(fname), monitor, comp, dict(meta or {})
        self.best: float | None = None if best is None else float(best)
        self.best_epoch: int | None = None  # the epoch (learn.epoch) whose weights the file holds
        self.n_saved = 0  # files written by this callback
        self._watch = RecordedValue(monitor)

    @property
    def path(self) -> Path:
        """Where the best weights are written."""
        return self.fname if self.fname.is_absolute() else self.learn.path / self.fname

    def before_fit(self) -> None:
        # Not reset here: the best survives a second fit and a resume (the Checkpointer loads it later).
        self._watch.start(self.learn, "SaveBestWeights")

    def after_epoch(self) -> None:
        val = self._watch.new(self.learn)
        if val is None:
            return
        if self.best is not None and not bool(self.comp(val, self.best)):
            return
        self.best, self.best_epoch = val, int(self.learn.epoch)
        if is_rank0():  # every process holds the same weights; one writes them
            self.save()

    def save(self) -> Path:
        """Write the model's current weights with the record of the best value now."""
        from safetensors.torch import save

        meta = {**self.meta, "format": "pt", "monitor": self.monitor, "value": repr(self.best),
                "epoch": str(self.best_epoch)}
        atomic_write(self.path, save(model_state_for_save(plain_model(self.learn.model)), metadata=meta))
        self.n_saved += 1
        return self.path

    def state_dict(self) -> dict[str, Any]:
        """The best value and its epoch (the weights are in the file)."""
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        missing = {"best", "best_epoch"} - set(sd)
        if missing:
            raise ValueError(f"Not a SaveBestWeights state dict: missing {sorted(missing)}.")
        self.best = None if sd["best"] is None else float(sd["best"])
        self.best_epoch = None if sd["best_epoch"] is None else int(sd["best_epoch"])


def read_best(path: str | Path) -> dict[str, Any] | None:
    """The record a `SaveBestWeights` file carries: monitor, value (float), epoch (int) and any extra
    metadata; None when `path` does not exist or carries no record."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "value" not in meta:
        return None
    meta.pop("format", None)
    out: dict[str, Any] = dict(meta)
    out["value"] = float(meta["value"])
    out["epoch"] = None if meta.get("epoch") in (None, "None") else int(meta["epoch"])
    return out
