"""`ShowGraphCallback`: a live plot of the training and validation losses during `fit`."""
from __future__ import annotations

import math
from typing import Any

from rnnkit.callbacks.progress import in_notebook
from rnnkit.callbacks.schedule import LRFinder
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder

__all__ = ["ShowGraphCallback"]


class ShowGraphCallback(Callback):
    """Plot the smoothed training loss per batch and the validation loss per epoch after each epoch.

    The matplotlib figure is `self.fig`; in Jupyter it is shown and updated in place, elsewhere it
    is only drawn (save it with `learn.show_graph.fig.savefig(...)`). It does nothing during `lr_find`.
    """

    order = 65  # after ProgressCallback (60), as in fastai
    run_valid = False
    skip_in_lr_find = True

    def __init__(self) -> None:
        super().__init__()
        self._rows_seen = 0
        self.fig: Any = None
        self.ax: Any = None
        self._handle: Any = None
        self.valid_iters: list[int] = []
        self.valid_losses: list[float] = []

    def before_fit(self) -> None:
        self.run = self.learn.get_cb(LRFinder) is None
        if not self.run:
            return
        self.valid_iters, self.valid_losses = [], []
        self._rows_seen = 0  # rows of the Recorder's values already plotted
        self.fig = self.ax = self._handle = None

    def after_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        if rec is None or not rec.losses:
            return
        names = rec.metric_names
        if len(rec.values) > self._rows_seen and "valid_loss" in names:
            self._rows_seen = len(rec.values)
            row, idx = rec.values[-1], names.index("valid_loss") - 1  # values rows have no epoch column
            v = row[idx] if idx < len(row) else None  # a cancelled validation may leave no value
            if v is not None:
                self.valid_iters.append(self.learn.train_iter)
                self.valid_losses.append(float(v))
        self._draw(rec)

    def _draw(self, rec: Recorder) -> None:
        import matplotlib.pyplot as plt

        if self.fig is None:
            self.fig, self.ax = plt.subplots(figsize=(6, 4))
            plt.close(self.fig)  # drawn and shown by us, not again by pyplot at the end of a notebook cell
        losses = [float(v) for v in rec.losses]
        ax = self.ax
        ax.clear()
        ax.plot(range(len(losses)), losses, label="train")
        if self.valid_losses:
            ax.plot(self.valid_iters, self.valid_losses, label="valid")
        n_batches = max(len(self.learn.dls.train), 1)
        ax.set_xlim(0, max(self.learn.n_epoch * n_batches, len(losses)))  # room for the epochs to come
        finite = [v for v in losses + self.valid_losses if math.isfinite(v)]
        if finite and max(finite) > 0:
            ax.set_ylim(0, max(finite) * 1.05)
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        self.fig.canvas.draw_idle()
        if in_notebook():
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.fig, display_id=True)
            else:
                self._handle.update(self.fig)
