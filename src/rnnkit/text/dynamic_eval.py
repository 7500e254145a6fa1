"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals, 2018, "Dynamic Evaluation of Neural Sequence
Models"): the model keeps learning from the text it is scoring, so it adapts to the document at hand.

The stream is read in segments of `bptt` tokens (Krause used 5). Each segment is first scored with
the current weights -- that is the loss that counts -- and then the weights take one step on that
segment's mean loss g, pulled back towards the trained weights theta0 by `decay`::

    sgd:  theta <- theta - lr * g                     + decay * (theta0 - theta)
    rms:  theta <- theta - lr * g / (sqrt(MS) + eps)  + decay * (theta0 - theta)

MS is the mean of g^2 over the segments read so far, this one included: the statistics are gathered
on the evaluated stream itself, in one pass. Krause's code instead gathers them once on the training
split (batches of 100 rows) and also scales the decay of each weight by MS / mean(MS); neither is done
here, so its published learning rates do not carry over as they are -- tune lr and decay on the
validation split. The weights are shared by all rows of a batch (the paper's protocol is bs 1), and
the trained weights are put back when the pass ends.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import UserError

__all__ = ["DynamicEvalConfig", "DynamicEvaluator", "DYNAMIC_METHODS"]

# Each method's default learning rate: its scale differs (rms steps are normalized, sgd steps are not).
# Tuned on the first 20k tokens of PTB valid at bs 1 with the 10-minute `budget` model (perplexity 106.5
# without): sgd lr 0.1/0.5/1.0 at bptt 20 gave 103.1/98.8/99.2, and 97.5 at lr 0.5, bptt 10; rms lr
# 5e-5/2e-4/1e-3/3e-3 at bptt 20 gave 105.3/103.1/100.0/110.5, and 98.2 at 1e-3, bptt 5 (4x the time).
DYNAMIC_METHODS: dict[str, float] = {"sgd": 0.5, "rms": 1e-3}


@dataclass(frozen=True)
class DynamicEvalConfig:
    """Learning rate, decay, update rule and segment length of dynamic evaluation."""

    lr: float | None = None  # step size; None: the method's default (DYNAMIC_METHODS)
    decay: float = 0.002  # pull towards the trained weights per step (Krause's lambda, 0.002)
    method: str = "sgd"  # 'sgd' (as good as 'rms' on PTB here, and faster) or 'rms' (Krause's RMS rule)
    bptt: int = 10  # tokens per segment, one update each (Krause used 5; 10 was the best here, at half the cost)
    eps: float = 2e-5  # added to sqrt(MS) in the rms rule (Krause's epsilon)

    def __post_init__(self) -> None:
        if self.method not in DYNAMIC_METHODS:
            raise UserError(f"DynamicEvalConfig: method must be one of {', '.join(DYNAMIC_METHODS)}, "
                            f"got {self.method!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DYNAMIC_METHODS[self.method])
        if not (_is_number(self.lr) and self.lr > 0):  # type: ignore[operator]
            raise UserError(f"DynamicEvalConfig: lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_number(self.decay) and 0 <= self.decay < 1):
            raise UserError(f"DynamicEvalConfig: decay must be in [0, 1), got {self.decay!r}")
        if isinstance(self.bptt, bool) or not isinstance(self.bptt, int) or self.bptt < 1:
            raise UserError(f"DynamicEvalConfig: bptt (tokens per update) must be an int >= 1, got {self.bptt!r}")
        if not (_is_number(self.eps) and self.eps > 0):
            raise UserError(f"DynamicEvalConfig: eps must be a finite number > 0, got {self.eps!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class DynamicEvaluator:
    """Adapts a model's trainable weights by `config`'s rule, one `step(loss)` per segment; `restore()`
    puts the trained weights back."""

    def __init__(self, model: nn.Module, config: DynamicEvalConfig) -> None:
        self.model, self.config = model, config
        self.params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("dynamic evaluation needs trainable weights, but every parameter of the model has "
                            "requires_grad=False; unfreeze the model (learn.unfreeze()) first")
        self.start = [p.detach().clone() for p in self.params]  # theta0, the trained weights
        rms = config.method == "rms"
        self.sqr_avg = [torch.zeros_like(p) for p in self.params] if rms else []
        self.denom = [torch.empty_like(p) for p in self.params] if rms else []  # sqrt(MS) + eps, reused
        self.n_steps = 0

    def step(self, loss: Tensor) -> None:
        """One update on `loss`, the mean loss of the segment just scored (with its graph)."""
        cfg = self.config
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.n_steps += 1
        used = [i for i, g in enumerate(grads) if g is not None]
        ps, gs = [self.params[i] for i in used], [grads[i] for i in used]
        lr = float(cfg.lr)  # type: ignore[arg-type]
        # In place and foreach: no parameter-sized temporaries (STYLE §10), one call per operation.
        with torch.no_grad():
            if cfg.decay:  # theta += decay * (theta0 - theta), from the weights before this step
                torch._foreach_lerp_(self.params, self.start, cfg.decay)
            if cfg.method == "rms":
                ms, denom = [self.sqr_avg[i] for i in used], [self.denom[i] for i in used]
                torch._foreach_mul_(ms, 1 - 1 / self.n_steps)  # the running mean of g^2 over the segments so far
                torch._foreach_addcmul_(ms, gs, gs, value=1 / self.n_steps)
                for d, m in zip(denom, ms):
                    torch.sqrt(m, out=d)
                torch._foreach_add_(denom, cfg.eps)
                torch._foreach_addcdiv_(ps, gs, denom, value=-lr)
            else:
                torch._foreach_add_(ps, gs, alpha=-lr)

    def restore(self) -> None:
        """Put the trained weights back."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.start):
                p.copy_(p0)

    @contextlib.contextmanager
    def grad_mode(self) -> Iterator[None]:
        """Gradients on while the model stays in eval mode (no dropout). cuDNN runs an RNN's backward only in
        training mode, so PyTorch's RNN modules (whose own dropout is 0 here) are put in training mode."""
        rnns = [m for m in self.model.modules() if isinstance(m, nn.RNNBase) and not m.training]
        with_dropout = [m for m in rnns if m.dropout > 0 and m.num_layers > 1]
        plain = [m for m in rnns if m not in with_dropout]
        for m in plain:
            m.train()
        cudnn = torch.backends.cudnn
        # An RNN with inner dropout must stay in eval mode: run it without cuDNN instead.
        no_cudnn = (cudnn.flags(enabled=False, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                                allow_tf32=cudnn.allow_tf32) if with_dropout else contextlib.nullcontext())
        try:
            with no_cudnn, torch.enable_grad():
                yield
        finally:
            for m in plain:
                m.train(False)
