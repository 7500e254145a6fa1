"""Data loading: batching loaders and fastai's sample datasets."""

from __future__ import annotations

from rnnkit.data.core import DataLoader, DataLoaders, TfmdDL
from rnnkit.data.external import URLs, untar_data
from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.stream import TokenStream
from rnnkit.data.numericalize import Numericalize, numericalize_file, numericalize_tokens, read_text
from rnnkit.data.tokenize import (
    BOS, EOS, FLD, PAD, SPECIAL_TOKENS, TK_MAJ, TK_REP, TK_UP, TK_WREP, UNK, CharTokenizer,
    PreTokenizedTokenizer, SubwordTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer,
    defaults_spec_tok, tokenize_texts,
)
from rnnkit.data.vocab import Vocab
from rnnkit.data.corpora import Corpus, read_corpus
from rnnkit.data.text import TextDataLoaders

__all__ = ["DataLoader", "DataLoaders", "TfmdDL", "URLs", "untar_data"]
__all__ += ["LMDataLoader", "TokenStream"]
__all__ += [
    "UNK", "PAD", "BOS", "EOS", "FLD", "TK_REP", "TK_WREP", "TK_UP", "TK_MAJ", "SPECIAL_TOKENS",
    "defaults_spec_tok", "WhitespaceTokenizer", "WordTokenizer", "CharTokenizer", "PreTokenizedTokenizer",
    "SubwordTokenizer", "Tokenizer", "tokenize_texts", "Vocab", "Numericalize", "numericalize_tokens",
    "numericalize_file", "read_text", "Corpus", "read_corpus", "TextDataLoaders",
]
