import pytest
import torch

import priorclip
from priorclip.errors import ConfigError
from priorclip.models import create_model, list_models

SMALL = ["priorclip-closed-small", "priorclip-closed-baseline-small", "priorclip-open-small", "priorclip-open-baseline-small"]


def _count(model, trainable=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def test_registry_lists_paper_and_small_models():
    names = list_models()
    for name in SMALL + ["priorclip-closed", "priorclip-closed-baseline", "priorclip-open", "priorclip-open-baseline"]:
        assert name in names
    assert priorclip.list_models() == names


@pytest.mark.slow
def test_paper_configs_have_the_released_parameter_counts():
    closed = create_model("priorclip-closed")
    assert _count(closed) == 184_642_492
    assert _count(closed, trainable=True) == 161_134_460  # prior (ResNet-50 trunk) frozen
    del closed
    assert _count(create_model("priorclip-open")) == 188_939_105


@pytest.mark.parametrize("name", SMALL)
def test_small_models_encode_and_batch_one_matches(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.model_config["vision_cfg"]["image_size"]
    images = torch.randn(3, 3, size, size)
    tokens = model.tokenize(["three planes parked near a runway", "a river", "two rows of red cars"])
    with torch.no_grad():
        fi, ft = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
        assert fi.shape == (3, model.embed_dim) and ft.shape == (3, model.embed_dim)
        assert torch.allclose(fi.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(model.encode_image(images[1:2], normalize=True), fi[1:2], atol=1e-5)
        assert torch.allclose(model.encode_text(tokens[2:3], normalize=True), ft[2:3], atol=1e-5)


def test_prior_is_frozen_by_default_and_can_be_trained():
    model = create_model("priorclip-closed-small")
    assert not any(p.requires_grad for p in model.prior.parameters())
    model.train()
    assert not model.prior.model.training  # BatchNorm statistics stay fixed
    model = create_model("priorclip-closed-small", prior_cfg={"frozen": False})
    assert all(p.requires_grad for p in model.prior.parameters())


def test_soft_belief_variant_keeps_all_tokens():
    model = create_model("priorclip-closed-small", pae_cfg={"belief": "soft", "soft_weighting": "rank"}).eval()
    size = model.model_config["vision_cfg"]["image_size"]
    with torch.no_grad():
        tokens = model.vision_proj(model.visual(torch.randn(2, 3, size, size)))
        prior = model.conv_proj(model.prior(torch.randn(2, 3, size, size)))
        assert model.spatial_pae.select(tokens, prior).shape == tokens.shape


@pytest.mark.parametrize("switch", ["spatial", "temporal"])
def test_pae_ablation_switches_fall_back_to_the_baseline_side(switch):
    """pae_cfg.spatial / temporal false: that side is the baseline's normalize(proj(token 0)) (no
    prior tower at all without Spatial-PAE); the other side keeps its PAE."""
    torch.manual_seed(0)
    full = create_model("priorclip-closed-small").eval()
    cut = create_model("priorclip-closed-small", pae_cfg={switch: False}).eval()
    assert cut.load_state_dict(full.state_dict(), strict=False).unexpected_keys  # the dropped modules' keys
    names = {n.split(".")[0] for n, _ in cut.named_parameters()}
    dropped = {"spatial": {"prior", "conv_proj", "spatial_pae"}, "temporal": {"temporal_pae"}}[switch]
    assert not names & dropped and names >= {"visual", "text", "vision_proj", "text_proj"}
    size = full.model_config["vision_cfg"]["image_size"]
    images, tokens = torch.randn(2, 3, size, size), full.tokenize(["two planes", "a river beside a farm"])
    with torch.no_grad():
        img, txt = cut.encode_image(images), cut.encode_text(tokens)
        base_img = torch.nn.functional.normalize(full.vision_proj(full.visual(images)[:, 0]), dim=-1)
        base_txt = torch.nn.functional.normalize(full.text_proj(full.text(tokens)[:, 0]), dim=-1)
        same_img, same_txt = (base_img, full.encode_text(tokens)) if switch == "spatial" else \
            (full.encode_image(images), base_txt)
    assert torch.allclose(img, same_img, atol=1e-6) and torch.allclose(txt, same_txt, atol=1e-6)
    assert not torch.allclose(img if switch == "spatial" else txt,
                              full.encode_image(images) if switch == "spatial" else full.encode_text(tokens), atol=1e-3)
    with pytest.raises(ConfigError, match="pae_cfg.spatial"):
        create_model("priorclip-closed-small", pae_cfg={"spatial": "no"})


def test_overrides_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'pae_cfg.filter_size'"):
        create_model("priorclip-closed-small", pae_cfg={"filter_sise": 3})
    with pytest.raises(ConfigError, match="expects int"):
        create_model("priorclip-closed-small", embed_dim="big")
    with pytest.raises(ConfigError, match="filter_size=99 is larger than the 17 visual tokens"):
        create_model("priorclip-closed-small", pae_cfg={"filter_size": 99})
    with pytest.raises(ConfigError, match="does not divide"):
        create_model("priorclip-closed-small", pae_cfg={"heads": 5})
    with pytest.raises(ConfigError, match="did you mean"):
        create_model("priorclip-closed-smal")


def test_user_config_can_be_added(tmp_path):
    import json

    from priorclip.models import add_model_config, get_model_config

    cfg = get_model_config("priorclip-open-baseline-small")
    cfg.pop("name")
    cfg["embed_dim"] = 64
    (tmp_path / "my-clip.json").write_text(json.dumps(cfg))
    add_model_config(tmp_path / "my-clip.json")
    assert create_model("my-clip").embed_dim == 64


def test_vit_alternative_vision_backbone():
    """A timm ViT instead of Swin-T: the class token is the global token, patches follow."""
    model = create_model("priorclip-closed-small", vision_cfg={"backbone": "vit_tiny_patch16_224", "image_size": 64,
                                                               "backbone_kwargs": {"depth": 2}},
                         pae_cfg={"filter_size": 10}).eval()
    assert model.visual.width == 192 and model.visual.num_tokens(64) == 1 + 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.visual(x)
        features = model.visual.model.forward_features(x)
        assert torch.equal(tokens[:, 0], features[:, 0])  # class token first
        assert torch.equal(tokens[:, 1:], features[:, model.visual.num_prefix_tokens:])
        emb = model.encode_image(x)
    assert emb.shape == (2, model.embed_dim)
