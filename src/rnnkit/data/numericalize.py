"""Tokens to ids: fastai's `Numericalize` transform, and fast bulk helpers for whole corpora.

`numericalize_file` reads, tokenizes and numericalizes a corpus file in a few C-level
passes (one `str.split`, one `Counter`, one dict lookup per token through `np.fromiter`),
so Penn Treebank train goes from `.xz` file to an `int32` array in well under a second.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit.data.tokenize import PreTokenizedTokenizer, Tokenizer, BaseTokenizer
from rnnkit.data.vocab import Vocab
from rnnkit.errors import MissingFileError, UserError

__all__ = ["Numericalize", "numericalize_tokens", "numericalize_file", "read_text"]

_OPENERS: dict[str, Any] = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (`.xz`, `.gz` and `.bz2` are decompressed), with newlines normalized to '\\n'."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No text file at {path}; expected a UTF-8 corpus file (plain, .xz, .gz or .bz2).")
    opener = _OPENERS.get(path.suffix.lower(), open)
    with opener(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = "decompressed " if opener is not open else ""
        raise UserError(
            f"{path} is not UTF-8: {where}byte offset {e.start} (line {line}) is {data[e.start:e.start + 4]!r}. "
            "Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    if "\r" in text:  # the same lines as reading in text mode (universal newlines)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def numericalize_tokens(tokens: Sequence[str], vocab: Vocab) -> np.ndarray:
    """Ids of `tokens` as an int32 array; tokens not in `vocab` map to its unknown token."""
    if not isinstance(tokens, (list, tuple)):
        tokens = list(tokens)
    stoi, unk = vocab.stoi, vocab.unk_idx
    if unk is not None:
        return np.fromiter(map(stoi.get, tokens, repeat(unk)), dtype=np.int32, count=len(tokens))
    try:
        return np.fromiter(map(stoi.__getitem__, tokens), dtype=np.int32, count=len(tokens))
    except KeyError as e:
        raise ValueError(
            f"Token {e.args[0]!r} is not in the vocabulary, which has no unknown token (unk=None)."
        ) from None


class Numericalize:
    """fastai's transform from a token list to a `LongTensor` of ids, and back with `decode`.

    Pass a `Vocab`, or call `setup(tokens)` to build one with `min_freq`, `max_vocab`, `special_toks`.
    """

    def __init__(
        self,
        vocab: Vocab | None = None,
        min_freq: int = 3,
        max_vocab: int | None = 60000,
        special_toks: Sequence[str] | None = None,
    ) -> None:
        self.vocab, self.min_freq, self.max_vocab, self.special_toks = vocab, min_freq, max_vocab, special_toks

    def setup(self, tokens: Sequence[str] | Sequence[Sequence[str]]) -> Numericalize:
        """Build the vocabulary from `tokens` (a token list or one list per document); returns self."""
        kwargs: dict[str, Any] = {} if self.special_toks is None else {"special_toks": self.special_toks}
        self.vocab = Vocab.build(tokens, min_freq=self.min_freq, max_vocab=self.max_vocab, **kwargs)
        return self

    def _vocab(self) -> Vocab:
        if self.vocab is None:
            raise RuntimeError("Numericalize has no vocabulary: pass vocab=... or call setup(tokens) first.")
        return self.vocab

    def __call__(self, tokens: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(numericalize_tokens(tokens, self._vocab()).astype(np.int64))

    def decode(self, ids: torch.Tensor | np.ndarray | Sequence[int]) -> list[str]:
        """The tokens of `ids`."""
        vocab = self._vocab()
        id_list = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        n = len(vocab)
        bad = next((i for i in id_list if not 0 <= i < n), None)
        if bad is not None:
            raise ValueError(
                f"Id {bad} is out of range for a vocabulary of {n} tokens; were the ids made with another vocabulary?"
            )
        itos = vocab.itos
        return [itos[i] for i in id_list]

    def __repr__(self) -> str:
        return f"Numericalize(vocab={'None' if self.vocab is None else f'<{len(self.vocab)} tokens>'})"


def numericalize_file(
    path: str | Path,
    tokenizer: BaseTokenizer | str = "pretokenized",
    vocab: Vocab | None = None,
    **vocab_kwargs: Any,
) -> tuple[np.ndarray, Vocab]:
    """Read, tokenize and numericalize a corpus file in bulk; returns `(ids, vocab)`.

    With `vocab=None` one is built from the file: `Vocab.from_corpus_tokens` for a
    `PreTokenizedTokenizer` (every word type kept), `Vocab.build` otherwise; `vocab_kwargs`
    go to that builder. Pass the training set's vocabulary for validation and test files.
    """
    tok = Tokenizer.from_name(tokenizer) if isinstance(tokenizer, str) else tokenizer
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path} is empty or whitespace-only; expected a corpus to tokenize.")
    tokens = tok.encode(text)
    if vocab is None:
        if isinstance(tok, PreTokenizedTokenizer) and tok.eos is not None:
            vocab_kwargs.setdefault("eos", tok.eos)
            vocab = Vocab.from_corpus_tokens(tokens, **vocab_kwargs)
        else:
            vocab = Vocab.build(tokens, **vocab_kwargs)
    elif vocab_kwargs:
        raise TypeError(f"numericalize_file got vocab and vocab options {sorted(vocab_kwargs)}; pass one or the other.")
    return numericalize_tokens(tokens, vocab), vocab
