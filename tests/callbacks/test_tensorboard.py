"""TensorBoardCallback: an optional extra that writes scalars, the graph, samples and embeddings."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from rnnkit.callbacks.tensorboard import TensorBoardCallback, projector_word_embeddings
from rnnkit.metrics import accuracy
from rnnkit.optim.recipes import SGD


def test_rnnkit_imports_without_tensorboard_and_the_callback_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['tensorboard'] = None\n"  # as if not installed
        "sys.modules['torch.utils.tensorboard'] = None\n"
        "from rnnkit.all import *\n"
        "try:\n"
        "    TensorBoardCallback()\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'rnnkit[tensorboard]'" in out.stdout


def test_missing_tensorboard_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'rnnkit\[tensorboard\]' \(or pip install tensorboard\)"):
        TensorBoardCallback()
    with pytest.raises(ImportError, match="rnnkit"):
        projector_word_embeddings(layer=nn.Embedding(3, 2))


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_tensorboard_writes_losses_metrics_and_hyper_parameters(make_learner, tmp_path):
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "runs"
    learn = make_learner(opt_func=SGD, lr=0.1, metrics=accuracy, cbs=TensorBoardCallback(log_dir, n_preds=3))
    learn.fit(2)
    ea = _events(log_dir)
    tags = ea.Tags()
    n = len(learn.dls.train)
    train = ea.Scalars("train_loss")
    assert [e.step for e in train] == list(range(1, 2 * n + 1))  # each training batch, none in validation
    assert train[-1].value == pytest.approx(float(learn.recorder.losses[-1]), rel=1e-5)
    valid = ea.Scalars("valid_loss")
    assert [e.step for e in valid] == [n, 2 * n]
    assert [e.value for e in valid] == pytest.approx([row[1] for row in learn.recorder.values], rel=1e-5)
    assert [e.value for e in ea.Scalars("accuracy")] == pytest.approx([row[2] for row in learn.recorder.values])
    assert [e.value for e in ea.Scalars("lr_0")] == pytest.approx([0.1] * 2 * n)
    assert {"mom_0", "wd_0"} <= set(tags["scalars"])
    assert tags["graph"]  # trace_model=True
    table = ea.Tensors("Sample results/text_summary")
    assert len(table) == 2 and table[0].step == n
    text = table[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| input | target | prediction |") and len(text.splitlines()) == 2 + 3


def test_tensorboard_is_skipped_by_lr_find(make_learner, tmp_path):
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "runs"
    learn = make_learner(cbs=TensorBoardCallback(log_dir, trace_model=False, log_preds=False))
    learn.lr_find(num_it=5, show_plot=False)
    assert not log_dir.exists()


class TinyLM(nn.Module):
    """An embedding, an LSTM that keeps its hidden state between calls, and a decoder."""

    def __init__(self, vocab_sz=7):
        super().__init__()
        self.emb, self.dec = nn.Embedding(vocab_sz, 4), nn.Linear(5, vocab_sz)
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.hidden = None

    def reset(self):
        self.hidden = None

    def forward(self, x):
        if self.hidden is not None and self.hidden[0].shape[1] != len(x):
            self.reset()  # a batch of another size
        out, h = self.rnn(self.emb(x), self.hidden)
        self.hidden = tuple(t.detach() for t in h)
        return self.dec(out)


def test_tensorboard_traces_a_stateful_lm_and_writes_its_embeddings(tmp_path):
    pytest.importorskip("tensorboard")
    from rnnkit.data.core import DataLoaders
    from rnnkit.losses import CrossEntropyLossFlat
    from rnnkit.training.learner import Learner

    ids = torch.randint(0, 7, (33, 6), generator=torch.Generator().manual_seed(0))
    items = [(r[:-1], r[1:]) for r in ids]
    dls = DataLoaders.from_dsets(items[:24], items[24:], bs=8)
    dls.vocab = ["xxunk", "xxpad", "one", "two", "three", "four", "five"]
    learn = Learner(dls, TinyLM(), loss_func=CrossEntropyLossFlat(), path=tmp_path,
                    cbs=TensorBoardCallback(tmp_path / "runs", n_preds=2, projector=True))
    learn.fit(1)
    ea = _events(tmp_path / "runs")
    assert ea.Tags()["graph"]
    text = ea.Tensors("Sample results/text_summary")[0].tensor_proto.string_val[0].decode()
    row = text.splitlines()[2]
    assert all(tok in dls.vocab for cell in row.strip("| ").split(" | ") for tok in cell.split())
    meta = next((tmp_path / "runs").rglob("metadata.tsv")).read_text().splitlines()
    assert meta == dls.vocab
    assert len(next((tmp_path / "runs").rglob("tensors.tsv")).read_text().splitlines()) == 7


def test_projector_word_embeddings_writes_a_slice(tmp_path):
    pytest.importorskip("tensorboard")
    emb = nn.Embedding(5, 3)
    projector_word_embeddings(layer=emb, vocab=["a", "b", " ", "d", "e"], start=1, limit=3, log_dir=tmp_path)
    assert next(tmp_path.rglob("metadata.tsv")).read_text().splitlines() == ["b", "' '", "d"]


def test_tensorboard_leaves_training_unchanged(make_learner, tmp_path):
    pytest.importorskip("tensorboard")

    def train(cbs):
        torch.manual_seed(0)
        learn = make_learner(model=nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)), cbs=cbs)
        learn.fit(2)
        return learn.model[0].weight.detach()

    # tracing and the sample predictions draw no random numbers and leave the model in training mode
    assert torch.equal(train(TensorBoardCallback(tmp_path / "runs")), train(None))
