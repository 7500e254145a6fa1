"""Tokenizers: turn text into a list of string tokens and back.

Five tokenizers share one small API, `encode(text) -> list[str]`, `decode(tokens) -> str`,
and calling the tokenizer is `encode`:

* `WhitespaceTokenizer`: the book's `text.split(' ')`.
* `WordTokenizer`: fastai's rules for raw English text (`xxbos`, `xxmaj`, `xxup`, `xxrep`,
  `xxwrep`, split contractions) with a regex word splitter instead of spaCy.
* `CharTokenizer`: one token per character (Tiny Shakespeare).
* `PreTokenizedTokenizer`: PTB and WikiText are already tokenized; each line is
  `line.split()` plus one `<eos>`, the counting convention of awd-lstm-lm and pytorch/examples.
* `SubwordTokenizer`: a SentencePiece unigram or BPE model trained on your texts.

`Tokenizer.from_name('word')` builds one by name, and `tokenize_texts` tokenizes a corpus; both are defined
here. The tokenizers themselves live in `tokenizer_base` (the API, the special tokens and the plain
splitters), `word_tokenizer` (fastai's rules) and `subword` (SentencePiece), and are importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rnnkit.data.subword import SubwordTokenizer, TokenizerNotSetUpError
from rnnkit.data.tokenizer_base import (
    BOS, EOS, FLD, PAD, SPECIAL_TOKENS, TK_MAJ, TK_REP, TK_UP, TK_WREP, UNK, BaseTokenizer, CharTokenizer,
    PreTokenizedTokenizer, WhitespaceTokenizer, defaults_spec_tok,
)
from rnnkit.data.word_tokenizer import (
    WordTokenizer, fix_html, replace_all_caps, replace_maj, replace_rep, replace_wrep, rm_useless_spaces,
    spec_add_spaces,
)
from rnnkit.errors import UserError

__all__ = ["Tokenizer", "tokenize_texts"]
# Defined in tokenizer_base, word_tokenizer and subword; gathered here, where code imports them from.
__all__ += [
    "UNK", "PAD", "BOS", "EOS", "FLD", "TK_REP", "TK_WREP", "TK_UP", "TK_MAJ",
    "SPECIAL_TOKENS", "defaults_spec_tok",
    "fix_html", "replace_rep", "replace_wrep", "spec_add_spaces", "rm_useless_spaces",
    "replace_all_caps", "replace_maj",
    "BaseTokenizer", "WhitespaceTokenizer", "WordTokenizer", "CharTokenizer", "PreTokenizedTokenizer",
    "SubwordTokenizer", "TokenizerNotSetUpError",
]

_TOKENIZERS: dict[str, type[BaseTokenizer]] = {
    "whitespace": WhitespaceTokenizer,
    "word": WordTokenizer,
    "char": CharTokenizer,
    "pretokenized": PreTokenizedTokenizer,
    "subword": SubwordTokenizer,
}


class Tokenizer(BaseTokenizer):
    """Wrap a tokenizer (an instance or a name; `WordTokenizer()` by default) behind fastai's `Tokenizer` name."""

    def __init__(self, tok: BaseTokenizer | str | None = None) -> None:
        if tok is None:
            tok = WordTokenizer()
        self.tok = self.from_name(tok) if isinstance(tok, str) else tok

    @staticmethod
    def from_name(name: str, **kwargs: Any) -> BaseTokenizer:
        """A new tokenizer by name: 'whitespace', 'word', 'char', 'pretokenized' or 'subword'."""
        try:
            cls = _TOKENIZERS[name]
        except KeyError:
            names = ", ".join(map(repr, _TOKENIZERS))
            raise UserError(f"Unknown tokenizer {name!r}; choose one of {names}.") from None
        return cls(**kwargs)

    def encode(self, text: str) -> list[str]:
        """The wrapped tokenizer's tokens."""
        return self.tok.encode(text)

    def decode(self, tokens: Sequence[str]) -> str:
        """The wrapped tokenizer's text."""
        return self.tok.decode(tokens)


def tokenize_texts(tok: BaseTokenizer | str, texts: Iterable[str]) -> list[list[str]]:
    """Tokenize each text of a corpus with `tok` (a tokenizer or its name)."""
    if isinstance(texts, str):
        raise TypeError("tokenize_texts takes an iterable of texts, got one str; wrap it in a list.")
    tokenizer = Tokenizer.from_name(tok) if isinstance(tok, str) else tok
    texts = list(texts)
    if not texts:
        raise UserError("tokenize_texts got no texts; pass a non-empty list of strings.")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"tokenize_texts needs strings, but text {bad} is a {type(texts[bad]).__name__}.")
    if not any(t.strip() for t in texts):
        raise UserError(f"tokenize_texts got {len(texts)} text(s) that are all empty or whitespace-only.")
    return [tokenizer.encode(t) for t in texts]
