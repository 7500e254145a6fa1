"""`Learner`: the training loop of the seeds, driven by callbacks."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastcore.basics import defaults
from torch import nn

from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.checkpoint import load_model, save_model
from rnnkit.callbacks.progress import ProgressCallback
from rnnkit.callbacks.schedule import SkipToEpoch
from rnnkit.memory import buffer_pool
from rnnkit.optim.recipes import Adam
from rnnkit.training.callback import CastToTensor, Callback, TrainEvalCallback, as_cb_list
from rnnkit.training.events import (
    CancelBackwardException, CancelBatchException, CancelEpochException,
    CancelFitException, CancelStepException, CancelTrainException, CancelValidException,
)
from rnnkit.training.callback_registry import CallbackRegistry
from rnnkit.training.distributed_methods import DistributedMethods
from rnnkit.training.evaluation import EvaluationMethods
from rnnkit.training.fit_schedules import ScheduleMethods
from rnnkit.training.recorder import Recorder
from rnnkit.utils import noop, to_device

__all__ = ["Learner", "trainable_params", "norm_bias_params", "before_batch_cb"]

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


# fastai's global defaults (fastcore's `defaults` namespace): the default lr, and the callbacks every
# Learner starts with (a user may change the list, as in fastai).
defaults.lr = 1e-3
defaults.callbacks = [TrainEvalCallback, Recorder, CastToTensor, ProgressCallback]


def trainable_params(m: nn.Module) -> list[nn.Parameter]:
    """The default splitter: every parameter of `m` that requires a gradient, in one group."""
    return [p for p in m.parameters() if p.requires_grad]


def norm_bias_params(m: nn.Module, with_bias: bool = True) -> list[nn.Parameter]:
    """Parameters of normalization layers, plus every bias when `with_bias`."""
    out: list[nn.Parameter] = []
    for mod in m.modules():
        if isinstance(mod, _NORM_TYPES):
            out += list(mod.parameters(recurse=False))
        elif with_bias:
            out += [p for n, p in mod.named_parameters(recurse=False) if n.startswith("bias")]
    return out


def before_batch_cb(f: Callable) -> Callback:
    """A callback from `f(self, xb, yb) -> (xb, yb)`, run in `before_batch` to change the batch."""

    def _before_batch(self: Callback) -> None:
        self.learn.xb, self.learn.yb = f(self, self.learn.xb, self.learn.yb)

    return Callback(before_batch=_before_batch)


class Learner(CallbackRegistry, ScheduleMethods, EvaluationMethods, DistributedMethods):
    """Group data, model, loss and optimizer, and train them with `fit` and its schedules."""

    def __init__(self, dls: Any, model: nn.Module, loss_func: Callable | None = None,
                 opt_func: Callable = Adam, lr: float = defaults.lr,
                 splitter: Callable[[nn.Module], Any] = trainable_params,
                 cbs: Any = None, metrics: Any = None, path: str | Path | None = None,
                 model_dir: str | Path = "models", wd: float | None = None,
                 wd_bn_bias: bool = False, train_bn: bool = True,
                 moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
                 default_cbs: bool = True) -> None:
        if loss_func is None:
            loss_func = getattr(dls, "loss_func", None)
            if loss_func is None:
                raise ValueError("Learner needs a loss function: pass loss_func=, e.g. "
                                 "CrossEntropyLossFlat() or F.cross_entropy")
        if not callable(loss_func):
            raise TypeError(f"loss_func must be callable, got {type(loss_func).__name__}")
        _check_lr(lr)
        self.dls, self.model, self.loss_func = dls, model, loss_func
        self.opt_func, self.lr, self.splitter = opt_func, lr, splitter
        self.path = Path(path if path is not None else getattr(dls, "path", "."))
        self.model_dir, self.wd, self.wd_bn_bias, self.train_bn = Path(model_dir), wd, wd_bn_bias, train_bn
        self.moms = moms
        self.opt: Any = None
        # Gradients are zeroed in place after each step, as in fastai (a callback may read `p.grad` in
        # after_batch); `drop_grads = True` drops them instead, as torch.optim does by default.
        self.drop_grads = False
        self._drops_grads: tuple[Any, bool] = (None, False)  # (optimizer, its zero_grad takes set_to_none)
        self.logger: Callable = print
        self.training = False
        self.epoch = self.iter = self.n_iter = self.train_iter = 0
        self.n_epoch = 1
        self.pct_train = 0.0
        self._n_train_batches = 1
        self.final_record: list[Any] = []
        self.nan_stopped = False
        self.dl: Any = None
        self.xb: tuple = ()
        self.yb: tuple = ()
        self.pred: Any = None
        self.loss_grad = self.loss = torch.tensor(0.0)
        self.smooth_loss: Any = None
        self._batch_device: torch.device | None = None
        self._cbs: list[Callback] = []
        self._event_cbs: dict[str, list[Callback]] = {}
        self._cb_by_name: dict[str, Callback] = {}
        if default_cbs:  # fastai's: TrainEvalCallback, Recorder, CastToTensor, ProgressCallback
            self.add_cbs(defaults.callbacks)
        self.metrics = metrics
        self.add_cbs(cbs)
        self("after_create")

    # ---- attributes ----
    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: callbacks by name, then the model.
        if name.startswith("__") or name in ("_cb_by_name", "model"):
            raise AttributeError(name)
        cbs = self.__dict__.get("_cb_by_name", {})
        if name in cbs:
            return cbs[name]
        model = self.__dict__.get("model")
        if model is not None and not name.startswith("_"):
            try:
                return getattr(model, name)
            except AttributeError:
                pass
        raise AttributeError(f"'Learner' object has no attribute {name!r}")

    @property
    def metrics(self) -> list[Any]:
        """The metrics computed on the validation set each epoch."""
        rec = self._cb_by_name.get("recorder")
        return rec.metrics if rec is not None else self._metrics

    @metrics.setter
    def metrics(self, ms: Any) -> None:
        ms = [] if ms is None else (list(ms) if isinstance(ms, (list, tuple)) else [ms])
        self._metrics = ms
        rec = self._cb_by_name.get("recorder")
        if rec is not None:
            rec.set_metrics(ms)

    @property
    def x(self) -> Any:
        """The input of the current batch (`xb` detuplified)."""
        return self.xb[0] if len(self.xb) == 1 else self.xb

    @property
    def y(self) -> Any:
        """The target of the current batch (`yb` detuplified)."""
        return self.yb[0] if len(self.yb) == 1 else self.yb

    # ---- the loop ----
    def _with_events(self, f: Callable[[], None], event_type: str, ex: type[Exception],
                     final: Callable[[], None] = noop) -> None:
        try:
            self(f"before_{event_type}")
            f()
        except ex:
            self(f"after_cancel_{event_type}")
        self(f"after_{event_type}")
        final()

    def create_opt(self) -> None:
        """Build the optimizer from `opt_func` on the splitter's parameter groups."""
        if isinstance(self.opt_func, functools.partial) and "lr" in self.opt_func.keywords:
            self.lr = self.opt_func.keywords["lr"]
        self.opt = self.opt_func(self.splitter(self.model), lr=self._lr_value(self.lr))
        state = getattr(self.opt, "state", None)
        if isinstance(state, dict) and hasattr(self.opt, "param_lists"):
            if not self.wd_bn_bias:
                for p in norm_bias_params(self.model, with_bias=True):
                    _param_state(self.opt, p)["do_wd"] = False
            if self.train_bn:
                for p in norm_bias_params(self.model, with_bias=False):
                    _param_state(self.opt, p)["force_train"] = True

    @staticmethod
    def _lr_value(lr: Any) -> Any:
        return lr.stop if isinstance(lr, slice) else lr

    def _device(self) -> torch.device | None:
        dev = getattr(self.dls, "device", None)
        if dev is not None:
            return torch.device(dev)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else None

    def one_batch(self, i: int, b: Sequence[Any]) -> None:
        """Run one batch `b` (index `i`) through the model, loss and, in training, the optimizer."""
        self.iter = i
        b = self._to_device(b)
        n_inp = getattr(self.dls, "n_inp", None)
        if n_inp is None:  # fastai's default: all but the last element are inputs
            n_inp = 1 if len(b) == 1 else len(b) - 1
        self.xb, self.yb = tuple(b[:n_inp]), tuple(b[n_inp:])
        self._with_events(self._do_one_batch, "batch", CancelBatchException)

    def _to_device(self, b: Sequence[Any]) -> Sequence[Any]:
        dev = self._batch_device
        if dev is None or all(getattr(t, "device", dev) == dev for t in b):
            return b
        return to_device(b, dev)

    def _do_one_batch(self) -> None:
        self.pred = self.model(*self.xb)
        self("after_pred")
        if len(self.yb):
            self.loss_grad = self.loss_func(self.pred, *self.yb)
            self.loss = self.loss_grad.detach().clone()  # for the record: no autograd node
        self("after_loss")
        if not self.training or not len(self.yb):
            return
        self._with_events(self._backward, "backward", CancelBackwardException)
        self._with_events(self._step, "step", CancelStepException)
        self._zero_grad()

    def _zero_grad(self) -> None:
        # With `drop_grads` the gradients are dropped rather than zeroed: the next backward then hands
        # each parameter its gradient buffer instead of adding into a zeroed one (two passes fewer per
        # parameter and step; the command line asks for it). Optimizers whose zero_grad takes no
        # `set_to_none` (a user's own, such as the Training Process chapter's) are called as they are.
        opt = self.opt
        if not self.drop_grads:
            opt.zero_grad()
            return
        if self._drops_grads[0] is not opt:
            try:
                takes = "set_to_none" in inspect.signature(opt.zero_grad).parameters
            except (TypeError, ValueError):  # no signature to read
                takes = False
            self._drops_grads = (opt, takes)
        if self._drops_grads[1]:
            opt.zero_grad(set_to_none=True)
        else:
            opt.zero_grad()

    def _backward(self) -> None:
        self.loss_grad.backward()

    def _step(self) -> None:
        self.opt.step()

    def all_batches(self) -> None:
        """Run every batch of `self.dl`."""
        self.n_iter = len(self.dl)
        for i, b in enumerate(self.dl):
            self.one_batch(i, b)

    def _do_epoch_train(self) -> None:
        self.dl = self.dls.train
        self._with_events(self.all_batches, "train", CancelTrainException)

    def _do_epoch_validate(self, ds_idx: int = 1, dl: Any = None) -> None:
        if dl is None:
            dl = self.dls[ds_idx]
        self.dl = dl
        with torch.no_grad():
            self._with_events(self.all_batches, "validate", CancelValidException)

    def _do_epoch(self) -> None:
        self._do_epoch_train()
        self._do_epoch_validate()

    def _do_fit(self) -> None:
        for epoch in range(self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)

    def fit(self, n_epoch: int, lr: Any = None, wd: float | None = None, cbs: Any = None,
            reset_opt: bool = False, start_epoch: int = 0) -> None:
        """Train for `n_epoch` epochs at a constant learning rate `lr`; `start_epoch` skips the epochs before it
        (how a resume continues, with `Checkpointer(resume=...)`: see docs/hidden-state.md)."""
        if not isinstance(n_epoch, int) or n_epoch < 0:
            raise ValueError(f"n_epoch must be a non-negative int, got {n_epoch!r}")
        _check_lr(lr)
        if len(self.dls.train) == 0:
            raise ValueError("The training DataLoader has no batches: its dataset is smaller "
                             "than one batch (with drop_last=True). Use a smaller bs.")
        cbs = as_cb_list(cbs)
        if start_epoch:
            cbs.append(SkipToEpoch(start_epoch))
        self._reindex()  # event methods patched onto a callback class since it was added
        with self.added_cbs(cbs):
            if reset_opt or self.opt is None:
                self.create_opt()
            if wd is None:
                wd = self.wd
            if wd is not None:
                self.opt.set_hypers(wd=wd)
            self.opt.set_hypers(lr=self.lr if lr is None else lr)
            self.n_epoch = n_epoch
            self._batch_device = self._device()
            self._with_events(self._do_fit, "fit", CancelFitException, self._end_cleanup)

    def _end_cleanup(self) -> None:
        self.dl, self.xb, self.yb, self.pred = None, (), (), None
        self.loss_grad = self.loss
        buffer_pool.release_idle()  # the logits-sized buffers of this fit, unless something still holds them
        for cb in self._cbs:
            cb.run = True  # a callback that switched itself off is back on for the next fit

    # ---- freezing ----
    def freeze_to(self, n: int) -> None:
        """Freeze parameter groups before `n` (they get no step and no gradient)."""
        if self.opt is None:
            self.create_opt()
        self.opt.freeze_to(n)
        self.opt.clear_state()

    def freeze(self) -> None:
        """Freeze every parameter group but the last."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every parameter group."""
        self.freeze_to(0)

    # ---- mixed precision ----
    def to_fp16(self, **kwargs: Any) -> Learner:
        """Train with float16 autocast and a gradient scaler."""
        self.remove_cb(MixedPrecision)
        return self.add_cb(MixedPrecision(dtype=torch.float16, **kwargs))

    def to_bf16(self) -> Learner:
        """Train with bfloat16 autocast (no gradient scaling needed)."""
        self.remove_cb(MixedPrecision)
        return self.add_cb(MixedPrecision(dtype=torch.bfloat16))

    def to_fp32(self) -> Learner:
        """Go back to full precision."""
        return self.remove_cb(MixedPrecision)

    # ---- save / load ----
    def _checkpoint_path(self, file: str | Path) -> Path:
        p = Path(file)
        if p.suffix == "":
            p = p.with_suffix(".pth")
        return p if p.is_absolute() else self.path / self.model_dir / p

    def save(self, file: str | Path, with_opt: bool = True) -> Path:
        """Save model weights (and optimizer state) to `path/model_dir/file.pth`, atomically."""
        target = self._checkpoint_path(file)
        save_model(target, self.model, self.opt, with_opt=with_opt)
        return target

    def load(self, file: str | Path, device: Any = None, with_opt: bool = True,
             strict: bool = True) -> Learner:
        """Load what `save` wrote; only tensors and plain values are read (no unpickling of code)."""
        target = self._checkpoint_path(file)
        if not target.exists():
            raise FileNotFoundError(f"No saved model at {target}; check the name, `learn.path` "
                                    f"({self.path}) and `learn.model_dir` ({self.model_dir})")
        if self.opt is None:
            self.create_opt()  # as fastai's load does, so `learn.opt` is there to inspect or fit with
        load_model(target, self.model, self.opt, with_opt=with_opt, device=device or self._device(), strict=strict)
        return self

    def export(self, fname: str | Path = "export.pkl", pickle_module: Any = None,
               pickle_protocol: int | None = None) -> Path:
        """Write everything `load_learner` needs to `path/fname`: config, vocabulary and safetensors
        weights in one checksummed file. Never a pickle, whatever the name (fastai's is)."""
        from rnnkit.export import export_learner  # the export module builds text learners, which import this one

        return export_learner(self, fname, pickle_module, pickle_protocol)

    def __repr__(self) -> str:
        return f"Learner(model={type(self.model).__name__}, cbs={self._cbs})"


def _param_state(opt: Any, p: torch.Tensor) -> dict[str, Any]:
    st = opt.state.get(p)
    if st is None:
        st = opt.state[p] = {}
    return st


def _check_lr(lr: Any) -> None:
    """A learning rate may be 0 (the weights stay where they are, as in fastai), not negative or NaN."""
    if lr is None or isinstance(lr, slice) or isinstance(lr, (list, tuple, np.ndarray)):
        return
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0 (0 keeps the weights still), got {lr}")
