"""Tests for rnnkit.data.numericalize: the Numericalize transform and bulk corpus numericalization."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.data.numericalize import Numericalize, numericalize_file, numericalize_tokens, read_text
from rnnkit.data.tokenize import UNK, CharTokenizer, PreTokenizedTokenizer, WordTokenizer
from rnnkit.data.vocab import Vocab
from rnnkit.errors import MissingFileError, UserError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _corpus(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def ptb() -> tuple[np.ndarray, Vocab]:
    return numericalize_file(_corpus("ptb/ptb.train.txt.xz"), PreTokenizedTokenizer())


@pytest.fixture(scope="module")
def wikitext2() -> tuple[np.ndarray, Vocab]:
    return numericalize_file(_corpus("wikitext-2/wiki.train.tokens.xz"), "pretokenized")


def test_numericalize_tokens_maps_unknown_tokens_to_unk():
    v = Vocab.build("a b a".split(), min_freq=1)
    ids = numericalize_tokens(["a", "b", "zebra"], v)
    assert ids.dtype == np.int32
    assert ids.tolist() == [v.stoi["a"], v.stoi["b"], v.unk_idx]
    assert numericalize_tokens(iter(["b"]), v).tolist() == [v.stoi["b"]]
    with pytest.raises(ValueError, match="'c' is not in the vocabulary"):
        numericalize_tokens(["a", "c"], Vocab(["a"], unk=None, pad=None))


def test_numericalize_transform_encodes_and_decodes():
    num = Numericalize(Vocab.build("the cat the dog the".split(), min_freq=1))
    ids = num(["the", "dog", "bird"])
    assert ids.dtype == torch.int64 and ids.shape == (3,)
    assert num.decode(ids) == ["the", "dog", UNK]
    assert num.decode(np.array([ids[0].item()])) == ["the"]
    with pytest.raises(ValueError, match="Id 999 is out of range for a vocabulary of 16 tokens"):
        num.decode([999])


def test_numericalize_setup_builds_the_vocab_with_fastai_defaults():
    num = Numericalize(min_freq=2)
    with pytest.raises(RuntimeError, match="no vocabulary"):
        num(["a"])
    num.setup([["a", "a", "b"], ["a", "c", "c"]])
    assert num.vocab is not None and num.vocab.itos[9:11] == ["a", "c"]
    assert num.decode(num(["c", "b"])) == ["c", UNK]


def test_ptb_train_numericalizes_to_929589_tokens_and_10000_types(ptb):
    ids, vocab = ptb
    assert len(ids) == 929_589 and ids.dtype == np.int32
    assert len(vocab) == 10_000
    assert vocab.itos[:2] == ["<unk>", "<eos>"]
    assert (ids == vocab.stoi["<eos>"]).sum() == 42_068  # one per line
    assert "@-@" not in vocab and vocab.index("never-seen-word") == vocab.stoi["<unk>"]


@pytest.mark.parametrize("name, n_tokens", [("ptb/ptb.valid.txt", 73_760), ("ptb/ptb.test.txt", 82_430)])
def test_ptb_valid_and_test_use_the_train_vocab(ptb, name, n_tokens):
    _, vocab = ptb
    ids, same = numericalize_file(_corpus(name), "pretokenized", vocab=vocab)
    assert same is vocab and len(ids) == n_tokens
    assert ids.max() < len(vocab)


def test_wikitext2_train_numericalizes_to_2088628_tokens_and_33278_types(wikitext2):
    ids, vocab = wikitext2
    assert len(ids) == 2_088_628 and len(vocab) == 33_278
    assert "@-@" in vocab and "<unk>" in vocab


@pytest.mark.parametrize(
    "name, n_tokens", [("wikitext-2/wiki.valid.tokens", 217_646), ("wikitext-2/wiki.test.tokens", 245_569)]
)
def test_wikitext2_valid_and_test_token_counts(wikitext2, name, n_tokens):
    ids, _ = numericalize_file(_corpus(name), "pretokenized", vocab=wikitext2[1])
    assert len(ids) == n_tokens


def test_tiny_shakespeare_has_65_characters():
    path = _corpus("tinyshakespeare/input.txt")
    ids, vocab = numericalize_file(path, CharTokenizer(), min_freq=1, special_toks=(), pad_to_multiple=None,
                                   unk=None, pad=None)
    assert len(ids) == 1_115_394 and len(vocab) == 65
    assert "".join(vocab.itos[i] for i in ids[:14]) == "First Citizen:"


def test_read_text_decompresses_and_normalizes_newlines(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\rthree\n")
    assert read_text(tmp_path / "a.txt") == "one\ntwo\nthree\n"
    with lzma.open(tmp_path / "b.txt.xz", "wb") as f:
        f.write("café\n".encode())
    assert read_text(tmp_path / "b.txt.xz") == "café\n"


def test_non_utf8_bytes_name_the_file_and_position(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nna\u00efve\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt is not UTF-8: byte offset 13 \(line 2\)"):
        numericalize_file(path, "pretokenized")


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(MissingFileError, match=r"No text file at .*missing\.txt; expected a UTF-8 corpus"):
        numericalize_file(tmp_path / "missing.txt", "pretokenized")
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(UserError, match=r"empty\.txt is empty or whitespace-only"):
        numericalize_file(tmp_path / "empty.txt", "pretokenized")


def test_numericalize_file_builds_a_fastai_vocab_for_raw_text(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text("The cat sat. The cat ran. The dog sat.\n")
    ids, vocab = numericalize_file(path, WordTokenizer(), min_freq=2)
    assert vocab.itos[9:] == ["the", ".", "cat", "sat", "xxfake", "xxfake", "xxfake"]  # ties: first seen first
    assert ids[:3].tolist() == [vocab.stoi["xxbos"], vocab.stoi["xxmaj"], vocab.stoi["the"]]
    with pytest.raises(TypeError, match="pass one or the other"):
        numericalize_file(path, "word", vocab=vocab, min_freq=1)
