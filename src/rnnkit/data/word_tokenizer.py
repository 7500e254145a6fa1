"""fastai's rules for raw English text, and `WordTokenizer`, which applies them around a regex word splitter.

Text rules (`fix_html`, `replace_rep`, `replace_wrep`, `spec_add_spaces`, `rm_useless_spaces`) run on
the text before it is split; token rules (`replace_all_caps`, `replace_maj`) run on the tokens after.
`WordTokenizer.decode` undoes them, so a document survives a round trip up to normalized whitespace and case.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence

from rnnkit.data.tokenizer_base import BOS, EOS, FLD, PAD, TK_MAJ, TK_REP, TK_UP, TK_WREP, UNK, BaseTokenizer
from rnnkit.errors import UserError

__all__ = [
    "fix_html", "replace_rep", "replace_wrep", "spec_add_spaces", "rm_useless_spaces",
    "replace_all_caps", "replace_maj", "WordTokenizer",
]

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
            raise UserError(f"min_rep and min_wrep must be >= 2, got {min_rep} and {min_wrep}.")
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
