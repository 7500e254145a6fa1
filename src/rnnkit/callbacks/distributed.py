"""`DistributedTrainer`: fit on every process of a `torch.distributed` group as one process would.

For the length of a fit the model is wrapped in DistributedDataParallel (which averages the gradients
during `backward`) and the training and validation loaders are replaced by this process's shards
(`rnnkit.distributed.shard_loader`): process `r` of `N` takes rows `r*bs/N .. (r+1)*bs/N - 1` of every
batch, so its rows continue from batch to batch and a recurrent model's hidden state stays valid.
Each process's loss is a mean over its `bs/N` rows, so DDP's average of the gradients is the gradient
one process would compute on all `bs` rows: AR/TAR included, and gradient clipping, which runs after
the average, clips the global gradient. Use it through `Learner.distrib_ctx()`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnkit.distributed import all_reduce_sum, is_distributed, num_distrib, shard_loader
from rnnkit.metrics.core import batch_size_of
from rnnkit.training.callback import Callback, TrainEvalCallback, move_to_loaders_device

__all__ = ["DistributedTrainer"]


class _DDP(DistributedDataParallel):
    """DDP that lets `learn.model.<attr>` users keep working: attributes, `reset()`, `hidden_attrs`,
    indexing and the state dict all go to the wrapped module (the state dict without a 'module.' prefix,
    so checkpoints written during a distributed fit load into a plain model)."""

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.__dict__["_forwarding"] = True  # from now on; DDP's own set-up keeps its attributes

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet: during DistributedDataParallel.__init__
                raise
            return getattr(self.module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if (self.__dict__.get("_forwarding") and not name.startswith("_") and name not in self.__dict__
                and not hasattr(type(self), name) and hasattr(self.module, name)
                and not isinstance(value, (nn.Module, nn.Parameter))):
            setattr(self.module, name, value)  # e.g. a restored hidden state: it belongs to the model
        else:
            super().__setattr__(name, value)

    def __getitem__(self, i: Any) -> Any:
        return self.module[i]

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


class DistributedTrainer(Callback):
    """Wrap the model in DistributedDataParallel and shard the loaders for each fit; undo both after it.

    Outside a process group of several processes it does nothing, so a script written for
    `torchrun` also runs as one process. Each training batch's loss is averaged over the processes
    (weighted by batch size) before the Recorder sees it; validation metrics are combined by the
    Recorder (`Metric.sync`).

    Args:
        sync_bn: fastai's option to synchronise BatchNorm statistics; accepted and ignored:
            recurrent language models have no BatchNorm layer.
        **ddp_kwargs: passed to `DistributedDataParallel` (e.g. `bucket_cap_mb`).
    """

    # Before TrainEvalCallback, which counts the training batches for the schedules: it must count a
    # shard's, the same on every process (a random-bptt epoch's length depends on the seed).
    order = TrainEvalCallback.order - 1
    skip_in_lr_find = False  # lr_find's trial fit is distributed too: every process must take part

    def __init__(self, sync_bn: bool = False, **ddp_kwargs: Any) -> None:
        super().__init__()
        self.sync_bn, self.ddp_kwargs = sync_bn, ddp_kwargs
        self._plain: nn.Module | None = None  # the model before wrapping, while wrapped
        self._loaders: list[Any] | None = None  # the loaders before sharding, while sharded

    @property
    def wrapped(self) -> bool:
        """Whether the learner's model and loaders are the distributed ones now (during a fit)."""
        return self._plain is not None

    def before_fit(self) -> None:
        if not is_distributed():
            return
        learn = self.learn
        loaders = learn.dls.loaders
        shards = [shard_loader(dl) for dl in loaders[:2]]  # the training and validation loaders; may raise
        self._loaders = list(loaders)
        loaders[:2] = shards
        move_to_loaders_device(learn)  # DDP wraps a model that is on its device already
        model = learn.model
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None  # device_ids only for one CUDA device per process
        self._plain = model
        learn.model = _DDP(model, device_ids=ids, **self.ddp_kwargs)  # copies rank 0's weights everywhere

    def after_loss(self) -> None:
        learn = self.learn
        if not (self.wrapped and learn.training and len(learn.yb)):
            return
        # One process's batch may be smaller (a map-style loader's last batch): weight by batch size.
        bs = batch_size_of(learn)
        loss = learn.loss.mean()
        sums = torch.stack([loss.double() * bs, torch.tensor(float(bs), dtype=torch.float64, device=loss.device)])
        all_reduce_sum(sums)
        learn.loss = (sums[0] / sums[1]).to(loss.dtype)  # what one process would record for the whole batch
        # DDP averages the gradients with equal weights; scale each so the average weighs by batch size
        # (exactly 1 when every process has bs/N rows).
        scale = bs * num_distrib() / sums[1]
        learn.loss_grad = learn.loss_grad * scale.to(learn.loss_grad.dtype)

    def after_fit(self) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the plain model and the original loaders back (after each fit; `distrib_ctx` also calls it
        when a fit ends with an exception). The original loaders continue where the shards stopped."""
        learn = self.learn
        if self._plain is not None:
            learn.model = self._plain
            self._plain = None
        if self._loaders is not None:
            loaders = learn.dls.loaders
            for i, (orig, shard) in enumerate(zip(self._loaders, list(loaders))):
                if orig is not shard and hasattr(orig, "load_state_dict") and hasattr(shard, "state_dict"):
                    orig.load_state_dict(shard.state_dict())
                loaders[i] = orig
            self._loaders = None
