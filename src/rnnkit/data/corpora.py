"""Readers for the standard language-modelling corpora, given the folder that holds them.

Counting follows the AWD-LSTM code: each line is `line.split()` plus one `<eos>`. Every
reader returns a `Corpus`: the vocabulary built on the training split and one `TokenStream`
of int32 ids per split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.data.human_numbers import human_numbers_tokens
from rnnkit.data.numericalize import numericalize_file, numericalize_tokens, read_text
from rnnkit.data.stream import TokenStream
from rnnkit.data.tokenize import (
    CharTokenizer, PreTokenizedTokenizer, SubwordTokenizer, Tokenizer, BaseTokenizer,
)
from rnnkit.data.vocab import Vocab
from rnnkit.errors import MissingFileError, UserError

__all__ = ["Corpus", "read_corpus", "read_ptb", "read_wikitext", "read_tinyshakespeare",
           "read_human_numbers", "read_folder", "CORPUS_READERS"]


@dataclass
class Corpus:
    """A tokenized corpus: its vocabulary, tokenizer and one id stream per split."""

    name: str
    vocab: Vocab
    tokenizer: BaseTokenizer
    splits: dict[str, TokenStream] = field(default_factory=dict)

    def __getitem__(self, split: str) -> TokenStream:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"corpus {self.name!r} has no {split!r} split; it has {sorted(self.splits)}") from None


def _find(folder: Path, names: list[str], what: str) -> Path:
    for n in names:
        for candidate in (folder / n, folder / f"{n}.xz"):
            if candidate.is_file():
                return candidate
    raise MissingFileError(f"{folder} has no {what} file: expected one of {', '.join(names)} "
                           "(or the same name with .xz)")


def _check_folder(path: str | os.PathLike | None, corpus: str) -> Path:
    if path is None:
        raise UserError(f"the {corpus} reader needs the folder that holds the corpus files (--data)")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"corpus folder {folder} is a file; give the folder that holds the {corpus} files")
    if not folder.is_dir():
        raise MissingFileError(f"corpus folder {folder} does not exist")
    return folder


def _read_splits(name: str, folder: Path, files: dict[str, list[str]], tok: BaseTokenizer,
                 **vocab_kwargs: Any) -> Corpus:
    """Train (builds the vocabulary), valid (required) and test (optional) splits of a folder."""
    train_ids, vocab = numericalize_file(_find(folder, files["train"], "training"), tok, **vocab_kwargs)
    splits = {"train": TokenStream.from_array(train_ids)}
    for split in ("valid", "test"):
        try:
            f = _find(folder, files[split], split)
        except MissingFileError:
            if split == "valid":
                raise
            continue
        ids, _ = numericalize_file(f, tok, vocab=vocab)
        splits[split] = TokenStream.from_array(ids)
    return Corpus(name, vocab, tok, splits)


def _pretokenized(name: str, folder: Path, files: dict[str, list[str]]) -> Corpus:
    return _read_splits(name, folder, files, PreTokenizedTokenizer())


def read_ptb(path: str | os.PathLike | None) -> Corpus:
    """Penn Treebank (Mikolov's version): `ptb.{train,valid,test}.txt` (or `{train,valid,test}.txt`)."""
    folder = _check_folder(path, "ptb")
    return _pretokenized("ptb", folder, {s: [f"ptb.{s}.txt", f"{s}.txt"] for s in ("train", "valid", "test")})


def read_wikitext(path: str | os.PathLike | None, name: str = "wikitext-2") -> Corpus:
    """WikiText-2 or -103 (tokenized v1): `wiki.{train,valid,test}.tokens` (or `{train,valid,test}.txt`)."""
    folder = _check_folder(path, name)
    return _pretokenized(name, folder, {s: [f"wiki.{s}.tokens", f"{s}.txt"] for s in ("train", "valid", "test")})


def read_tinyshakespeare(path: str | os.PathLike | None, valid_pct: float = 0.1) -> Corpus:
    """Tiny Shakespeare, one file (`input.txt`) of characters: the first 90% trains, the rest validates."""
    folder = _check_folder(path, "tinyshakespeare")
    f = _find(folder, ["input.txt"], "text")
    text = read_text(f)
    if not text.strip():
        raise UserError(f"{f} is empty; expected Tiny Shakespeare's text")
    tok = CharTokenizer()
    chars = list(text)
    vocab = Vocab.build(chars, min_freq=1, max_vocab=None, special_toks=(), pad_to_multiple=None,
                        unk=None, pad=None)
    ids = numericalize_tokens(chars, vocab)
    cut = int(len(ids) * (1 - valid_pct))
    if not 0 < cut < len(ids):
        raise UserError(f"{f} is too short to split into training and validation text (length {len(ids)})")
    return Corpus("tinyshakespeare", vocab, tok,
                  {"train": TokenStream.from_array(ids[:cut]), "valid": TokenStream.from_array(ids[cut:])})


def read_human_numbers(path: str | os.PathLike | None = None, valid_pct: float = 0.2) -> Corpus:
    """Human Numbers as the chapter uses it: one joined stream, the first 80% trains, the rest validates."""
    vocab_list, nums = human_numbers_tokens(path)
    vocab = Vocab(vocab_list, unk=None, pad=None)
    ids = nums.numpy().astype(np.int32)
    cut = int(len(ids) * (1 - valid_pct))
    return Corpus("human_numbers", vocab, Tokenizer.from_name("whitespace"),
                  {"train": TokenStream.from_array(ids[:cut]), "valid": TokenStream.from_array(ids[cut:])})


def read_folder(path: str | os.PathLike | None, tokenizer: BaseTokenizer | str = "word",
                **vocab_kwargs: Any) -> Corpus:
    """Your own text: `train.txt` and `valid.txt` (and optionally `test.txt`) in a folder."""
    folder = _check_folder(path, "folder")
    tok = Tokenizer.from_name(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if isinstance(tok, SubwordTokenizer) and tok.needs_setup:  # train the subword model on train.txt
        tok.setup(read_text(_find(folder, ["train.txt"], "training")).splitlines())
    return _read_splits(folder.name, folder, {s: [f"{s}.txt"] for s in ("train", "valid", "test")}, tok,
                        **vocab_kwargs)


CORPUS_READERS = {
    "ptb": read_ptb,
    "wikitext-2": lambda p: read_wikitext(p, "wikitext-2"),
    "wikitext-103": lambda p: read_wikitext(p, "wikitext-103"),
    "tinyshakespeare": read_tinyshakespeare,
    "human_numbers": read_human_numbers,
    "folder": read_folder,
}


def read_corpus(name: str, path: str | os.PathLike | None = None) -> Corpus:
    """Read a known corpus (`ptb`, `wikitext-2`, `wikitext-103`, `tinyshakespeare`, `human_numbers`, `folder`)."""
    try:
        reader = CORPUS_READERS[name]
    except KeyError:
        raise UserError(f"unknown corpus {name!r}; use one of {', '.join(CORPUS_READERS)}") from None
    return reader(path)
