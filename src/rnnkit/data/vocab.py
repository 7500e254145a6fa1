"""`Vocab`: the id <-> token table of a corpus, built with fastai's rules and saved as JSON.

`Vocab.build` follows fastai's `make_vocab`: special tokens first, then tokens by
decreasing frequency (ties in order of first occurrence), dropping those seen fewer than
`min_freq` times, at most `max_vocab` entries, padded with `xxfake` to a multiple of 8
(embedding and softmax sizes that are multiples of 8 run faster in fp16).
`Vocab.from_corpus_tokens` keeps every word type of an already tokenized corpus (PTB,
WikiText) and uses the corpus's own `<unk>`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from rnnkit.utils import atomic_write
from rnnkit.data.tokenize import PAD, SPECIAL_TOKENS, UNK
from rnnkit.errors import MissingFileError, UserError

__all__ = ["Vocab", "FAKE_TOKEN"]

FAKE_TOKEN = "xxfake"  # fastai's padding entry; the only token allowed to repeat
_FORMAT, _VERSION = "rnnkit-vocab", 1


def _count(tokens_or_counter: Mapping[str, int] | Iterable[str] | Iterable[Sequence[str]]) -> Mapping[str, int]:
    """Token counts from a Counter/mapping, a flat iterable of tokens, or an iterable of token lists."""
    if isinstance(tokens_or_counter, Mapping):
        return tokens_or_counter
    if isinstance(tokens_or_counter, str):
        raise TypeError("Vocab.build takes tokens (a list of str), not one str; tokenize the text first.")
    items = tokens_or_counter if isinstance(tokens_or_counter, (list, tuple)) else list(tokens_or_counter)
    if items and isinstance(items[0], (list, tuple)):  # one token list per document
        return Counter(chain.from_iterable(items))
    return Counter(items)


class Vocab:
    """The list `itos` of a corpus's tokens, with `stoi` mapping each token to its id.

    `unk` is the token unknown words map to (None: looking one up raises), `pad` the padding
    token (None if there is none); both must be entries of `itos`.
    """

    def __init__(self, itos: Iterable[str], unk: str | None = UNK, pad: str | None = PAD) -> None:
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if not isinstance(tok, str):
                raise TypeError(f"Vocabulary entries must be str, but entry {i} is {tok!r} ({type(tok).__name__}).")
            j = self.stoi.setdefault(tok, i)
            if j != i and tok != FAKE_TOKEN:
                raise ValueError(
                    f"Token {tok!r} appears twice in the vocabulary (ids {j} and {i}); each token needs exactly one id."
                )
        for what, special in (("unk", unk), ("pad", pad)):
            if special is not None and special not in self.stoi:
                raise ValueError(
                    f"The {what} token {special!r} is not in the vocabulary; add it to the special tokens "
                    f"or pass {what}=None."
                )
        self.unk, self.pad = unk, pad

    @property
    def unk_idx(self) -> int | None:
        """Id that unknown tokens map to, or None when the vocabulary has no unknown token."""
        return None if self.unk is None else self.stoi[self.unk]

    @property
    def pad_idx(self) -> int | None:
        """Id of the padding token, or None."""
        return None if self.pad is None else self.stoi[self.pad]

    def __len__(self) -> int:
        return len(self.itos)

    def __getitem__(self, i: int) -> str:
        try:
            return self.itos[i]
        except IndexError:
            raise IndexError(f"Token id {i} is out of range for a vocabulary of {len(self)} tokens.") from None

    def __contains__(self, tok: object) -> bool:
        return tok in self.stoi

    def __iter__(self) -> Iterator[str]:
        return iter(self.itos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (self.itos, self.unk, self.pad) == (other.itos, other.unk, other.pad)

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.itos[:10]))
        more = ", ..." if len(self) > 10 else ""
        return f"Vocab({len(self)} tokens: [{head}{more}], unk={self.unk!r}, pad={self.pad!r})"

    def index(self, tok: str) -> int:
        """Id of `tok`; the unknown token's id for a token not in the vocabulary."""
        i = self.stoi.get(tok, self.unk_idx)
        if i is None:
            raise ValueError(f"{tok!r} is not in the vocabulary, which has no unknown token (unk=None).")
        return i

    @classmethod
    def build(
        cls,
        tokens_or_counter: Mapping[str, int] | Iterable[str] | Iterable[Sequence[str]],
        min_freq: int = 3,
        max_vocab: int | None = 60000,
        special_toks: Sequence[str] = SPECIAL_TOKENS,
        pad_to_multiple: int | None = 8,
        unk: str | None = UNK,
        pad: str | None = PAD,
    ) -> Vocab:
        """fastai's vocabulary: specials, then tokens seen `min_freq`+ times by frequency, at most `max_vocab`, padded.

        Args:
            tokens_or_counter: a `Counter` (or any token -> count mapping), a list of tokens,
                or a list of token lists (one per document).
            max_vocab: size cap before padding, special tokens included; None for no cap.
            pad_to_multiple: append `xxfake` entries until the size is a multiple of this; None or 0 for none.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}.")
        if max_vocab is not None and max_vocab < len(special_toks):
            raise ValueError(f"max_vocab={max_vocab} is smaller than the {len(special_toks)} special tokens.")
        counts = _count(tokens_or_counter)
        specials = list(dict.fromkeys(special_toks))
        # sorted() is stable, so tokens with equal counts keep their first-occurrence order.
        by_freq = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        taken = set(specials)
        room = None if max_vocab is None else max_vocab - len(specials)
        rest: list[str] = []
        for tok, c in by_freq:
            if c < min_freq or (room is not None and len(rest) >= room):
                break
            if tok not in taken:
                rest.append(tok)
        itos = specials + rest
        if pad_to_multiple:
            itos += [FAKE_TOKEN] * (-len(itos) % pad_to_multiple)
        return cls(itos, unk=unk, pad=pad)

    @classmethod
    def from_corpus_tokens(
        cls,
        tokens_or_counter: Mapping[str, int] | Iterable[str] | Iterable[Sequence[str]],
        unk: str = "<unk>",
        eos: str | None = "<eos>",
    ) -> Vocab:
        """Every word type of a pre-tokenized corpus (PTB, WikiText): `unk`, `eos`, then by frequency; no padding.

        PTB train gives 10,000 entries and WikiText-2 train 33,278, the published sizes.
        """
        specials = (unk,) if eos is None else (unk, eos)
        return cls.build(tokens_or_counter, min_freq=1, max_vocab=None, special_toks=specials,
                         pad_to_multiple=None, unk=unk, pad=None)

    def check_matches(self, other_or_size: Vocab | Sequence[str] | int, what: str = "checkpoint") -> None:
        """Raise a UserError saying how this vocabulary differs from `other_or_size` (a Vocab, token list or size)."""
        fix = (f"Numericalize with the vocabulary saved beside the {what} (Vocab.load(...)) "
               "instead of building a new one.")
        if isinstance(other_or_size, int):
            if len(self) != other_or_size:
                raise UserError(
                    f"Vocabulary size mismatch: this vocabulary has {len(self)} tokens but the {what} "
                    f"expects {other_or_size}. {fix}"
                )
            return
        other = other_or_size.itos if isinstance(other_or_size, Vocab) else list(other_or_size)
        if other == self.itos:
            return
        diff = next((i for i, (a, b) in enumerate(zip(self.itos, other)) if a != b), None)
        sizes = f"this vocabulary has {len(self)} tokens, the {what}'s has {len(other)}"
        where = (f"; the first difference is id {diff}: {self.itos[diff]!r} here, {other[diff]!r} in the {what}"
                 if diff is not None else "; one is a prefix of the other")
        raise UserError(f"Vocabulary mismatch with the {what}: {sizes}{where}. {fix}")

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary to `path` as JSON, atomically (a temporary file, then a rename)."""
        data = {"format": _FORMAT, "version": _VERSION, "itos": self.itos, "unk": self.unk, "pad": self.pad}
        return atomic_write(path, json.dumps(data, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"No vocabulary file at {path}; expected a JSON file written by Vocab.save.")
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is not a vocabulary: byte {e.start} is not UTF-8 text.") from None
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not a vocabulary: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})."
            ) from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise UserError(
                f"{path} is not an rnnkit vocabulary (no \"format\": \"{_FORMAT}\"); write one with Vocab.save."
            )
        if data.get("version") != _VERSION:
            raise UserError(
                f"{path} has vocabulary format version {data.get('version')!r}; this rnnkit reads version {_VERSION}."
            )
        itos = data.get("itos")
        if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
            raise UserError(f"{path} is a corrupt vocabulary: \"itos\" must be a list of strings.")
        try:
            return cls(itos, unk=data.get("unk"), pad=data.get("pad"))
        except (TypeError, ValueError) as e:
            raise UserError(f"{path} is a corrupt vocabulary: {e}") from None
