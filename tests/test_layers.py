import pytest
import torch

from clipgen.errors import ClipgenError
from clipgen.models.layers import get_module, layer_catalogue, layer_modules, select_layers
from clipgen.models.registry import create_model


@pytest.mark.slow
def test_resnet_catalogue_names_and_shapes():
    model, _, _ = create_model("RN-tiny")
    cat = layer_catalogue(model.visual)
    assert [s.name for s in cat] == ["act1", "act2", "act3", "avgpool", "resblock1", "resblock2", "resblock3",
                                     "resblock4", "attnpool"]
    by = {s.name: s for s in cat}
    assert by["act1"].shape == (8, 32, 32) and by["avgpool"].shape == (16, 16, 16)
    assert by["resblock4"].shape == (512, 2, 2) and by["attnpool"].shape == (64,) and by["attnpool"].kind == "vector"


@pytest.mark.slow
def test_rn50_catalogue_is_the_papers():
    model, _, _ = create_model("RN50")
    names = [n for n, _ in layer_modules(model.visual)]
    assert len(names) == 21 and names[3] == "avgpool" and names[-2] == "resblock16"


@pytest.mark.slow
def test_hooked_output_equals_manual_stem():
    """The act3 hook output equals recomputing the stem by hand (in-place ReLUs do not fool hooks)."""
    model, _, _ = create_model("RN-tiny")
    v = model.visual.eval()
    x = torch.randn(2, 3, 64, 64)
    got = {}
    h = get_module(v, "act3").register_forward_hook(lambda m, i, o: got.__setitem__("a", o.clone()))
    with torch.no_grad():
        v(x)
        h.remove()
        ref = torch.relu(v.bn3(v.conv3(torch.relu(v.bn2(v.conv2(torch.relu(v.bn1(v.conv1(x)))))))))
    torch.testing.assert_close(got["a"], ref)


def test_vit_catalogue():
    model, _, _ = create_model("ViT-tiny")
    cat = layer_catalogue(model.visual)
    assert [s.name for s in cat] == ["patch_embed", "resblock1", "resblock2", "resblock3", "resblock4", "ln_post"]
    assert cat[1].kind == "tokens" and cat[1].shape == (65, 128)


@pytest.mark.slow
def test_select_layers():
    model, _, _ = create_model("RN-tiny")
    cat = layer_catalogue(model.visual)
    assert select_layers(cat, "attnpool,act1") == ["act1", "attnpool"]
    assert select_layers(cat, "all")[-1] == "embedding"
    with pytest.raises(ClipgenError, match="unknown layer.*valid: act1"):
        select_layers(cat, "layer9")
