"""Penn Treebank train (929,589 tokens): read, tokenize, build the vocabulary and numericalize.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_ptb_numericalize.py [DATA_DIR]
(DATA_DIR defaults to ../shared/data beside the repository). Median of 5 runs per stage.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from rnnkit.data.numericalize import numericalize_tokens, read_text
from rnnkit.data.tokenize import PreTokenizedTokenizer
from rnnkit.data.vocab import Vocab


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = data / "ptb" / "ptb.train.txt.xz"
    stages: dict[str, list[float]] = {"read (xz)": [], "tokenize": [], "vocab": [], "numericalize": [], "total": []}
    tok = PreTokenizedTokenizer()
    for _ in range(5):
        t0 = time.perf_counter()
        text = read_text(path)
        t1 = time.perf_counter()
        tokens = tok.encode(text)
        t2 = time.perf_counter()
        vocab = Vocab.from_corpus_tokens(tokens)
        t3 = time.perf_counter()
        ids = numericalize_tokens(tokens, vocab)
        t4 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            stages[k].append(v)
    print(f"PTB train: {len(ids):,} tokens, vocabulary {len(vocab):,}, ids {ids.dtype}")
    for k, v in stages.items():
        print(f"  {k:14s} {1000 * statistics.median(v):8.1f} ms")


if __name__ == "__main__":
    main()
