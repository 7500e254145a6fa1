"""Periodic, atomic checkpoints and exact resume of an interrupted `fit`."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from rnnkit.checkpoint import capture_rng, restore_rng, save_checkpoint
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelEpochException, CancelFitException
from rnnkit.training.recorder import Recorder

__all__ = ["Checkpointer", "model_hidden_state", "load_model_hidden_state"]


def _is_state(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_state(o) for o in v)


def _to_plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    return [_to_plain(o) for o in v]


def _like(saved: Any, current: Any, device: torch.device) -> Any:
    if isinstance(saved, torch.Tensor):
        return saved.to(device)
    kind = type(current) if isinstance(current, (list, tuple)) else list
    return kind(_like(s, c, device) for s, c in zip(saved, current if isinstance(current, (list, tuple)) else saved))


_HIDDEN_ATTRS = ("hidden", "h")  # AWD_LSTM keeps `hidden`, the book's models `h`


def model_hidden_state(model: torch.nn.Module) -> dict[str, Any]:
    """The recurrent state a model carries across batches, per submodule, as CPU tensors."""
    out = {}
    for name, mod in model.named_modules():
        for attr in _HIDDEN_ATTRS:
            v = mod.__dict__.get(attr)
            if v is not None and _is_state(v):
                out[f"{name}:{attr}"] = _to_plain(v)
    return out


def load_model_hidden_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Put back what `model_hidden_state` saved."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    mods = dict(model.named_modules())
    for key, v in state.items():
        name, attr = key.rsplit(":", 1)
        mod = mods[name]
        current = mod.__dict__.get(attr)
        setattr(mod, attr, _like(v, current if current is not None else v, device))


class Checkpointer(Callback):
    """Save a checkpoint at the end of every epoch (and every `every_n_batches` training batches)
    to `ckpt_dir`, and resume exactly from `resume` (the trainer state of a checkpoint).

    SIGINT/SIGTERM during fit stop training at the next batch boundary after saving.
    """

    order = 90  # after everything that changes state during a batch (Recorder 50, schedulers 60)
    run_valid = False

    def __init__(self, ckpt_dir: str | Path, every_n_batches: int = 0, resume: dict[str, Any] | None = None,
                 extra_state: Any = None, handle_signals: bool = True) -> None:
        super().__init__()
        self.ckpt_dir, self.every_n_batches = Path(ckpt_dir), every_n_batches
        self.resume, self.extra_state, self.handle_signals = resume, extra_state, handle_signals
        self.interrupted = False
        self.last_path: Path | None = None

    # ---- signals ----
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.interrupted = True

    def before_fit(self) -> None:
        self._old_handlers = {}
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not in the main thread: leave signals alone
                    break

    def after_fit(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}

    # ---- resume ----
    def before_epoch(self) -> None:
        if self.resume is not None and self.learn.epoch < self.resume["epoch"]:
            raise CancelEpochException()  # finished before the interruption

    def before_train(self) -> None:
        r = self.resume
        if r is None or self.learn.epoch != r["epoch"]:
            return
        learn = self.learn
        learn.train_iter, learn.pct_train = r["train_iter"], r["pct_train"]
        if r.get("loader") is not None and hasattr(learn.dls.train, "load_state_dict"):
            learn.dls.train.load_state_dict(r["loader"])
        rec = learn.get_cb(Recorder)
        if rec is not None and r.get("smooth_loss") is not None:
            rec.smooth_loss.val = r["smooth_loss"]["val"].clone()
            rec.smooth_loss.count = r["smooth_loss"]["count"]
        load_model_hidden_state(learn.model, r.get("hidden", {}))
        for cb in learn.cbs:
            key = f"cb:{type(cb).__name__}"
            if key in r and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(r[key])
        restore_rng(r["rng"])
        self.resume = None

    # ---- save ----
    def trainer_state(self, next_epoch: int, batch_in_epoch: int, loader_state: Any) -> dict[str, Any]:
        """Everything but weights and optimizer needed to continue exactly from here.

        The model's hidden state matters only inside an epoch (ModelResetter clears it at the
        start of each one), so it is kept only for mid-epoch checkpoints."""
        learn = self.learn
        rec = learn.get_cb(Recorder)
        state: dict[str, Any] = {
            "epoch": next_epoch, "batch": batch_in_epoch, "train_iter": learn.train_iter,
            "pct_train": learn.pct_train, "n_epoch": learn.n_epoch, "loader": loader_state,
            "rng": capture_rng(),
            "hidden": model_hidden_state(learn.model) if batch_in_epoch else {},
            "smooth_loss": None if rec is None else {"val": rec.smooth_loss.val.detach().cpu().clone(),
                                                     "count": rec.smooth_loss.count},
            "extra": self.extra_state() if callable(self.extra_state) else self.extra_state,
        }
        for cb in learn.cbs:
            if cb is not self and hasattr(cb, "state_dict") and callable(cb.state_dict):
                state[f"cb:{type(cb).__name__}"] = cb.state_dict()
        return state

    def save(self, next_epoch: int, batch_in_epoch: int, loader_state: Any) -> Path | None:
        """Write a checkpoint now; never over a good one with weights that overflowed (stop instead)."""
        if not all(bool(p.isfinite().all()) for p in self.learn.model.parameters()):
            self.learn.nan_stopped = True
            raise CancelFitException()
        self.last_path = save_checkpoint(self.ckpt_dir, self.learn.model, self.learn.opt.state_dict(),
                                         self.trainer_state(next_epoch, batch_in_epoch, loader_state))
        return self.last_path

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        due = self.every_n_batches and learn.train_iter % self.every_n_batches == 0
        if due or self.interrupted:
            dl = learn.dls.train
            loader_state = dl.state_dict() if hasattr(dl, "state_dict") else None
            self.save(learn.epoch, learn.iter + 1, loader_state)
        if self.interrupted:
            raise CancelFitException()

    def after_epoch(self) -> None:
        if self.interrupted or self.resume is not None:  # interrupted, or an epoch done before the resume
            return
        dl = self.learn.dls.train
        # after a whole pass a stateful loader already points at the start of its next epoch
        self.save(self.learn.epoch + 1, 0, dl.state_dict() if hasattr(dl, "state_dict") else None)
