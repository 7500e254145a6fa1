"""fastai's test helpers as rnnkit.all exports them, and the pytest plugin that keeps star-imported
helpers from being collected as tests (this module star-imports them: it would error without it)."""
from __future__ import annotations

import pytest
import torch

from rnnkit.all import *  # noqa: F403 - the point: fastcore's and rnnkit's test_* helpers come in


def test_test_eq_compares_parameters_that_require_grad_as_fastai_does():
    p = torch.nn.Parameter(torch.ones(2))
    test_eq(p, torch.ones(2))  # noqa: F405
    test_eq([p, 1], [torch.ones(2), 1])  # noqa: F405
    test_eq(L([p]), L([torch.ones(2)]))  # noqa: F405
    test_eq({"a": p}, {"a": torch.ones(2)})  # noqa: F405
    test_eq(torch.tensor(3.0), 3.0)  # noqa: F405
    test_ne(p, torch.zeros(2))  # noqa: F405
    with pytest.raises(AssertionError):
        test_eq(p, torch.zeros(2))  # noqa: F405
    with pytest.raises(AssertionError):
        test_eq(torch.ones(2), torch.ones(3))  # noqa: F405


def test_fastcore_names_fastai_users_rely_on_are_exported():
    class Cb(Callback):  # noqa: F405
        def __init__(self, n, k=2):
            store_attr()  # noqa: F405

    cb = Cb(3)
    assert (cb.n, cb.k) == (3, 2)
    assert isinstance(L(1, 2), L) and callable(patch) and callable(delegates)  # noqa: F405


def test_synth_learner_learns_the_regression(capsys):
    torch.manual_seed(0)
    learn = synth_learner(n_trn=5, lr=0.1, cbs=VerboseCallback())  # noqa: F405
    before = learn.validate()[0]
    assert capsys.readouterr().out.split("\n")[:2] == ["after_create", "before_validate"]
    learn.fit(2)
    assert learn.validate()[0] < before / 4
    out = capsys.readouterr().out.split("\n")
    assert out[:3] == ["before_fit", "before_epoch", "before_train"]
    assert out.count("after_step") == 2 * len(learn.dls.train)


def test_the_plugin_skips_only_star_imported_helpers():
    from rnnkit.pytest_plugin import pytest_pycollect_makeitem

    assert pytest_pycollect_makeitem(None, "test_eq", test_eq) == []  # noqa: F405
    assert pytest_pycollect_makeitem(None, "test_close", test_close) == []  # noqa: F405
    assert pytest_pycollect_makeitem(None, "test_x", test_synth_learner_learns_the_regression) is None
