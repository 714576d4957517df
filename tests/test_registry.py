import pytest

from clipgen.errors import ClipgenError
from clipgen.models.registry import clipgen_model_names, create_model, get_tokenizer, list_models, model_config


def test_own_configs_registered():
    assert set(clipgen_model_names()) == {"RN-tiny", "RN-small", "ViT-tiny"}
    assert {"RN-tiny", "RN50"} <= set(list_models())


def test_rn_tiny_has_rn50_module_structure():
    model, _, pre = create_model("RN-tiny")
    v = model.visual
    assert type(v).__name__ == "ModifiedResNet"
    for name in ("act1", "act2", "act3", "avgpool", "layer1", "layer2", "layer3", "layer4", "attnpool"):
        assert hasattr(v, name)
    assert pre.transforms[0].size == 64


@pytest.mark.slow
def test_override_config_recreates_architecture():
    cfg = model_config("RN-tiny")
    cfg["embed_dim"] = 32
    model, _, _ = create_model("RN-tiny", model_config_override=cfg)
    assert model.visual.attnpool.c_proj.out_features == 32
    assert get_tokenizer("RN-tiny", cfg).context_length == 32


def test_unknown_model():
    with pytest.raises(ClipgenError, match="unknown model 'RN-tiniest'.*RN-tiny"):
        model_config("RN-tiniest")
