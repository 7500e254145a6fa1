"""Learners for recurrent text models: `TextLearner`, and `language_model_learner` for AWD-LSTM
with text generation (`predict`) and whole-split perplexity (`evaluate_lm`; `evaluate` adds the
continuous cache pointer and dynamic evaluation)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.callbacks.rnn import rnn_cbs
from rnnkit.distributed import all_reduce_sum, is_distributed, shard_loader
from rnnkit.errors import UserError
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.metrics import Perplexity, accuracy
from rnnkit.models.awd_lstm import AWD_LSTM, AWDLSTMConfig, as_config, get_language_model
from rnnkit.text.cache_pointer import CacheConfig
from rnnkit.text.dynamic_eval import DynamicEvalConfig
from rnnkit.text.lm_eval import evaluate_learner
from rnnkit.training.learner import Learner

__all__ = ["TextLearner", "LMLearner", "language_model_learner", "awd_lstm_lm_split"]


class TextLearner(Learner):
    """A `Learner` for recurrent text models: adds `rnn_cbs(alpha, beta)` (ModelResetter, RNNCallback, AR/TAR)."""

    def __init__(self, dls: Any, model: nn.Module, alpha: float = 2.0, beta: float = 1.0,
                 moms: tuple[float, float, float] = (0.8, 0.7, 0.8), **kwargs: Any) -> None:
        super().__init__(dls, model, moms=moms, **kwargs)
        self.add_cbs(rnn_cbs(alpha, beta))


def awd_lstm_lm_split(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups of an AWD-LSTM language model: one per LSTM layer, then embedding + decoder."""
    children: list[Any] = list(model.children())
    enc, dec = children[0], children[1]
    groups = [list(rnn.parameters()) for rnn in enc.rnns]
    groups.append(list(enc.encoder.parameters()) + [p for p in dec.parameters()
                                                      if all(p is not q for q in enc.encoder.parameters())])
    return groups


class LMLearner(TextLearner):
    """A `TextLearner` for language models: generation and stateful whole-split evaluation."""

    def _encode(self, text: str) -> torch.Tensor:
        vocab = self.dls.vocab
        tok = getattr(self.dls, "tokenizer", None)
        tokens = tok.encode(text) if tok is not None else text.split()
        if not text or not tokens:
            raise UserError("predict needs a non-empty prompt")
        ids = [vocab.index(t) if vocab.unk_idx is not None else vocab.stoi.get(t) for t in tokens]
        unknown = [t for t, i in zip(tokens, ids) if i is None]
        if unknown:
            raise UserError(f"the prompt has words the vocabulary does not know and it has no unknown "
                            f"token: {unknown[:5]}; use words of the training corpus")
        return torch.tensor(ids, dtype=torch.long)

    def _decode(self, ids: Sequence[int]) -> str:
        toks = [self.dls.vocab.itos[int(i)] for i in ids]
        tok = getattr(self.dls, "tokenizer", None)
        return tok.decode(toks) if tok is not None else " ".join(toks)

    @torch.no_grad()
    def predict(self, text: str, n_words: int = 1, temperature: float = 1.0, no_unk: bool = True,
                seed: int | None = None, only_new: bool = False) -> str:
        """Continue `text` by `n_words` tokens, sampling with `temperature` (0 means greedy).

        The model reads the prompt once, then one token at a time with its hidden state
        carried; a `seed` makes sampling reproducible without touching the global RNG.
        """
        if n_words < 0 or temperature < 0:
            raise UserError(f"n_words and temperature must be >= 0, got {n_words} and {temperature}")
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        gen = torch.Generator(device=device)
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        ids = self._encode(text).to(device)
        unk = self.dls.vocab.unk_idx
        reset = getattr(model, "reset", None)
        if callable(reset):
            reset()
        new: list[int] = []
        inp = ids[None]  # (1, n_prompt)
        try:
            for _ in range(n_words):
                out = model(inp)
                logits = (out[0] if isinstance(out, tuple) else out)[0, -1].float()  # (vocab_sz,)
                if no_unk and unk is not None:
                    logits[unk] = -math.inf
                if temperature == 0:
                    nxt = int(logits.argmax())
                else:
                    probs = F.softmax(logits / temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=gen))
                new.append(nxt)
                inp = torch.tensor([[nxt]], device=device)
        finally:
            if callable(reset):
                reset()  # the state now belongs to a batch of one
            model.train(was_training)
        return self._decode(new) if only_new else self._decode(ids.tolist() + new)

    @torch.no_grad()
    def evaluate_lm(self, ds_idx: int = 1, dl: Any = None, bs: int | None = None) -> dict[str, float]:
        """Loss, perplexity and accuracy over a whole split in one stateful pass, weighted by tokens.

        In a distributed run every process must call it: each evaluates its block of rows
        (`shard_loader`) and the sums are added up, so all return the whole split's numbers.
        """
        if dl is None:
            dl = self.dls[ds_idx]
        if bs is not None:
            dl = dl.new(bs=bs)
        if is_distributed() and getattr(dl, "world_size", 1) == 1:
            dl = shard_loader(dl)
        model = self.model
        was_training = model.training
        model.eval()
        reset = getattr(model, "reset", None)
        if callable(reset):
            reset()
        device = next(model.parameters()).device
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        tot_correct = torch.zeros((), dtype=torch.float64, device=device)
        n = 0
        try:
            for x, y in dl:
                x, y = x.to(device), y.to(device)
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
                flat = logits.reshape(-1, logits.shape[-1]).float()
                tot_loss += F.cross_entropy(flat, y.reshape(-1), reduction="sum").double()
                tot_correct += (flat.argmax(-1) == y.reshape(-1)).sum().double()
                n += y.numel()
        finally:
            if callable(reset):
                reset()
            model.train(was_training)
        sums = all_reduce_sum(torch.stack([tot_loss, tot_correct, tot_loss.new_tensor(float(n))]))
        tot_loss, tot_correct, n = sums[0], sums[1], int(sums[2].item())
        if n == 0:
            raise ValueError("evaluate_lm: the split has no batches")
        loss = float(tot_loss / n)
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
                "accuracy": float(tot_correct / n), "tokens": n}

    def evaluate(self, split: str = "valid", bs: int | None = None, cache: CacheConfig | None = None,
                 dynamic: DynamicEvalConfig | None = None, dl: Any = None,
                 bptt: int | None = None) -> dict[str, Any]:
        """Loss, perplexity and accuracy of a split by the AWD-LSTM paper's protocol (docs/evaluation.md):
        one stateful pass, with the continuous cache pointer (`cache`) and/or dynamic evaluation (`dynamic`).

        Args:
            split: 'train', 'valid' or 'test' (the third loader of `dls`); `dl` replaces it.
            bs: streams read side by side (default: the loader's); the paper's test protocol is 1.
            bptt: tokens per forward (default: the loader's); with `dynamic`, `dynamic.bptt` is used.
        """
        return evaluate_learner(self, split, bs, cache, dynamic, dl, bptt)


def language_model_learner(dls: Any, arch: type[nn.Module] = AWD_LSTM,
                           config: dict[str, Any] | AWDLSTMConfig | str | None = None,
                           drop_mult: float = 1.0, pretrained: bool = False,
                           metrics: Any = None, loss_func: Callable | None = None,
                           splitter: Callable | None = None, **kwargs: Any) -> LMLearner:
    """An `LMLearner` with `arch`'s language model sized to `dls.vocab` (fastai's signature).

    Args:
        config: a fastai-style dict, an `AWDLSTMConfig`, or a preset name ('small', 'fastai',
            'paper'); default fastai's `awd_lstm_lm_config`.
        drop_mult: multiplies all five dropout probabilities.
    """
    if pretrained:
        raise ValueError("language_model_learner: no pretrained weights are available (rnnkit never "
                         "downloads); pass pretrained=False, or load your own with learn.load(...)")
    vocab = getattr(dls, "vocab", None)
    if vocab is None:
        raise ValueError("language_model_learner needs dls.vocab (use TextDataLoaders)")
    cfg = as_config(config)
    if "pad_token" in cfg or arch is AWD_LSTM:
        cfg["pad_token"] = getattr(vocab, "pad_idx", None)  # no padding row unless the vocab has one
    model = get_language_model(arch, len(vocab), cfg, drop_mult=drop_mult)
    if metrics is None:
        metrics = [accuracy, Perplexity()]
    if splitter is None:
        splitter = awd_lstm_lm_split if arch is AWD_LSTM else (lambda m: [p for p in m.parameters()])
    return LMLearner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(), metrics=metrics,
                     splitter=splitter, **kwargs)
