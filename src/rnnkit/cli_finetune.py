"""`rnnkit finetune RUN`: the AWD-LSTM paper's fine-tuning step on a finished run (`rnnkit.finetune`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_finetune_parser", "finetune_command"]


def add_finetune_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `finetune` subcommand to the subparsers `sub`."""
    f = sub.add_parser(
        "finetune", help="continue a finished run with weight averaging from the first step (AWD-LSTM's finetune)",
        description="Load the run's best weights, train again averaging the weights from the first step, keep the "
                    "best averaged weights, and stop when the validation loss is worse than the best before the "
                    "last N epochs. Training's weights stay in model-train/best-train.safetensors; "
                    "docs/paper-recipe.md says what changes in the run folder.")
    f.add_argument("run", type=Path, metavar="RUN")
    f.add_argument("--epochs", type=int, help="the most epochs to run (default: the run's epochs)")
    f.add_argument("--lr", type=float, help="learning rate, constant (default: the run's)")
    f.add_argument("--nonmono", type=int, default=5, metavar="N",
                   help="stop when the validation loss is worse than the best before the last N epochs (default 5)")
    f.add_argument("--data", help="folder of the corpus, if it moved since training")
    f.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's setting)")
    f.add_argument("--threads", type=int, help="torch CPU threads (default: the run's setting)")
    return f


def finetune_command(args: argparse.Namespace) -> int:
    """Run `rnnkit.finetune.finetune` with the options and report; 0 when done, 2 for a NaN loss."""
    from rnnkit.config import TrainConfig
    from rnnkit.finetune import finetune

    if args.device is not None:
        TrainConfig.validate_device(args.device)
    start = time.time()
    res = finetune(args.run, epochs=args.epochs, lr=args.lr, nonmono=args.nonmono, data=args.data,
                   device=args.device, threads=args.threads)
    run = res["run"]
    if res["state"] == "nan":
        print(f"rnnkit finetune: error: the loss became NaN or infinite; finetuning stopped, and the best weights "
              f"are kept in {run / 'model.safetensors'}. Lower --lr.", file=sys.stderr)
        return 2
    why = (f"the valid loss was worse than the best before the last {args.nonmono} epochs" if
           res["stopped"] == "non-monotone" else "the epoch limit")
    best = (f"best valid loss {res['best_valid_loss']:.4f} at epoch {res['best_epoch']}" if res["improved"] else
            f"no epoch beat the start's valid loss {res['start_valid_loss']:.4f}; the start's weights are kept")
    print(f"finetune stopped after {res['epochs_run']} epochs ({why}): {best}")
    m = res["metrics"]
    print(f"valid: loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  accuracy {m['accuracy']:.4f}  "
          f"({time.time() - start:.0f}s)")
    kept = " and ".join(str(run / f) for f in ("model-train.safetensors", "best-train.safetensors")
                        if (run / f).is_file())
    print(f"Saved the finetuned weights to {run / 'model.safetensors'}; training's are kept in {kept}")
    return 0
