import pickle

import open_clip
import pytest
import torch

from priorclip.errors import CheckpointError
from priorclip.models import (create_model, export_open_clip_state_dict, load_checkpoint, load_official_checkpoint,
                              save_checkpoint, train_wordpiece)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["priorclip-closed-small", "priorclip-open-small"])
def test_save_load_roundtrip(tmp_path, name):
    kwargs = {}
    if name.startswith("priorclip-closed"):
        kwargs["tokenizer"] = train_wordpiece(["a plane parked on the runway", "green trees near a river"] * 5, vocab_size=120)
    model = create_model(name, **kwargs)
    save_checkpoint(model, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith(".")} >= {"config.json", "model.safetensors"}
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert _same_weights(model, loaded)
    assert torch.equal(model.tokenize(["a plane near trees"]), loaded.tokenize(["a plane near trees"]))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "missing")
    model = create_model("priorclip-open-baseline-small")
    save_checkpoint(model, tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "c")


def test_pickles_are_refused_by_default_and_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="refused by default"):
        load_official_checkpoint(path, "open", config="priorclip-open-small")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_official_checkpoint(path, "open", config="priorclip-open-small", allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_official_open_checkpoint_wrapped_in_state_dict_with_module_prefix(tmp_path):
    src = create_model("priorclip-open-small")
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in export_open_clip_state_dict(src).items()}}
    torch.save(wrapped, tmp_path / "released.pt")
    loaded = load_official_checkpoint(tmp_path / "released.pt", "open", config="priorclip-open-small", allow_pickle=True)
    assert _same_weights(src, loaded)


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    src = create_model("priorclip-open-small")
    with pytest.raises(CheckpointError, match=r"missing: .*res_visual|shape mismatches"):
        load_official_checkpoint(export_open_clip_state_dict(src), "open", config="priorclip-open",)
    with pytest.raises(CheckpointError, match="cannot load into"):
        load_official_checkpoint(export_open_clip_state_dict(src), "closed", model=create_model("priorclip-open-small"))


def test_open_baseline_exports_a_plain_open_clip_state_dict():
    model = create_model("priorclip-open-baseline-small")
    cfg = model.model_config
    plain = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    plain.load_state_dict(export_open_clip_state_dict(model), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(plain.eval().encode_image(x), model.eval().encode_image(x), atol=1e-6)


def _to_released_closed(model) -> dict:
    """Build a PIR-layout state dict from our closed model (inverse of the converter), so the
    converter is checked on the real name layout: Microsoft Swin (downsample at the end of a
    stage), BERT under text_encoder.bert., ResNet children by index, heads at top level."""
    children = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("visual.model."):
            k = k[len("visual.model."):]
            if "relative_position_index" in k or "attn_mask" in k:
                continue
            if ".downsample." in k:  # timm: layers.{i}.downsample -> Microsoft: layers.{i-1}.downsample
                stage = int(k.split(".")[1])
                k = k.replace(f"layers.{stage}.downsample.", f"layers.{stage - 1}.downsample.")
            out["vision_encoder." + k] = v
        elif k.startswith("text.bert."):
            out["text_encoder.bert." + k[len("text.bert."):]] = v
        elif k.startswith("prior.model."):
            name, _, rest = k[len("prior.model."):].partition(".")
            out[f"conv_encoder.{children[name]}.{rest}"] = v
        elif k.startswith(("spatial_pae.", "temporal_pae.")):
            out[k.split(".", 1)[1]] = v
        else:
            out[k] = v
    return out


def test_official_closed_checkpoint_full_mapping():
    src = create_model("priorclip-closed-small", prior_cfg={"frozen": False})
    released = {"model": _to_released_closed(src)}
    dst = load_official_checkpoint(released, "closed", model=create_model("priorclip-closed-small"))
    assert _same_weights(src, dst)
    assert dst.text.attention_mask is False  # the released code runs BERT unmasked


def test_official_closed_heads_subset_is_strict():
    src = create_model("priorclip-closed-small")
    heads = {k: v for k, v in _to_released_closed(src).items()
             if not k.startswith(("vision_encoder.", "text_encoder.", "conv_encoder."))}
    dst = create_model("priorclip-closed-small")
    load_official_checkpoint(heads, "closed", model=dst, parts="heads")
    assert torch.equal(dst.conv_proj.weight, src.conv_proj.weight)
    heads.pop("head_img.weight")
    with pytest.raises(CheckpointError, match="missing: spatial_pae.head_img.weight"):
        load_official_checkpoint(heads, "closed", model=dst, parts="heads")
