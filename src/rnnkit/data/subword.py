"""`SubwordTokenizer`: subword pieces from a SentencePiece model (unigram or BPE) trained on your texts.

SentencePiece is imported only when a model is trained or loaded, so the other tokenizers do not need it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rnnkit.data.tokenizer_base import SPECIAL_TOKENS, UNK, BaseTokenizer
from rnnkit.errors import MissingFileError, UserError
from rnnkit.files import atomic_write

__all__ = ["SubwordTokenizer", "TokenizerNotSetUpError"]


class TokenizerNotSetUpError(UserError, RuntimeError):
    """A `SubwordTokenizer` was used before `setup(texts)` trained it or `load(path)` read its model.

    Also a `RuntimeError`, what this case raised before `UserError` existed, so `except RuntimeError` keeps working.
    """


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
            raise UserError(f"model_type must be one of {_SP_MODEL_TYPES}, got {model_type!r}.")
        if vocab_sz is not None and vocab_sz < len(special_toks) + 2:
            raise UserError(
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
            raise UserError("SubwordTokenizer.setup got no text: every text is empty or whitespace-only.")
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
            raise UserError(
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
    def needs_setup(self) -> bool:
        """True until `setup(texts)` has trained a model or `load(path)` has read one."""
        return self._sp is None

    @property
    def sp(self) -> Any:
        """The trained `sentencepiece.SentencePieceProcessor`; TokenizerNotSetUpError before setup or load."""
        if self._sp is None:
            raise TokenizerNotSetUpError(
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
            raise MissingFileError(
                f"No SentencePiece model at {path}; expected a file written by SubwordTokenizer.save."
            )
        try:
            sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
        except RuntimeError as e:
            raise UserError(
                f"{path} is not a SentencePiece model ({e}); expected a file written by SubwordTokenizer.save."
            ) from e
        tok = cls(**kwargs)
        tok._sp, tok.vocab_sz = sp, sp.get_piece_size()
        return tok
