"""NLP metrics: corpus BLEU (`perplexity` is in `rnnkit.metrics.core`, with the loss averages)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from torch import Tensor

from rnnkit.metrics.accum import target_of
from rnnkit.metrics.core import Metric

__all__ = ["CorpusBLEUMetric"]


class CorpusBLEUMetric(Metric):
    """Corpus BLEU (Papineni et al., 2002) of the argmax token ids against the targets, on validation batches.

    Clipped n-gram matches for n = 1..4 and the brevity penalty are summed over every sentence
    (row) of the validation set. In a sentence, an n-gram order with no match counts 1/2**k
    matches, k being how many orders so far had none (smoothing method 3 of Chen & Cherry, 2014,
    as SacreBLEU and fastai). Batches are kept on their device and counted when `value` is read.
    `vocab_sz` is accepted for fastai's signature; n-grams are compared as tuples, so it is unused.
    """

    def __init__(self, vocab_sz: int = 5000, axis: int = -1) -> None:
        self.vocab_sz, self.axis = vocab_sz, axis
        self.reset()

    def reset(self) -> None:
        """Zero the lengths and n-gram counts."""
        self.pred_len, self.targ_len = 0, 0
        self.corrects: list[float] = [0] * 4
        self.counts: list[int] = [0] * 4
        self._pending: list[tuple[Tensor, Tensor]] = []

    def accumulate(self, learn: Any) -> None:
        """Keep this validation batch's predicted and target token ids; training batches are skipped."""
        if getattr(learn, "training", False):
            return
        self._pending.append((learn.pred.detach().argmax(dim=self.axis), target_of(learn).detach()))

    @staticmethod
    def _matches(pred: Sequence[int], targ: Sequence[int], n: int) -> tuple[int, int]:
        """Clipped matches of the n-grams of `pred` in `targ`, and how many n-grams `pred` has."""
        pred_grams = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
        targ_grams = Counter(tuple(targ[i:i + n]) for i in range(len(targ) - n + 1))
        return sum(min(c, targ_grams[g]) for g, c in pred_grams.items()), max(len(pred) - n + 1, 0)

    def _count_pending(self) -> None:
        for preds, targs in self._pending:
            for pred, targ in zip(preds.tolist(), targs.tolist()):
                self.pred_len += len(pred)
                self.targ_len += len(targ)
                smooth = 1
                for i in range(4):
                    c, t = self._matches(pred, targ, i + 1)
                    if c == 0:
                        smooth *= 2
                        self.corrects[i] += 1 / smooth
                    else:
                        self.corrects[i] += c
                    self.counts[i] += t
        self._pending = []

    @property
    def value(self) -> float | None:
        """BLEU in [0, 1]; 0 when some n-gram order has no n-gram at all; None before any batch."""
        self._count_pending()
        if self.pred_len == 0:
            return None
        if min(self.counts) == 0:  # every sentence shorter than 4 tokens: that precision is undefined
            return 0.0
        precs = [c / t for c, t in zip(self.corrects, self.counts)]
        brevity = math.exp(1 - self.targ_len / self.pred_len) if self.pred_len < self.targ_len else 1.0
        return brevity * math.prod(precs) ** 0.25
