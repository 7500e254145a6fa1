"""Tests for rnnkit.data.tokenize: fastai's text rules, decode round trips, corpus conventions."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from rnnkit.data.tokenize import (
    BOS, EOS, FLD, PAD, SPECIAL_TOKENS, TK_MAJ, TK_REP, TK_UP, TK_WREP, UNK, CharTokenizer,
    PreTokenizedTokenizer, SubwordTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer,
    defaults_spec_tok, fix_html, replace_all_caps, replace_maj, replace_rep, replace_wrep,
    rm_useless_spaces, spec_add_spaces, tokenize_texts,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

SENTENCES = [
    "I don't know, it's FINE (really)!",
    "I am sooooo happy.",
    "No no no no. no no no no way!",
    "The U.S. economy grew 3.5% in 2019, to $1,000,000.",
    '"Hello," she said. "Can\'t you see?"',
    "We'll see: I'm sure they're right; you've got it and he'd go.",
    "WOW!!!! That's AMAZING...",
    "NOOOOOO! Wait... what?! U.S.A is big",
    "It costs -5 dollars, and well-known people arrive at 10:30 o'clock.",
    "Visit http://example.com/page or mail a@b.org and/or call #1.",
    "Line one.\nLine two, with a DVD and 3D glasses.",
    "Élan vital, naïve café; I was like hmmmm, 1000000 times",
    "It is 'good' and the boys' toys are his.",
]


def test_special_tokens_use_fastai_spellings_and_order():
    assert (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ) == tuple(
        "xxunk xxpad xxbos xxeos xxfld xxrep xxwrep xxup xxmaj".split()
    )
    assert SPECIAL_TOKENS == (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)
    assert tuple(defaults_spec_tok) == SPECIAL_TOKENS


def test_whitespace_tokenizer_is_the_books_split():
    tok = WhitespaceTokenizer()
    text = "one two  three"
    assert tok(text) == text.split(" ") == ["one", "two", "", "three"]
    assert tok.decode(tok(text)) == text
    assert WhitespaceTokenizer(sep=None)(" a  b\nc ") == ["a", "b", "c"]


def test_text_rules_on_hand_examples():
    assert replace_rep("aaa") == "aaa"
    assert replace_rep("sooooo") == f"s {TK_REP} 5 o "
    assert replace_rep("aaa", min_n=3) == f" {TK_REP} 3 a "
    assert replace_wrep("no no no") == "no no no"
    assert replace_wrep("no no no no!") == f" {TK_WREP} 4 no !"
    assert spec_add_spaces("#fastai/x") == " # fastai / x"
    assert rm_useless_spaces("a  b   c") == "a b c"
    assert fix_html("a<br />b &amp; c #39;s &quot;q&quot; <unk>") == "a\nb & c 's \"q\" xxunk"


def test_case_rules_on_hand_examples():
    assert replace_all_caps(["I", "AM", "ok", "N'T"]) == ["I", TK_UP, "am", "ok", TK_UP, "n't"]
    assert replace_maj(["Hello", "world", "I"]) == [TK_MAJ, "hello", "world", TK_MAJ, "i"]


def test_word_tokenizer_applies_fastai_rules():
    tok = WordTokenizer()
    assert tok("I'm SO happy") == [BOS, TK_MAJ, "i", "'m", TK_UP, "so", "happy"]
    assert tok("This is sooooo good") == [BOS, TK_MAJ, "this", "is", "s", TK_REP, "5", "o", "good"]
    assert tok("no no no no more") == [BOS, TK_WREP, "4", "no", "more"]
    assert tok("Don't stop, it's fine.") == [BOS, TK_MAJ, "do", "n't", "stop", ",", "it", "'s", "fine", "."]
    assert tok("a<br />b") == [BOS, "a", "\n", "b"]
    assert WordTokenizer(lower=False, add_bos=False)("Hi THERE") == ["Hi", "THERE"]


@pytest.mark.parametrize("text", SENTENCES)
def test_word_tokenizer_decode_gives_back_ordinary_sentences(text):
    tok = WordTokenizer()
    assert tok.decode(tok(text)) == text


def test_word_tokenizer_decode_normalizes_whitespace_and_html():
    tok = WordTokenizer()
    assert tok.decode(tok("a   lot\tof  space")) == "a lot of space"
    assert tok.decode(tok("one<br /><br />two &amp; three")) == "one\n\ntwo & three"


def test_word_tokenizer_decode_skips_malformed_markers():
    assert WordTokenizer().decode([BOS, "hi", TK_REP, "x", PAD, TK_REP]) == "hi"


def test_char_tokenizer_round_trips():
    tok = CharTokenizer()
    text = "First Citizen:\nBefore we proceed"
    assert tok(text)[:5] == ["F", "i", "r", "s", "t"]
    assert tok.decode(tok(text)) == text


def test_pretokenized_tokenizer_keeps_corpus_tokens_and_adds_one_eos_per_line():
    tok = PreTokenizedTokenizer()
    text = " the <unk> of well @-@ known \n \n a b \n"
    assert tok(text) == ["the", "<unk>", "of", "well", "@-@", "known", "<eos>", "<eos>", "a", "b", "<eos>"]
    assert tok("no newline at end") == ["no", "newline", "at", "end", "<eos>"]
    assert tok("") == []
    assert tok.decode(tok(text)) == "the <unk> of well @-@ known\n\na b\n"
    assert tok(tok.decode(tok(text))) == tok(text)
    assert PreTokenizedTokenizer(eos=None)("a b\nc") == ["a", "b", "c"]


@pytest.mark.parametrize(
    "name, n_tokens",
    [("ptb/ptb.valid.txt", 73_760), ("ptb/ptb.test.txt", 82_430),
     ("wikitext-2/wiki.valid.tokens", 217_646), ("wikitext-2/wiki.test.tokens", 245_569)],
)
def test_pretokenized_token_counts_match_published_figures(name, n_tokens):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    with open(path, encoding="utf-8") as f:
        lines = list(f)
    tokens = PreTokenizedTokenizer()("".join(lines))
    assert len(tokens) == n_tokens == sum(len(line.split()) + 1 for line in lines)
    assert tokens.count("<eos>") == len(lines)
    if "wiki" in name:
        assert "@-@" in tokens and "<unk>" in tokens


@pytest.fixture(scope="module")
def subword_texts() -> list[str]:
    base = [
        "the quick brown fox jumps over the lazy dog",
        "a language model predicts the next word from the words before it",
        "recurrent networks keep a hidden state between batches",
        "tokenizers split text into pieces and join them back",
        "The Quick Brown Fox, said the teacher. It's 10:30 now!",
    ]
    return [f"{s} {i}" for i in range(20) for s in base]


@pytest.fixture(scope="module")
def subword(subword_texts) -> SubwordTokenizer:
    return SubwordTokenizer(vocab_sz=120).setup(subword_texts)


def test_subword_tokenizer_round_trips_text_seen_in_training(subword):
    for text in ["the lazy fox predicts pieces", "The Quick  Brown Fox, said the teacher.\nnext line ", " a b "]:
        tokens = subword(text)
        assert tokens and all(isinstance(t, str) for t in tokens)
        assert subword.decode(tokens) == text
    assert subword.vocab_sz <= 120


def test_subword_tokenizer_keeps_special_tokens_whole(subword):
    assert BOS in subword(f"{BOS} the fox")


def test_subword_tokenizer_bpe_trains_and_round_trips(subword_texts):
    tok = SubwordTokenizer(vocab_sz=100, model_type="bpe").setup(subword_texts)
    assert tok.decode(tok("the hidden state of the model")) == "the hidden state of the model"


def test_subword_tokenizer_saves_loads_and_pickles(subword, tmp_path):
    path = subword.save(tmp_path / "sp" / "model.spm")
    loaded = SubwordTokenizer.load(path)
    text = "the words before it"
    assert loaded(text) == subword(text)
    assert pickle.loads(pickle.dumps(subword))(text) == subword(text)


def test_subword_tokenizer_cache_dir_keeps_the_model(subword_texts, tmp_path):
    SubwordTokenizer(vocab_sz=100, cache_dir=tmp_path).setup(subword_texts[:20])
    assert (tmp_path / "spm.model").is_file()


def test_subword_tokenizer_errors_are_clear(tmp_path):
    with pytest.raises(RuntimeError, match=r"no model yet.*setup\(texts\)"):
        SubwordTokenizer()("hello")
    with pytest.raises(ValueError, match="model_type must be one of"):
        SubwordTokenizer(model_type="wordpiece")
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        SubwordTokenizer(vocab_sz=50).setup(["", "  \n "])
    with pytest.raises(TypeError, match="wrap it in a list"):
        SubwordTokenizer(vocab_sz=50).setup("one text")
    with pytest.raises(ValueError, match="Raise vocab_sz"):
        SubwordTokenizer(vocab_sz=12).setup(["abcdefghijklmnopqrstuvwxyz 0123456789"])
    with pytest.raises(FileNotFoundError, match="No SentencePiece model"):
        SubwordTokenizer.load(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SubwordTokenizer.load(tmp_path / "bad.model")


@pytest.mark.parametrize(
    "name, cls",
    [("whitespace", WhitespaceTokenizer), ("word", WordTokenizer), ("char", CharTokenizer),
     ("pretokenized", PreTokenizedTokenizer), ("subword", SubwordTokenizer)],
)
def test_tokenizer_from_name_builds_each_tokenizer(name, cls):
    assert type(Tokenizer.from_name(name)) is cls


def test_tokenizer_wraps_word_tokenizer_by_default_and_rejects_unknown_names():
    assert Tokenizer()("Hi there") == [BOS, TK_MAJ, "hi", "there"]
    assert Tokenizer("char").decode(["a", "b"]) == "ab"
    with pytest.raises(ValueError, match="Unknown tokenizer 'spacy'.*'whitespace', 'word', 'char'"):
        Tokenizer.from_name("spacy")


def test_tokenize_texts_tokenizes_each_text_and_rejects_empty_corpora():
    assert tokenize_texts("char", ["ab", "c"]) == [["a", "b"], ["c"]]
    assert tokenize_texts(WordTokenizer(add_bos=False), ["Hi", ""]) == [[TK_MAJ, "hi"], []]
    with pytest.raises(ValueError, match="no texts"):
        tokenize_texts("word", [])
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        tokenize_texts("word", ["", " \n\t"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        tokenize_texts("word", "just one text")
