"""Runs: build data, model and learner from a `TrainConfig`, train with checkpoints into a run
folder, and load a run folder back to evaluate or generate.

A run folder holds::

    rnnkit-run.json     marks the folder as a run (format version, state: running/done/..., and after
                        `rnnkit finetune` its stage)
    config.json         the configuration actually used; the one home of the run's lr (an LR-finder
                        suggestion is written here before training, and a resume reads it from here)
    vocab.json          the vocabulary
    model.safetensors   the final weights (written at the end of training; the best finetuned ones after
                        `rnnkit finetune`, which keeps training's as model-train.safetensors)
    best.safetensors    the weights of the epoch with the lowest validation loss (`SaveBestWeights`;
                        the averaged ones once NT-ASGD averages), what `rnnkit finetune` starts from
    checkpoints/        LATEST + ckpt-N/ (weights, optimizer, RNG, loader and schedule position)
    metrics.csv         one row per epoch (after a finetune, a `stage` column tells train from finetune)
    finetune.json       the settings and results of each `rnnkit finetune` of the run
    loss.png, lr_schedule.png, lr_find.png

With several processes (`rnnkit train --nproc N`, torchrun) one writer keeps the folder whole: rank 0
alone creates it and writes every file above, and the others set themselves up only after it has
(`rank0_first`), so they find the vocabulary of a resumed run. Every process trains, takes part in each
checkpoint (`Checkpointer`) and in the final evaluation. The folder must be one that every machine sees.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from rnnkit.callbacks.budget import TimeBudget
from rnnkit.callbacks.best import SaveBestWeights
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.callbacks.clip import GradientClip
from rnnkit.callbacks.csv_logger import CSVLogger
from rnnkit.callbacks.memory import ReleaseFreedMemory
from rnnkit.callbacks.ntasgd import NTASGD
from rnnkit.callbacks.rnn import RNNTrainer
from rnnkit.callbacks.throughput import Throughput
from rnnkit.callbacks.tracker import TerminateOnNaNCallback
from rnnkit.checkpoint import (
    CheckpointError, latest_checkpoint, load_checkpoint, load_weights, model_state_for_save,
    restore_checkpoint,
)
from rnnkit.config import TrainConfig, config_from_mapping
from rnnkit.data.corpora import read_corpus
from rnnkit.data.text import TextDataLoaders
from rnnkit.data.tokenize import Tokenizer
from rnnkit.data.vocab import Vocab
from rnnkit.distributed import is_rank0, num_distrib, rank0_first
from rnnkit.launch import check_nproc
from rnnkit.models.awd_lstm import AWD_LSTM_CONFIGS, AWDLSTMConfig
from rnnkit.optim.recipes import SGD, Adam
from rnnkit.schedules import fall, valley
from rnnkit.presets import model_of_preset
from rnnkit.errors import UserError
from rnnkit.text.learner import LMLearner, language_model_learner
from rnnkit.utils import atomic_write, resolve_device

__all__ = ["RunError", "RUN_MARKER", "check_run_folder", "prepare_run_folder", "build_learner", "train", "load_run",
           "run_state", "model_config"]

log = logging.getLogger(__name__)
RUN_MARKER = "rnnkit-run.json"
_TOKENIZER_OF = {"human_numbers": "whitespace", "ptb": "pretokenized", "wikitext-2": "pretokenized",
                 "wikitext-103": "pretokenized", "tinyshakespeare": "char", "folder": "word"}


class RunError(UserError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def model_config(cfg: TrainConfig) -> AWDLSTMConfig:
    """The AWD-LSTM config of a training config: the preset with the overrides applied."""
    base = AWD_LSTM_CONFIGS[model_of_preset(cfg.preset, cfg.corpus)]
    over = {k: getattr(cfg, k) for k in ("emb_sz", "n_hid", "n_layers", "output_p", "hidden_p",
                                         "input_p", "embed_p", "weight_p") if getattr(cfg, k) is not None}
    return dataclasses.replace(base, **over)


def _write_marker(run: Path, state: str) -> None:
    atomic_write(run / RUN_MARKER, json.dumps({"format": "rnnkit-run", "version": 1, "state": state}))


def is_run(path: Path) -> bool:
    """Whether `path` is a run folder."""
    return (path / RUN_MARKER).is_file()


def run_state(path: Path) -> str | None:
    """A run folder's state: 'running', 'interrupted', 'nan' or 'done' (None if its marker is unreadable)."""
    try:
        return str(json.loads((path / RUN_MARKER).read_text(encoding="utf-8")).get("state"))
    except (OSError, ValueError, AttributeError):
        return None


def check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse `out` for a new run if it is a file, or holds another run or other files and `overwrite` does
    not apply; change nothing (`prepare_run_folder` does the rest)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            what = "another run" if is_run(out) else "other files"
            raise RunError(f"{out} holds {what}; pass --overwrite to replace it, --resume {out} to "
                           "continue it, or choose another --out")
        if not is_run(out):
            raise RunError(f"{out} is not a run folder; --overwrite only replaces runs. Choose another --out")


def prepare_run_folder(out: Path, overwrite: bool) -> None:
    """Create `out` for a new run; refuse a folder that holds another run or other files unless asked."""
    check_run_folder(out, overwrite)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run folder {out}: {e.strerror or e}; choose another --out") from None


def build_dls(cfg: TrainConfig, vocab: Vocab | None = None) -> TextDataLoaders:
    """The corpus of `cfg` as language-model loaders; `vocab` (a saved run's) must match the corpus's."""
    corpus = read_corpus(cfg.corpus, cfg.data)
    if vocab is not None:
        try:
            vocab.check_matches(corpus.vocab, what="corpus read now")
        except UserError as e:
            where = cfg.data if cfg.data else f"{cfg.corpus}'s default folder"
            raise RunError(f"the run's vocabulary does not match the corpus at {where}: {e}") from None
    return TextDataLoaders.from_corpus(corpus, path=cfg.out, bs=cfg.bs, seq_len=cfg.bptt,
                                       random_bptt=cfg.random_bptt, seed=cfg.seed, device=resolve_device(cfg.device))


def build_learner(cfg: TrainConfig, dls: Any) -> LMLearner:
    """The language-model learner `cfg` describes, without training callbacks."""
    opt_func = Adam if cfg.optimizer == "adam" else partial(SGD, mom=0.0)
    cbs: list[Any] = [TerminateOnNaNCallback(), ReleaseFreedMemory(),  # flat resident memory (issue 13)
                      Throughput()]
    if cfg.clip:
        cbs.append(GradientClip(cfg.clip))
    if cfg.random_bptt:
        cbs.append(RNNTrainer(None, bptt=cfg.bptt))  # lr scaled by seq_len/bptt; AR/TAR come from TextLearner
    if cfg.ntasgd:
        cbs.append(NTASGD())
    learn = language_model_learner(dls, config=model_config(cfg), drop_mult=cfg.drop_mult, alpha=cfg.alpha,
                                   beta=cfg.beta, wd=cfg.wd, opt_func=opt_func, lr=cfg.lr, path=cfg.out,
                                   model_dir=".", cbs=cbs)
    learn.drop_grads = True  # faster (see Learner._zero_grad); no callback here reads p.grad after a step
    if cfg.precision == "bf16":
        learn.to_bf16()
    elif cfg.precision == "fp16":
        learn.to_fp16()
    return learn


def _fit(learn: LMLearner, cfg: TrainConfig, start_epoch: int) -> TimeBudget | None:
    """Fit with `cfg`'s schedule at `learn.lr` (the config's), from `start_epoch` (the checkpoint's, on resume);
    with a time budget, the schedule is fitted to it (`cfg.epochs` is then an upper bound): its callback,
    which holds the report of the budget used, is returned."""
    budget = None if cfg.time_budget is None else TimeBudget(cfg.time_budget * 60)
    cbs = [] if budget is None else [budget]
    if cfg.schedule == "one_cycle":
        learn.fit_one_cycle(cfg.epochs, wd=cfg.wd, start_epoch=start_epoch, cbs=cbs)
    elif cfg.schedule == "flat_cos":
        learn.fit_flat_cos(cfg.epochs, wd=cfg.wd, start_epoch=start_epoch, cbs=cbs)
    else:
        learn.fit(cfg.epochs, wd=cfg.wd, start_epoch=start_epoch, cbs=cbs)
    return budget


def _set_config_lr(run: Path, lr: float) -> None:
    """Write `lr` into the run's config.json (atomically), leaving every other saved value as it is."""
    path = run / "config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["lr"] = lr
    atomic_write(path, json.dumps(saved, indent=2, sort_keys=True))


def _find_lr(learn: LMLearner, run: Path, log_fn: Any) -> float:
    """The LR finder's `fall` suggestion (rnnkit's: within 2x of a sweep's best on Human Numbers, PTB and
    WikiText-2, where fastai's `valley` is 10-100x lower; README "Training for a time budget"); rank 0
    writes its plot to the run folder and config.json.

    With several processes every one runs the finder (its trial fit is distributed, so all find the
    same losses and the same lr)."""
    import matplotlib.pyplot as plt

    with learn.no_bar():
        res = learn.lr_find(show_plot=is_rank0(), suggest_funcs=(fall, valley))
    if is_rank0():
        plt.gcf().savefig(run / "lr_find.png")
        plt.close("all")
    if not math.isfinite(res.fall):
        raise RunError("the LR finder could not suggest a learning rate; give --lr instead")
    lr = float(res.fall)
    if is_rank0():
        _set_config_lr(run, lr)  # before training: a resume reads the lr from config.json
        log_fn(f"lr_find: using lr {lr:.2e} (fall; fastai's valley: {res.valley:.2e}); plot in {run / 'lr_find.png'}")
    return lr


def _lr_of_older_checkpoint(run: Path, cfg: TrainConfig, trainer_state: dict[str, Any]) -> None:
    """Adopt the lr that a checkpoint written before config.json became the lr's one home carries in
    `extra['lr']`.

    Those versions kept an LR-finder suggestion only there (config.json held the lr given before the
    finder ran), so that value is the one the run trained with: it goes into config.json, which holds the
    run's lr from then on. Newer checkpoints carry no lr and change nothing here."""
    extra = trainer_state.get("extra")
    old = extra.get("lr") if isinstance(extra, dict) else None
    if old is not None and float(old) != cfg.lr:
        cfg.lr = float(old)
        if is_rank0():
            _set_config_lr(run, cfg.lr)


def _save_plots(learn: LMLearner, run: Path) -> None:
    import matplotlib.pyplot as plt

    rec = learn.recorder
    if len(rec.losses) > 1:
        fig = rec.plot_loss(skip_start=0)
        fig.savefig(run / "loss.png")
        plt.close(fig)
    if rec.lrs:
        fig = rec.plot_sched()
        fig.savefig(run / "lr_schedule.png")
        plt.close(fig)


def _set_up(cfg: TrainConfig, resume: bool) -> tuple[LMLearner, dict[str, Any] | None]:
    """The learner and (on resume) the restored checkpoint's trainer state; a new run's files written."""
    run = Path(cfg.out)
    if num_distrib() > 1:
        check_nproc(num_distrib(), cfg.bs, cfg.device)
        if not is_rank0() and not is_run(run):
            raise RunError(f"cannot see the run folder {run} that rank 0 prepared: with several machines, --out "
                           "must be a folder they all see (a shared filesystem)")
    ck = latest_checkpoint(run / "checkpoints") if resume else None  # before the corpus is read: fail fast
    torch.manual_seed(cfg.seed)
    dls = build_dls(cfg, Vocab.load(run / "vocab.json") if resume else None)
    if not resume and is_rank0():
        atomic_write(run / "config.json", cfg.to_json())
        dls.vocab.save(run / "vocab.json")
        _write_marker(run, "running")
    learn = build_learner(cfg, dls)
    learn.model.to(dls.device)  # before any optimizer state is loaded, so that state lands there too
    return learn, (restore_checkpoint(learn, ck) if ck is not None else None)


def _world_change(saved: int, world: int, bs: int, mid_epoch: bool) -> str:
    """What a resume on another number of processes changes, in one line ('' when nothing does)."""
    if saved == world:
        return ""
    hidden = " and the rest of the interrupted epoch starts from a reset hidden state" if mid_epoch else ""
    return (f"note: resuming a checkpoint of {saved} process(es) on {world}: the data order, weights and "
            f"optimizer state are the same, but each process now trains on {bs // world} rows of every batch "
            f"instead of {bs // saved}, so the random draws (dropout masks) differ from the {saved}-process "
            f"run's{hidden}; the losses will not match an uninterrupted {saved}-process run exactly")


def train(cfg: TrainConfig, resume: bool = False, log_fn: Any = print) -> dict[str, Any]:
    """Train as `cfg` says into the run folder `cfg.out`; with `resume`, continue from its last checkpoint.

    In a process group of several processes every process calls it; rank 0 writes the run folder and
    logs through `log_fn`. Returns a summary: state ('done', 'interrupted' or 'nan'), final metrics, paths.
    """
    run = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    learn, trainer_state = rank0_first(_set_up, cfg, resume)  # rank 0 reads and writes first
    world = num_distrib()
    if trainer_state is not None:
        _lr_of_older_checkpoint(run, cfg, trainer_state)
        change = _world_change(trainer_state.get("world_size", 1), world, cfg.bs, trainer_state["batch"] > 0)
        if is_rank0():
            _keep_rows_before(run / "metrics.csv", trainer_state["epoch"])
            if change:
                log_fn(change)
    ckpt = Checkpointer(run / "checkpoints", every_n_batches=cfg.checkpoint_every, resume=trainer_state)
    with learn.distrib_ctx() if world > 1 else nullcontext():  # DDP and each process's rows, during fits
        if trainer_state is None and cfg.lr_find:
            cfg.lr = _find_lr(learn, run, log_fn)
        learn.lr = cfg.lr
        learn.add_cbs([CSVLogger("metrics.csv", append=resume), SaveBestWeights(), ckpt])  # in learn.path: the run
        budget = _fit(learn, cfg, 0 if trainer_state is None else trainer_state["epoch"])
    state = "interrupted" if ckpt.interrupted else "nan" if learn.nan_stopped else "done"
    summary: dict[str, Any] = {"state": state, "run": run, "checkpoint": ckpt.last_path, "lr": cfg.lr}
    speed = learn.get_cb(Throughput)
    if speed is not None and speed.epoch_seconds:
        summary["tokens_per_s"], summary["epoch_seconds"] = speed.tokens_per_s[-1], speed.epoch_seconds[-1]
    if budget is not None:
        summary["budget"] = budget.report()
    if state == "done":
        if is_rank0():
            atomic_save_weights(learn, run / "model.safetensors")
            _save_plots(learn, run)
        summary["metrics"] = learn.evaluate_lm()  # with several processes, all take part
    if is_rank0():
        _write_marker(run, state)
    summary["learn"] = learn
    return summary


def _keep_rows_before(csv_path: Path, epoch: int) -> None:
    """Drop metrics.csv rows of epochs from `epoch` on: a run killed after writing an epoch's row but before
    that epoch's checkpoint resumes the epoch from an earlier checkpoint and writes the row again."""
    if not csv_path.is_file():
        return
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit()
                        and int(ln.split(",", 1)[0]) < epoch]
    if kept != lines:
        atomic_write(csv_path, "".join(kept))


def atomic_save_weights(learn: LMLearner, path: Path) -> None:
    """The model's weights as safetensors, written atomically (`utils.atomic_write`)."""
    from safetensors.torch import save

    atomic_write(path, save(model_state_for_save(learn.model)))


def load_run(run: Path, data: str | None = None, need_data: bool = True,
             device: str | None = None) -> tuple[TrainConfig, LMLearner]:
    """A trained run's config and learner (final weights, else the last checkpoint's), on `device`
    (default: the run's own setting, `auto` unless it was trained with `--device`)."""
    if not run.is_dir() or not is_run(run):
        raise RunError(f"{run} is not a run folder (no {RUN_MARKER}); give the --out folder of `rnnkit train`")
    try:
        cfg = config_from_mapping(json.loads((run / "config.json").read_text(encoding="utf-8")),
                                  source=str(run / "config.json"))
    except (OSError, ValueError) as e:
        raise RunError(f"{run / 'config.json'} is missing or unreadable: {e}") from None
    cfg.validate()
    if data is not None:
        cfg.data = data
    if device is not None:
        cfg.device = device
    cfg.out = str(run)
    try:
        vocab = Vocab.load(run / "vocab.json")
    except (OSError, ValueError) as e:
        raise RunError(f"{run / 'vocab.json'} is missing or unreadable: {e}") from None
    if need_data:
        dls: Any = build_dls(cfg, vocab)
    else:
        dls = SimpleNamespace(vocab=vocab, tokenizer=Tokenizer.from_name(_TOKENIZER_OF[cfg.corpus]),
                              path=run, train=[], valid=[], device=resolve_device(cfg.device))
    learn = build_learner(cfg, dls)
    final = run / "model.safetensors"
    if final.is_file():
        from safetensors.torch import load_file

        try:
            weights = load_file(str(final))
        except Exception as e:
            raise CheckpointError(f"{final} is corrupt or truncated ({e}); train again or use a checkpoint") from e
    else:
        weights, _, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    load_weights(learn.model, weights, what=f"saved model of {run}")
    learn.model.to(dls.device)
    return cfg, learn
