"""clipgen.training.supervised_worker: the training process's optimiser groups and seeding."""

import random

import numpy as np
import torch

from clipgen.models.supervised import create_supervised
from clipgen.training.supervised_worker import param_groups, seed_everything


def test_param_groups_exempt_norms_and_biases():
    model, _, _ = create_supervised("RN-tiny")
    no_decay, decay = param_groups(model)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert nd | d == set(names.values()) and not nd & d
    assert "head.bias" in nd and "visual.bn1.weight" in nd and "visual.bn1.bias" in nd
    assert "head.weight" in d and "visual.conv1.weight" in d
    assert all(model.get_parameter(n).ndim >= 2 for n in d)


def test_seed_zero_is_seeded():
    seed_everything(0)
    a = (torch.rand(3), np.random.rand(), random.random())
    torch.rand(5)
    seed_everything(0)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
