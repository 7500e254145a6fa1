"""A language model's perplexity by the AWD-LSTM paper's protocol (Merity et al. 2017, section 5): one
stateful pass over a split (the test split as one stream, bs 1), optionally with the continuous cache
pointer (`cache_pointer`) and dynamic evaluation (`dynamic_eval`); and a search of the cache's
parameters on the validation split (`tune_cache`). docs/evaluation.md describes the protocol.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.distributed import is_distributed
from rnnkit.errors import UserError
from rnnkit.text.cache_pointer import CacheConfig, CachePointer, mix_log_probs, pointer_attention, window_mask
from rnnkit.text.dynamic_eval import DynamicEvalConfig, DynamicEvaluator

if TYPE_CHECKING:
    from rnnkit.text.learner import LMLearner

__all__ = ["SPLITS", "TUNE_THETAS", "TUNE_LAMBDAS", "split_loader", "lm_outputs", "evaluate_stream", "evaluate_learner",
           "tune_cache"]

SPLITS = ("train", "valid", "test")
# The default search grid: around the AWD-LSTM paper's values for PTB (1.0, 0.1) and WikiText-2 (0.66, 0.13).
TUNE_THETAS = (0.4, 0.6, 0.8, 1.0, 1.3)
TUNE_LAMBDAS = (0.05, 0.1, 0.15, 0.2)


def split_loader(learn: LMLearner, split: str = "valid", bs: int | None = None,
                 seq_len: int | None = None) -> Any:
    """The loader over `split` of `learn.dls` ('train' in order, without random lengths), with `bs`
    rows and windows of `seq_len` tokens if given. 'test' is the third loader of `learn.dls`."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    for name, v in (("bs", bs), ("bptt", seq_len)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UserError(f"evaluate: {name} must be an int >= 1, got {v!r}")
    dls = learn.dls
    if split == "train":
        dl = dls.train.new(shuffle=False, random_bptt=False)
    elif split == "valid":
        dl = dls.valid
    else:
        loaders = getattr(dls, "loaders", [])
        if len(loaders) < 3:
            raise UserError(f"learn.dls has no test loader (it has {len(loaders)} loaders: train, valid); build "
                            "the loaders from a corpus with a test split, or pass one: "
                            "learn.evaluate(dl=LMDataLoader(corpus['test'], bs=1, seq_len=70))")
        dl = loaders[2]
    changes = {k: v for k, v in (("bs", bs), ("seq_len", seq_len)) if v is not None}
    return dl.new(**changes) if changes else dl


def lm_outputs(out: Any, need_hidden: bool) -> tuple[Tensor, Tensor | None]:
    """`(logits, last-layer output)` of a language model's forward: AWD-LSTM returns `(logits, raw, out)`,
    where `raw` is the last layer's output (or a list of every layer's; the last is taken)."""
    if not isinstance(out, (tuple, list)):
        if need_hidden:
            raise UserError("the cache pointer needs the model to return (logits, last-layer output, ...), as "
                            f"AWD-LSTM's language model does; this model returned a {type(out).__name__}")
        return out, None
    hidden = out[1] if len(out) > 1 else None
    if isinstance(hidden, (tuple, list)):
        hidden = hidden[-1]
    if need_hidden and not isinstance(hidden, Tensor):
        raise UserError("the cache pointer needs the model's output[1] to be the last layer's output "
                        f"(bs, seq_len, n); got {type(hidden).__name__}")
    return out[0], hidden


def _reset(model: nn.Module) -> None:
    reset = getattr(model, "reset", None)
    if callable(reset):
        reset()


def _stream(model: nn.Module, dl: Any, stack: ExitStack) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches on the model's device, the model in eval mode with its state reset; the mode and
    state come back when `stack` closes."""
    was_training = model.training

    def restore() -> None:
        _reset(model)
        model.train(was_training)

    stack.callback(restore)
    model.eval()
    _reset(model)
    device = next(model.parameters()).device
    for x, y in dl:
        yield x.to(device), y.to(device)


def evaluate_stream(model: nn.Module, dl: Any, cache: CacheConfig | None = None,
                    dynamic: DynamicEvalConfig | None = None) -> dict[str, Any]:
    """Loss, perplexity and accuracy of `model` over `dl` in one stateful pass, weighted by tokens: scored
    by the model alone, or mixed with the continuous cache (`cache`), and/or adapting the weights as it
    reads (`dynamic`: each segment is scored before the model learns from it; the weights come back after).
    """
    pointer = CachePointer(cache) if cache is not None else None
    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # -log p of the targets, correct predictions
    n = 0
    with ExitStack() as stack:
        adapter = DynamicEvaluator(model, dynamic) if dynamic is not None else None
        if adapter is not None:
            stack.callback(adapter.restore)
            stack.enter_context(adapter.grad_mode())
        else:
            stack.enter_context(torch.no_grad())
        for x, y in _stream(model, dl, stack):
            logits, hidden = lm_outputs(model(x), need_hidden=pointer is not None)
            if pointer is not None:
                logp, preds = pointer.score(logits, hidden, y)  # type: ignore[arg-type]
            else:
                lsm = F.log_softmax(logits.detach().float(), dim=-1)  # (bs, seq_len, vocab_sz)
                logp, preds = lsm.gather(-1, y[..., None]).squeeze(-1), lsm.argmax(-1)
            sums[0] -= logp.sum().double()
            sums[1] += (preds == y).sum().double()  # type: ignore[union-attr]
            n += y.numel()
            if adapter is not None:  # learn from the segment only after it was scored
                adapter.step(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)))
    if n == 0:
        raise UserError("evaluate: the split has no batches")
    loss, correct = sums.tolist()
    loss /= n
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "accuracy": correct / n, "tokens": n,
            "cache": dataclasses.asdict(cache) if cache is not None else None,
            "dynamic": dataclasses.asdict(dynamic) if dynamic is not None else None}


def evaluate_learner(learn: LMLearner, split: str = "valid", bs: int | None = None,
                     cache: CacheConfig | None = None, dynamic: DynamicEvalConfig | None = None,
                     dl: Any = None, bptt: int | None = None) -> dict[str, Any]:
    """`LMLearner.evaluate`: the loader of `split` (or `dl`) at `bs` rows, then `evaluate_stream`; the result
    also says which split, bs, bptt, cache and dynamic settings were used."""
    if cache is not None and not isinstance(cache, CacheConfig):
        raise UserError(f"cache must be a CacheConfig, e.g. CacheConfig.for_corpus('ptb'); got {cache!r}")
    if dynamic is not None and not isinstance(dynamic, DynamicEvalConfig):
        raise UserError(f"dynamic must be a DynamicEvalConfig, e.g. DynamicEvalConfig(); got {dynamic!r}")
    if dynamic is not None:
        if bptt is not None and bptt != dynamic.bptt:
            raise UserError(f"evaluate: bptt={bptt} but dynamic.bptt={dynamic.bptt}; with dynamic evaluation the "
                            "segment length is dynamic.bptt (one update per segment): leave bptt out")
        bptt = dynamic.bptt
    own_dl = dl is not None
    if dl is None:
        dl = split_loader(learn, split, bs, bptt)
    else:
        changes = {k: v for k, v in (("bs", bs), ("seq_len", bptt)) if v is not None}
        dl = dl.new(**changes) if changes else dl
    if cache is None and dynamic is None:
        res: dict[str, Any] = {**learn.evaluate_lm(dl=dl), "cache": None, "dynamic": None}
    elif is_distributed():
        raise UserError("evaluate with a cache or dynamic evaluation runs in one process; call it outside "
                        "the distributed job (e.g. on rank 0 after destroying the process group)")
    else:
        res = evaluate_stream(learn.model, dl, cache, dynamic)
    return {**res, "split": None if own_dl else split, "bs": getattr(dl, "bs", None),
            "bptt": getattr(dl, "seq_len", None)}


def _collect(model: nn.Module, dl: Any) -> tuple[Tensor, Tensor, Tensor]:
    """One pass: per row, every position's last-layer output, its target and the model's log p(target)."""
    hs, ys, lps = [], [], []
    with ExitStack() as stack, torch.no_grad():
        for x, y in _stream(model, dl, stack):
            logits, hidden = lm_outputs(model(x), need_hidden=True)
            lsm = F.log_softmax(logits.float(), dim=-1)
            lps.append(lsm.gather(-1, y[..., None]).squeeze(-1))
            hs.append(hidden.float())  # type: ignore[union-attr]
            ys.append(y)
    if not hs:
        raise UserError("tune_cache: the split has no batches")
    return torch.cat(hs, 1), torch.cat(ys, 1), torch.cat(lps, 1)  # (bs, L, n), (bs, L), (bs, L)


def tune_cache(learn: LMLearner, split: str = "valid", thetas: Sequence[float] = TUNE_THETAS,
               lambdas: Sequence[float] = TUNE_LAMBDAS, windows: Sequence[int] = (500,), bs: int | None = None,
               bptt: int | None = None, dl: Any = None, chunk: int = 1024) -> tuple[CacheConfig, list[dict[str, Any]]]:
    """The cache parameters with the lowest perplexity on `split` among `windows x thetas x lambdas`, and the
    table of every point: `(best, [{'window', 'theta', 'lambdah', 'perplexity'}, ...])`.

    The model reads the split once; its outputs are kept (4 bytes x n_hid per token) and each grid point
    is then scored from them, `chunk` positions at a time so the (positions x window) scores never
    exist all at once. Use the same `bs` as the evaluation you tune for (the paper's: 1).
    """
    grid = [CacheConfig(window=w, theta=t, lambdah=lam) for w in windows for t in thetas for lam in lambdas]
    if not grid:
        raise UserError("tune_cache needs at least one window, theta and lambda to try")
    if dl is None:
        dl = split_loader(learn, split, bs, bptt)
    H, Y, LP = _collect(learn.model, dl)
    bs_, L, _ = H.shape
    w_max = max(windows)
    chunk = max(16, chunk // bs_)
    sums = torch.zeros(len(windows), len(thetas), len(lambdas), dtype=torch.float64)
    for a in range(0, L, chunk):
        b, k0 = min(a + chunk, L), max(0, a - w_max)
        q = H[:, a:b]  # (bs, C, n)
        dots = torch.bmm(q, H[:, k0:b].transpose(1, 2))  # (bs, C, a - k0 + C)
        match = Y[:, None, k0:b] == Y[:, a:b, None]
        for i, w in enumerate(windows):
            mask = window_mask(b - a, a - k0, w, H.device)
            for j, theta in enumerate(thetas):
                attn, has_keys = pointer_attention(dots, theta, mask)
                p_cache = (attn * match).sum(-1)  # (bs, C)
                for k, lam in enumerate(lambdas):
                    sums[i, j, k] -= mix_log_probs(LP[:, a:b], p_cache, lam, has_keys[None]).sum().double().cpu()
    ppl = torch.exp(sums / Y.numel())
    table = [{"window": c.window, "theta": c.theta, "lambdah": c.lambdah, "perplexity": float(p)}
             for c, p in zip(grid, ppl.flatten().tolist())]
    best = grid[int(ppl.flatten().argmin())]
    return best, table
