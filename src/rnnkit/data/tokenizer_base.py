"""The tokenizer API and the tokenizers that split plainly.

`BaseTokenizer` is what every rnnkit tokenizer offers: `encode(text) -> list[str]`, `decode(tokens) -> str`,
calling the tokenizer encodes, and `needs_setup` says whether it must first be trained on texts. fastai's
special tokens (`xxunk`, `xxbos`, ...) are defined here, and the three tokenizers that need no rules:

* `WhitespaceTokenizer`: the book's `text.split(' ')`.
* `CharTokenizer`: one token per character (Tiny Shakespeare).
* `PreTokenizedTokenizer`: PTB and WikiText are already tokenized; each line is
  `line.split()` plus one `<eos>`, the counting convention of awd-lstm-lm and pytorch/examples.

`rnnkit.data.tokenize` gathers all tokenizers (with fastai's `WordTokenizer` and the SentencePiece
`SubwordTokenizer`) and builds one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

__all__ = [
    "UNK", "PAD", "BOS", "EOS", "FLD", "TK_REP", "TK_WREP", "TK_UP", "TK_MAJ", "SPECIAL_TOKENS", "defaults_spec_tok",
    "BaseTokenizer", "WhitespaceTokenizer", "CharTokenizer", "PreTokenizedTokenizer",
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

    @property
    def needs_setup(self) -> bool:
        """Whether `setup(texts)` must train this tokenizer before it can encode; False unless it learns a model."""
        return False

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
