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

`Tokenizer.from_name('word')` builds one by name.
"""

from __future__ import annotations

import functools
import html
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rnnkit.utils import atomic_write

__all__ = [
    "UNK", "PAD", "BOS", "EOS", "FLD", "TK_REP", "TK_WREP", "TK_UP", "TK_MAJ",
    "SPECIAL_TOKENS", "defaults_spec_tok",
    "fix_html", "replace_rep", "replace_wrep", "spec_add_spaces", "rm_useless_spaces",
    "replace_all_caps", "replace_maj",
    "WhitespaceTokenizer", "WordTokenizer", "CharTokenizer", "PreTokenizedTokenizer",
    "SubwordTokenizer", "Tokenizer", "tokenize_texts",
]

UNK, PAD, BOS, EOS, FLD = "xxunk", "xxpad", "xxbos", "xxeos", "xxfld"
TK_REP, TK_WREP, TK_UP, TK_MAJ = "xxrep", "xxwrep", "xxup", "xxmaj"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)
defaults_spec_tok = SPECIAL_TOKENS  # fastai's name for the same list


class BaseTokenizer(ABC):
    """What every tokenizer offers: `encode`, `decode`, and calling it encodes."""

    @abstractmethod
    def encode(self, text: str) -> list[str]:
        """Split `text` into tokens."""

    @abstractmethod
    def decode(self, tokens: Sequence[str]) -> str:
        """Join `tokens` back into text."""

    def __call__(self, text: str) -> list[str]:
        return self.encode(text)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class WhitespaceTokenizer(BaseTokenizer):
    """Split on `sep` (the book's `text.split(' ')`); `sep=None` splits on any whitespace run."""

    def __init__(self, sep: str | None = " ") -> None:
        self.sep = sep

    def encode(self, text: str) -> list[str]:
        """`text.split(sep)`."""
        return text.split(self.sep)

    def decode(self, tokens: Sequence[str]) -> str:
        """Join with `sep` (a space when `sep=None`)."""
        return (" " if self.sep is None else self.sep).join(tokens)


class CharTokenizer(BaseTokenizer):
    """One token per character."""

    def encode(self, text: str) -> list[str]:
        """The characters of `text`."""
        return list(text)

    def decode(self, tokens: Sequence[str]) -> str:
        """The characters joined."""
        return "".join(tokens)


class PreTokenizedTokenizer(BaseTokenizer):
    """For PTB and WikiText: `line.split()` per line plus one `eos` per line (an empty line gives just `eos`).

    Tokens such as `<unk>` and `@-@` pass through untouched. `decode` joins a line's
    tokens with single spaces and turns each `eos` into a newline, so whitespace runs and
    WikiText's leading space are normalized away.
    """

    def __init__(self, eos: str | None = "<eos>") -> None:
        self.eos = eos

    def encode(self, text: str) -> list[str]:
        """Words of each line, each line followed by `eos`."""
        if self.eos is None:
            return text.split()
        # One C-level split instead of a Python loop over lines: the same tokens as
        # `for line in text.split('\n'): line.split() + [eos]` (a trailing newline ends the last line).
        tokens = text.replace("\n", f" {self.eos} ").split()
        if text and not text.endswith("\n"):
            tokens.append(self.eos)
        return tokens

    def decode(self, tokens: Sequence[str]) -> str:
        """Words joined by spaces, one line per `eos`."""
        if self.eos is None:
            return " ".join(tokens)
        lines: list[str] = []
        line: list[str] = []
        for t in tokens:
            if t == self.eos:
                lines.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(t)
        if line:
            lines.append(" ".join(line))
        return "".join(lines)


# ---------------------------------------------------------------------------------------
# fastai's rules for raw text. Text rules run before splitting, token rules after.

_RE_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
# Scraped IMDb-style text has entities that lost their '&'; fastai repairs these.
_BROKEN_ENTITIES = {"#39;": "'", "#146;": "'", "#36;": "$", "quot;": '"', "amp;": "&", "nbsp;": " "}
_RE_BROKEN_ENTITY = re.compile("|".join(re.escape(k) for k in _BROKEN_ENTITIES))


def fix_html(t: str) -> str:
    """Undo HTML in scraped text: `<br />` becomes a newline, entities become characters, `<unk>` becomes `xxunk`."""
    t = _RE_BR.sub("\n", t)
    t = html.unescape(t)
    t = _RE_BROKEN_ENTITY.sub(lambda m: _BROKEN_ENTITIES[m.group()], t)
    t = t.replace("\xa0", " ").replace("\\n", "\n").replace('\\"', '"')
    t = t.replace(" @-@ ", "-").replace(" @.@ ", ".").replace(" @,@ ", ",")  # WikiText's escapes
    return t.replace("<unk>", UNK)


@functools.lru_cache(maxsize=None)
def _repeat_re(template: str, min_n: int) -> re.Pattern[str]:
    return re.compile(template % (min_n - 1))


def replace_rep(t: str, min_n: int = 4) -> str:
    """A character repeated `min_n` or more times becomes `xxrep n c`: 'sooooo' -> 's xxrep 5 o '.

    fastai v1 and the ULMFiT paper start at 4 repeats (fastai v2 starts at 3, which also
    rewrites '...' and the zeros of '1,000,000').
    """
    return _repeat_re(r"(\S)\1{%d,}", min_n).sub(lambda m: f" {TK_REP} {len(m.group())} {m.group(1)} ", t)


def replace_wrep(t: str, min_n: int = 4) -> str:
    """A word repeated `min_n` or more times becomes `xxwrep n w`: 'no no no no' -> ' xxwrep 4 no '."""
    pattern = _repeat_re(r"\b(\w+)(?:\s+\1\b){%d,}", min_n)
    return pattern.sub(lambda m: f" {TK_WREP} {len(m.group().split())} {m.group(1)} ", t)


def spec_add_spaces(t: str) -> str:
    """Put spaces around `/`, `#` and `\\` so they become tokens of their own."""
    return re.sub(r"([/#\\])", r" \1 ", t)


def rm_useless_spaces(t: str) -> str:
    """Collapse runs of spaces into one."""
    return re.sub(" {2,}", " ", t)


def replace_all_caps(tokens: Sequence[str]) -> list[str]:
    """An ALL-CAPS token longer than one character becomes `xxup` plus the token in lower case."""
    res: list[str] = []
    for t in tokens:
        if len(t) > 1 and t.isupper():
            res += [TK_UP, t.lower()]
        else:
            res.append(t)
    return res


def replace_maj(tokens: Sequence[str]) -> list[str]:
    """A token starting with a capital becomes `xxmaj` plus the token in lower case."""
    res: list[str] = []
    for t in tokens:
        if t[:1].isupper():
            res += [TK_MAJ, t.lower()]
        else:
            res.append(t)
    return res


_CONTRACTION = r"(?:s|m|d|ll|re|ve)\b"
_WORD_RE = re.compile(
    r"""
      \n                                    # a line break is a token
    | (?:[^\W\d_]\.){2,}(?!\w)              # abbreviations: U.S. e.g.
    | \w+?(?=n['’]t\b)                      # do|n't  ca|n't  wo|n't
    | n['’]t\b
    | ['’]""" + _CONTRACTION + r"""         # 's 'm 'd 'll 're 've
    | (?:(?<!\w)-(?=\d))?                   # a minus sign stays on its number
      \w+(?:(?:-|\.|(?<=\d)[,:](?=\d)|['’](?!""" + _CONTRACTION + r"""))\w+)*
                                            # words, well-known, 3.14, 1,000, 10:30, o'clock
    | \.{2,} | -{2,}                        # ... and --
    | \S                                    # any other character is a token
    """,
    re.VERBOSE | re.IGNORECASE,
)

# How `WordTokenizer.decode` re-attaches tokens to their neighbours.
_JOINERS = {"\n", "/", "\\", "—", "–", "@"}  # no space on either side
_NO_SPACE_BEFORE = set(".,;:!?)]}%…”’") | _JOINERS
_NO_SPACE_AFTER = set("([{$£€¥#“‘¿¡") | _JOINERS
_CONTRACTIONS = {"n't", "'s", "'m", "'d", "'ll", "'re", "'ve"}
_DROPPED_ON_DECODE = {BOS, PAD, EOS, FLD, "xxfake"}


def _attaches_before(tok: str) -> bool:
    low = tok.lower().replace("’", "'")
    return low in _CONTRACTIONS or (tok != "" and all(c in ".,;:!?…" for c in tok)) or tok in _NO_SPACE_BEFORE


class WordTokenizer(BaseTokenizer):
    """fastai's processing of raw English text, with a regex word splitter in place of spaCy.

    Text rules: `fix_html`, `replace_rep`, `replace_wrep`, `spec_add_spaces`,
    `rm_useless_spaces`; then words, numbers and punctuation become separate tokens, with
    contractions split as spaCy does (`do n't`, `it 's`); with `lower`, `replace_all_caps`
    and `replace_maj` mark case and every token is lower-cased; `xxbos` starts the document.

    `decode` undoes all of this, so `decode(encode(text)) == text` for ordinary sentences.
    Normalized, not restored: whitespace runs and tabs (one space; spaces beside a line
    break are dropped, line breaks kept), HTML (`<br />`, entities), spaces around
    `/ \\ @ — –` and after `# $ ( [`, mixed case ('McDonald' comes back as 'Mcdonald'), and
    quotation marks that do not pair up (a single quote after an 's' is read as a possessive,
    "the actors' work", unless another one follows on the same line). A repetition is
    re-attached to the word before it ('s xxrep 6 o' -> 'soooooo'), so a word continuing
    after one ('sooooon') comes back as 'soooooo n'.
    """

    def __init__(self, lower: bool = True, add_bos: bool = True, min_rep: int = 4, min_wrep: int = 4) -> None:
        if min_rep < 2 or min_wrep < 2:
            raise ValueError(f"min_rep and min_wrep must be >= 2, got {min_rep} and {min_wrep}.")
        self.lower, self.add_bos, self.min_rep, self.min_wrep = lower, add_bos, min_rep, min_wrep

    def encode(self, text: str) -> list[str]:
        """fastai-style tokens of one document."""
        t = fix_html(text)
        t = replace_rep(t, self.min_rep)
        t = replace_wrep(t, self.min_wrep)
        t = rm_useless_spaces(spec_add_spaces(t))
        tokens = _WORD_RE.findall(t)
        if self.lower:
            tokens = [tok.lower() for tok in replace_maj(replace_all_caps(tokens))]
        return [BOS, *tokens] if self.add_bos else tokens

    def decode(self, tokens: Sequence[str]) -> str:
        """Readable text: case restored, repetitions expanded, punctuation re-attached."""
        toks = list(tokens)
        pieces: list[tuple[str, bool, bool]] = []  # (text, no space before, no space after)
        quote_open = {'"': False, "'": False}
        case, i = "", 0
        while i < len(toks):
            tok = toks[i]
            i += 1
            if tok in _DROPPED_ON_DECODE:
                continue
            if tok in (TK_UP, TK_MAJ):
                case = tok
                continue
            if tok in (TK_REP, TK_WREP):
                n, word, i = _at(toks, i), _at(toks, i + 1), i + 2
                while word in (TK_UP, TK_MAJ):  # a case marker may sit between the count and the item
                    case, word, i = word, _at(toks, i), i + 1
                if not n.isdigit() or not word:
                    continue  # malformed (e.g. model output): drop the marker
                word, case = _apply_case(word, case), ""
                if tok == TK_WREP:
                    pieces.append((" ".join([word] * int(n)), _attaches_before(word), False))
                    continue
                c = word[:1]
                glue = c.isalnum() and bool(pieces) and pieces[-1][0][-1:].isalnum()
                pieces.append((word * int(n), glue or _attaches_before(c), c in _NO_SPACE_AFTER))
                continue
            tok, case = _apply_case(tok, case), ""
            if tok in quote_open:
                after_s = bool(pieces) and pieces[-1][0][-1:] in ("s", "S")
                if tok == "'" and after_s and not quote_open[tok] and not _quote_ahead(toks, i):
                    pieces.append((tok, True, False))  # a plural possessive: the actors' work
                    continue
                quote_open[tok] = not quote_open[tok]  # straight quotes alternate opening and closing
                pieces.append((tok, not quote_open[tok], quote_open[tok]))
            else:
                pieces.append((tok, _attaches_before(tok), tok in _NO_SPACE_AFTER))
        out: list[str] = []
        prev_no_after = True
        for text, no_before, no_after in pieces:
            if not (prev_no_after or no_before):
                out.append(" ")
            out.append(text)
            prev_no_after = no_after
        return "".join(out)


def _at(tokens: list[str], i: int) -> str:
    return tokens[i] if i < len(tokens) else ""


def _quote_ahead(tokens: list[str], i: int, window: int = 40) -> bool:
    """Whether a single quote closes within the next `window` tokens of the same line."""
    for tok in tokens[i:i + window]:
        if tok == "\n":
            return False
        if tok == "'":
            return True
    return False


def _apply_case(tok: str, case: str) -> str:
    if case == TK_UP:
        return tok.upper()
    if case == TK_MAJ:
        return tok[:1].upper() + tok[1:]
    return tok


# ---------------------------------------------------------------------------------------
# Subwords through SentencePiece.

_SP_MODEL_TYPES = ("unigram", "bpe")


def _default_vocab_sz(lines: list[str], max_vocab_sz: int) -> int:
    """fastai's rule of thumb: a quarter of the distinct words, rounded up to a multiple of 8."""
    n_words = len({w for line in lines for w in line.split()})
    sz = -(-(n_words // 4) // 8) * 8
    return min(max(sz, 32), max_vocab_sz)


class SubwordTokenizer(BaseTokenizer):
    """Subword pieces from a SentencePiece `model_type` model ('unigram' or 'bpe') trained by `setup(texts)`.

    Training uses the 'identity' normalization and keeps whitespace, so `decode(encode(text))`
    gives back any text made of characters seen in training. Newlines become `'\\n'` tokens of
    their own. fastai's special tokens are kept whole (`user_defined_symbols`) and `xxunk` is
    the unknown piece. `vocab_sz=None` picks a quarter of the distinct words (at most
    `max_vocab_sz`). With `cache_dir`, `setup` also saves the model there as `spm.model`.
    """

    def __init__(
        self,
        vocab_sz: int | None = None,
        model_type: str = "unigram",
        cache_dir: str | Path | None = None,
        special_toks: Sequence[str] = SPECIAL_TOKENS,
        char_coverage: float = 1.0,
        max_vocab_sz: int = 30000,
    ) -> None:
        if model_type not in _SP_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {_SP_MODEL_TYPES}, got {model_type!r}.")
        if vocab_sz is not None and vocab_sz < len(special_toks) + 2:
            raise ValueError(
                f"vocab_sz={vocab_sz} is too small: the {len(special_toks)} special tokens alone need that many."
            )
        self.vocab_sz, self.model_type, self.cache_dir = vocab_sz, model_type, cache_dir
        self.special_toks, self.char_coverage, self.max_vocab_sz = tuple(special_toks), char_coverage, max_vocab_sz
        self._sp: Any = None

    def setup(self, texts: Iterable[str]) -> SubwordTokenizer:
        """Train the model on `texts` (in memory, no network); returns self."""
        import sentencepiece as spm

        if isinstance(texts, str):
            raise TypeError("SubwordTokenizer.setup takes an iterable of texts, got one str; wrap it in a list.")
        lines = [line for t in texts for line in t.split("\n") if line.strip()]
        if not lines:
            raise ValueError("SubwordTokenizer.setup got no text: every text is empty or whitespace-only.")
        vocab_sz = self.vocab_sz or _default_vocab_sz(lines, self.max_vocab_sz)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_sz,
                model_type=self.model_type, character_coverage=self.char_coverage,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                user_defined_symbols=[t for t in self.special_toks if t != UNK],
                unk_id=0, unk_piece=UNK, unk_surface=UNK, bos_id=-1, eos_id=-1, pad_id=-1,
                hard_vocab_limit=False, max_sentence_length=1 << 16, num_threads=1, minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(
                f"SentencePiece could not train a {self.model_type} model with vocab_sz={vocab_sz} on "
                f"{len(lines)} lines: {e}. Raise vocab_sz (it must exceed the number of distinct characters) "
                "or lower char_coverage."
            ) from e
        self._sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        self.vocab_sz = self._sp.get_piece_size()
        if self.cache_dir is not None:
            self.save(Path(self.cache_dir) / "spm.model")
        return self

    @property
    def sp(self) -> Any:
        """The trained `sentencepiece.SentencePieceProcessor`."""
        if self._sp is None:
            raise RuntimeError(
                "SubwordTokenizer has no model yet: call setup(texts) to train one, "
                "or SubwordTokenizer.load(path) to read a saved one."
            )
        return self._sp

    def encode(self, text: str) -> list[str]:
        """Subword pieces of `text`; each newline is a `'\\n'` token."""
        sp = self.sp
        if "\n" not in text:
            return sp.encode(text, out_type=str)
        tokens: list[str] = []
        for i, line in enumerate(text.split("\n")):
            if i:
                tokens.append("\n")
            tokens += sp.encode(line, out_type=str)
        return tokens

    def decode(self, tokens: Sequence[str]) -> str:
        """The text the pieces spell."""
        sp = self.sp
        lines: list[str] = []
        line: list[str] = []
        for t in tokens:
            if t == "\n":
                lines.append(sp.decode_pieces(line))
                line = []
            else:
                line.append(t)
        lines.append(sp.decode_pieces(line))
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the trained model (SentencePiece's own protobuf format) to `path`, atomically."""
        return atomic_write(path, self.sp.serialized_model_proto())

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> SubwordTokenizer:
        """A tokenizer using the SentencePiece model saved at `path`."""
        import sentencepiece as spm

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No SentencePiece model at {path}; expected a file written by SubwordTokenizer.save."
            )
        try:
            sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
        except RuntimeError as e:
            raise ValueError(
                f"{path} is not a SentencePiece model ({e}); expected a file written by SubwordTokenizer.save."
            ) from e
        tok = cls(**kwargs)
        tok._sp, tok.vocab_sz = sp, sp.get_piece_size()
        return tok


# ---------------------------------------------------------------------------------------

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
            raise ValueError(f"Unknown tokenizer {name!r}; choose one of {names}.") from None
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
        raise ValueError("tokenize_texts got no texts; pass a non-empty list of strings.")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"tokenize_texts needs strings, but text {bad} is a {type(texts[bad]).__name__}.")
    if not any(t.strip() for t in texts):
        raise ValueError(f"tokenize_texts got {len(texts)} text(s) that are all empty or whitespace-only.")
    return [tokenizer.encode(t) for t in texts]
