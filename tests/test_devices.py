"""Device placement without a GPU: models, regularizers, optimizers, metrics, NT-ASGD and checkpoints run with
their tensors on the `meta` device (shapes and dtypes, no data) and must create every tensor of their own there.

A tensor made on the default device (the CPU) next to meta ones either makes the op raise ("Tensor on device cpu
is not on the expected device meta!") or, where PyTorch's meta kernels let a mix through (foreach ops, embedding
lookups), shows up in the device asserts below. Meta tensors have no values, so nothing here reads one
(`.item()`, `bool(t)`, comparisons of results): what is checked is where tensors live, not what they hold.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rnnkit.callbacks.checkpoint import load_model_hidden_state, model_hidden_state
from rnnkit.callbacks.ntasgd import NTASGD
from rnnkit.callbacks.rnn import ar_tar
from rnnkit.checkpoint import load_checkpoint, load_weights, save_checkpoint
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.memory import buffer_pool
from rnnkit.metrics.accum import AccumMetric
from rnnkit.metrics.core import AvgLoss, AvgMetric, AvgSmoothLoss, Perplexity, accuracy
from rnnkit.models.awd_lstm import AWD_LSTM, AWDLSTMConfig, get_language_model
from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7
from rnnkit.models.cells import GRULayer, LSTMCell, LSTMLayer
from rnnkit.models.dropout import EmbeddingDropout, RNNDropout, WeightDropout, dropout_mask
from rnnkit.optim import (SGD, Adam, Lamb, Larc, Lookahead, OptimWrapper, QHAdam, RAdam, RMSProp, fused_adam, fused_rmsprop,
                          fused_sgd, ranger)

META = torch.device("meta")
VOCAB, BS, SL = 11, 4, 5
TINY_AWD = AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=2, output_p=0.3, hidden_p=0.2, input_p=0.2, embed_p=0.1,
                         weight_p=0.3)


def _tensors(x: Any) -> Iterator[Tensor]:
    """Every tensor in a nested tuple/list/dict, or the tensor itself."""
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _devices(x: Any) -> set[str]:
    return {t.device.type for t in _tensors(x)}


def _hidden(model: nn.Module) -> list[Tensor]:
    """The hidden state the model carries across batches (AWD_LSTM's `hidden`, the book models' `h`)."""
    return [t for m in model.modules() for attr in ("hidden", "h") for t in _tensors(m.__dict__.get(attr))]


# ---- models ----

BOOK_MODELS = {
    "LMModel1": (lambda: LMModel1(VOCAB, 8), 3),
    "LMModel2": (lambda: LMModel2(VOCAB, 8), 3),
    "LMModel3": (lambda: LMModel3(VOCAB, 8), 3),
    "LMModel4": (lambda: LMModel4(VOCAB, 8, sl=SL), SL),
    "LMModel5": (lambda: LMModel5(VOCAB, 8, 2), SL),
    "LMModel6": (lambda: LMModel6(VOCAB, 8, 2), SL),
    "LMModel7": (lambda: LMModel7(VOCAB, 8, 2, p=0.5), SL),
    "AWD_LSTM": (lambda: get_language_model(AWD_LSTM, VOCAB, TINY_AWD), SL),
}


def _logits(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # LMModel7 and AWD-LSTM: (logits, raw, dropped)


def _two_steps(model: nn.Module, x: Tensor) -> None:
    """Forward and backward twice (the second batch continues the hidden state of the first)."""
    for _ in range(2):
        out = model(x)
        assert _devices(out) == {"meta"}
        assert _logits(out).shape[-1] == VOCAB
        _logits(out).float().sum().backward()
        assert all(h.device == META for h in _hidden(model))
    assert {p.grad.device.type for p in model.parameters() if p.grad is not None} == {"meta"}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(BOOK_MODELS))
def test_models_run_forward_and_backward_with_everything_on_the_meta_device(name, train):
    make, sl = BOOK_MODELS[name]
    model = make().to(META).train(train)  # train: dropout masks (AWD-LSTM's five kinds, LMModel7's) are drawn
    _two_steps(model, torch.randint(0, VOCAB, (BS, sl), device=META))


@pytest.mark.parametrize("name", [n for n in BOOK_MODELS if n not in ("LMModel1", "LMModel2")])
def test_hidden_state_follows_the_model_to_another_device_and_reset_keeps_it_there(name):
    make, sl = BOOK_MODELS[name]
    model = make()
    model(torch.randint(0, VOCAB, (BS, sl)))  # a hidden state on the CPU, kept as a plain attribute
    assert _hidden(model) and all(h.device.type == "cpu" for h in _hidden(model))
    model.to(META)  # moves parameters, not the carried state
    _two_steps(model.train(), torch.randint(0, VOCAB, (BS, sl), device=META))
    model.reset()
    assert all(h.device == META for h in _hidden(model))  # AWD-LSTM makes zeros; the book's models drop it
    model(torch.randint(0, VOCAB, (BS - 1, sl), device=META))  # a smaller batch: state remade or cut
    assert _hidden(model) and all(h.device == META for h in _hidden(model))


def test_awd_lstm_reset_and_a_larger_batch_make_zeros_on_the_models_device():
    enc = AWD_LSTM(VOCAB, 8, 12, 2).to(META)
    enc.reset()
    assert {h.device.type for h in _hidden(enc)} == {"meta"}
    enc(torch.randint(0, VOCAB, (BS + 2, SL), device=META))  # new streams start from zeros
    assert {h.device.type for h in _hidden(enc)} == {"meta"}
    assert enc.hidden[0][0].shape[1] == BS + 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("p", [0.3, 0.5, 1 - 2**-14, 1.0])  # float32 uniforms (16-bit draws: CPU only), float64, none
def test_dropout_masks_are_made_on_the_inputs_device_and_dtype(p, dtype):
    x = torch.empty(3, 7, device=META, dtype=dtype)
    mask = dropout_mask(x, (3, 1), p)
    assert (mask.device, mask.dtype, mask.shape) == (META, dtype, torch.Size([3, 1]))


def test_each_dropout_module_runs_on_the_meta_device():
    x = torch.randn(BS, SL, 6, device=META)
    assert RNNDropout(0.5).train()(x).device == META
    emb = nn.Embedding(VOCAB, 6).to(META)
    assert EmbeddingDropout(emb, 0.5).train()(torch.randint(0, VOCAB, (BS, SL), device=META)).device == META
    wd = WeightDropout(nn.LSTM(6, 6, batch_first=True), 0.5).to(META).train()
    out, (h, c) = wd(x)  # no state given: WeightDropout makes the zeros itself
    assert _devices((out, h, c, wd.module.weight_hh_l0)) == {"meta"}


@pytest.mark.parametrize("layer", [LSTMLayer, GRULayer])
def test_the_chapters_cells_start_from_zeros_on_the_inputs_device(layer):
    rnn = layer(6, 5).to(META)
    out, state = rnn(torch.randn(BS, SL, 6, device=META))
    assert _devices((out, state)) == {"meta"}


def test_a_cell_copied_from_a_torch_lstm_lives_on_that_lstms_device():
    cell = LSTMCell.from_torch(nn.LSTM(6, 5, bias=False).to(META))  # no bias: zeros made for it
    assert _devices(list(cell.parameters())) == {"meta"}


# ---- inputs on another device than the model ----

def test_awd_lstm_fed_embeddings_from_another_device_fails_with_pytorchs_device_error():
    # rnnkit makes the dropout masks and the carried state; they follow the input and the weights, so the
    # fused LSTM kernel sees the mismatch and names it instead of computing on mixed devices.
    model = get_language_model(AWD_LSTM, VOCAB, TINY_AWD).to(META)
    for train in (True, False):
        model.train(train)
        with pytest.raises(RuntimeError, match="same device"):
            model[0](torch.randn(BS, SL, 8), from_embeds=True)


def test_weight_dropout_fed_input_from_another_device_fails_with_pytorchs_device_error():
    wd = WeightDropout(nn.LSTM(6, 6, batch_first=True), 0.5).to(META).train()
    with pytest.raises(RuntimeError, match="same device"):
        wd(torch.randn(BS, SL, 6))


def test_chunked_cross_entropy_leaves_targets_on_another_device_to_torchs_device_error(monkeypatch):
    monkeypatch.setattr(buffer_pool, "min_bytes", 0)  # small CPU logits take rnnkit's chunked path
    logits = torch.randn(BS * SL, VOCAB)
    assert CrossEntropyLossFlat()(logits, torch.randint(0, VOCAB, (BS * SL,))).device.type == "cpu"
    with pytest.raises(RuntimeError, match="device"):
        CrossEntropyLossFlat()(logits, torch.randint(0, VOCAB, (BS * SL,), device=META))


# ---- AR/TAR ----

@pytest.mark.parametrize("alpha,beta,sl", [(2.0, 1.0, SL), (2.0, 0.0, SL), (0.0, 1.0, SL), (0.0, 0.0, SL),
                                           (0.0, 1.0, 1)])
def test_ar_tar_and_its_backward_run_on_the_activations_device(alpha, beta, sl):
    out = torch.randn(BS, sl, 6, device=META, requires_grad=True)
    raw = torch.randn(BS, sl, 6, device=META, dtype=torch.bfloat16, requires_grad=True)
    loss = ar_tar(out, raw, alpha, beta)
    assert (loss.device, loss.dtype, loss.shape) == (META, torch.float32, torch.Size([]))
    if loss.requires_grad:
        loss.backward()
        assert _devices([t.grad for t in (out, raw) if t.grad is not None]) <= {"meta"}


# ---- optimizers ----

def _meta_params() -> list[nn.Parameter]:
    ps = [nn.Parameter(torch.randn(3, 4, device=META)), nn.Parameter(torch.randn(4, device=META))]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


RECIPES = {
    "SGD": partial(SGD, lr=0.1),
    "SGD-mom": partial(SGD, lr=0.1, mom=0.9, wd=0.01),
    "RMSProp": partial(RMSProp, lr=0.1, wd=0.01),
    "RMSProp-mom": partial(RMSProp, lr=0.1, mom=0.9),
    "Adam": partial(Adam, lr=0.1, wd=0.01),
    "Adam-l2": partial(Adam, lr=0.1, wd=0.01, decouple_wd=False),
    "RAdam": partial(RAdam, lr=0.1, beta=1.0),
    "QHAdam": partial(QHAdam, lr=0.1),
    "Larc": partial(Larc, lr=0.1),
    "Larc-nomom": partial(Larc, lr=0.1, mom=0.0, clip=False),
    "Lamb": partial(Lamb, lr=0.1, wd=0.01),
    "ranger": partial(ranger, lr=0.1, k=2),
    "Lookahead-SGD-mom": lambda ps: Lookahead(SGD(ps, lr=0.1, mom=0.9), k=2),
}


def _state_tensors(opt: Any) -> list[Tensor]:
    inner = getattr(opt, "opt", opt)
    if isinstance(inner, torch.optim.Optimizer):  # torch keeps a non-capturable `step` on the CPU by design
        return [v for s in inner.state.values() for k, v in s.items() if k != "step" and isinstance(v, Tensor)]
    return [t for s in opt.state.values() for t in _tensors(s)] + list(getattr(opt, "slow_weights", None) or [])


def _meta_has(op: str) -> bool:
    try:
        getattr(torch, op)([torch.empty(2, device="meta")])
    except (NotImplementedError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize("impl", ["auto", "foreach", "per_param"])
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_keeps_its_state_on_the_parameters_device(name, impl):
    if name.startswith(("Lamb", "Larc")) and not _meta_has("_foreach_norm"):
        pytest.skip("this PyTorch has no meta kernel for _foreach_norm (PyTorch < 2.3)")
    ps = _meta_params()
    opt = RECIPES[name](ps)
    opt.impl = impl
    for _ in range(7):  # past RAdam's rectification threshold, and Lookahead syncs
        opt.step()
    assert _devices(_state_tensors(opt)) == (set() if name == "SGD" else {"meta"})  # plain SGD keeps none
    assert _devices(ps) == {"meta"}
    opt.zero_grad()
    assert _devices([p.grad for p in ps]) == {"meta"}


@pytest.mark.parametrize("torch_opt", [torch.optim.AdamW, partial(torch.optim.SGD, momentum=0.9)])
def test_optim_wrapper_steps_parameters_on_the_meta_device(torch_opt):
    ps = _meta_params()
    opt = OptimWrapper(ps, torch_opt, lr=0.1)
    for _ in range(2):
        opt.step()
    assert _state_tensors(opt) and _devices(_state_tensors(opt)) == {"meta"}


def _recording(monkeypatch: pytest.MonkeyPatch, name: str) -> list[set[str]]:
    """Replace `torch.<name>` with a stand-in that records the devices of the tensors it is given (the meta
    fused Adam kernel does not check the step tensors' device, and there is no meta fused SGD at all)."""
    seen: list[set[str]] = []
    monkeypatch.setattr(torch, name, lambda *args, **kwargs: seen.append(_devices(list(args))))
    return seen


@pytest.mark.parametrize("kernel,step", [
    ("_fused_adamw_", partial(fused_adam, mom=0.9, sqr_mom=0.99, eps=1e-5, decouple_wd=True)),
    ("_fused_adam_", partial(fused_adam, mom=0.9, sqr_mom=0.99, eps=1e-5, decouple_wd=False)),
    ("_fused_sgd_", partial(fused_sgd, mom=0.9, decouple_wd=True)),
    ("_fused_adamw_", partial(fused_rmsprop, sqr_mom=0.99, eps=1e-5, decouple_wd=True)),
])
def test_fused_kernels_get_buffers_and_step_counts_on_the_parameters_device(monkeypatch, kernel, step):
    if not hasattr(torch, kernel):
        pytest.skip(f"this PyTorch has no torch.{kernel} (PyTorch < 2.3)")
    seen = _recording(monkeypatch, kernel)
    ps = _meta_params()
    with torch.no_grad():  # as Optimizer.step calls it
        new = step(ps, [p.grad for p in ps], lr=0.1, wd=0.01)
    assert seen == [{"meta"}]  # parameters, gradients, moments, step counts: all on the parameters' device
    assert _devices([v for v in new.values() if isinstance(v, list)]) == {"meta"}


@pytest.mark.parametrize("make", [partial(Adam, lr=0.1), partial(ranger, lr=0.1, k=1)], ids=["Adam", "ranger"])
def test_optimizer_state_saved_on_the_cpu_loads_onto_the_parameters_device(make):
    cpu = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(4))]
    for p in cpu:
        p.grad = torch.randn_like(p)
    src = make(cpu)
    src.step()
    opt = make(_meta_params())
    opt.load_state_dict(src.state_dict())
    assert _devices(_state_tensors(opt)) == {"meta"}
    opt.step()
    assert _devices(_state_tensors(opt)) == {"meta"}


@pytest.fixture
def moves_keep_parameters():
    """`model.to(device)` keeping the parameter objects, as it does between CPU and CUDA (to `meta` it would
    otherwise make new ones, which the optimizer would no longer hold)."""
    if not hasattr(torch.__future__, "get_swap_module_params_on_conversion"):
        pytest.skip("this PyTorch cannot keep parameter objects in a move to meta (PyTorch < 2.3)")
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(old)


@pytest.mark.parametrize("make", [partial(SGD, lr=0.1, mom=0.9), partial(Adam, lr=0.1),
                                  partial(OptimWrapper, opt=torch.optim.AdamW, lr=0.1),
                                  partial(ranger, lr=0.1, k=1)],
                         ids=["SGD-mom", "Adam", "OptimWrapper", "ranger"])
@pytest.mark.parametrize("impl", ["auto", "per_param"])
def test_optimizer_state_follows_a_model_moved_after_it_was_made(moves_keep_parameters, make, impl):
    # The Learner moves the model to the loaders' device at fit, after a resume loaded the optimizer state.
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = make(list(model.parameters()))
    if hasattr(opt, "impl"):
        opt.impl = impl
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert _devices(_state_tensors(opt)) == {"cpu"}
    model.to(META)
    params = list(model.parameters())
    assert all(p is q for p, q in zip(params, [p for pl in opt.param_lists for p in pl]))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert _devices(_state_tensors(opt)) == {"meta"}
    assert _devices(params) == {"meta"}


# ---- metrics ----

def _meta_learn() -> SimpleNamespace:
    pred = torch.randn(BS, SL, VOCAB, device=META)
    yb = (torch.randint(0, VOCAB, (BS, SL), device=META),)
    return SimpleNamespace(pred=pred, yb=yb, xb=(yb[0],), loss=torch.randn((), device=META), training=False)


@pytest.mark.parametrize("make", [partial(AvgMetric, accuracy), AvgLoss, Perplexity, AvgSmoothLoss,
                                  partial(AccumMetric, lambda p, t: (p == t).float().mean(), dim_argmax=-1)],
                         ids=["AvgMetric", "AvgLoss", "Perplexity", "AvgSmoothLoss", "AccumMetric"])
def test_metrics_accumulate_on_the_batches_device_without_moving_to_the_cpu(make):
    metric = make()
    metric.reset()
    for _ in range(3):
        metric.accumulate(_meta_learn())
    value = metric.value
    assert isinstance(value, Tensor) and value.device == META
    kept = [v for v in vars(metric).values() if isinstance(v, (Tensor, list))]
    assert _devices(kept) == {"meta"}  # running totals, the smoothed value, or the stored batches


# ---- NT-ASGD ----

def test_ntasgd_averages_and_swaps_on_the_parameters_device():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).to(META)
    cb = NTASGD(n=1)
    cb.learn = SimpleNamespace(model=model)
    cb.triggered_at = 0
    for _ in range(3):  # the first iterate, then the running mean
        cb.after_step()
    assert cb.n_avg == 3 and _devices(cb._other) == {"meta"}
    cb._swap()  # the average into the model, the raw weights into the callback
    assert _devices(cb._other) == {"meta"} and _devices(list(model.parameters())) == {"meta"}
    state = cb.state_dict()
    cpu_state = {**state, "other": [torch.zeros(t.shape) for t in state["other"]]}  # as a checkpoint loads it
    resumed = NTASGD(n=1)
    resumed.learn = SimpleNamespace(model=model)
    resumed.load_state_dict(cpu_state)
    assert _devices(resumed._other) == {"meta"}
    resumed.after_step()
    assert _devices(resumed._other) == {"meta"}


# ---- checkpoints ----

def test_a_checkpoint_saved_on_the_cpu_loads_onto_the_models_device(tmp_path, monkeypatch):
    src = get_language_model(AWD_LSTM, VOCAB, TINY_AWD)
    src_opt = Adam(list(src.parameters()), lr=0.1)
    _logits(src(torch.randint(0, VOCAB, (BS, SL)))).sum().backward()
    src_opt.step()
    hidden = model_hidden_state(src)
    path = save_checkpoint(tmp_path, src, src_opt.state_dict(), {"epoch": 1, "hidden": hidden})

    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    with META:  # built there: `.to("meta")` would untie the decoder from the embedding (new parameters)
        model = get_language_model(AWD_LSTM, VOCAB, TINY_AWD)
    device = next(model.parameters()).device
    weights, opt_state, trainer = load_checkpoint(path, map_location=device)
    assert calls and all(c.get("weights_only") is True for c in calls)  # never unpickles code
    assert _devices(weights) == {"meta"} and _devices(opt_state) == {"meta"}
    assert _devices(trainer) == {"cpu"}  # RNG states must stay CPU tensors; callbacks place their own
    load_weights(model, weights)
    opt = Adam(list(model.parameters()), lr=0.1)
    opt.load_state_dict(opt_state)
    assert _devices(_state_tensors(opt)) == {"meta"}
    load_model_hidden_state(model, trainer["hidden"])
    assert _hidden(model) and _devices(_hidden(model)) == {"meta"}
    _two_steps(model.train(), torch.randint(0, VOCAB, (BS, SL), device=META))


def test_a_hidden_state_loaded_into_a_fresh_awd_lstm_continues_at_its_own_batch_size():
    # A mid-epoch resume builds the model anew (`bs` 1) and loads a state of the run's batch size: the next
    # batch must continue it, not pad it with zero streams to twice the size.
    src = get_language_model(AWD_LSTM, VOCAB, TINY_AWD).eval()
    batches = torch.randint(0, VOCAB, (2, BS, SL))
    src(batches[0])
    state = model_hidden_state(src)
    model = get_language_model(AWD_LSTM, VOCAB, TINY_AWD).eval()
    model.load_state_dict(src.state_dict())
    load_model_hidden_state(model, state)
    torch.testing.assert_close(model(batches[1])[0], src(batches[1])[0])
    assert [tuple(h.shape) for hc in model[0].hidden for h in hc] == [(1, BS, 12)] * 2 + [(1, BS, 8)] * 2


def test_weight_dropout_refuses_a_state_of_another_batch_size():
    wd = WeightDropout(nn.LSTM(6, 5, batch_first=True), 0.5)
    state = (torch.zeros(1, BS + 3, 5), torch.zeros(1, BS + 3, 5))
    with pytest.raises(RuntimeError, match=rf"Expected hidden\[0\] size \(1, {BS}, 5\), got \[1, {BS + 3}, 5\]"):
        wd(torch.randn(BS, SL, 6), state)


@pytest.mark.parametrize("bad,err", [("not-a-device", ValueError), (1.5, TypeError)])
def test_load_checkpoint_refuses_a_map_location_that_is_not_a_device(tmp_path, bad, err):
    path = save_checkpoint(tmp_path, nn.Linear(2, 2), None, {"epoch": 0})
    with pytest.raises(err, match="map_location must be a device"):
        load_checkpoint(path, map_location=bad)


def test_cross_entropy_on_the_meta_device_stays_there():
    loss = CrossEntropyLossFlat()(torch.randn(BS, SL, VOCAB, device=META, requires_grad=True),
                                  torch.randint(0, VOCAB, (BS, SL), device=META))
    assert loss.device == META
    loss.backward()
