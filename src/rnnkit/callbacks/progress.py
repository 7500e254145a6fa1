"""Progress display: a bar over the batches and the per-epoch table the book shows.

In Jupyter the table is HTML and the bar a widget; in a terminal both are plain text
(the bar only when stderr is a terminal). Silence it with `learn.no_bar()`,
`ProgressCallback(show_bar=False, show_table=False)`, or `RNNKIT_NO_PROGRESS=1`.
In distributed training only rank 0 shows anything: the other processes' rows are not printed.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from rnnkit.distributed import is_rank0
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder
from rnnkit.utils import noop

__all__ = ["ProgressCallback", "format_row", "in_notebook"]


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def format_row(row: Sequence[Any]) -> list[str]:
    """Format one table row the way fastai shows it: floats with 6 decimals."""
    out = []
    for v in row:
        if v is None:
            out.append("")
        elif isinstance(v, float):
            out.append(f"{v:.6f}")
        else:
            out.append(str(v))
    return out


class _TextTable:
    def __init__(self, names: list[str], stream: Any) -> None:
        self.names, self.stream = names, stream
        self.widths = [max(len(n), 8) for n in names]
        self.started = False

    def write(self, row: Sequence[Any]) -> None:
        cells = format_row(row)
        if not self.started:
            self.stream.write("  ".join(n.ljust(w) for n, w in zip(self.names, self.widths)).rstrip() + "\n")
            self.started = True
        self.stream.write("  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip() + "\n")
        self.stream.flush()


class _HTMLTable:
    def __init__(self, names: list[str]) -> None:
        from IPython.display import HTML, display

        self.names, self._HTML = names, HTML
        self.rows: list[list[str]] = []
        self.handle = display(HTML(self._html()), display_id=True)

    def _html(self) -> str:
        head = "".join(f"<th>{n}</th>" for n in self.names)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in self.rows)
        return f'<table border="1" class="dataframe"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def write(self, row: Sequence[Any]) -> None:
        self.rows.append(format_row(row))
        self.handle.update(self._HTML(self._html()))


class ProgressCallback(Callback):
    """Show a progress bar over batches and the table of per-epoch results."""

    order = 60
    remove_on_fetch = True

    def __init__(self, show_bar: bool | None = None, show_table: bool = True) -> None:
        super().__init__()
        quiet = os.environ.get("RNNKIT_NO_PROGRESS", "") not in ("", "0")
        nb = in_notebook()
        if show_bar is None:
            show_bar = nb or sys.stderr.isatty()
        self.show_bar, self.show_table = show_bar and not quiet, show_table and not quiet
        self._nb = nb
        self.pbar: Any = None

    def before_fit(self) -> None:
        self._old_logger = self.learn.logger
        if not is_rank0():  # one writer: the other processes' rows are rank 0's numbers again
            self.learn.logger = noop
        elif self.show_table and self.learn.logger is not noop:
            rec = self.learn.get_cb(Recorder)
            names = rec.metric_names if rec is not None else []
            self.table = _HTMLTable(names) if self._nb else _TextTable(names, sys.stdout)
            self.learn.logger = self.table.write

    def _start_bar(self, desc: str) -> None:
        if not self.show_bar or not is_rank0():
            return
        if self._nb:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        self.pbar = tqdm(total=len(self.learn.dl), desc=desc, leave=False, dynamic_ncols=True)

    def before_train(self) -> None:
        self._start_bar(f"epoch {self.learn.epoch + 1}/{self.learn.n_epoch} train")

    def before_validate(self) -> None:
        self._start_bar("valid")

    def after_batch(self) -> None:
        if self.pbar is not None:
            self.pbar.update(1)

    def _close_bar(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None

    def after_train(self) -> None:
        self._close_bar()

    def after_validate(self) -> None:
        self._close_bar()

    def after_fit(self) -> None:
        self._close_bar()
        if hasattr(self, "_old_logger"):
            self.learn.logger = self._old_logger
            del self._old_logger
