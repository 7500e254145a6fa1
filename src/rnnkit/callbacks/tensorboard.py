"""Log training to TensorBoard: losses, metrics, hyper-parameters, the model graph, sample predictions
and word embeddings for the projector.

An optional extra: `pip install 'rnnkit[tensorboard]'`. Importing this module needs nothing more;
creating a callback without tensorboard raises an ImportError that says what to install.
"""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.callbacks.schedule import LRFinder
from rnnkit.training.callback import Callback
from rnnkit.training.recorder import Recorder
from rnnkit.utils import to_device

if TYPE_CHECKING:
    from rnnkit.training.learner import Learner

__all__ = ["TensorBoardBaseCallback", "TensorBoardCallback", "projector_word_embeddings"]

_INSTALL = "pip install 'rnnkit[tensorboard]' (or pip install tensorboard)"


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"TensorBoard logging needs the tensorboard package, which is not installed: "
                          f"{_INSTALL}. ({e})") from e
    return SummaryWriter


def _first_embedding(model: nn.Module) -> nn.Embedding:
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise ValueError(f"{type(model).__name__} has no nn.Embedding to project; pass layer=<the embedding>")
    return emb


def _vocab_list(vocab: Any) -> list[str] | None:
    """The tokens of a `Vocab`, a list of tokens, or fastai's `(text vocab, labels)` pair."""
    if vocab is None:
        return None
    if isinstance(vocab, (list, tuple)) and vocab and not isinstance(vocab[0], str):
        vocab = vocab[0]  # a classifier's (text vocab, label vocab)
    return [str(t) for t in vocab]


def _tsv_safe(tok: str) -> str:
    # the projector reads its metadata as one line per token: no line breaks, no blank lines
    tok = tok.replace("\n", "\\n").replace("\t", "\\t")
    return tok if tok.strip() else repr(tok)


def _write_embedding(writer: Any, weight: Tensor, vocab: list[str] | None, start: int = 0,
                     limit: int = -1, step: int | None = None) -> None:
    end = None if limit < 0 else start + limit
    mat = weight.detach().float().cpu()[start:end]
    meta = None if vocab is None else [_tsv_safe(t) for t in vocab[start:end]]
    if meta is not None and len(meta) != len(mat):
        raise ValueError(f"The vocabulary has {len(vocab or [])} tokens but the embedding {weight.shape[0]} rows; "
                         "pass the vocabulary the model was built with (vocab=)")
    writer.add_embedding(mat, metadata=meta, global_step=step)


def projector_word_embeddings(learn: Learner | None = None, layer: nn.Embedding | None = None,
                              vocab: Sequence[str] | None = None, limit: int = -1, start: int = 0,
                              log_dir: str | Path | None = None) -> None:
    """Write the word embeddings of `layer` (default: the model's first `nn.Embedding`) for TensorBoard's
    projector, labelled with `vocab` (default: `learn.dls.vocab`); `limit` rows from `start` (-1: all)."""
    if layer is None:
        if learn is None:
            raise ValueError("projector_word_embeddings needs learn= or layer=")
        layer = _first_embedding(learn.model)
    if vocab is None and learn is not None:
        vocab = getattr(learn.dls, "vocab", None)
    writer = _summary_writer_class()(log_dir=None if log_dir is None else str(log_dir))
    try:
        _write_embedding(writer, layer.weight, _vocab_list(vocab), start=start, limit=limit)
    finally:
        writer.close()


def _split(learn: Learner, b: Any) -> tuple[tuple, tuple]:
    b = tuple(b) if isinstance(b, (tuple, list)) else (b,)
    n_inp = getattr(learn.dls, "n_inp", 1 if len(b) == 1 else len(b) - 1)
    return b[:n_inp], b[n_inp:]


def _model_device(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return None if p is None else p.device


class TensorBoardBaseCallback(Callback):
    """Base class of the TensorBoard callbacks: owns the `SummaryWriter` (`self.writer`) for a fit."""

    order = Recorder.order + 1  # reads the row the Recorder writes in after_epoch
    skip_in_lr_find = True

    def __init__(self, log_dir: str | Path | None = None) -> None:
        super().__init__()
        self._writer_cls = _summary_writer_class()  # fail at construction when tensorboard is missing
        self.log_dir = log_dir
        self.writer: Any = None

    def _setup_writer(self) -> None:
        self.writer = self._writer_cls(log_dir=None if self.log_dir is None else str(self.log_dir))

    def after_fit(self) -> None:
        if self.writer is not None:
            self.writer.close()


class TensorBoardCallback(TensorBoardBaseCallback):
    """Log to TensorBoard: `train_loss` (smoothed) and every hyper-parameter (`lr_0`, `mom_0` ... one per
    group) each training batch; `valid_loss` and the metrics each epoch; the model graph at the start.

    Args:
        log_dir: where the event files go (default: TensorBoard's `runs/<date>_<host>`).
        trace_model: trace the model on one batch and write its graph.
        log_preds: each epoch, write a table of `n_preds` validation items (input, target, prediction)
            as text, in tokens when the loaders have a `vocab`.
        projector: at the end of the fit, write the embedding matrix of `layer` (default: the model's
            first `nn.Embedding`) for the projector, labelled with the vocabulary.
    """

    def __init__(self, log_dir: str | Path | None = None, trace_model: bool = True, log_preds: bool = True,
                 n_preds: int = 9, projector: bool = False, layer: nn.Module | None = None) -> None:
        super().__init__(log_dir)
        self.trace_model, self.log_preds, self.n_preds = trace_model, log_preds, n_preds
        self.projector, self.layer = projector, layer

    def before_fit(self) -> None:
        self.writer = None
        self.run = self.learn.get_cb(LRFinder) is None
        if not self.run:
            return
        if self.trace_model and self.learn.get_cb(MixedPrecision) is not None:
            raise ValueError("TensorBoardCallback can't trace the model in mixed precision: pass "
                             "trace_model=False, or train without to_fp16()/to_bf16()")
        if self.projector and self.layer is None:
            _first_embedding(self.learn.model)  # no embedding: say so now, not after training
        self._setup_writer()
        if self.trace_model:
            self._add_graph()

    def _add_graph(self) -> None:
        learn, model = self.learn, self.learn.model
        dls = learn.dls
        dl = dls.valid if len(dls) > 1 else dls.train
        was_training = model.training
        # Traced in eval mode (no dropout) and on a fork of the RNG: training draws the same random numbers
        # with or without this callback.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            xb, _ = _split(learn, to_device(dl.one_batch(), _model_device(model)))
            model.eval()
            example = xb[0] if len(xb) == 1 else xb
            try:
                with warnings.catch_warnings():
                    # The graph is for display: warnings that a trace may not generalise to other inputs
                    # (Python control flow on tensor values) do not matter here.
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    # TensorBoard's graph needs a TorchScript trace; users can't act on its deprecation.
                    warnings.filterwarnings("ignore", message="`torch.jit.trace[_a-z]*` is deprecated",
                                            category=DeprecationWarning)
                    # Traced here without the tracer's check that two runs give the same graph, which a model
                    # that carries its hidden state between calls fails; add_graph then traces nothing again.
                    _reset(model)
                    traced = torch.jit.trace(model, example, check_trace=False, strict=False)
                    warnings.filterwarnings("ignore", message="The input to trace is already a ScriptModule")
                    self.writer.add_graph(traced, example, use_strict_trace=False)
            except Exception as e:
                raise RuntimeError(f"TensorBoardCallback could not trace {type(model).__name__} to write its graph "
                                   f"({type(e).__name__}: {str(e)[:300]}); pass trace_model=False") from e
            finally:
                model.train(was_training)
                _reset(model)

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or self.writer is None:
            return
        step = learn.train_iter
        if learn.smooth_loss is not None:
            self.writer.add_scalar("train_loss", float(learn.smooth_loss), step)
        for i, h in enumerate(learn.opt.hypers):
            for k, v in h.items():
                if isinstance(v, Tensor) and v.numel() == 1:
                    v = v.item()
                if isinstance(v, numbers.Real) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{k}_{i}", v, step)

    def after_epoch(self) -> None:
        rec = self.learn.get_cb(Recorder)
        if self.writer is None or rec is None:
            return
        step = self.learn.train_iter
        for name, v in zip(rec.metric_names, rec.log):
            if name in ("epoch", "train_loss", "time") or v is None:
                continue
            if isinstance(v, Tensor):
                v = v.item()
            if isinstance(v, numbers.Real):
                self.writer.add_scalar(name, v, step)
        if self.log_preds and len(self.learn.dls) > 1:
            self._log_preds(step)

    def _log_preds(self, step: int) -> None:
        learn, model = self.learn, self.learn.model
        was_training = model.training
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # as in _add_graph: training is unchanged
            xb, yb = _split(learn, to_device(learn.dls.valid.one_batch(), _model_device(model)))
            model.eval()
            _reset(model)
            try:
                pred = model(*xb)
            finally:
                model.train(was_training)
                _reset(model)  # the hidden state this batch left must not leak into the next epoch
        if isinstance(pred, (tuple, list)):
            pred = pred[0]  # a language model's (logits, raw_outputs, outputs)
        decodes = getattr(learn.loss_func, "decodes", None)
        if decodes is not None:
            dec = decodes(getattr(learn.loss_func, "activation", lambda o: o)(pred))
        else:
            dec = pred.argmax(-1) if pred.is_floating_point() and pred.ndim > 1 else pred
        vocab = _vocab_list(getattr(learn.dls, "vocab", None))
        cols = ["input", "target", "prediction"] if yb else ["input", "prediction"]
        rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i in range(min(self.n_preds, len(dec))):
            cells = [xb[0][i]] + ([yb[0][i]] if yb else []) + [dec[i]]
            rows.append("| " + " | ".join(_fmt(c, vocab) for c in cells) + " |")
        self.writer.add_text("Sample results", "\n".join(rows), step)

    def after_fit(self) -> None:
        if self.writer is not None and self.projector:
            layer = self.layer if self.layer is not None else _first_embedding(self.learn.model)
            weight = getattr(layer, "weight", None)
            if not isinstance(weight, Tensor):
                raise ValueError(f"TensorBoardCallback(projector=True) needs a layer with a weight matrix, "
                                 f"got {type(layer).__name__}")
            _write_embedding(self.writer, weight, _vocab_list(getattr(self.learn.dls, "vocab", None)),
                             step=self.learn.train_iter)
        super().after_fit()


def _reset(model: nn.Module) -> None:
    reset = getattr(model, "reset", None)
    if callable(reset):
        reset()


def _fmt(t: Any, vocab: list[str] | None, max_items: int = 40) -> str:
    """One cell of the sample table: tokens when there is a vocabulary, else the values."""
    if isinstance(t, Tensor):
        flat = t.detach().cpu().flatten()
        more = " ..." if len(flat) > max_items else ""
        in_vocab = len(flat) > 0 and 0 <= int(flat.min()) and int(flat.max()) < len(vocab or [])
        if vocab is not None and not flat.is_floating_point() and in_vocab:
            s = " ".join(vocab[int(i)] for i in flat[:max_items]) + more
        else:
            vals = [round(v, 4) if isinstance(v, float) else v for v in flat[:max_items].tolist()]
            s = " ".join(map(str, vals)) + more
    else:
        s = str(t)
    return s.replace("|", "\\|").replace("\n", " ")
