"""The two fits tests/distributed compares: the book's LMModel7 on Human Numbers, and a small AWD-LSTM with
AR/TAR, random bptt, shuffled documents and gradient clipping. Dropout is off, so the runs are deterministic.

The tests import the builders to run one process; `python ddp_scenarios.py OUT` runs both fits as one
process of a torchrun-style group (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the test) and
writes what it recorded to OUT/rank<r>.json and, on rank 0, the weights and first gradients to OUT/*.pt.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnkit.callbacks.clip import GradientClip
from rnnkit.callbacks.csv_logger import CSVLogger
from rnnkit.callbacks.rnn import rnn_cbs
from rnnkit.data.corpora import read_corpus
from rnnkit.data.human_numbers import human_numbers_lm_dls
from rnnkit.data.stream import TokenStream
from rnnkit.data.text import TextDataLoaders
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.metrics import AccumMetric, Perplexity, accuracy
from rnnkit.models.awd_lstm import AWDLSTMConfig
from rnnkit.models.book import LMModel7
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner
from rnnkit.text.learner import language_model_learner

AWD = AWDLSTMConfig(emb_sz=24, n_hid=32, n_layers=2, output_p=0.0, hidden_p=0.0, input_p=0.0, embed_p=0.0,
                    weight_p=0.0)
CLIP = 0.15  # below most steps' gradient norm, so clipping acts


class StepLog(Callback):
    """Record each training step's loss (as the Recorder sees it), the first step's gradients and the
    gradient norm before clipping."""

    order = GradientClip.order - 1  # before_step: the norm before GradientClip changes the gradients

    def before_fit(self) -> None:
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.grads: list[torch.Tensor] | None = None

    def after_backward(self) -> None:
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in self.learn.model.parameters()]

    def before_step(self) -> None:
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def after_batch(self) -> None:
        if self.learn.training:
            self.losses.append(float(self.learn.loss))


class WrapperProbe(Callback):
    """Check, during the first training batch, that `learn.model` users still reach the wrapped model."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, bool] = {}

    def after_batch(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        model = self.learn.model
        if self.seen or not self.learn.training or not isinstance(model, DistributedDataParallel):
            return  # (a one-process fit has nothing to probe)
        inner = model.module
        self.seen = {"plain_keys": list(model.state_dict()) == list(inner.state_dict())}
        if isinstance(inner, nn.Sequential):  # AWD-LSTM
            self.seen["index"] = model[0] is inner[0]
        else:  # LMModel7: its hidden state, read and written through the wrapper
            h = model.h
            model.h = tuple(t.clone() for t in h)
            self.seen["hidden"] = (model.hidden_attrs == ("h",) and inner.h is not h and "h" not in model.__dict__
                                   and h[0].shape[1] == self.learn.dls.train.bs // 2)


def _acc(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    return (preds == targs).float().mean()


def book_learner() -> Learner:
    """Chapter 12's LMModel7 (dropout off) with AR/TAR, 49 training batches of 64 rows."""
    dls, vocab = human_numbers_lm_dls(bs=64, sl=16, device="cpu")
    torch.manual_seed(0)
    model = LMModel7(len(vocab), 48, 2, p=0.0)
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                   cbs=rnn_cbs(alpha=2, beta=1) + [StepLog(), WrapperProbe()])


def awd_learner(seed: int | None) -> Learner:
    """A small AWD-LSTM language model over Human Numbers cut into 150 documents (shuffled each epoch),
    with random bptt, AR/TAR, gradient clipping and an AccumMetric; `seed=None` draws the loader's seed."""
    corpus = read_corpus("human_numbers")
    ids = corpus["train"].ids
    train = TokenStream.from_array(ids, doc_starts=np.arange(0, len(ids), len(ids) // 150))
    dls = TextDataLoaders.from_streams(train, corpus["valid"], corpus.vocab, bs=32, seq_len=20, random_bptt=True,
                                       shuffle=True, seed=seed, device="cpu")
    torch.manual_seed(0)
    metrics = [accuracy, Perplexity(), AccumMetric(_acc, dim_argmax=-1, name="accum_accuracy")]
    return language_model_learner(dls, config=AWD, alpha=2.0, beta=1.0, metrics=metrics,
                                  cbs=[GradientClip(CLIP), StepLog(), WrapperProbe()])


def fit_book(learn: Learner) -> None:
    learn.fit_one_cycle(1, 3e-3)


def fit_awd(learn: Learner) -> None:
    learn.fit_one_cycle(1, 1e-2)


def record(learn: Learner) -> dict[str, Any]:
    """What a fit left: the per-step losses and the Recorder's smoothed losses and epoch rows."""
    log = learn.get_cb(StepLog)
    return {"losses": log.losses, "smooth": [float(v) for v in learn.recorder.losses],
            "values": learn.recorder.values, "norms": log.norms}


def _boom() -> None:
    raise RuntimeError("boom")


def _mark(path: Path) -> bool:
    """Whether `path` was there already; creates it."""
    seen = path.exists()
    path.touch()
    return seen


def _run(out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from rnnkit.distributed import (
        DistributedTrainer, num_distrib, rank0_first, rank_distrib, setup_distrib, teardown_distrib,
    )

    torch.set_num_threads(1)
    assert setup_distrib(timeout_s=60) and num_distrib() == 2
    rank = rank_distrib()
    res: dict[str, Any] = {"rank": rank, "saw_mark": rank0_first(_mark, out / "mark")}

    learn = book_learner()
    learn.add_cb(CSVLogger(out / f"history_rank{rank}.csv"))
    loaders = list(learn.dls.loaders)
    with learn.distrib_ctx():
        fit_book(learn)
    res["book"] = record(learn)
    res["book_wrapper"] = learn.get_cb(WrapperProbe).seen
    res["book_plain_after_fit"] = not isinstance(learn.model, DistributedDataParallel) and all(
        a is b for a, b in zip(loaders, learn.dls.loaders))
    if rank == 0:
        torch.save(learn.model.state_dict(), out / "book.pt")
    try:
        with learn.distrib_ctx():
            learn.fit(1, cbs=Callback(after_batch=_boom))
    except RuntimeError as e:
        res["book_error"] = str(e).endswith("boom")
    res["book_plain_after_error"] = not isinstance(learn.model, DistributedDataParallel) and all(
        a is b for a, b in zip(loaders, learn.dls.loaders)) and learn.get_cb(DistributedTrainer) is None

    torch.manual_seed(100 + rank)  # each process draws another loader seed: DistributedTrainer must agree on one
    learn = awd_learner(seed=None)
    res["awd_seed_drawn"] = learn.dls.train.seed
    with learn.distrib_ctx():
        fit_awd(learn)
        res["awd_eval"] = learn.evaluate_lm()
    res["awd"] = record(learn)
    res["awd_wrapper"] = learn.get_cb(WrapperProbe).seen
    res["awd_seed"] = learn.dls.train.seed
    res["awd_plain_after_fit"] = isinstance(learn.model, nn.Sequential)
    if rank == 0:
        torch.save({"weights": learn.model.state_dict(), "grads": learn.get_cb(StepLog).grads}, out / "awd.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    teardown_distrib()


if __name__ == "__main__":
    _run(Path(sys.argv[1]))
