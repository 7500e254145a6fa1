"""The `rnnkit` command: train, evaluate, generate and find a learning rate.

The command line stays thin: it parses options and calls `rnnkit.run`, and what it prints for a failure
depends on whose failure it is. A user mistake (a missing data folder, an empty corpus, a batch size
larger than the data, a config file that does not parse, a folder that is not a run, a vocabulary that
does not fit the weights, a device that is not there) raises `rnnkit.errors.UserError` where the input is
checked, mostly in the library; `main` prints it as one line, `rnnkit <command>: error: <message>`, and
exits with status 2, as argparse does for a mistyped option. The few checks only the command line can
make (`--n-words`, `--temperature`, `--resume` with other options, ...) live in the handlers below and
raise `UserError` too. Any other exception is a bug in rnnkit (or in code plugged into it): `main` does
not catch it, so Python prints its traceback and exits with status 1. Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn, Sequence

from rnnkit.cli_eval import add_evaluate_parser, evaluate_command
from rnnkit.cli_finetune import add_finetune_parser, finetune_command
from rnnkit.errors import UserError
from rnnkit.launch import DEFAULT_TIMEOUT_S

__all__ = ["main", "build_parser"]

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only options given on the command line override the config file
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default=S, help="human_numbers (default), ptb, wikitext-2, wikitext-103, "
                                                "tinyshakespeare, or folder (train.txt/valid.txt)")
    g.add_argument("--data", default=S, help="folder of the corpus files")
    g.add_argument("--bs", type=int, default=S, help="batch size (default 64)")
    g.add_argument("--bptt", type=int, default=S, help="sequence length (default 16)")
    g.add_argument("--random-bptt", action="store_true", default=S, help="AWD-LSTM's variable sequence length")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=S, help="model size: small (CPU, default), fastai, paper; or the AWD-LSTM "
                                               "paper's whole recipe: paper-ptb, paper-wt2 (docs/paper-recipe.md)")
    for name in ("emb-sz", "n-hid", "n-layers"):
        g.add_argument(f"--{name}", type=int, default=S, help=f"override the preset's {name}")
    g.add_argument("--drop-mult", type=float, default=S, help="scale all dropouts")
    for name in ("output-p", "hidden-p", "input-p", "embed-p", "weight-p"):
        g.add_argument(f"--{name}", type=float, default=S, help=f"override the preset's {name}")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=S, help="number of epochs (default 15)")
    g.add_argument("--time-budget", type=float, default=S, metavar="MINUTES",
                   help="train for MINUTES (validation not counted): the schedule is fitted to the steps that "
                        "fit, and --epochs becomes an upper bound")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (default 1e-2)")
    g.add_argument("--lr-find", action="store_true", default=S,
                   help="run the LR finder first and train at its `fall` suggestion")
    g.add_argument("--schedule", default=S, help="one_cycle (default), flat_cos or constant")
    g.add_argument("--wd", type=float, default=S, help="weight decay (default 0.1)")
    g.add_argument("--alpha", type=float, default=S, help="AR scale (default 2)")
    g.add_argument("--beta", type=float, default=S, help="TAR scale (default 1)")
    g.add_argument("--clip", type=float, default=S, help="gradient clipping norm")
    g.add_argument("--optimizer", default=S, help="adam (default) or sgd")
    g.add_argument("--ntasgd", action="store_true", default=S, help="NT-ASGD weight averaging (AWD-LSTM)")
    g.add_argument("--seed", type=int, default=S, help="random seed (default 42)")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads")
    g.add_argument("--precision", default=S, help="fp32 (default), bf16 or fp16 (autocast; fp16 with a GradScaler)")
    g.add_argument("--device", default=S, help="auto (default: CUDA when available, then MPS, then CPU), cpu, "
                                               "cuda, cuda:N or mps")
    g.add_argument("--checkpoint-every", type=int, default=S, help="also checkpoint every N batches")
    g.add_argument("--out", default=S, help="run folder (default runs/latest)")
    p.add_argument("--config", type=Path, help="TOML or YAML file of the same options (command line wins)")


def _add_process_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processes (README: Training on several processes or machines)")
    g.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine, each on bs/N "
                                                          "rows of every batch (default 1; under torchrun, leave out)")
    g.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                   help="torch.distributed backend (default auto: nccl on CUDA GPUs, else gloo)")
    g.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long a process waits for the others before the job fails (default {DEFAULT_TIMEOUT_S:g})")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `rnnkit` command."""
    p = _Parser(prog="rnnkit", description="Train, evaluate and sample recurrent language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    t = sub.add_parser("train", help="train a language model (default: AWD-LSTM on Human Numbers)",
                       description="Train an AWD-LSTM language model. With no arguments: Human Numbers "
                                   "(generated locally), a CPU-sized model, a few minutes on 2 cores.")
    _add_train_options(t)
    t.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--no-sample", action="store_true", help="do not print a generated sample at the end")
    _add_process_options(t)
    add_evaluate_parser(sub)
    add_finetune_parser(sub)
    g = sub.add_parser("generate", help="continue a text with a trained run")
    g.add_argument("run", type=Path, metavar="RUN")
    g.add_argument("prompt")
    g.add_argument("--n-words", type=int, default=40)
    g.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's setting)")
    f = sub.add_parser("lr-find", help="run the LR range test and write its plot",
                       description="Run the LR finder with the training options and write lr_find.png.")
    _add_train_options(f)
    return p


# Options that are not training settings: they say how to run, and config.json does not keep them.
_RUN_OPTIONS = ("command", "config", "resume", "overwrite", "no_sample", "nproc", "backend", "dist_timeout",
                "argv")


def _config(args: argparse.Namespace) -> Any:
    from rnnkit.config import load_config_file, resolve_config

    given = {k: v for k, v in vars(args).items() if k not in _RUN_OPTIONS}  # defaults < preset < file < these
    return resolve_config(load_config_file(args.config) if args.config else {}, given, file_source=str(args.config))


def _sample_prompt(learn: Any, cfg: Any) -> str:
    if cfg.corpus == "human_numbers":
        return "one thousand two hundred"
    x, _ = learn.dls.valid.one_batch()
    return learn.dls.decode(x[0][:8])


def _train_config(args: argparse.Namespace, say: bool = True) -> Any:
    """The config `rnnkit train` runs: the options' for a new run, the saved one for --resume; None when
    the run to resume has already finished (said when `say`)."""
    if args.resume is None:
        return _config(args)
    import json

    from rnnkit.config import config_from_mapping
    from rnnkit.run import RunError, is_run, run_state

    run = args.resume
    extra = [k for k in vars(args) if k not in (*_RUN_OPTIONS, "threads", "device")]
    if extra or args.config or args.overwrite:
        drop = extra[0].replace("_", "-") if extra else "config" if args.config else "overwrite"
        raise RunError(f"--resume continues {run} with its saved config; drop --{drop}")
    if not is_run(run):
        raise RunError(f"{run} is not a run folder (no rnnkit-run.json); nothing to resume")
    if run_state(run) == "done":
        if say:
            print(f"{run} already finished all its epochs: nothing to resume, and nothing was changed. "
                  "To train longer, start a new run with --out.")
        return None
    try:
        saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # missing, unreadable, not UTF-8 or not JSON
        raise RunError(f"{run / 'config.json'} is missing or unreadable ({e}); the run cannot be resumed, "
                       "start a new one with --out") from None
    cfg = config_from_mapping(saved, source=str(run / "config.json")).validate()
    cfg.out = str(run)
    if getattr(args, "threads", None):
        cfg.threads = args.threads
    if getattr(args, "device", None):  # a run may continue on another machine
        cfg.device = cfg.validate_device(args.device)
    return cfg


def _train(args: argparse.Namespace) -> int:
    from rnnkit import launch

    if launch.in_worker():  # one of the processes torchrun or `--nproc` started
        return _train_worker(args)
    nproc = 1 if args.nproc is None else args.nproc
    cfg = _train_config(args)
    if cfg is None:
        return 0
    launch.check_nproc(nproc, cfg.bs, cfg.device, args.dist_timeout)
    if nproc != 1:  # everything the processes would refuse is refused here, before any starts
        from rnnkit.run import check_run_folder
        from rnnkit.utils import resolve_device

        launch.resolve_backend(args.backend, resolve_device(cfg.device))
        if args.resume is None:
            check_run_folder(Path(cfg.out), args.overwrite)
        return launch.launch_local(args.argv, nproc, Path(cfg.out))
    _print_device(cfg)  # checks the device exists before a run folder is made
    if args.resume is None:
        from rnnkit.run import prepare_run_folder

        prepare_run_folder(Path(cfg.out), args.overwrite)
    return _run_training(args, cfg)


def _train_worker(args: argparse.Namespace) -> int:
    """`rnnkit train` as one of several processes: join the group, train (rank 0 writes and prints), leave."""
    from rnnkit import launch
    from rnnkit.distributed import is_rank0, num_distrib
    from rnnkit.utils import resolve_device

    if args.nproc is not None and args.nproc != launch.local_world_size():
        raise UserError(f"--nproc {args.nproc} in a process torchrun started with --nproc-per-node "
                        f"{launch.local_world_size()}: leave --nproc out under torchrun")
    cfg = _train_config(args, say=is_rank0())
    if cfg is None:
        return 0
    backend = launch.resolve_backend(args.backend, resolve_device(cfg.device))

    def body() -> int:
        if is_rank0():
            _print_device(cfg)
            n, bs = num_distrib(), cfg.bs
            print(f"processes: {n} (backend {backend}), each training on {bs // n} of the {bs} rows of every batch")
            if args.resume is None:
                from rnnkit.run import prepare_run_folder

                prepare_run_folder(Path(cfg.out), args.overwrite)  # the others wait inside run.train
        return _run_training(args, cfg)

    return launch.run_worker(body, backend, args.dist_timeout, cfg.threads)


def _run_training(args: argparse.Namespace, cfg: Any) -> int:
    """Train `cfg` into its run folder and report; only rank 0 prints when several processes train."""
    from rnnkit.distributed import is_rank0, num_distrib
    from rnnkit.run import train

    start = time.time()
    res = train(cfg, resume=args.resume is not None)
    if not is_rank0():
        return {"interrupted": EXIT_INTERRUPTED, "nan": EXIT_USAGE}.get(res["state"], 0)
    run = res["run"]
    nproc = f" --nproc {num_distrib()}" if num_distrib() > 1 else ""
    if res["state"] == "interrupted":
        print(f"Interrupted: saved a checkpoint in {res['checkpoint']}. Continue with: "
              f"rnnkit train --resume {run}{nproc}")
        return EXIT_INTERRUPTED
    if res["state"] == "nan":
        kept = f"the last good checkpoint is kept in {run / 'checkpoints'}" if (run / "checkpoints").exists() \
            else "no checkpoint had been saved yet"
        print(f"rnnkit train: error: the loss became NaN or infinite; training stopped and {kept}. "
              "Lower --lr or set --clip.", file=sys.stderr)
        return EXIT_USAGE
    m = res["metrics"]
    print(f"valid: loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  accuracy {m['accuracy']:.4f}  "
          f"({time.time() - start:.0f}s)")
    if "budget" in res:
        b = res["budget"]
        print(f"budget: {b['train_s']:.0f}s of {b['budget_s']:.0f}s trained ({b['steps']:,} steps, {b['tokens']:,} "
              f"tokens, {b['epochs']:.2f} epochs; stopped by {b['stopped_by']}); validation {b['valid_s']:.0f}s "
              "not counted")
    if "tokens_per_s" in res:
        print(f"speed: {res['tokens_per_s']:,.0f} tokens/s in the last epoch's training "
              f"({res['epoch_seconds']:.1f}s)")
    if not args.no_sample:
        prompt = _sample_prompt(res["learn"], cfg)
        print(f"sample: {res['learn'].predict(prompt, n_words=24, temperature=0.5, seed=cfg.seed)}")
    print(f"Saved the run to {run}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from rnnkit.run import load_run

    if args.n_words < 0:
        raise UserError(f"--n-words {args.n_words}: the number of words to generate must be >= 0")
    if not args.temperature >= 0:  # also refuses nan
        raise UserError(f"--temperature {args.temperature}: must be >= 0 (0 picks the likeliest word each time)")
    _, learn = load_run(args.run, need_data=False, device=args.device)
    print(learn.predict(args.prompt, n_words=args.n_words, temperature=args.temperature, seed=args.seed))
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from rnnkit.run import build_dls, build_learner

    cfg = _config(args)
    out = Path(cfg.out if "out" in vars(args) else "runs/lr_find")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out for lr_find.png")
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    _print_device(cfg)
    learn = build_learner(cfg, build_dls(cfg))
    res = learn.lr_find(show_plot=True, suggest_funcs=_suggest_funcs())
    plt.gcf().savefig(out / "lr_find.png")
    print("  ".join(f"{k}: {v:.2e}" for k, v in res._asdict().items()))
    print(f"Saved the plot to {out / 'lr_find.png'}")
    return 0


def _print_device(cfg: Any) -> None:
    from rnnkit.utils import describe_device, resolve_device

    print(f"device: {describe_device(resolve_device(cfg.device))}, precision {cfg.precision}")


def _suggest_funcs() -> tuple:
    from rnnkit.schedules import fall, knee, minimum, slide, steep, valley

    return (fall, valley, slide, minimum, steep, knee)


def _set_up_memory() -> None:
    """This process only trains or evaluates: glibc keeps freed blocks (up to 1 GiB) for the next step
    instead of mapping and zero-filling them afresh, and the ReleaseFreedMemory callback that every
    learner of `run.build_learner` has bounds what it keeps, so resident memory stays flat (issue 13)."""
    from rnnkit.utils import reuse_freed_memory

    reuse_freed_memory(max_block=1 << 30, keep_free=1 << 30)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rnnkit` console script: 0 when done, 2 for a user mistake (one line on stderr),
    130 when interrupted; any other exception propagates with its traceback (exit status 1)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc N` starts N processes with the same command line
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    os.environ.setdefault("MPLBACKEND", "Agg")
    _set_up_memory()

    # TerminateOnNaNCallback warns; the command prints its own one-line message instead.
    warnings.filterwarnings("ignore", message="Loss is .* training stopped", category=RuntimeWarning)
    handlers = {"train": _train, "evaluate": evaluate_command, "finetune": finetune_command, "generate": _generate,
                "lr-find": _lr_find}
    try:
        return handlers[args.command](args)
    except UserError as e:  # raised where the input was checked; anything else is a bug and keeps its traceback
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line, always
        print(f"rnnkit {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    from rnnkit.launch import run_and_exit

    run_and_exit(main)
