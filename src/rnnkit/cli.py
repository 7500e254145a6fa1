"""Command line: `rnnkit train` trains a language model with one command."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `rnnkit` command."""
    p = argparse.ArgumentParser(prog="rnnkit", description="Train recurrent language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="train a language model (default: an LSTM on Human Numbers)",
                       description="Train the chapter-12 regularized LSTM (LMModel7 with dropout, "
                                   "AR/TAR and weight tying) on Human Numbers, generated locally.")
    t.add_argument("--epochs", type=_positive_int, default=15, help="number of epochs (default 15)")
    t.add_argument("--lr", type=_positive_float, default=1e-2, help="peak learning rate of the 1cycle schedule")
    t.add_argument("--wd", type=float, default=0.1, help="weight decay (default 0.1)")
    t.add_argument("--bs", type=_positive_int, default=64, help="batch size")
    t.add_argument("--bptt", type=_positive_int, default=16, help="sequence length")
    t.add_argument("--n-hidden", type=_positive_int, default=64, help="LSTM hidden size")
    t.add_argument("--n-layers", type=_positive_int, default=2, help="LSTM layers")
    t.add_argument("--dropout", type=float, default=0.4, help="output dropout")
    t.add_argument("--seed", type=int, default=42, help="random seed")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.add_argument("--out", type=Path, default=Path("runs/human_numbers"), help="output folder")
    return p


def _train(args: argparse.Namespace) -> int:
    import torch

    from rnnkit.data.human_numbers import human_numbers_lm_dls
    from rnnkit.losses import CrossEntropyLossFlat
    from rnnkit.metrics import accuracy
    from rnnkit.models.book import LMModel7
    from rnnkit.text.learner import TextLearner

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dls, vocab = human_numbers_lm_dls(bs=args.bs, sl=args.bptt)
    model = LMModel7(len(vocab), args.n_hidden, args.n_layers, args.dropout)
    learn = TextLearner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                        path=args.out, model_dir=".")
    start = time.time()
    learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd)
    saved = learn.save("model")
    loss, acc = learn.validate()
    print(f"valid_loss {loss:.4f}  accuracy {acc:.4f}  ({time.time() - start:.0f}s)")
    print(f"Saved the model to {saved}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rnnkit` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "train":
            return _train(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
