"""`rnnkit evaluate RUN`: a trained run's loss, perplexity and accuracy on a split, optionally by the AWD-LSTM
paper's protocol with the continuous cache pointer and dynamic evaluation (docs/evaluation.md)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rnnkit.errors import UserError

__all__ = ["add_evaluate_parser", "evaluate_command"]

_CACHE_OPTIONS = (("window", "--window"), ("theta", "--theta"), ("lambdah", "--lambda"))
_DYNAMIC_OPTIONS = (("dynamic_lr", "--dynamic-lr"), ("dynamic_decay", "--dynamic-decay"),
                    ("dynamic_method", "--dynamic-method"), ("dynamic_bptt", "--dynamic-bptt"))


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to the subparsers `sub`."""
    e = sub.add_parser("evaluate", help="loss, perplexity and accuracy of a run on a split",
                       description="Loss, perplexity and accuracy of a run on a split in one stateful pass. The "
                                   "AWD-LSTM paper's protocol: --split test --bs 1, with --cache and/or --dynamic.")
    e.add_argument("run", type=Path, metavar="RUN")
    e.add_argument("--split", default="valid", choices=["valid", "test", "train"])
    e.add_argument("--data", help="folder of the corpus, if it moved since training")
    e.add_argument("--bs", type=int, help="evaluation batch size (default: the run's; the paper's protocol: 1)")
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's setting)")
    g = e.add_argument_group("continuous cache pointer (Grave et al. 2017); defaults: the paper's for the corpus")
    g.add_argument("--cache", action="store_true", help="mix the model with a cache of its recent outputs")
    g.add_argument("--window", type=int, metavar="N",
                   help="how many earlier tokens the cache points to (PTB 500, WT2 3785)")
    g.add_argument("--theta", type=float, metavar="T", help="scale of the cache's dot products (PTB 1.0, WT2 0.6625)")
    g.add_argument("--lambda", dest="lambdah", type=float, metavar="L",
                   help="weight of the cache (PTB 0.1, WT2 0.1279)")
    g.add_argument("--tune-cache", action="store_true",
                   help="search theta and lambda on the valid split, then evaluate with the best (implies --cache)")
    g = e.add_argument_group("dynamic evaluation (Krause et al. 2018): adapt the weights to the text as it is read")
    g.add_argument("--dynamic", action="store_true", help="score each segment, then take a gradient step on it")
    g.add_argument("--dynamic-lr", type=float, metavar="LR", help="step size (default: sgd 0.5, rms 1e-3)")
    g.add_argument("--dynamic-decay", type=float, metavar="D",
                   help="pull back towards the trained weights per step (default 0.002)")
    g.add_argument("--dynamic-method", choices=["rms", "sgd"], help="update rule (default sgd)")
    g.add_argument("--dynamic-bptt", type=int, metavar="N", help="tokens per segment, one update each (default 10)")
    return e


def _check_options(args: argparse.Namespace) -> None:
    """The option mistakes, each with the option's name and the fix, before anything is loaded."""
    if args.bs is not None and args.bs < 1:
        raise UserError(f"--bs {args.bs}: the evaluation batch size must be at least 1")
    given = [flag for key, flag in _CACHE_OPTIONS if getattr(args, key) is not None]
    if given and not (args.cache or args.tune_cache):
        raise UserError(f"{given[0]} sets the cache pointer: add --cache (or --tune-cache)")
    if args.tune_cache and (args.theta is not None or args.lambdah is not None):
        raise UserError("--tune-cache searches theta and lambda: leave out --theta/--lambda, or drop --tune-cache")
    if args.window is not None and args.window < 1:
        raise UserError(f"--window {args.window}: the cache window must be at least 1 (earlier tokens it points to)")
    if args.theta is not None and not (math.isfinite(args.theta) and args.theta >= 0):
        raise UserError(f"--theta {args.theta}: must be a number >= 0 (0 makes the cache a bag of recent words)")
    if args.lambdah is not None and not 0 <= args.lambdah <= 1:
        raise UserError(f"--lambda {args.lambdah}: the cache's weight must be in [0, 1]")
    given = [flag for key, flag in _DYNAMIC_OPTIONS if getattr(args, key) is not None]
    if given and not args.dynamic:
        raise UserError(f"{given[0]} sets dynamic evaluation: add --dynamic")
    if args.dynamic_lr is not None and not (math.isfinite(args.dynamic_lr) and args.dynamic_lr > 0):
        raise UserError(f"--dynamic-lr {args.dynamic_lr}: the step size must be > 0")
    if args.dynamic_decay is not None and not 0 <= args.dynamic_decay < 1:
        raise UserError(f"--dynamic-decay {args.dynamic_decay}: must be in [0, 1) (0: no pull back to the trained "
                        "weights)")
    if args.dynamic_bptt is not None and args.dynamic_bptt < 1:
        raise UserError(f"--dynamic-bptt {args.dynamic_bptt}: a segment must have at least 1 token")


def _describe(m: dict[str, Any]) -> str:
    used = [f"bs {m['bs']}"]
    if m["cache"] is not None:
        c = m["cache"]
        used.append(f"cache window {c['window']} theta {c['theta']:g} lambda {c['lambdah']:g}")
    if m["dynamic"] is not None:
        d = m["dynamic"]
        used.append(f"dynamic {d['method']} lr {d['lr']:g} decay {d['decay']:g} bptt {d['bptt']}")
    return ", ".join(used)


def evaluate_command(args: argparse.Namespace) -> int:
    from rnnkit.run import RunError, load_run
    from rnnkit.text.cache_pointer import CacheConfig
    from rnnkit.text.dynamic_eval import DynamicEvalConfig
    from rnnkit.text.lm_eval import tune_cache

    _check_options(args)
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
    cache = None
    if args.cache or args.tune_cache:
        base = CacheConfig.for_corpus(cfg.corpus)
        cache = CacheConfig(window=args.window if args.window is not None else base.window,
                            theta=args.theta if args.theta is not None else base.theta,
                            lambdah=args.lambdah if args.lambdah is not None else base.lambdah)
    if args.tune_cache:
        assert cache is not None
        cache, table = tune_cache(learn, "valid", windows=(cache.window,), bs=args.bs)
        print(f"cache search on valid (window {cache.window}, bs {args.bs or cfg.bs}):")
        for row in table:
            print(f"  theta {row['theta']:<6g} lambda {row['lambdah']:<6g} perplexity {row['perplexity']:.3f}")
        print(f"best: theta {cache.theta:g} lambda {cache.lambdah:g}")
    dynamic = None
    if args.dynamic:
        opts = {"lr": args.dynamic_lr, "decay": args.dynamic_decay, "method": args.dynamic_method,
                "bptt": args.dynamic_bptt}
        dynamic = DynamicEvalConfig(**{k: v for k, v in opts.items() if v is not None})
    m = learn.evaluate(dl=dl, cache=cache, dynamic=dynamic)
    print(f"{args.split}: loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  "
          f"accuracy {m['accuracy']:.4f}  ({m['tokens']:,} tokens; {_describe(m)})")
    return 0
