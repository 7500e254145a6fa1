"""The continuous cache pointer (Grave, Joulin & Usunier, 2017, "Improving neural language models with
a continuous cache"), as the AWD-LSTM paper evaluates with it (Merity et al. 2017, section 5).

The cache stores, for each earlier position i of a stream, the last LSTM layer's output h_i and the token
that followed it, x_{i+1} (the target of position i). At position t it points back into its last
`window` entries::

    p_cache(w) = sum over i in [t - window, t) with x_{i+1} = w  of  softmax_i(theta * h_t . h_i)
    p(w)       = (1 - lambdah) * p_vocab(w) + lambdah * p_cache(w)

Near the start of a stream the cache holds fewer than `window` entries and points into those, as
Grave's definition does; at t = 0 it is empty and p = p_vocab. salesforce/awd-lstm-lm's `pointer.py`
only mixes once a full window is stored, so it scores the first `window` tokens with the model alone.
Like its released code and Grave's paper, the scores are raw dot products, not cosines. Each row of a
batch is its own stream with its own cache; the paper's protocol is one stream (bs 1).

A segment of S tokens is scored at once: its S queries against the K stored entries and the segment's
own outputs give an (S, K + S) score matrix, masked to each query's window; no Python loop per token.
Scores, softmax and mixture run in float32 whatever the model's dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.errors import UserError

__all__ = ["CacheConfig", "CachePointer", "window_mask", "pointer_attention", "mix_log_probs"]


@dataclass(frozen=True)
class CacheConfig:
    """Window, softmax scale and mixture weight of the continuous cache pointer."""

    window: int = 500  # how many earlier (h_i, x_{i+1}) pairs the cache points into
    theta: float = 1.0  # scale of the dot products h_t . h_i before their softmax (an inverse temperature)
    lambdah: float = 0.1  # weight of the cache in the mixture: 0 is the model alone, 1 the cache alone

    def __post_init__(self) -> None:
        w = self.window
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise UserError(f"CacheConfig: window must be an int >= 1 (entries the cache keeps), got {w!r}")
        if not (isinstance(self.theta, (int, float)) and math.isfinite(self.theta) and self.theta >= 0):
            raise UserError(f"CacheConfig: theta must be a finite number >= 0, got {self.theta!r}")
        if not (isinstance(self.lambdah, (int, float)) and 0 <= self.lambdah <= 1):
            raise UserError(f"CacheConfig: lambdah is a mixture weight and must be in [0, 1], got {self.lambdah!r}")

    @classmethod
    def for_corpus(cls, name: str | None) -> CacheConfig:
        """The AWD-LSTM paper's values (salesforce/awd-lstm-lm README): PTB window 500, theta 1.0,
        lambda 0.1; WikiText-2 window 3785, theta 0.6625, lambda 0.1279; any other corpus PTB's."""
        if name == "wikitext-2":
            return cls(window=3785, theta=0.6625, lambdah=0.1279)
        return cls(window=500, theta=1.0, lambdah=0.1)


def window_mask(n_query: int, n_past: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """Which keys each query may point to: `(n_query, n_past + n_query)` booleans.

    Key j is the `n_past` stored entries followed by the queries' own positions, so it sits at
    position `j - n_past` relative to the first query; query t sees keys in `[t - window, t)`.
    """
    t = torch.arange(n_query, device=device)[:, None]
    pos = torch.arange(n_past + n_query, device=device)[None, :] - n_past
    return (pos < t) & (pos >= t - window)


def pointer_attention(dots: Tensor, theta: float, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of `theta * dots` over the keys `mask` allows, and which queries have any key.

    Args:
        dots: `(bs, n_query, n_keys)` dot products h_t . h_j.
        mask: `(n_query, n_keys)` from `window_mask`.
    Returns:
        attention `(bs, n_query, n_keys)` (all zeros for a query with no key) and `(n_query,)` booleans.
    """
    has_keys = mask.any(-1)
    scores = (dots * theta).masked_fill(~mask, -math.inf)  # theta first: 0 * -inf would be nan
    attn = torch.softmax(scores, dim=-1)
    return torch.where(has_keys[:, None], attn, attn.new_zeros(())), has_keys


def mix_log_probs(logp_vocab: Tensor, p_cache: Tensor, lambdah: float, has_keys: Tensor) -> Tensor:
    """log((1 - lambdah) p_vocab + lambdah p_cache), in log space so a tiny p_vocab does not underflow;
    where `has_keys` is False the cache is empty and the result is log p_vocab."""
    if lambdah == 0:
        return logp_vocab
    log_cache = torch.log(p_cache.clamp_min(0)) + math.log(lambdah)
    log_vocab = logp_vocab + (math.log1p(-lambdah) if lambdah < 1 else -math.inf)
    return torch.where(has_keys, torch.logaddexp(log_vocab, log_cache), logp_vocab)


class CachePointer:
    """The cache of one pass over a stream: per row, the last `window` pairs (h_i, x_{i+1}); `score`
    mixes it into each new segment's predictions and then stores the segment."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.keys: Tensor | None = None  # (bs, n_past, n) last-layer outputs
        self.key_targets: Tensor | None = None  # (bs, n_past) the token that followed each

    def reset(self) -> None:
        """Empty the cache, for a new stream."""
        self.keys = self.key_targets = None

    def score(self, logits: Tensor, hidden: Tensor, targets: Tensor,
              need_preds: bool = True) -> tuple[Tensor, Tensor | None]:
        """Log-probabilities of `targets` under the mixture, and its argmax (None unless `need_preds`).

        Args:
            logits: `(bs, seq_len, vocab_sz)` the model's output for the segment.
            hidden: `(bs, seq_len, n)` the last LSTM layer's output (what the decoder reads).
            targets: `(bs, seq_len)` the next tokens.
        """
        cfg = self.config
        h = hidden.detach().float()
        bs, seq_len, n = h.shape
        y = targets.to(h.device)
        if self.keys is None or self.key_targets is None or self.keys.shape[0] != bs:
            self.keys, self.key_targets = h.new_zeros(bs, 0, n), y.new_zeros(bs, 0)
        keys = torch.cat([self.keys, h], dim=1)  # (bs, n_past + seq_len, n)
        key_y = torch.cat([self.key_targets, y], dim=1)  # (bs, n_past + seq_len)
        mask = window_mask(seq_len, self.keys.shape[1], cfg.window, h.device)
        dots = torch.bmm(h, keys.transpose(1, 2))  # (bs, seq_len, n_past + seq_len)
        attn, has_keys = pointer_attention(dots, cfg.theta, mask)
        logp = F.log_softmax(logits.detach().float(), dim=-1)  # (bs, seq_len, vocab_sz)
        logp_vocab = logp.gather(-1, y[..., None]).squeeze(-1)
        p_cache = (attn * (key_y[:, None, :] == y[..., None])).sum(-1)  # (bs, seq_len)
        out = mix_log_probs(logp_vocab, p_cache, cfg.lambdah, has_keys[None, :])
        preds = None
        if need_preds:
            lam = torch.where(has_keys, cfg.lambdah, 0.0).to(logp)[None, :, None]  # (1, seq_len, 1)
            probs = logp.exp() * (1 - lam)
            probs.scatter_add_(2, key_y[:, None, :].expand(-1, seq_len, -1), attn * lam)
            preds = probs.argmax(-1)
        self.keys, self.key_targets = keys[:, -cfg.window:], key_y[:, -cfg.window:]
        return out, preds
