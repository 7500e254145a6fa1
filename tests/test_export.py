"""export_learner / load_learner: fastai's export workflow as one safetensors file, never a pickle."""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit.data.core import DataLoaders
from rnnkit.data.text import TextDataLoaders
from rnnkit.data.tokenize import WordTokenizer
from rnnkit.export import ExportError, export_learner, load_learner
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.models.awd_lstm import AWDLSTMConfig
from rnnkit.models.book import LMModel7
from rnnkit.text.learner import LMLearner, language_model_learner
from rnnkit.training.learner import Learner

TINY = AWDLSTMConfig(emb_sz=16, n_hid=24, n_layers=2, output_p=0.1, hidden_p=0.1, input_p=0.1,
                     embed_p=0.02, weight_p=0.1)
WORDS = "zero one two three four five six seven eight nine ten".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def dls():
    return TextDataLoaders.from_texts(_texts(60, 0), _texts(20, 1), tokenizer=WordTokenizer(min_rep=5),
                                      bs=8, seq_len=10, seed=0)


@pytest.fixture
def learn(dls, tmp_path):
    torch.manual_seed(0)
    learn = language_model_learner(dls, config=TINY, path=tmp_path)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    return learn


def _file(learn) -> Path:
    return export_learner(learn, "export.pkl")


def test_export_writes_learn_path_fname_as_safetensors_not_a_pickle(learn, tmp_path):
    from safetensors import safe_open

    path = _file(learn)
    assert path == tmp_path / "export.pkl" and path.is_file()
    assert path.read_bytes()[:1] != b"\x80"  # no pickle magic, whatever the suffix
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    assert meta["format"] == "rnnkit-export" and config["model"]["arch"] == "AWD_LSTM"
    assert config["vocab"]["itos"] == learn.dls.vocab.itos
    assert config["tokenizer"] == {"name": "word", "kwargs": {"lower": True, "add_bos": True, "min_rep": 5,
                                                              "min_wrep": 4}}
    assert config["loss_func"]["name"] == "CrossEntropyLossFlat"
    assert config["metrics"] == ["accuracy", "perplexity"] and config["n_inp"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_gives_the_same_weights_predictions_and_generated_text(learn, tmp_path):
    path = _file(learn)
    new = load_learner(path, cpu=True)
    assert type(new) is LMLearner and new.path == tmp_path
    assert new.dls.vocab == learn.dls.vocab and new.dls.n_inp == 1
    assert vars(new.dls.tokenizer) == vars(learn.dls.tokenizer)
    assert isinstance(new.loss_func, CrossEntropyLossFlat)
    assert [m.name for m in new.metrics] == ["accuracy", "perplexity"]
    assert not new.model.training and next(new.model.parameters()).device.type == "cpu"
    assert new.model[1].decoder.weight is new.model[0].encoder.weight  # the tie is rebuilt
    a, b = learn.model.state_dict(), new.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for temperature in (0.0, 1.0):
        assert new.predict("one two", 3, temperature, seed=7) == learn.predict("one two", 3, temperature, seed=7)
    p1, t1 = learn.get_preds(dl=learn.dls.valid)
    p2, t2 = new.get_preds(dl=learn.dls.valid)
    assert torch.equal(p1, p2) and torch.equal(t1, t2)


def test_export_and_load_never_call_pickle_and_leave_the_rng_alone(learn, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("pickle was called")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "save", boom)
    monkeypatch.setattr(torch, "load", boom)
    path = _file(learn)
    state = torch.get_rng_state()
    new = load_learner(path)
    assert torch.equal(torch.get_rng_state(), state)
    assert new.predict("one", 2, 0.0) == learn.predict("one", 2, 0.0)


def test_load_learner_puts_the_model_on_the_default_device_with_cpu_false(learn):
    from rnnkit.utils import default_device

    new = load_learner(_file(learn), cpu=False)
    assert next(new.model.parameters()).device.type == default_device().type


def test_a_changed_byte_in_the_weights_is_refused(learn):
    path = _file(learn)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"export\.pkl was changed or corrupted: its weights do not match"):
        load_learner(path)


def test_an_edited_config_is_refused(learn):
    path = _file(learn)
    data = path.read_bytes()
    edited = data.replace(b'\\"three\\"', b'\\"thrEE\\"', 1)  # same length: the header still parses
    assert edited != data
    path.write_bytes(edited)
    with pytest.raises(ValueError, match=r"export\.pkl was changed or corrupted: its config .* sha256"):
        load_learner(path)


def test_a_rewritten_header_with_a_stale_checksum_is_refused(learn):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = _file(learn)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["vocab"]["itos"][-1] = "eleven"
    meta["config"] = json.dumps(config)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="its config .* does not match the sha256"):
        load_learner(path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 20])
def test_a_truncated_file_is_refused(learn, keep):
    path = _file(learn)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(ValueError, match=r"export\.pkl is truncated"):
        load_learner(path)


def test_an_empty_file_and_a_random_file_are_refused(tmp_path):
    empty, junk = tmp_path / "empty.pkl", tmp_path / "junk.bin"
    empty.write_bytes(b"")
    junk.write_bytes(b"hello, world, this is not a model")
    with pytest.raises(ValueError, match="empty.pkl is empty"):
        load_learner(empty)
    with pytest.raises(ValueError, match="junk.bin is not an rnnkit export.*never unpickles"):
        load_learner(junk)


def test_pickles_and_torch_save_files_are_refused_without_unpickling(tmp_path, monkeypatch):
    plain, legacy, zipped = tmp_path / "export.pkl", tmp_path / "legacy.pth", tmp_path / "model.pth"
    plain.write_bytes(pickle.dumps({"model": 1}, protocol=4))
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    torch.save({"w": torch.zeros(2)}, zipped)

    def boom(*args, **kwargs):
        raise AssertionError("pickle was called")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ValueError, match=r"export\.pkl is a pickle file .*never unpickles.*weights_only=True"):
        load_learner(plain)
    with pytest.raises(ValueError, match=r"legacy\.pth is a pickle file"):
        load_learner(legacy)
    with pytest.raises(ValueError, match=r"model\.pth is a torch\.save file .*never unpickles"):
        load_learner(zipped)


def test_a_plain_safetensors_file_is_not_taken_for_an_export(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="a safetensors file but not an rnnkit export"):
        load_learner(path)


def test_a_missing_file_raises_file_not_found_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere[/\\]export\.pkl"):
        load_learner(tmp_path / "nowhere" / "export.pkl")


class _MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x)


def test_a_model_rnnkit_cannot_rebuild_is_refused_and_an_older_export_survives(learn, tiny_dls, tmp_path):
    path = _file(learn)
    before = path.read_bytes()
    mine = Learner(tiny_dls, _MyNet(), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    with pytest.raises(ValueError, match=r"cannot save a model of class .*_MyNet.*learn\.save\('name'\)"):
        export_learner(mine, "export.pkl")
    learn.model[0].hidden_dps[0].p = 0.5  # changed after it was built: the config no longer describes it
    with pytest.raises(ValueError, match="it was changed after it was built.*RNNDropout"):
        export_learner(learn, "export.pkl")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pkl"]


def test_a_failed_write_leaves_the_older_export_whole(learn, tmp_path, monkeypatch):
    import rnnkit.files

    path = _file(learn)
    before = path.read_bytes()

    def fail(src, dst):  # the new file is written and synced; the rename that would replace the old one fails
        raise OSError("disk full")

    monkeypatch.setattr(rnnkit.files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_learner(learn, "export.pkl")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pkl"]


def test_an_unknown_loss_function_is_refused(learn):
    learn.loss_func = lambda pred, targ: pred.sum()
    with pytest.raises(ValueError, match="cannot save the loss function"):
        export_learner(learn, "export.pkl")


def test_a_book_model_with_a_plain_learner_round_trips(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 12, (32, 5))
    ds = [(x[i, :-1], x[i, 1:]) for i in range(32)]
    dls = DataLoaders.from_dsets(ds[:24], ds[24:], bs=8, device="cpu")
    learn = Learner(dls, LMModel7(12, 8, 2, 0.2), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    path = export_learner(learn, tmp_path / "book.bin")
    new = load_learner(path)
    assert type(new) is Learner and isinstance(new.model, LMModel7) and new.dls.vocab is None
    assert new.model.h_o.weight is new.model.i_h.weight
    a, b = learn.model.state_dict(), new.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    learn.model.eval()
    assert torch.equal(learn.model(x[:2, :4])[0], new.model(x[:2, :4])[0])


def test_exporting_to_a_folder_is_refused(learn, tmp_path):
    os.mkdir(tmp_path / "out")
    with pytest.raises(ValueError, match="is a folder"):
        export_learner(learn, "out")


def test_a_subword_tokenizer_travels_with_its_sentencepiece_model(tmp_path):
    from rnnkit.data.tokenize import SubwordTokenizer

    texts = _texts(60, 2)
    dls = TextDataLoaders.from_texts(texts[:50], texts[50:], tokenizer=SubwordTokenizer(vocab_sz=40), bs=4,
                                     seq_len=8, seed=0)
    learn = language_model_learner(dls, config=TINY, path=tmp_path)
    new = load_learner(export_learner(learn))
    assert isinstance(new.dls.tokenizer, SubwordTokenizer)
    assert new.dls.tokenizer.vocab_sz == learn.dls.tokenizer.vocab_sz
    assert new.dls.tokenizer.encode("one two.") == learn.dls.tokenizer.encode("one two.")
    assert new.predict("one two", 4, seed=1) == learn.predict("one two", 4, seed=1)
