"""`rnnkit evaluate RUN`: a trained run's loss, perplexity and accuracy on a split."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rnnkit.errors import UserError

__all__ = ["add_evaluate_parser", "evaluate_command"]


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to the subparsers `sub`."""
    e = sub.add_parser("evaluate", help="loss, perplexity and accuracy of a run on a split")
    e.add_argument("run", type=Path, metavar="RUN")
    e.add_argument("--split", default="valid", choices=["valid", "test", "train"])
    e.add_argument("--data", help="folder of the corpus, if it moved since training")
    e.add_argument("--bs", type=int, help="evaluation batch size (default: the run's)")
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's setting)")
    return e


def evaluate_command(args: argparse.Namespace) -> int:
    from rnnkit.run import RunError, load_run

    if args.bs is not None and args.bs < 1:
        raise UserError(f"--bs {args.bs}: the evaluation batch size must be at least 1")
    cfg, learn = load_run(args.run, data=args.data, device=args.device)
    if args.split == "test":
        from rnnkit.data.lm_loader import LMDataLoader
        from rnnkit.data.corpora import read_corpus

        corpus = read_corpus(cfg.corpus, cfg.data)
        if "test" not in corpus.splits:
            raise RunError(f"corpus {cfg.corpus} has no test split; use --split valid")
        dl = LMDataLoader(corpus["test"], bs=args.bs if args.bs is not None else cfg.bs, seq_len=cfg.bptt)
    else:
        dl = learn.dls.train.new(shuffle=False, random_bptt=False) if args.split == "train" else learn.dls.valid
        if args.bs is not None:
            dl = dl.new(bs=args.bs)
    m = learn.evaluate_lm(dl=dl)
    print(f"{args.split}: loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  "
          f"accuracy {m['accuracy']:.4f}  ({m['tokens']:,} tokens)")
    return 0
