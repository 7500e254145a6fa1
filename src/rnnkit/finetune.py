"""`finetune`: the AWD-LSTM paper's fine-tuning step, on a finished run folder.

Merity, Keskar & Socher (2017), "Regularizing and Optimizing LSTM Language Models", section 5, and
finetune.py of salesforce/awd-lstm-lm: after training, load the best saved model and train it again with
ASGD averaging from the very first step (torch's ASGD with t0=0, lambd=0: a running mean of every
iterate), with the same learning rate, clipping and regularizers. Validate the averaged weights after every
epoch, save them whenever the validation loss beats the best so far (at first, the loaded model's), and
stop when the loss fails the non-monotone test (worse than the best from before the last n=5 epochs) or
at the epoch limit.

With rnnkit's pieces: the run's learner (`run.load_run`), its best weights (best.safetensors, else
model.safetensors), `NTASGD(start=True)`, `SaveBestWeights(best=<the start's loss>)` and
`NonMonotoneStop(n)`. What it does to the run folder::

    model-train.safetensors  training's final weights, kept (by the first finetune; later ones keep them)
    best-train.safetensors   training's best weights, kept likewise
    best.safetensors         the best weights so far; replaced (atomically) only when the loss improves
    model.safetensors        when finetune ends (also on Ctrl-C): a copy of best.safetensors, so `rnnkit
                             evaluate` and `generate` use the best finetuned weights
    metrics.csv              finetune's rows appended, epochs numbered on from training's; a `stage` column
                             (train or finetune) is added to every row
    finetune.json            each finetune's settings and outcome, in "sessions"
    rnnkit-run.json          state stays "done"; "stage" is finetuning, then finetuned (or finetune-interrupted)

config.json, vocab.json and checkpoints/ are not changed: the run's recipe stays the one it trained with.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from rnnkit.callbacks.best import SaveBestWeights, read_best
from rnnkit.callbacks.ntasgd import NTASGD, NonMonotoneStop
from rnnkit.checkpoint import CheckpointError, load_weights
from rnnkit.errors import UserError
from rnnkit.files import atomic_write
from rnnkit.run import RUN_MARKER, RunError, is_run, load_run, run_state
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder

__all__ = ["finetune", "check_finetunable", "FINETUNE_FILE"]

FINETUNE_FILE = "finetune.json"
_KEPT = (("model.safetensors", "model-train.safetensors"), ("best.safetensors", "best-train.safetensors"))


def check_finetunable(run: Path) -> None:
    """Refuse (RunError) a folder that is not a run that finished training, or that has no weights."""
    if not run.is_dir() or not is_run(run):
        raise RunError(f"{run} is not a run folder (no {RUN_MARKER}); give the --out folder of `rnnkit train`")
    state = run_state(run)
    if state == "running":
        raise RunError(f"{run} is still training, or stopped without saving (state 'running'); finetune a run "
                       f"that has finished: wait for it, or continue it with `rnnkit train --resume {run}`")
    if state == "interrupted":
        raise RunError(f"{run} has not finished training (interrupted); continue it with "
                       f"`rnnkit train --resume {run}`, then finetune it")
    if state == "nan":
        raise RunError(f"{run} stopped on a NaN or infinite loss and has no final weights; train it again "
                       "with a lower --lr or with --clip")
    if state != "done":
        raise RunError(f"{run}'s marker {RUN_MARKER} is unreadable or says state {state!r}; only a run that "
                       "finished training (state 'done') can be finetuned")
    if not any((run / f).is_file() for f in ("best.safetensors", "model.safetensors")):
        raise RunError(f"{run} has no saved weights (best.safetensors or model.safetensors); train it again")


def _check_options(epochs: int | None, lr: float | None, nonmono: int, threads: int | None) -> None:
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise UserError(f"--epochs {epochs}: the most epochs to finetune must be a positive integer")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr {lr}: the learning rate must be a positive number (default: the run's)")
    if isinstance(nonmono, bool) or not isinstance(nonmono, int) or nonmono < 1:
        raise UserError(f"--nonmono {nonmono}: the non-monotone interval must be a positive integer (paper: 5)")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: must be a positive number of CPU threads")


def finetune(run: str | Path, epochs: int | None = None, lr: float | None = None, nonmono: int = 5,
             data: str | None = None, device: str | None = None, threads: int | None = None,
             log_fn: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fine-tune the finished run `run` as the AWD-LSTM paper does (see the module docstring).

    Args:
        epochs: the most epochs to run (default: the run's `epochs`, as the paper's commands repeat them).
        lr: the constant learning rate (default: the run's, from config.json).
        nonmono: the non-monotone interval n of the stopping test.
        data, device: the corpus folder if it moved, and the device (default: the run's settings).

    Returns a summary: state ('done', or 'nan' when the loss overflowed), why it stopped ('non-monotone' or
    'epochs'), the start's and the best validation loss, the best epoch, whether it improved, the epochs run,
    the metrics of the weights now in model.safetensors, and the learner. Ctrl-C (KeyboardInterrupt) is
    raised again once the folder is consistent: finetune.json and the marker say 'interrupted'.
    """
    run = Path(run)
    _check_options(epochs, lr, nonmono, threads)
    check_finetunable(run)
    sessions = _sessions(run)  # an unreadable finetune.json is refused before anything is written
    cfg, learn = load_run(run, data=data, device=device)
    n_threads = threads or cfg.threads
    if n_threads:
        torch.set_num_threads(n_threads)
    for cb in [c for c in learn.cbs if isinstance(c, NTASGD)]:  # the training's; finetune brings its own
        learn.remove_cb(cb)
    start = run / "best.safetensors" if (run / "best.safetensors").is_file() else run / "model.safetensors"
    _load(learn, start)
    for src, dst in _KEPT:  # training's weights stay in the folder, whatever finetune does next
        if (run / src).is_file() and not (run / dst).exists():
            _copy(run / src, run / dst)
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else float(lr)
    first = _next_epoch(run / "metrics.csv", cfg.epochs)
    start_loss = float(learn.validate()[0])  # the bar to beat: finetune.py's `stored_loss = evaluate(val_data)`
    settings = {"epochs": epochs, "lr": lr, "nonmono": nonmono, "start": start.name,
                "start_record": read_best(start), "start_valid_loss": start_loss, "first_epoch": first,
                "state": "running"}
    sessions.append(settings)
    _write_sessions(run, sessions)
    _set_stage(run, "finetuning")
    log_fn(f"finetune: from {start.name} (valid loss {start_loss:.4f}), averaging from the first step at lr "
           f"{lr:g}; at most {epochs} epochs, stopping when the valid loss is worse than the best before the "
           f"last {nonmono}")
    best = SaveBestWeights("best.safetensors", best=start_loss, meta={"stage": "finetune"})
    stop = NonMonotoneStop(n=nonmono)
    cbs = [NTASGD(n=nonmono, start=True), best, stop, _StageRows("metrics.csv", "finetune")]
    _add_stage_column(run / "metrics.csv")
    torch.manual_seed(cfg.seed)
    state = "interrupted"
    try:
        learn.lr = lr
        learn.fit(first + epochs, lr=lr, wd=cfg.wd, cbs=cbs, start_epoch=first)  # epochs numbered on
        state = "nan" if learn.nan_stopped else "done"
    finally:
        if (run / "best.safetensors").is_file():
            _copy(run / "best.safetensors", run / "model.safetensors")
        rec = learn.get_cb(Recorder)
        settings.update(state=state, stopped="non-monotone" if stop.stopped_epoch is not None else
                        "epochs" if state == "done" else state, epochs_run=len(rec.values) if rec else 0,
                        best_valid_loss=best.best, best_epoch=best.best_epoch, improved=best.n_saved > 0)
        _write_sessions(run, sessions)
        _set_stage(run, "finetuned" if state == "done" else f"finetune-{state}")
    _load(learn, run / "model.safetensors")
    return {"state": state, "run": run, "start": start, "start_valid_loss": start_loss, "first_epoch": first,
            "stopped": settings["stopped"], "epochs_run": settings["epochs_run"], "best_valid_loss": best.best,
            "best_epoch": best.best_epoch, "improved": best.n_saved > 0, "lr": lr,
            "metrics": learn.evaluate_lm(), "learn": learn}


class _StageRows(Callback):
    """Append each epoch's row to the run's metrics.csv with its `stage`, under the file's own header."""

    order = Recorder.order + 1  # the Recorder fills the row in after_epoch

    def __init__(self, fname: str, stage: str) -> None:
        super().__init__()
        self.fname, self.stage = fname, stage

    def before_fit(self) -> None:
        self.csv_path = self.learn.path / self.fname
        self.names = self.learn.get_cb(Recorder).metric_names
        self.header = _header(self.csv_path)
        if not self.header:  # no training rows (a run from before metrics.csv): start the file
            self.header = [*self.names, "stage"]
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self.header)
        self._n_rows = len(self.learn.get_cb(Recorder).values)

    def after_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        if len(rec.values) == self._n_rows:  # a skipped epoch: no row
            return
        self._n_rows = len(rec.values)
        row = {**dict(zip(self.names, ["" if v is None else v for v in rec.log])), "stage": self.stage}
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, restval="", extrasaction="ignore").writerow(row)


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _add_stage_column(path: Path) -> None:
    """Give metrics.csv a `stage` column, `train` for the rows already there (atomically; once)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "stage" in rows[0]:
        return
    out = io.StringIO(newline="")
    writer = csv.writer(out)  # the dialect CSVLogger writes
    writer.writerow([*rows[0], "stage"])
    writer.writerows([*row, "train"] for row in rows[1:] if row)
    atomic_write(path, out.getvalue())


def _next_epoch(path: Path, default: int) -> int:
    """The number after the last epoch metrics.csv records (`default` when it records none)."""
    if not path.is_file():
        return default
    with open(path, newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f) if (r.get("epoch") or "").strip().isdigit()]
    return max(epochs) + 1 if epochs else default


def _load(learn: Any, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); train the run again") from e
    load_weights(learn.model, weights, what=f"weights in {path}")


def _copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` atomically: a crash leaves `dst` as it was, or a whole copy."""
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _sessions(run: Path) -> list[dict[str, Any]]:
    path = run / FINETUNE_FILE
    if not path.is_file():
        return []
    try:
        sessions = json.loads(path.read_text(encoding="utf-8")).get("sessions", [])
    except (OSError, ValueError, AttributeError) as e:
        raise RunError(f"{path} is unreadable ({e}); move it away to finetune {run} again") from None
    return list(sessions)


def _write_sessions(run: Path, sessions: list[dict[str, Any]]) -> None:
    atomic_write(run / FINETUNE_FILE, json.dumps({"format": "rnnkit-finetune", "version": 1,
                                                  "sessions": sessions}, indent=2))


def _set_stage(run: Path, stage: str) -> None:
    """Record `stage` in the run marker, keeping its state ('done': resume and evaluate treat it as finished)."""
    marker = json.loads((run / RUN_MARKER).read_text(encoding="utf-8"))
    marker["stage"] = stage
    atomic_write(run / RUN_MARKER, json.dumps(marker))

