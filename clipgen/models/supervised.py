"""The paper's supervised baseline: an open_clip image tower (random init) + ReLU + linear head.

Labels live in a joint space of 1000 ImageNet + 345 DomainNet classes (1345 logits); evaluation takes the
argmax over the last 345 (the DomainNet head).
"""

from __future__ import annotations

from typing import Any

NUM_IMAGENET = 1000
NUM_DOMAINNET = 345
NUM_JOINT = NUM_IMAGENET + NUM_DOMAINNET


def create_supervised(model_name: str, num_classes: int = NUM_JOINT, model_config: dict[str, Any] | None = None):
    """``(classifier, preprocess_train, preprocess_val)``: the CLIP image tower of ``model_name`` with a head."""
    import torch
    from torch import nn

    from clipgen.models.registry import create_model
    from clipgen.models.registry import model_config as get_config

    cfg = model_config or get_config(model_name)
    clip, pre_train, pre_val = create_model(model_name, model_config_override=cfg)
    embed_dim = int(cfg["embed_dim"])

    class SupervisedClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = clip.visual
            self.head = nn.Linear(embed_dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.visual(x)))

    return SupervisedClassifier(), pre_train, pre_val
