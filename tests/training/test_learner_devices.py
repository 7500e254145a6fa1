"""The Learner puts the model where the loaders send batches (fastai's TrainEvalCallback.before_fit),
before fit, validate and get_preds; checked with the `meta` device, so no GPU is needed."""
from __future__ import annotations

import torch
from torch import nn

from rnnkit.losses import CrossEntropyLossFlat


def test_a_training_batch_runs_on_the_loaders_device_after_before_fit(make_learner):
    learn = make_learner(lr=0.1)
    learn.dls.device = "meta"  # as a GPU would be: the model starts elsewhere (on the CPU)
    b = learn.dls.one_batch()
    assert b[0].device.type == "meta"
    learn.create_opt()
    learn.n_epoch = 1
    learn(["before_fit", "before_epoch", "before_train"])
    assert all(p.device.type == "meta" for p in learn.model.parameters())
    learn.one_batch(0, b)  # forward, loss, backward, step, zero_grad: any tensor made on the CPU would raise
    assert learn.loss.device.type == "meta"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in learn.model.parameters())


def test_the_loss_module_moves_with_the_model(make_learner):
    weights = torch.ones(3)
    learn = make_learner(loss_func=CrossEntropyLossFlat(weight=weights))
    learn.dls.device = "meta"
    learn.create_opt()
    learn("before_fit")
    assert learn.loss_func.func.weight.device.type == "meta"
    plain = make_learner(loss_func=nn.CrossEntropyLoss(weight=torch.ones(3)))
    plain.dls.device = "meta"
    plain.create_opt()
    plain("before_fit")
    assert plain.loss_func.weight.device.type == "meta"


def test_validate_and_get_preds_move_the_model_to_the_loaders_device(make_learner):
    learn = make_learner()
    moves = []
    real_to = learn.model.to

    def spy(*args, **kwargs):
        moves.append(torch.device(args[0]) if args else kwargs.get("device"))
        return real_to(*args, **kwargs)

    learn.model.to = spy
    learn.dls.device = "cpu"
    learn.validate()
    learn.get_preds()
    assert moves == [torch.device("cpu")] * 2
