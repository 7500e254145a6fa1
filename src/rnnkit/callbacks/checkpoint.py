"""Periodic, atomic checkpoints and exact resume of an interrupted `fit`.

A checkpoint holds everything needed to continue bit for bit: weights and optimizer state
(`rnnkit.checkpoint.restore_checkpoint` loads them), and the trainer state this callback writes:
the position (epoch, batch, `train_iter`, `pct_train`), the loader's position, the RNG streams, the
smoothed loss, the model's hidden state and the state of every callback that has one.

Resuming takes two parts, each with one job: `fit(..., start_epoch=state["epoch"])` skips the epochs
already done (`SkipToEpoch`), and `Checkpointer(resume=state)` puts the rest back at the start of the
training phase of that epoch.

Hidden state (docs/hidden-state.md): a module names the attributes that carry state from one batch to
the next in a class attribute, `hidden_attrs = ("hidden",)`; `reset()` clears them, and checkpoints save
exactly those. A module that declares nothing is searched for `hidden` and `h`, so models written without
the protocol (the book's `LMModel7` copied into a notebook) keep resuming exactly.

Callback state: a callback whose class defines `state_dict()` and `load_state_dict()` is saved under
`cb:<state_key>` (`Callback.state_key`, its `name` unless it declares another). Older checkpoints keyed by
class name (`cb:NTASGD`) still load.

Several processes (`Learner.distrib_ctx`): every process takes part in each save, and rank 0 alone writes.
What differs between the processes is saved for each, as a list indexed by rank: the RNG streams and the
hidden state of the rows each one trains on; the rest (position, loader, weights, optimizer, smoothed loss,
callback state) is the same everywhere and saved once, with `world_size`. A resume on as many processes
gives each its own; on another number (`rng_of_rank`) the rows are split anew, so each process takes
rank 0's streams (its own if it had some) and the interrupted epoch goes on from a reset hidden state.
A one-process checkpoint keeps the format it always had (one RNG state, one hidden state).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit.callbacks.schedule import SkipToEpoch
from rnnkit.checkpoint import CheckpointError, capture_rng, restore_rng, rng_of_rank, save_checkpoint
from rnnkit.distributed import all_reduce_sum, is_distributed, is_rank0, num_distrib, rank_distrib
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelFitException
from rnnkit.training.recorder import Recorder

__all__ = ["Checkpointer", "DEFAULT_HIDDEN_ATTRS", "hidden_state_attrs", "model_hidden_state",
           "load_model_hidden_state", "stateful_callbacks", "plain_model"]

# Looked for in modules that declare no `hidden_attrs`: AWD-LSTM's and the book's names before the protocol.
DEFAULT_HIDDEN_ATTRS: tuple[str, ...] = ("hidden", "h")


def hidden_state_attrs(module: nn.Module) -> tuple[str, ...] | None:
    """The attributes `module` declares in `hidden_attrs` as carried across batches; None if it declares none
    (then `hidden` and `h` are looked for)."""
    declared = getattr(module, "hidden_attrs", None)
    if declared is None:
        return None
    if isinstance(declared, str) or not all(isinstance(a, str) for a in declared):
        raise TypeError(f"{type(module).__name__}.hidden_attrs must be a tuple of attribute names, got "
                        f"{declared!r}; write e.g. hidden_attrs = ('hidden',)")
    return tuple(declared)


def _is_state(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_state(o) for o in v)


def _to_plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    return type(v)(_to_plain(o) for o in v) if isinstance(v, tuple) else [_to_plain(o) for o in v]


def _like(saved: Any, current: Any, device: torch.device) -> Any:
    """`saved` on `device`, in the containers the module uses now (older checkpoints stored tuples as lists)."""
    if isinstance(saved, torch.Tensor):
        return saved.to(device)
    kind = type(current) if isinstance(current, (list, tuple)) else type(saved)
    cur = current if isinstance(current, (list, tuple)) else saved
    return kind(_like(s, c, device) for s, c in zip(saved, cur))


def plain_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (which `distrib_ctx` puts on during a fit), else
    `model`: checkpoints name submodules as the plain model does."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _per_rank(value: Any) -> Any:
    """`value` of every process as a list indexed by rank, on rank 0 (None elsewhere); `value` in one process."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    out: list[Any] | None = [None] * num_distrib() if is_rank0() else None
    dist.gather_object(value, out, dst=0)
    return out


def model_hidden_state(model: nn.Module) -> dict[str, Any]:
    """The recurrent state a model carries across batches, per submodule, as CPU tensors (keys `name:attr`)."""
    out = {}
    for name, mod in model.named_modules():
        declared = hidden_state_attrs(mod)
        for attr in DEFAULT_HIDDEN_ATTRS if declared is None else declared:
            v = mod.__dict__.get(attr) if declared is None else getattr(mod, attr, None)
            if v is not None and _is_state(v):
                out[f"{name}:{attr}"] = _to_plain(v)
    return out


def load_model_hidden_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Put back what `model_hidden_state` saved."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    mods = dict(model.named_modules())
    for key, v in state.items():
        name, attr = key.rsplit(":", 1)
        if name not in mods:
            raise CheckpointError(f"the checkpoint holds the hidden state of submodule {name!r}, which this "
                                  "model does not have; resume with the model the run was trained with")
        mod = mods[name]
        current = getattr(mod, attr, None)
        setattr(mod, attr, _like(v, current if current is not None else v, device))


def _defines(cb: Callback, method: str) -> bool:
    # On the class: reading `cb.state_dict` would fall through to the learner's model (Callback.__getattr__).
    return callable(getattr(type(cb), method, None))


def stateful_callbacks(cbs: Any, exclude: Any = None) -> dict[str, Callback]:
    """The callbacks among `cbs` whose class defines `state_dict`, by `state_key`; an error names two
    callbacks that share a key, or one that could be saved but not loaded."""
    out: dict[str, Callback] = {}
    for cb in cbs:
        if cb is exclude or not _defines(cb, "state_dict"):
            continue
        if not _defines(cb, "load_state_dict"):
            raise TypeError(f"{type(cb).__name__} defines state_dict() but not load_state_dict(): a checkpoint "
                            "could save its state but a resume could not put it back; define both")
        key = cb.state_key
        if key in out:
            raise ValueError(f"{type(out[key]).__name__} and {type(cb).__name__} both keep their checkpoint "
                             f"state under state_key {key!r}; give one of them another state_key (a class "
                             "attribute) so that a resume restores each its own state")
        out[key] = cb
    return out


class Checkpointer(Callback):
    """Save a checkpoint at the end of every epoch (and every `every_n_batches` training batches)
    to `ckpt_dir`; with `resume` (a checkpoint's trainer state), continue exactly where it stopped.

    A resumed fit must start at the checkpoint's epoch: `fit(..., start_epoch=resume["epoch"])` skips the
    epochs before it, and this callback restores the position inside that epoch in `before_train`.
    SIGINT/SIGTERM during fit stop training at the next batch boundary after saving.
    """

    order = 90  # after everything that changes state during a batch (Recorder 50, schedulers 60)
    run_valid = False
    skip_in_lr_find = True  # lr_find's trial fit must not write checkpoints

    def __init__(self, ckpt_dir: str | Path, every_n_batches: int = 0, resume: dict[str, Any] | None = None,
                 extra_state: Any = None, handle_signals: bool = True) -> None:
        super().__init__()
        self.ckpt_dir, self.every_n_batches = Path(ckpt_dir), every_n_batches
        self.resume, self.extra_state, self.handle_signals = resume, extra_state, handle_signals
        self.interrupted = False
        self.last_path: Path | None = None
        self._trained = False  # whether this epoch's training ran (epochs skipped by start_epoch get no save)
        self._old_handlers: dict[int, Any] = {}

    # ---- signals ----
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.interrupted = True

    def before_fit(self) -> None:
        stateful_callbacks(self.learn.cbs, exclude=self)  # shared keys fail now, not at the first save
        if self.resume is not None:
            skip = self.learn.get_cb(SkipToEpoch)
            start, epoch = (0 if skip is None else skip.start_epoch), self.resume["epoch"]
            if start != epoch:
                raise ValueError(f"Checkpointer(resume=...) continues epoch {epoch} of its checkpoint, but this "
                                 f"fit starts at epoch {start}; pass start_epoch={epoch} to the fit, e.g. "
                                 "learn.fit_one_cycle(n_epoch, lr, start_epoch=state['epoch'], cbs=...)")
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
    def before_train(self) -> None:
        self._trained = True
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
        saved_world, rank, world = r.get("world_size", 1), rank_distrib(), num_distrib()
        hidden = r.get("hidden", {})
        if saved_world != world:  # the rows are split anew: no process continues another's hidden state
            hidden = {}
        elif saved_world > 1:
            hidden = hidden[rank]
        load_model_hidden_state(plain_model(learn.model), hidden)
        for key, cb in stateful_callbacks(learn.cbs, exclude=self).items():
            saved = r.get(f"cb:{key}", r.get(f"cb:{type(cb).__name__}"))  # the second: before state_key
            if saved is not None:
                cb.load_state_dict(saved)
        restore_rng(rng_of_rank(r["rng"], rank))
        self.resume = None

    # ---- save ----
    def trainer_state(self, next_epoch: int, batch_in_epoch: int, loader_state: Any) -> dict[str, Any]:
        """Everything but weights and optimizer needed to continue exactly from here.

        The model's hidden state matters only inside an epoch (ModelResetter clears it at the
        start of each one), so it is kept only for mid-epoch checkpoints. With several processes every
        one must call this (RNG and hidden states are gathered); the state is complete on rank 0 only."""
        learn = self.learn
        rec = learn.get_cb(Recorder)
        state: dict[str, Any] = {
            "epoch": next_epoch, "batch": batch_in_epoch, "train_iter": learn.train_iter,
            "pct_train": learn.pct_train, "n_epoch": learn.n_epoch, "loader": loader_state,
            "rng": _per_rank(capture_rng()),
            "hidden": _per_rank(model_hidden_state(plain_model(learn.model)) if batch_in_epoch else {}),
            "smooth_loss": None if rec is None else {"val": rec.smooth_loss.val.detach().cpu().clone(),
                                                     "count": rec.smooth_loss.count},
            "extra": self.extra_state() if callable(self.extra_state) else self.extra_state,
        }
        if num_distrib() > 1:
            state["world_size"] = num_distrib()  # a one-process checkpoint keeps the format it always had
        for key, cb in stateful_callbacks(learn.cbs, exclude=self).items():
            state[f"cb:{key}"] = cb.state_dict()
        return state

    def save(self, next_epoch: int, batch_in_epoch: int, loader_state: Any) -> Path | None:
        """Write a checkpoint now; never over a good one with weights that overflowed (stop instead).
        With several processes all of them call it, and rank 0 writes (the others return None)."""
        model = plain_model(self.learn.model)
        if not all(bool(p.isfinite().all()) for p in model.parameters()):  # the same weights on every process
            self.learn.nan_stopped = True
            raise CancelFitException()
        state = self.trainer_state(next_epoch, batch_in_epoch, loader_state)
        if not is_rank0():
            return None
        self.last_path = save_checkpoint(self.ckpt_dir, model, self.learn.opt.state_dict(), state)
        return self.last_path

    def _interrupted_anywhere(self) -> bool:
        """Whether any process got SIGINT/SIGTERM: all must save at the same batch (the save gathers)."""
        if not is_distributed():
            return self.interrupted
        flag = all_reduce_sum(torch.tensor([float(self.interrupted)]))
        self.interrupted = bool(flag.item() > 0)
        return self.interrupted

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        due = self.every_n_batches and learn.train_iter % self.every_n_batches == 0
        stop = self._interrupted_anywhere()  # decided once: a signal arriving now waits for the next batch
        if stop or due:
            dl = learn.dls.train
            loader_state = dl.state_dict() if hasattr(dl, "state_dict") else None
            self.save(learn.epoch, learn.iter + 1, loader_state)
        if stop:
            raise CancelFitException()

    def after_epoch(self) -> None:
        trained, self._trained = self._trained, False
        if not trained or self._interrupted_anywhere():  # an epoch skipped before the resume point, or
            return  # interrupted: the next batch saves
        dl = self.learn.dls.train
        # after a whole pass a stateful loader already points at the start of its next epoch
        self.save(self.learn.epoch + 1, 0, dl.state_dict() if hasattr(dl, "state_dict") else None)
