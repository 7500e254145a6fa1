"""Shared fixtures: seeded RNG, a tiny classification problem, a Learner factory."""
from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from hypothesis import settings
from torch import nn

matplotlib.use("Agg")
os.environ.setdefault("RNNKIT_NO_PROGRESS", "1")
# Tests run on the CPU by default, also on a GPU machine (loaders would otherwise put batches on CUDA);
# the GPU paths are the tests marked `cuda`. `RNNKIT_DEVICE=cuda pytest` runs everything on the GPU.
os.environ.setdefault("RNNKIT_DEVICE", "cpu")
torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one, must pass with one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

# Property tests draw the same examples on every run (CI must not pass or fail by luck) and keep no
# example database between runs. `HYPOTHESIS_PROFILE=explore` draws fresh random examples instead.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def make_classification(n: int = 100, n_in: int = 4, n_out: int = 3, seed: int = 0):
    """A linearly separable-ish problem: list of (x, y) pairs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    w = torch.randn(n_in, n_out, generator=g)
    y = (x @ w).argmax(1)
    return [(x[i], y[i]) for i in range(n)]


@pytest.fixture
def tiny_dls():
    from rnnkit.data.core import DataLoaders

    return DataLoaders.from_dsets(make_classification(64), make_classification(20, seed=1), bs=16)


@pytest.fixture
def make_learner(tiny_dls, tmp_path):
    from rnnkit.training.learner import Learner

    def _make(**kwargs):
        model = kwargs.pop("model", None) or nn.Linear(4, 3)
        kwargs.setdefault("loss_func", nn.functional.cross_entropy)
        kwargs.setdefault("path", tmp_path)
        return Learner(kwargs.pop("dls", tiny_dls), model, **kwargs)

    return _make
