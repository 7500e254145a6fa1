"""Dynamic evaluation (text/dynamic_eval.py): the update rules by hand, adaptation to a stream whose statistics
shift, the trained weights restored afterwards; and `rnnkit evaluate` with --cache, --tune-cache and --dynamic."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit import cli
from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.text import TextDataLoaders
from rnnkit.errors import UserError
from rnnkit.text.cache_pointer import CacheConfig
from rnnkit.text.dynamic_eval import DynamicEvalConfig, DynamicEvaluator
from rnnkit.text.learner import language_model_learner

V = 20


class Square(nn.Module):
    """One weight w; the loss is w**2, so the gradient is 2w."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5]))


def _two_steps(cfg: DynamicEvalConfig) -> tuple[float, float, DynamicEvaluator, Square]:
    m = Square()
    de = DynamicEvaluator(m, cfg)
    de.step((m.w ** 2).sum())
    w1 = float(m.w.detach())
    de.step((m.w ** 2).sum())
    return w1, float(m.w.detach()), de, m


def test_sgd_step_is_lr_times_gradient_plus_decay_towards_the_trained_weights():
    w1, w2, de, m = _two_steps(DynamicEvalConfig(method="sgd", lr=0.1, decay=0.2))
    assert w1 == pytest.approx(0.5 - 0.1 * 1.0)  # no pull yet: w = w0
    assert w2 == pytest.approx(0.4 - 0.1 * 0.8 + 0.2 * (0.5 - 0.4))
    de.restore()
    assert float(m.w.detach()) == 0.5


def test_rms_step_divides_the_gradient_by_the_root_mean_square_of_the_gradients_so_far():
    w1, w2, _, _ = _two_steps(DynamicEvalConfig(method="rms", lr=0.1, decay=0.2, eps=1e-8))
    assert w1 == pytest.approx(0.5 - 0.1 * 1.0 / 1.0)
    ms = (1.0 ** 2 + 0.8 ** 2) / 2
    assert w2 == pytest.approx(0.4 - 0.1 * 0.8 / math.sqrt(ms) + 0.2 * (0.5 - 0.4), rel=1e-6)


def _markov(step: int, n: int, seed: int) -> torch.Tensor:
    """Tokens that go up by `step` (mod V) nine times out of ten, else jump at random."""
    g = torch.Generator().manual_seed(seed)
    noise, jump = torch.rand(n, generator=g), torch.randint(0, V, (n,), generator=g)
    x = [0]
    for i in range(n - 1):
        x.append((x[-1] + step) % V if noise[i] < 0.9 else int(jump[i]))
    return torch.tensor(x)


@pytest.fixture(scope="module")
def shifted():
    """A small AWD-LSTM trained on steps of +1, and validation text that steps by +3."""
    torch.manual_seed(0)
    dls = TextDataLoaders.from_tensors(_markov(1, 4000, 0), _markov(3, 600, 1), [str(i) for i in range(V)],
                                       bs=16, seq_len=20)
    cfg = dict(emb_sz=16, n_hid=32, n_layers=1, pad_token=None, output_p=0.0, hidden_p=0.0, input_p=0.0,
               embed_p=0.0, weight_p=0.0, init_range=0.5)
    learn = language_model_learner(dls, config=cfg)
    model = learn.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        for x, y in dls.train:
            loss = F.cross_entropy(model(x)[0].reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad()  # no gradients left: dynamic evaluation must not leave any either
    return learn


@pytest.mark.parametrize("cfg", [DynamicEvalConfig(method="sgd", lr=1.0), DynamicEvalConfig(method="rms", lr=0.02)],
                         ids=["sgd", "rms"])
def test_dynamic_evaluation_adapts_to_a_shifted_stream_and_restores_the_weights(shifted, cfg):
    learn = shifted
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    was_training = learn.model.training
    static = learn.evaluate(bs=1)
    dynamic = learn.evaluate(bs=1, dynamic=cfg)
    assert dynamic["perplexity"] < 0.5 * static["perplexity"]
    assert dynamic["tokens"] == static["tokens"] and dynamic["bptt"] == cfg.bptt
    assert dynamic["dynamic"]["method"] == cfg.method
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.model.training == was_training and all(p.grad is None for p in learn.model.parameters())
    assert learn.evaluate(bs=1)["loss"] == static["loss"]  # nothing learnt survives the pass


def test_each_segment_is_scored_before_the_model_learns_from_it(shifted):
    dl = LMDataLoader(_markov(3, 11, 2), bs=1, seq_len=10)  # one segment: only its score happens
    plain = shifted.evaluate(dl=dl, bptt=10)
    dynamic = shifted.evaluate(dl=dl, dynamic=DynamicEvalConfig(method="sgd", lr=100.0, bptt=10))
    assert dynamic["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_dynamic_evaluation_combines_with_the_cache(shifted):
    res = shifted.evaluate(bs=1, cache=CacheConfig(window=50, theta=1.0, lambdah=0.1),
                           dynamic=DynamicEvalConfig(method="sgd", lr=1.0))
    assert res["cache"]["window"] == 50 and res["dynamic"]["lr"] == 1.0 and math.isfinite(res["loss"])


def test_a_bptt_that_contradicts_the_dynamic_segment_length_is_refused(shifted):
    with pytest.raises(UserError, match="with dynamic evaluation the segment length is dynamic.bptt"):
        shifted.evaluate(bptt=20, dynamic=DynamicEvalConfig(bptt=5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="adam"), "method must be one of sgd, rms, got 'adam'"),
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(decay=1.0), r"decay must be in \[0, 1\), got 1.0"),
    (dict(bptt=0), "bptt .* must be an int >= 1, got 0"),
])
def test_dynamic_eval_config_rejects_bad_values_naming_them(kwargs, match):
    with pytest.raises(UserError, match=match):
        DynamicEvalConfig(**kwargs)


def test_each_method_has_its_own_default_lr():
    # the defaults docs/evaluation.md gives, with the PTB tuning behind them
    assert DynamicEvalConfig(method="sgd").lr == 0.5 and DynamicEvalConfig(method="rms").lr == 1e-3
    assert (DynamicEvalConfig().method, DynamicEvalConfig().bptt, DynamicEvalConfig().lr) == ("sgd", 10, 0.5)


# ---- rnnkit evaluate ----

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained by the command line on a folder corpus with a test split."""
    tmp = tmp_path_factory.mktemp("eval")
    data = tmp / "corpus"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(12)]
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        lines = [" ".join(words[int(i)] for i in torch.randint(0, 12, (8,), generator=g)) for _ in range(n)]
        (data / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "RNNKIT_HOME": str(tmp / "home"), "RNNKIT_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "train", "--corpus", "folder", "--data", str(data),
                        "--epochs", "1", "--bs", "8", "--bptt", "8", "--emb-sz", "16",
                        "--n-hid", "16", "--n-layers", "1", "--threads", "1", "--no-sample", "--out", str(tmp / "run"),
                        "--device", "cpu"], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def _last_line(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return out, out[-1]


def test_evaluate_with_the_cache_uses_the_corpus_defaults_and_says_so(run, capsys):
    assert cli.main(["evaluate", str(run), "--split", "test", "--bs", "1", "--cache", "--window", "50"]) == 0
    _, line = _last_line(capsys)
    assert line.startswith("test: loss ") and "perplexity" in line
    assert line.endswith("bs 1, cache window 50 theta 1 lambda 0.1)")  # theta and lambda: PTB's, the default


def test_evaluate_tune_cache_prints_the_table_and_evaluates_with_the_best(run, capsys):
    assert cli.main(["evaluate", str(run), "--bs", "1", "--tune-cache", "--window", "30"]) == 0
    out, line = _last_line(capsys)
    rows = [l for l in out if l.startswith("  theta ")]
    assert len(rows) == 20 and out[0].startswith("cache search on valid (window 30")
    best = [l for l in out if l.startswith("best: ")][0].split()
    assert f"cache window 30 theta {best[2]} lambda {best[4]})" in line


def test_evaluate_dynamic_prints_the_settings_used(run, capsys):
    assert cli.main(["evaluate", str(run), "--split", "test", "--bs", "1", "--dynamic", "--dynamic-method", "sgd",
                     "--dynamic-lr", "0.5", "--dynamic-bptt", "4"]) == 0
    _, line = _last_line(capsys)
    assert line.startswith("test: loss ") and line.endswith("bs 1, dynamic sgd lr 0.5 decay 0.002 bptt 4)")


@pytest.mark.parametrize("args, needle", [
    (["--cache", "--window", "0"], "--window 0: the cache window must be at least 1"),
    (["--cache", "--lambda", "1.5"], "--lambda 1.5: the cache's weight must be in [0, 1]"),
    (["--cache", "--theta", "-2"], "--theta -2.0: must be a number >= 0"),
    (["--theta", "0.5"], "--theta sets the cache pointer: add --cache"),
    (["--tune-cache", "--theta", "0.5"], "--tune-cache searches theta and lambda"),
    (["--dynamic", "--dynamic-lr", "0"], "--dynamic-lr 0.0: the step size must be > 0"),
    (["--dynamic-decay", "0.1"], "--dynamic-decay sets dynamic evaluation: add --dynamic"),
    (["--dynamic", "--dynamic-method", "adam"], "invalid choice: 'adam'"),
])
def test_evaluate_option_mistakes_are_one_line_and_exit_2(run, capsys, args, needle):
    try:
        code = cli.main(["evaluate", str(run), *args])
    except SystemExit as e:  # argparse's own mistakes (an unknown choice) exit from the parser
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
