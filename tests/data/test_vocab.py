"""Tests for rnnkit.data.vocab: fastai's vocabulary rules, corpus vocabularies, JSON files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rnnkit.data.tokenize import PAD, SPECIAL_TOKENS, UNK
from rnnkit.data.vocab import FAKE_TOKEN, Vocab
from rnnkit.errors import MissingFileError, UserError

TOKENS = "b a c a b a d a b c e".split()  # a:4 b:3 c:2 d:1 e:1


def test_build_puts_specials_first_then_tokens_by_frequency():
    v = Vocab.build(TOKENS, min_freq=1, pad_to_multiple=None)
    assert v.itos == [*SPECIAL_TOKENS, "a", "b", "c", "d", "e"]
    assert v.stoi["a"] == len(SPECIAL_TOKENS)


def test_build_breaks_ties_by_first_occurrence():
    v = Vocab.build("z y x y z w".split(), min_freq=1, special_toks=(), pad_to_multiple=None, unk=None, pad=None)
    assert v.itos == ["z", "y", "x", "w"]


def test_build_drops_tokens_below_min_freq():
    v = Vocab.build(TOKENS, min_freq=3, pad_to_multiple=None)
    assert v.itos[len(SPECIAL_TOKENS):] == ["a", "b"]


def test_build_caps_the_size_at_max_vocab_specials_included():
    v = Vocab.build(TOKENS, min_freq=1, max_vocab=len(SPECIAL_TOKENS) + 2, pad_to_multiple=None)
    assert v.itos[len(SPECIAL_TOKENS):] == ["a", "b"]


def test_build_pads_with_xxfake_to_a_multiple_of_8():
    v = Vocab.build(TOKENS, min_freq=1)  # 9 specials + 5 tokens = 14 -> 16
    assert len(v) == 16 and v.itos[-2:] == [FAKE_TOKEN, FAKE_TOKEN]
    assert len(Vocab.build(["a"] * 3, min_freq=1, special_toks=SPECIAL_TOKENS[:7])) == 8  # already a multiple


def test_build_does_not_repeat_a_special_token_found_in_the_corpus():
    v = Vocab.build([UNK, "a", "a", UNK], min_freq=1, pad_to_multiple=None)
    assert v.itos.count(UNK) == 1 and v.itos[-1] == "a"


def test_build_accepts_a_counter_or_token_lists():
    flat = Vocab.build(TOKENS, min_freq=1)
    assert Vocab.build(Counter(TOKENS), min_freq=1) == flat
    assert Vocab.build([TOKENS[:4], TOKENS[4:]], min_freq=1) == flat
    with pytest.raises(TypeError, match="not one str"):
        Vocab.build("a b c")


def test_unknown_tokens_map_to_unk_and_pad_has_an_index():
    v = Vocab.build(TOKENS, min_freq=1)
    assert v.index("a") == v.stoi["a"]
    assert v.index("never seen") == v.unk_idx == v.stoi[UNK] == 0
    assert v.pad_idx == v.stoi[PAD] == 1
    assert "a" in v and "zzz" not in v
    assert v[v.index("b")] == "b"
    with pytest.raises(IndexError, match="out of range for a vocabulary of 16"):
        v[100]


def test_vocab_without_unk_rejects_unknown_tokens():
    v = Vocab(["a", "b"], unk=None, pad=None)
    assert v.unk_idx is None and v.pad_idx is None
    with pytest.raises(ValueError, match="'c' is not in the vocabulary"):
        v.index("c")


def test_vocab_checks_its_entries():
    with pytest.raises(ValueError, match=r"'a' appears twice in the vocabulary \(ids 0 and 2\)"):
        Vocab(["a", "b", "a"], unk=None, pad=None)
    with pytest.raises(ValueError, match="unk token 'xxunk' is not in the vocabulary"):
        Vocab(["a"])


def test_from_corpus_tokens_keeps_every_type_with_the_corpus_unk():
    tokens = "the <unk> cat <eos> the dog <eos>".split()
    v = Vocab.from_corpus_tokens(tokens)
    assert v.itos == ["<unk>", "<eos>", "the", "cat", "dog"]
    assert v.index("zebra") == v.stoi["<unk>"] and v.pad_idx is None


def test_save_load_round_trip(tmp_path):
    v = Vocab.build(TOKENS + ["café"], min_freq=1)
    path = v.save(tmp_path / "sub" / "vocab.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "rnnkit-vocab" and data["version"] == 1 and data["unk"] == UNK
    assert Vocab.load(path) == v
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed
    corpus = Vocab.from_corpus_tokens(["<unk>", "a", "<eos>"])
    assert Vocab.load(corpus.save(tmp_path / "c.json")) == corpus


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "invalid JSON"),
        ('["a", "b"]', "not an rnnkit vocabulary"),
        ('{"format": "other"}', "not an rnnkit vocabulary"),
        ('{"format": "rnnkit-vocab", "version": 2, "itos": []}', "version 2"),
        ('{"format": "rnnkit-vocab", "version": 1, "itos": [1, 2]}', "list of strings"),
        ('{"format": "rnnkit-vocab", "version": 1, "itos": ["a", "b", "a"], "unk": null, "pad": null}',
         "'a' appears twice"),
        ('{"format": "rnnkit-vocab", "version": 1, "itos": ["a"], "unk": "xxunk", "pad": null}',
         "unk token 'xxunk' is not in the vocabulary"),
    ],
)
def test_load_rejects_bad_files_with_clear_errors(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        Vocab.load(path)


def test_load_rejects_missing_and_binary_files(tmp_path):
    with pytest.raises(MissingFileError, match="No vocabulary file"):
        Vocab.load(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        Vocab.load(tmp_path / "bin.json")


def test_check_matches_explains_size_and_token_differences():
    v = Vocab.build(TOKENS, min_freq=1)
    v.check_matches(16)
    v.check_matches(Vocab(list(v.itos)))
    with pytest.raises(UserError, match=r"has 16 tokens but the checkpoint expects 10000.*saved beside the"):
        v.check_matches(10000)
    other = list(v.itos)
    other[10] = "zzz"
    with pytest.raises(UserError, match=r"first difference is id 10: 'b' here, 'zzz' in the model"):
        v.check_matches(other, what="model")
    with pytest.raises(UserError, match="one is a prefix of the other"):
        v.check_matches(v.itos[:-1])
