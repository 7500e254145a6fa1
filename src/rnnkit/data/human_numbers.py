"""Human Numbers for language models, prepared exactly as fastbook chapter 12 does it.

The two files are joined into one stream (`' . '` between numbers), cut into windows of
`sl` tokens with targets shifted by one, split 80/20, and each split reordered with
`group_chunks` so that row `j` of batch `i+1` continues row `j` of batch `i` (the hidden
state can then be carried across batches).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from rnnkit.data.core import DataLoaders
from rnnkit.data.external import URLs, untar_data
from rnnkit.data.numericalize import read_text
from rnnkit.errors import MissingFileError, UserError

__all__ = ["human_numbers_tokens", "group_chunks", "human_numbers_lm_dls"]


def human_numbers_tokens(path: str | os.PathLike | None = None) -> tuple[list[str], torch.Tensor]:
    """The chapter's vocabulary (in first-seen order) and the whole stream as token ids."""
    path = Path(path) if path is not None else untar_data(URLs.HUMAN_NUMBERS)
    lines = []
    for name in ("train.txt", "valid.txt"):
        f = path / name
        if not f.is_file():
            raise MissingFileError(f"{f} is missing: expected Human Numbers' train.txt and valid.txt "
                                   "in that folder (omit the path to generate them)")
        lines += read_text(f).splitlines()  # a UserError if it is not UTF-8
    tokens = " . ".join(line.strip() for line in lines).split(" ")
    vocab = list(dict.fromkeys(tokens))
    stoi = {w: i for i, w in enumerate(vocab)}
    return vocab, torch.tensor([stoi[t] for t in tokens], dtype=torch.long)


def group_chunks(ds: list, bs: int) -> list:
    """Reorder `ds` so that item `j` of each batch of `bs` continues item `j` of the previous batch."""
    m = len(ds) // bs
    return [ds[i + m * j] for i in range(m) for j in range(bs)]


def human_numbers_lm_dls(bs: int = 64, sl: int = 16, path: str | os.PathLike | None = None,
                         device: torch.device | str | None = None) -> tuple[DataLoaders, list[str]]:
    """The chapter's language-model `DataLoaders` over Human Numbers, and its vocabulary."""
    vocab, nums = human_numbers_tokens(path)
    n = (len(nums) - sl - 1 + sl - 1) // sl  # windows starting at 0, sl, 2*sl, ... < len-sl-1
    seqs = [(nums[i * sl:(i + 1) * sl], nums[i * sl + 1:(i + 1) * sl + 1]) for i in range(n)]
    cut = int(len(seqs) * 0.8)
    if cut < bs or len(seqs) - cut < bs:
        raise UserError(f"bs={bs} with sl={sl} is larger than the data allows "
                        f"({cut} training and {len(seqs) - cut} validation sequences); use a smaller bs")
    dls = DataLoaders.from_dsets(group_chunks(seqs[:cut], bs), group_chunks(seqs[cut:], bs),
                                 bs=bs, drop_last=True, shuffle=False, device=device)
    return dls, vocab
