"""Sweeps behind the short-budget recipe and the LR suggestion (issue 18): train one config at several
learning rates (or several configs), each for a fixed number of steps or a time budget, and print the
valid perplexity of a whole-split stateful pass at --eval-bs, the LR finder's suggestions, and tokens/s.

Run with nothing else on the machine (time budgets measure wall time):

  .venv/bin/python benchmarks/sweep_recipe.py --corpus ptb --steps 200 --lrs 5e-3 1e-2 2e-2 4e-2 \
      --set emb_sz=200 n_hid=400 n_layers=2 bs=64 bptt=70 --lr-find
  .venv/bin/python benchmarks/sweep_recipe.py --corpus ptb --budget 10 --lrs 2e-2 --preset budget

Each run starts from the same seed. `--steps` fits the one-cycle schedule to that many steps (a fixed amount
of work: the comparison does not depend on the machine's load); `--budget MINUTES` uses `TimeBudget`.
`--lr-find` runs the LR finder on a fresh learner first and prints every suggestion function's value, and
`--json FILE` appends each result (and the finder's curve) as one JSON line for later analysis.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import time
from pathlib import Path

import torch

from rnnkit.callbacks.throughput import Throughput
from rnnkit.config import TrainConfig
from rnnkit.run import build_dls, build_learner
from rnnkit.schedules import minimum, slide, steep, valley
from rnnkit.training.callback import Callback, TrainEvalCallback
from rnnkit.training.events import CancelFitException, CancelTrainException

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = {"ptb": "ptb", "wikitext-2": "wikitext-2", "human_numbers": None}


class StepCap(Callback):
    """Fit the schedule to exactly `n` training steps, then end the fit (a fixed amount of work)."""

    order = TrainEvalCallback.order + 1

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.steps = n, 0

    def before_epoch(self) -> None:
        if self.steps >= self.n:
            raise CancelFitException()

    def before_batch(self) -> None:
        if self.learn.training:
            if self.steps >= self.n:
                raise CancelTrainException()  # after_train still runs: Throughput counts the phase
            self.learn.pct_train = self.steps / self.n

    def after_batch(self) -> None:
        if self.learn.training:
            self.steps += 1


def parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def config(args: argparse.Namespace, lr: float) -> TrainConfig:
    values = dict(corpus=args.corpus, out="/tmp/rnnkit-sweep", lr=lr, seed=args.seed, **parse_set(args.set))
    if FOLDERS[args.corpus]:
        values["data"] = str(DATA / FOLDERS[args.corpus])
    if args.preset:
        from rnnkit.config import resolve_config

        cfg = resolve_config({}, {**values, "preset": args.preset,
                                  **({"time_budget": args.budget} if args.budget else {})})
        for k, v in values.items():
            setattr(cfg, k, v)
        return cfg
    return TrainConfig(**values)


def run_one(args: argparse.Namespace, lr: float) -> dict:
    torch.manual_seed(args.seed)
    cfg = config(args, lr)
    dls = build_dls(cfg)
    learn = build_learner(cfg, dls)
    cbs: list = []
    if args.steps:
        cbs.append(StepCap(args.steps))
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        if args.budget:
            learn.fit_one_cycle(10_000, lr, wd=cfg.wd, cbs=cbs, budget=args.budget * 60)
        else:
            learn.fit_one_cycle(10_000 if args.steps else cfg.epochs, lr, wd=cfg.wd, cbs=cbs)
    wall = time.perf_counter() - start
    tp = learn.get_cb(Throughput)
    tokens, secs = sum(tp.epoch_tokens), sum(tp.epoch_seconds)
    m = learn.evaluate_lm(bs=args.eval_bs)
    res = {"corpus": args.corpus, "lr": lr, "set": args.set, "preset": args.preset, "steps": args.steps,
           "budget": args.budget, "valid_ppl": m["perplexity"], "valid_loss": m["loss"], "acc": m["accuracy"],
           "tokens": tokens, "train_s": secs, "tok_s": tokens / secs if secs else 0.0, "wall_s": wall}
    if args.test:
        from rnnkit.data.corpora import read_corpus
        from rnnkit.data.lm_loader import LMDataLoader

        test = read_corpus(cfg.corpus, cfg.data)["test"]
        res["test_ppl"] = learn.evaluate_lm(dl=LMDataLoader(test, bs=args.eval_bs, seq_len=cfg.bptt))["perplexity"]
    return res


def find(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    cfg = config(args, 1e-3)
    learn = build_learner(cfg, build_dls(cfg))
    with learn.no_bar():
        res = learn.lr_find(show_plot=False, suggest_funcs=(valley, slide, minimum, steep))
    rec = learn.recorder
    return {"corpus": args.corpus, "set": args.set, "suggest": res._asdict(),
            "lrs": [float(x) for x in rec.lrs], "losses": [float(x) for x in rec.losses]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default="ptb", choices=list(FOLDERS))
    p.add_argument("--lrs", type=float, nargs="*", default=[])
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--budget", type=float, default=0.0, help="minutes")
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value")
    p.add_argument("--preset", default="")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-bs", type=int, default=10)
    p.add_argument("--test", action="store_true")
    p.add_argument("--lr-find", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.lr_find:
        f = find(args)
        print("lr_find:", "  ".join(f"{k} {v:.2e}" for k, v in f["suggest"].items()), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({"kind": "lr_find", **f}) + "\n")
    for lr in args.lrs:
        r = run_one(args, lr)
        rows.append(r)
        test = f"  test {r['test_ppl']:.1f}" if "test_ppl" in r else ""
        print(f"lr {lr:.1e}: valid ppl {r['valid_ppl']:.2f}{test}  acc {r['acc']:.4f}  {r['tokens']:,} tokens in "
              f"{r['train_s']:.0f}s ({r['tok_s']:,.0f} tok/s), wall {r['wall_s']:.0f}s", flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({"kind": "run", **r}) + "\n")
    if rows:
        best = min(rows, key=lambda r: r["valid_ppl"] if math.isfinite(r["valid_ppl"]) else math.inf)
        print(f"best lr {best['lr']:.1e} (valid ppl {best['valid_ppl']:.2f})")


if __name__ == "__main__":
    main()
