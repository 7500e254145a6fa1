"""Corpus readers and TextDataLoaders: published token counts, show_batch, bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnkit.data.corpora import read_corpus, read_folder
from rnnkit.data.text import TextDataLoaders
from rnnkit.data.vocab import Vocab
from rnnkit.errors import MissingFileError, UserError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared corpora) is not beside the repo")


@needs_data
def test_ptb_token_counts_and_vocab_match_published():
    c = read_corpus("ptb", DATA / "ptb")
    assert {k: len(v) for k, v in c.splits.items()} == {"train": 929589, "valid": 73760, "test": 82430}
    assert len(c.vocab) == 10000 and c.vocab.itos[:2] == ["<unk>", "<eos>"]


@needs_data
def test_wikitext2_token_counts_match_published():
    c = read_corpus("wikitext-2", DATA / "wikitext-2")
    assert {k: len(v) for k, v in c.splits.items()} == {"train": 2088628, "valid": 217646, "test": 245569}
    assert len(c.vocab) == 33278


@needs_data
def test_tinyshakespeare_is_split_by_characters():
    c = read_corpus("tinyshakespeare", DATA / "tinyshakespeare")
    assert (len(c["train"]), len(c["valid"]), len(c.vocab)) == (1003854, 111540, 65)
    dls = TextDataLoaders.from_corpus(c, bs=4, seq_len=20)
    text, target = dls.show_batch(1, show=False)[0]
    assert len(text) == 20 and text[1:] == target[:-1]


def test_human_numbers_is_the_chapters_stream():
    c = read_corpus("human_numbers")
    assert len(c.vocab) == 30 and len(c["train"]) + len(c["valid"]) == 63095


def test_folder_and_texts_build_loaders_with_vocab(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("The cat sat on the mat. The dog sat too.\n" * 30)
    (tmp_path / "valid.txt").write_text("The cat sat on the dog.\n" * 10)
    dls = TextDataLoaders.from_folder(tmp_path, bs=2, seq_len=6, vocab_kwargs={"min_freq": 1})
    assert "cat" in dls.vocab and dls.vocab.itos[0] == "xxunk"
    x, y = dls.one_batch()
    assert x.shape == (2, 6) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    rows = dls.show_batch(1)
    assert "[0] text:" in capsys.readouterr().out and rows[0][0]
    docs = TextDataLoaders.from_texts(["One doc here."] * 10, ["Two docs there."] * 4, bs=2, seq_len=3,
                                      shuffle=True, seed=0, vocab_kwargs={"min_freq": 1})
    assert len(docs.vocab) % 8 == 0 and len(list(docs.train)) == len(docs.train)


def test_bad_input_errors_name_the_problem(tmp_path):
    # The user's mistakes are UserErrors (a missing file also a FileNotFoundError): the CLI prints them in one line.
    with pytest.raises(MissingFileError, match="does not exist"):
        read_corpus("ptb", tmp_path / "nope")
    (tmp_path / "train.txt").write_text("some words here\n")
    with pytest.raises(UserError, match="train.txt is a file; give the folder"):
        read_corpus("ptb", tmp_path / "train.txt")
    with pytest.raises(MissingFileError, match="no valid file"):
        read_folder(tmp_path)
    with pytest.raises(MissingFileError, match="nope/train.txt is missing"):
        read_corpus("human_numbers", tmp_path / "nope")
    (tmp_path / "valid.txt").write_text("   \n")
    with pytest.raises(UserError, match="empty or whitespace-only"):
        read_folder(tmp_path)
    with pytest.raises(UserError, match="unknown corpus 'imdb'"):
        read_corpus("imdb", tmp_path)
    with pytest.raises(ValueError, match="vocabulary has 3 tokens"):
        TextDataLoaders.from_tensors(torch.arange(100) % 5, torch.arange(50) % 5, ["a", "b", "c"], bs=2, seq_len=4)
    with pytest.raises(UserError, match="bs"):
        TextDataLoaders.from_tensors(torch.arange(100) % 3, torch.arange(50) % 3, ["a", "b", "c"], bs=64, seq_len=70)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "bad" / "valid.txt").write_text("x\n")
    with pytest.raises(UserError, match=r"train.txt is not UTF-8: byte offset 3 \(line 1\)"):
        read_folder(tmp_path / "bad")
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "input.txt").write_text("")
    with pytest.raises(UserError, match="input.txt is empty"):
        read_corpus("tinyshakespeare", tmp_path / "ts")
    (tmp_path / "ts" / "input.txt").write_text("a")
    with pytest.raises(UserError, match=r"too short to split into training and validation text \(length 1\)"):
        read_corpus("tinyshakespeare", tmp_path / "ts")


def test_vocab_saved_beside_a_model_must_match(tmp_path):
    c = read_corpus("human_numbers")
    c.vocab.save(tmp_path / "vocab.json")
    other = Vocab(["a", "b"], unk=None, pad=None)
    with pytest.raises(UserError, match="Vocabulary mismatch"):
        Vocab.load(tmp_path / "vocab.json").check_matches(other)
