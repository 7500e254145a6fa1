"""Presets: the AWD-LSTM paper's recipe field by field, the layering defaults < preset < file < command line,
table-driven entries (dicts and functions), and runs that keep their resolved values."""
from __future__ import annotations

import json
import random

import pytest
import torch

import rnnkit.run as run_mod
from rnnkit import cli
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.config import ConfigError, TrainConfig, resolve_config
from rnnkit.models.awd_lstm import AWD_LSTM_CONFIGS
from rnnkit.presets import PRESET_TABLE, PRESETS, Preset, model_of_preset, preset_values
from rnnkit.run import model_config
from rnnkit.training.callback import Callback

# Merity et al. 2017, section 5 (salesforce/awd-lstm-lm main.py for the weight decay), in rnnkit's names.
PAPER = dict(emb_sz=400, n_hid=1150, n_layers=3, hidden_p=0.3, output_p=0.4, embed_p=0.1, weight_p=0.5,
             drop_mult=1.0, bptt=70, random_bptt=True, optimizer="sgd", lr=30.0, schedule="constant", wd=1.2e-6,
             clip=0.25, alpha=2.0, beta=1.0, ntasgd=True, epochs=750)
PER_CORPUS = {"paper-ptb": dict(corpus="ptb", bs=40, input_p=0.4),
              "paper-wt2": dict(corpus="wikitext-2", bs=80, input_p=0.65)}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_HOME", str(tmp_path / "home"))
    n = torch.get_num_threads()  # the run below trains on one thread (threads = 1): quickest on a busy machine
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["paper-ptb", "paper-wt2"])
def test_paper_presets_set_every_value_of_the_papers_recipe(name):
    cfg = resolve_config({}, {"preset": name, "data": "corpus"})
    expected = {**PAPER, **PER_CORPUS[name]}
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.preset == name
    untouched = {"seed", "threads", "precision", "device", "checkpoint_every", "out", "time_budget", "lr_find"}
    assert {k: getattr(cfg, k) for k in untouched} == {k: getattr(TrainConfig(), k) for k in untouched}
    model = model_config(cfg)  # what the run builds: the paper's sizes, tied decoder, these dropouts
    assert (model.emb_sz, model.n_hid, model.n_layers, model.tie_weights) == (400, 1150, 3, True)
    assert (model.input_p, model.hidden_p, model.output_p, model.embed_p, model.weight_p) == \
        (expected["input_p"], 0.3, 0.4, 0.1, 0.5)


def test_model_size_presets_still_set_only_the_model():
    assert PRESETS == ("small", "fastai", "paper", "paper-ptb", "paper-wt2", "budget")
    for name in ("small", "fastai", "paper"):
        assert resolve_config({}, {"preset": name}) == TrainConfig(preset=name)
        assert model_of_preset(name) == name
        assert model_config(TrainConfig(preset=name)) == AWD_LSTM_CONFIGS[name]
    assert model_of_preset("paper-ptb") == model_of_preset("paper-wt2") == "paper"


def test_precedence_is_defaults_then_preset_then_file_then_command_line():
    file = {"preset": "paper-ptb", "data": "d", "bs": 20, "hidden_p": 0.25, "lr": 10.0}
    cfg = resolve_config(file, {"lr": 5.0, "seed": 141})
    assert (cfg.epochs, cfg.optimizer, cfg.corpus) == (750, "sgd", "ptb")  # preset over the defaults
    assert (cfg.bs, cfg.hidden_p) == (20, 0.25)  # the file over the preset
    assert (cfg.lr, cfg.seed) == (5.0, 141)  # the command line over the file
    cfg = resolve_config(file, {"preset": "paper-wt2"})  # the command line names another preset
    assert (cfg.preset, cfg.corpus, cfg.input_p, cfg.bs, cfg.lr) == ("paper-wt2", "wikitext-2", 0.65, 20, 10.0)
    assert resolve_config({}, {"bs": 8}) == TrainConfig(bs=8)  # no preset named: the default, small


def test_an_unknown_preset_is_refused_naming_the_valid_ones(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="preset='huge' is not a preset; use one of small, fastai, paper, "
                                          "paper-ptb, paper-wt2, budget"):
        resolve_config({"preset": "huge"}, {})
    with pytest.raises(ConfigError, match="c.toml: unknown key 'presett'"):  # a typo is named where it is
        resolve_config({"presett": "paper-ptb"}, {}, file_source="c.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    assert cli.main(["train", "--preset", "paper_ptb"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "rnnkit train: error: config: preset='paper_ptb' is not a preset; use one of small, fastai, paper, "
        "paper-ptb, paper-wt2, budget"]


def test_a_preset_entry_may_be_a_function_of_the_values_given_without_it(monkeypatch):
    seen = []

    def budget(given):
        seen.append(dict(given))
        return {"epochs": 100 if given["time_budget"] else 3, "bs": 16 if given["corpus"] == "human_numbers" else 64}

    monkeypatch.setitem(PRESET_TABLE, "quick", Preset("small", budget))
    cfg = resolve_config({"preset": "quick", "time_budget": 2.0}, {"bs": 8})
    assert (cfg.preset, cfg.epochs, cfg.bs, cfg.time_budget) == ("quick", 100, 8, 2.0)
    assert seen[0]["time_budget"] == 2.0 and seen[0]["bs"] == 8 and seen[0]["epochs"] == 15  # file + line + defaults
    assert resolve_config({}, {"preset": "quick"}).epochs == 3
    monkeypatch.setitem(PRESET_TABLE, "broken", Preset("small", {"epoch": 3}))
    with pytest.raises(ConfigError, match="preset 'broken': unknown key 'epoch'; did you mean 'epochs'"):
        resolve_config({}, {"preset": "broken"})
    monkeypatch.setitem(PRESET_TABLE, "loop", Preset("small", {"preset": "paper"}))
    with pytest.raises(ValueError, match="must not name a preset"):
        preset_values("loop", {})


def _ptb_folder(path):
    """A tiny corpus in Penn Treebank's layout (ptb.{train,valid,test}.txt), seeded."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    path.mkdir()
    for split, n_lines in (("train", 300), ("valid", 60), ("test", 60)):
        lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(n_lines)]
        (path / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")


class _InterruptAfterFirstEpoch(Callback):
    """Act as a SIGINT at the first training batch of epoch 1 of the fit with a Checkpointer."""

    def after_batch(self) -> None:
        ckpt = self.learn.get_cb(Checkpointer)
        if ckpt is not None and self.learn.training and self.learn.epoch == 1 and self.learn.iter == 0:
            ckpt.interrupted = True


def test_a_run_keeps_the_resolved_values_and_resume_does_not_apply_the_preset_again(tmp_path, monkeypatch, capsys):
    _ptb_folder(tmp_path / "ptb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    (tmp_path / "c.toml").write_text('preset = "paper-ptb"\ndata = "ptb"\nemb_sz = 8\nn_hid = 8\nn_layers = 1\n'
                                     'bs = 4\nepochs = 2\nthreads = 1\n')
    build = run_mod.build_learner
    monkeypatch.setattr(run_mod, "build_learner", lambda cfg, dls: build(cfg, dls).add_cb(_InterruptAfterFirstEpoch()))
    rc = cli.main(["train", "--config", "c.toml", "--lr", "2", "--out", "r", "--no-sample"])
    assert rc == 130, capsys.readouterr()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    expected = {**PAPER, **PER_CORPUS["paper-ptb"], "emb_sz": 8, "n_hid": 8, "n_layers": 1, "bs": 4, "epochs": 2,
                "lr": 2.0, "preset": "paper-ptb", "data": "ptb"}
    assert {k: saved[k] for k in expected} == expected
    # The preset changes after the run started: the resume trains with the values the run saved.
    monkeypatch.setitem(PRESET_TABLE, "paper-ptb", Preset("paper", {"bs": 2, "epochs": 9, "lr": 0.1}))
    monkeypatch.setattr(run_mod, "build_learner", build)
    assert cli.main(["train", "--resume", "r", "--no-sample"]) == 0, capsys.readouterr()
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == saved
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    assert (tmp_path / "r" / "best.safetensors").is_file()


def test_a_time_budget_without_a_preset_gets_the_budget_recipe():
    cfg = resolve_config({}, {"time_budget": 10.0, "corpus": "ptb", "data": "corpus"})
    assert cfg.preset == "budget"
    assert {k: getattr(cfg, k) for k in ("emb_sz", "n_hid", "n_layers", "schedule")} == \
        {k: v for k, v in preset_values("budget", {"corpus": "ptb"}).items()
         if k in ("emb_sz", "n_hid", "n_layers", "schedule")}
    assert cfg.epochs >= 1000  # only an upper bound: the budget ends training
    assert model_config(cfg).emb_sz == cfg.emb_sz and model_config(cfg).init_range == AWD_LSTM_CONFIGS["fastai"].init_range
    # the command line still wins over the recipe
    assert resolve_config({}, {"time_budget": 10.0, "corpus": "ptb", "data": "c", "bs": 32, "lr": 1e-3}).bs == 32


def test_a_named_preset_with_a_time_budget_keeps_that_preset():
    cfg = resolve_config({"preset": "fastai"}, {"time_budget": 2.0})
    assert cfg.preset == "fastai" and cfg.epochs == TrainConfig().epochs  # epochs: the cap the user had
    assert resolve_config({}, {}).preset == TrainConfig().preset  # no budget, no preset: the default


def test_the_budget_recipe_keeps_the_small_model_on_small_corpora():
    cfg = resolve_config({}, {"time_budget": 1.0})
    assert cfg.corpus == "human_numbers" and cfg.preset == "budget"
    assert model_config(cfg) == AWD_LSTM_CONFIGS["small"]
    assert cfg.bs == TrainConfig().bs and cfg.bptt == TrainConfig().bptt


def test_the_budget_recipe_trains_in_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    import rnnkit.devices as devices

    for has in (True, False):
        monkeypatch.setattr(devices, "cpu_has_bf16_instructions", lambda has=has: has)
        cfg = resolve_config({}, {"time_budget": 10.0, "corpus": "ptb", "data": "c", "device": "cpu"})
        assert cfg.precision == ("bf16" if has else "fp32")
    # a device that is not there: fp32 here, and the run refuses the device with its own message later
    if not torch.cuda.is_available():
        assert resolve_config({}, {"time_budget": 10.0, "corpus": "ptb", "data": "c", "device": "cuda"}).precision == "fp32"
    # the command line still decides
    assert resolve_config({}, {"time_budget": 10.0, "corpus": "ptb", "data": "c", "precision": "fp32"}).precision == "fp32"


def test_cpu_has_bf16_instructions_reads_the_cpu_flags():
    from rnnkit.devices import cpu_has_bf16_instructions

    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert cpu_has_bf16_instructions() == bool({"avx512_bf16", "amx_bf16"} & set(flags))
