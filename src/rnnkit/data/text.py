"""`TextDataLoaders`: language-model loaders over a corpus, with its vocabulary attached."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rnnkit.data.core import DataLoaders
from rnnkit.data.corpora import Corpus, read_corpus, read_folder
from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.numericalize import numericalize_tokens
from rnnkit.data.stream import TokenStream
from rnnkit.data.tokenize import Tokenizer, BaseTokenizer
from rnnkit.data.vocab import Vocab
from rnnkit.errors import UserError

__all__ = ["TextDataLoaders"]


class TextDataLoaders(DataLoaders):
    """Train/valid `LMDataLoader`s with `vocab` (and `tokenizer`) attached.

    Training batches are contiguous bptt windows carried across batches (optionally of
    AWD-LSTM's random length); validation uses the fixed length and never shuffles.
    """

    def __init__(self, *loaders: Any, vocab: Vocab, tokenizer: BaseTokenizer | None = None,
                 path: str | os.PathLike = ".", device: Any = None) -> None:
        super().__init__(*loaders, path=Path(path), device=device)
        self.vocab, self.tokenizer = vocab, tokenizer

    @classmethod
    def from_streams(cls, train: TokenStream, valid: TokenStream, vocab: Vocab, bs: int = 64,
                     seq_len: int = 72, random_bptt: bool = False, shuffle: bool = False,
                     seed: int | None = None, tokenizer: BaseTokenizer | None = None,
                     path: str | os.PathLike = ".", device: Any = None, **kwargs: Any) -> TextDataLoaders:
        """Loaders over already-numericalized train and valid streams."""
        for name, st in (("train", train), ("valid", valid)):
            ids = st.ids if isinstance(st, TokenStream) else np.asarray(st)
            if len(ids) and int(ids.max()) >= len(vocab):
                raise UserError(f"the {name} ids go up to {int(ids.max())} but the vocabulary has {len(vocab)} "
                                 "tokens: numericalize with this vocabulary")
        train_dl = LMDataLoader(train, bs=bs, seq_len=seq_len, shuffle=shuffle, random_bptt=random_bptt,
                                seed=seed, device=device, **kwargs)
        valid_dl = LMDataLoader(valid, bs=bs, seq_len=seq_len, shuffle=False, random_bptt=False,
                                seed=seed, device=device)
        return cls(train_dl, valid_dl, vocab=vocab, tokenizer=tokenizer, path=path, device=device)

    @classmethod
    def from_corpus(cls, corpus: Corpus | str, path: str | os.PathLike | None = None, bs: int = 64,
                    seq_len: int = 72, **kwargs: Any) -> TextDataLoaders:
        """Loaders over a corpus object, or a known corpus name read from `path`: train and valid, and test
        as the third when the corpus has one."""
        if isinstance(corpus, str):
            corpus = read_corpus(corpus, path)
        dls = cls.from_streams(corpus["train"], corpus["valid"], corpus.vocab, bs=bs, seq_len=seq_len,
                               tokenizer=corpus.tokenizer, path=path or ".", **kwargs)
        if "test" in corpus.splits:  # a third loader, read like valid: `learn.evaluate('test')`, `dls[2]`
            test: Any = corpus["test"]  # a TokenStream: LMDataLoader.new takes one as its items
            dls.loaders.append(dls.valid.new(test))
        return dls

    @classmethod
    def from_folder(cls, path: str | os.PathLike, tokenizer: BaseTokenizer | str = "word", bs: int = 64,
                    seq_len: int = 72, vocab_kwargs: dict[str, Any] | None = None,
                    **kwargs: Any) -> TextDataLoaders:
        """Loaders over `train.txt`/`valid.txt` in a folder, tokenized with `tokenizer`."""
        corpus = read_folder(path, tokenizer, **(vocab_kwargs or {}))
        return cls.from_corpus(corpus, path=path, bs=bs, seq_len=seq_len, **kwargs)

    @classmethod
    def from_texts(cls, train_texts: Sequence[str], valid_texts: Sequence[str],
                   tokenizer: BaseTokenizer | str = "word", vocab: Vocab | None = None, bs: int = 64,
                   seq_len: int = 72, vocab_kwargs: dict[str, Any] | None = None,
                   **kwargs: Any) -> TextDataLoaders:
        """Loaders over lists of documents; documents are shuffled between epochs when `shuffle=True`."""
        tok = Tokenizer.from_name(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if hasattr(tok, "setup") and getattr(tok, "needs_setup", False):  # a subword tokenizer learns its pieces
            tok.setup(train_texts)
        if not any(t.strip() for t in train_texts) or not any(t.strip() for t in valid_texts):
            raise UserError("from_texts needs non-empty training and validation texts")
        train_docs = [tok.encode(t) for t in train_texts]
        valid_docs = [tok.encode(t) for t in valid_texts]
        if vocab is None:
            vocab = Vocab.build(train_docs, **(vocab_kwargs or {}))
        train = TokenStream.from_docs([numericalize_tokens(d, vocab) for d in train_docs if d])
        valid = TokenStream.from_docs([numericalize_tokens(d, vocab) for d in valid_docs if d])
        return cls.from_streams(train, valid, vocab, bs=bs, seq_len=seq_len, tokenizer=tok, **kwargs)

    @classmethod
    def from_tensors(cls, train: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray,
                     vocab: Vocab | Sequence[str], bs: int = 64, seq_len: int = 72,
                     **kwargs: Any) -> TextDataLoaders:
        """Loaders over 1-d tensors of token ids."""
        if not isinstance(vocab, Vocab):
            vocab = Vocab(list(vocab), unk=None, pad=None)
        return cls.from_streams(TokenStream.from_array(train), TokenStream.from_array(valid), vocab,
                                bs=bs, seq_len=seq_len, **kwargs)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of a sequence of ids (through the tokenizer's `decode` when there is one)."""
        toks = [self.vocab.itos[int(i)] for i in ids]
        return self.tokenizer.decode(toks) if self.tokenizer is not None else " ".join(toks)

    def show_batch(self, max_n: int = 4, n_tokens: int | None = None, show: bool = True) -> list[tuple[str, str]]:
        """Decode the first rows of a training batch to text: `(input, target)` pairs (printed if `show`)."""
        x, y = self.train.one_batch()
        rows = []
        for i in range(min(max_n, x.shape[0])):
            xs, ys = x[i][:n_tokens], y[i][:n_tokens]
            rows.append((self.decode(xs), self.decode(ys)))
        if show:
            for i, (a, b) in enumerate(rows):
                print(f"[{i}] text:   {a}\n    target: {b}")
        return rows
