"""The `released` input preset (issue #15), pinned from first principles.

Closed domain (PIR on X-VLM's pipeline): CLIP mean/std, bicubic 224x224 squash, X-VLM's
RandomAugment(2, 7) over 10 ops, X-VLM's caption cleaning (30 words), BERT WordPiece of at most 47
tokens padded to the batch's longest and run without an attention mask. Open domain: open_clip's
own preprocessing. Our own models keep ours; official checkpoints get `released` and keep it
through save/load.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from priorclip.errors import ConfigError
from priorclip.models import (WordPieceTokenizer, build_model, clean_caption, create_model, export_open_clip_state_dict,
                              get_model_config, load_checkpoint, load_official_checkpoint, save_checkpoint)
from priorclip.models.checkpoints import closed_head_keys
from priorclip.models.preprocess import PREPROCESS_PRESETS, apply_preprocess
from priorclip.models.tokenizers import SPECIAL_TOKENS, builtin_char_vocab
from priorclip.models.transforms import transform_from_config
from priorclip.models.xvlm_augment import XVLM_OPS, XVLMRandomAugment, apply_op, op_argument

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WORDS = ["a", "plane", "parked", "near", "the", "runway", "tree", "lined", "road", "river", "isnt", "it", "yes",
         "big", "1", "@", "two"]


def _image(h=200, w=300, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _released_closed(**overrides):
    return create_model("priorclip-closed-small", preprocess="released",
                        tokenizer=WordPieceTokenizer(SPECIAL_TOKENS + WORDS), **overrides).eval()


# ---- captions -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ('A "Big" plane, (parked)! #1: near the ~runway; isn\'t it? *yes*.', "a big plane parked 1 near the runway isnt it yes"),
    ("tree-lined road/river", "tree lined road river"),
    ("  -a- ", "a"),  # hyphens become spaces, then the ends are stripped
    ("a   plane \n\n near\t\tthe runway\n", "a plane near the runway"),  # runs of whitespace -> one space
    ("a\tb", "a\tb"),  # a lone tab is not a run: X-VLM keeps it (BERT splits there anyway)
    ("5% of 3 @ [x] & y", "5% of 3 @ [x] & y"),  # characters outside the list stay
    ("?!...", ""),  # cleans to nothing
])
def test_clean_caption_tricky_captions(raw, clean):
    assert clean_caption(raw) == clean


def test_clean_caption_keeps_the_first_30_words():
    words = [f"w{i}" for i in range(40)]
    assert clean_caption(" ".join(words)) == " ".join(words[:30])
    assert clean_caption("one, two; three", max_words=2) == "one two"
    assert clean_caption(" ".join(words), max_words=None) == " ".join(words)


def test_released_tokens_are_cleaned_padded_to_the_longest_and_truncated_at_47():
    model = _released_closed()
    ids = {t: i for i, t in enumerate(model.tokenizer.vocab)}
    cls, sep = ids["[CLS]"], ids["[SEP]"]
    tokens = model.tokenize(["A plane.", "Tree-lined road/river", "?!"])
    # [CLS] tree lined road river [SEP] is the longest row: 6 tokens, every row padded to it with id 0
    assert tokens.shape == (3, 6)
    assert tokens[0].tolist() == [cls, ids["a"], ids["plane"], sep, 0, 0]
    assert tokens[1].tolist() == [cls, ids["tree"], ids["lined"], ids["road"], ids["river"], sep]
    assert tokens[2].tolist() == [cls, sep, 0, 0, 0, 0]  # a caption that cleans to "" is [CLS] [SEP]
    assert model.tokenize(["a plane"]).shape == (1, 4)  # alone: no padding at all
    # 40 words of 3 characters: 30 words survive cleaning, 90 word pieces: cut to 47 with [SEP] last
    char = create_model("priorclip-closed-small", preprocess="released")
    long = char.tokenize([" ".join(["abc"] * 40)])
    assert long.shape == (1, 47) and long[0, -1] == char.tokenizer.vocab.index("[SEP]")
    # ours: no cleaning (punctuation is tokenised), 32 tokens every time
    ours = create_model("priorclip-closed-small", tokenizer=WordPieceTokenizer(SPECIAL_TOKENS + WORDS + ["."]))
    assert ours.tokenize(["A plane."]).shape == (1, 32) and ours.tokenize(["A plane."])[0, 3] == ours.tokenizer.vocab.index(".")


def test_no_attention_mask_reaches_bert_under_the_released_preset():
    seen = []
    for model in (_released_closed(), create_model("priorclip-closed-small").eval()):
        hook = model.text.bert.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")),
                                                         with_kwargs=True)
        with torch.no_grad():
            model.encode_text(model.tokenize(["a plane", "a plane parked near the runway"]))
        hook.remove()
    assert seen[0] is None and seen[1] is not None
    # the consequence, as released: padding is attended, so a caption's embedding depends on its batch
    model = _released_closed()
    with torch.no_grad():
        alone = model.encode_text(model.tokenize(["a plane"]))
        batched = model.encode_text(model.tokenize(["a plane", "a plane parked near the runway near the river"]))[:1]
    assert (alone - batched).abs().max() > 1e-4


# ---- images ---------------------------------------------------------------------------------

def test_released_closed_test_transform_is_a_bicubic_squash_with_clip_statistics():
    config = apply_preprocess(get_model_config("priorclip-closed"), "released")
    model = build_model(config, build_backbones=False)  # the paper's 224 px config, heads only: cheap
    img = _image()
    expected = T.Compose([T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(CLIP_MEAN, CLIP_STD)])(img)
    got = model.image_transform()(img)
    assert got.shape == (3, 224, 224)
    assert (got - expected).abs().max() <= 1e-6
    assert config["image_cfg"]["mean"] == list(CLIP_MEAN) and config["image_cfg"]["std"] == list(CLIP_STD)
    # ours crops the centre of the shorter side instead, with ImageNet statistics
    ours = build_model(get_model_config("priorclip-closed"), build_backbones=False).image_transform()(img)
    assert ours.shape == (3, 224, 224) and (ours - expected).abs().max() > 0.1


def test_released_closed_train_transform_steps():
    tf = create_model("priorclip-closed-small", preprocess="released").image_transform(train=True)
    steps = tf.transforms
    rrc = next(t for t in steps if isinstance(t, T.RandomResizedCrop))
    assert rrc.scale == (0.5, 1.0) and rrc.interpolation == InterpolationMode.BICUBIC and rrc.size == (128, 128)
    assert next(t for t in steps if isinstance(t, T.RandomHorizontalFlip)).p == 0.5
    aug = next(t for t in steps if isinstance(t, XVLMRandomAugment))
    assert (aug.num_ops, aug.magnitude, aug.prob) == (2, 7, 0.5)
    assert not any(isinstance(t, T.RandAugment) for t in steps)
    assert [type(t) for t in steps].index(XVLMRandomAugment) > [type(t) for t in steps].index(T.RandomHorizontalFlip)
    torch.manual_seed(0)
    out = tf(_image())
    assert out.shape == (3, 128, 128)


def test_released_open_preset_is_open_clips_own_preprocessing():
    from open_clip.transform import image_transform as open_clip_transform

    model = create_model("priorclip-open-small", preprocess="released")
    img = _image(seed=3)
    size = model.model_config["vision_cfg"]["image_size"]
    want_eval = open_clip_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(img)
    assert (model.image_transform()(img) - want_eval).abs().max() <= 1e-6
    torch.manual_seed(5)
    want_train = open_clip_transform(size, is_train=True, mean=CLIP_MEAN, std=CLIP_STD)(img)
    torch.manual_seed(5)
    got_train = model.image_transform(train=True)(img)
    assert torch.equal(got_train, want_train)  # RandomResizedCrop(0.9-1) alone, same random draws
    assert model.tokenize(["a plane"]).shape == (1, model.model_config["text_cfg"]["context_length"])


# ---- X-VLM RandomAugment --------------------------------------------------------------------

def test_the_op_set_is_exactly_the_ten_released_ops():
    assert set(XVLM_OPS) == {"Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                             "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
    assert len(XVLM_OPS) == 10
    with pytest.raises(ValueError, match="unknown X-VLM augmentation op"):
        XVLMRandomAugment(ops=["Solarize"])
    with pytest.raises(ValueError, match="0-10 scale"):
        XVLMRandomAugment(magnitude=15)


def test_magnitude_mapping_from_the_0_10_scale():
    assert op_argument("Brightness", 7) == pytest.approx(1.36) and op_argument("Sharpness", 7) == pytest.approx(1.36)
    assert op_argument("Brightness", 7, sign=-1) == pytest.approx(1.36)  # no sign for the enhancers
    assert op_argument("ShearX", 7) == pytest.approx(0.21) and op_argument("ShearY", 7, sign=-1) == pytest.approx(-0.21)
    assert op_argument("TranslateX", 7) == pytest.approx(7.0) and op_argument("TranslateY", 7, sign=-1) == pytest.approx(-7.0)
    assert op_argument("Rotate", 7) == pytest.approx(21.0) and op_argument("Rotate", 10, sign=-1) == pytest.approx(-30.0)
    for name in ("Identity", "AutoContrast", "Equalize"):
        assert op_argument(name, 7) is None


def test_each_op_is_applied_as_specified():
    img = _image(64, 80, seed=1)
    a = np.asarray(img).astype(np.int64)
    out = lambda name, arg: np.asarray(apply_op(img, name, arg)).astype(np.int64)  # noqa: E731
    assert np.array_equal(out("Identity", None), a)
    # Brightness: v * factor in float32, clipped to 255, truncated
    assert np.array_equal(out("Brightness", 1.36), np.minimum(255, np.floor(a.astype(np.float32) * np.float32(1.36))))
    # Translate by +7 px: content moves left / up, 7 columns / rows of grey fill come in
    tx = out("TranslateX", 7.0)
    assert np.array_equal(tx[:, :-7], a[:, 7:]) and (tx[:, -7:] == 128).all()
    ty = out("TranslateY", -7.0)
    assert np.array_equal(ty[7:], a[:-7]) and (ty[:7] == 128).all()
    # AutoContrast: each channel stretched to 0..255
    low = Image.fromarray((50 + np.asarray(img) // 5).astype(np.uint8))  # values 50..101
    ac = np.asarray(apply_op(low, "AutoContrast", None))
    assert all(ac[..., c].min() == 0 and ac[..., c].max() == 255 for c in range(3))
    # Equalize: X-VLM's table, per channel: step = (pixels - count of the last used value) // 255,
    # lut[i] = (step // 2 + pixels below i) // step
    eq = out("Equalize", None)
    for c in range(3):
        hist = np.bincount(a[..., c].ravel(), minlength=256)
        step = (hist.sum() - hist[np.nonzero(hist)[0][-1]]) // 255
        lut = np.clip((step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step, 0, 255)
        assert np.array_equal(eq[..., c], lut[a[..., c]])
    # Sharpness: interior = blend of the 3x3 [1 1 1; 1 5 1; 1 1 1] / 13 smoothing and the image, borders kept
    sh = out("Sharpness", 1.36)
    pad = a.astype(np.float64)
    smooth = sum(pad[1 + dy:pad.shape[0] - 1 + dy, 1 + dx:pad.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    smooth = np.round((smooth + 4 * pad[1:-1, 1:-1]) / 13)
    want = np.clip(smooth + 1.36 * (pad[1:-1, 1:-1] - smooth), 0, 255)
    assert np.abs(sh[1:-1, 1:-1] - want).max() <= 1
    assert np.array_equal(sh[0], a[0]) and np.array_equal(sh[:, -1], a[:, -1])


def test_geometric_ops_follow_x_vlm_geometry():
    # Rotate: positive degrees turn counter-clockwise about the centre; corners fill with grey
    grid = np.zeros((41, 41, 3), np.uint8)
    grid[20, 30:] = 255  # a bar pointing right from the centre
    rot = np.asarray(apply_op(Image.fromarray(grid), "Rotate", 90.0))
    assert rot[5:10, 20].min() > 200 and rot[20, 30:].max() < 60  # now points up
    assert (np.asarray(apply_op(_image(40, 40), "Rotate", 21.0))[0, 0] == 128).all()
    # ShearX s: source x = x - s*y (X-VLM's cv2 matrix [[1, s, 0], [0, 1, 0]]): a vertical line at
    # x=10 lands at x = 10 + s*y (searched right of x=9: the grey fill comes in on the left)
    line = np.zeros((60, 60, 3), np.uint8)
    line[:, 10] = 255
    sheared = np.asarray(apply_op(Image.fromarray(line), "ShearX", 0.21))[..., 0]
    for y in (0, 20, 40):
        assert abs(9 + int(np.argmax(sheared[y, 9:])) - (10 + 0.21 * y)) <= 1
        assert (sheared[y, : max(0, int(0.21 * y) - 1)] == 128).all()
    line_h = np.zeros((60, 60, 3), np.uint8)
    line_h[10, :] = 255
    sheared_y = np.asarray(apply_op(Image.fromarray(line_h), "ShearY", -0.21))[..., 0]
    for x in (20, 40):
        assert abs(int(np.argmax(sheared_y[:12, x])) - (10 - 0.21 * x)) <= 1


def test_sampling_two_ops_with_replacement_each_applied_with_probability_half(monkeypatch):
    import priorclip.models.xvlm_augment as xa

    calls = []
    monkeypatch.setattr(xa, "apply_op", lambda img, name, arg: calls.append((name, arg)) or img)
    aug = XVLMRandomAugment(2, 7)
    torch.manual_seed(0)
    n = 3000
    for _ in range(n):
        aug(Image.new("RGB", (8, 8)))
    names = [c[0] for c in calls]
    assert set(names) == set(XVLM_OPS)  # every op, nothing else
    assert abs(len(calls) / (2 * n) - 0.5) < 0.03  # each drawn op applied half the time
    counts = np.array([names.count(op) for op in XVLM_OPS])
    assert counts.min() > 0.7 * counts.mean()  # uniform over the ten
    for name, magnitude in (("TranslateX", 7.0), ("ShearY", 0.21), ("Rotate", 21.0)):
        args = {round(a, 6) for op, a in calls if op == name}
        assert args == {magnitude, -magnitude}  # random sign, fixed size
    assert {round(a, 6) for op, a in calls if op == "Brightness"} == {1.36}
    # the same torch seed gives the same augmentation (the trainer seeds each sample)
    monkeypatch.undo()
    img = _image(48, 48, seed=2)
    torch.manual_seed(7)
    first = [np.asarray(aug(img)) for _ in range(5)]
    torch.manual_seed(7)
    assert all(np.array_equal(x, np.asarray(aug(img))) for x in first)


# ---- presets in configs and checkpoints -----------------------------------------------------

def test_our_models_keep_our_defaults():
    model = create_model("priorclip-closed-small")
    assert model.preprocess == "ours" and "preprocess" not in model.model_config
    assert model.tokenize(["a"]).shape == (1, 32) and model.text.attention_mask is True
    steps = [type(t) for t in model.image_transform().transforms]
    assert T.CenterCrop in steps
    assert T.RandAugment in [type(t) for t in model.image_transform(train=True).transforms]
    assert model.model_config["image_cfg"]["mean"] == [0.485, 0.456, 0.406]
    # switching back and forth is lossless
    model.set_preprocess("released")
    assert model.text.attention_mask is False and model.tokenize(["a"]).shape == (1, 3)
    model.set_preprocess("ours")
    assert model.text.attention_mask is True and model.tokenize(["a"]).shape == (1, 32)
    assert T.CenterCrop in [type(t) for t in model.image_transform().transforms]


def test_preset_values_are_data_and_explicit_overrides_win():
    cfg = create_model("priorclip-closed-small", preprocess="released", text_cfg={"padding": "max_length"}).model_config
    assert cfg["preprocess"] == "released"
    assert cfg["text_cfg"]["padding"] == "max_length" and cfg["text_cfg"]["context_length"] == 47
    assert cfg["image_cfg"]["resize_mode"] == "squash" and cfg["image_cfg"]["aug"]["randaug"] == "xvlm"
    assert PREPROCESS_PRESETS["closed"]["released"]["text_cfg"] == {
        "context_length": 47, "padding": "longest", "caption_cleaning": "xvlm", "max_words": 30, "attention_mask": False}
    with pytest.raises(ConfigError, match="'preprocess' must be one of"):
        create_model("priorclip-closed-small", preprocess="paper")
    with pytest.raises(ConfigError, match="text_cfg.padding"):
        create_model("priorclip-closed-small", text_cfg={"padding": "shortest"})
    with pytest.raises(ConfigError, match="image_cfg.resize_mode"):
        create_model("priorclip-open-small", image_cfg={"resize_mode": "crop"})
    with pytest.raises(ConfigError, match="image_cfg.aug"):
        create_model("priorclip-open-small", image_cfg={"aug": {"mixup": 1}})


def _released_heads(model) -> dict:
    """Our closed heads under the PIR names (spatial_pae./temporal_pae. prefixes dropped)."""
    state = model.state_dict()
    return {k.split(".", 1)[1] if k.startswith(("spatial_pae.", "temporal_pae.")) else k: state[k]
            for k in closed_head_keys(model)}


def test_official_checkpoints_are_marked_released_and_keep_it_through_save_and_load(tmp_path):
    # closed: the released heads into a full small model
    src = create_model("priorclip-closed-small")
    dst = create_model("priorclip-closed-small", tokenizer=WordPieceTokenizer(SPECIAL_TOKENS + WORDS))
    assert dst.preprocess == "ours"
    load_official_checkpoint(_released_heads(src), "closed", model=dst, parts="heads")
    assert dst.preprocess == "released" and dst.text.attention_mask is False
    assert dst.model_config["image_cfg"]["mean"] == list(CLIP_MEAN)
    save_checkpoint(dst, tmp_path / "closed")
    saved = json.loads((tmp_path / "closed" / "config.json").read_text())["config"]
    assert saved["preprocess"] == "released" and saved["text_cfg"]["padding"] == "longest"
    again = load_checkpoint(tmp_path / "closed").eval()
    assert again.preprocess == "released" and again.text.attention_mask is False
    texts = ["A plane, parked!", "tree-lined road/river near the runway"]
    assert torch.equal(again.tokenize(texts), dst.tokenize(texts))
    img = _image(seed=4)
    assert torch.equal(again.image_transform()(img), dst.image_transform()(img))
    assert any(isinstance(t, XVLMRandomAugment) for t in again.image_transform(train=True).transforms)
    # heads-only models (the conformance fixtures' kind) are marked too
    heads = build_model(get_model_config("priorclip-closed-small"), build_backbones=False)
    load_official_checkpoint(_released_heads(heads), "closed", model=heads, parts="heads")
    assert heads.preprocess == "released"
    # open: by the Python API and by `priorclip convert`
    from safetensors.torch import save_file

    from priorclip.cli.main import main

    open_src = create_model("priorclip-open-small")
    opened = load_official_checkpoint(export_open_clip_state_dict(open_src), "open", config="priorclip-open-small")
    assert opened.preprocess == "released"
    save_file({k: v.contiguous() for k, v in export_open_clip_state_dict(open_src).items()}, str(tmp_path / "rel.safetensors"))
    assert main(["convert", str(tmp_path / "rel.safetensors"), "--kind", "open", "--config", "priorclip-open-small",
                 "--out", str(tmp_path / "open")]) == 0
    converted = load_checkpoint(tmp_path / "open")
    assert converted.preprocess == "released"
    assert converted.model_config["image_cfg"]["aug"] == {"scale": [0.9, 1.0], "hflip": 0, "randaug_num_ops": 0}


def test_transform_from_config_is_what_the_model_uses():
    cfg = apply_preprocess(get_model_config("priorclip-closed-small"), "released")
    img = _image(seed=6)
    model = build_model(cfg, build_backbones=False)
    assert torch.equal(transform_from_config(cfg)(img), model.image_transform()(img))
    # recipe-level augmentation options apply on top of the model's own
    tf = model.image_transform(train=True, aug={"randaug_num_ops": 0})
    assert not any(isinstance(t, XVLMRandomAugment) for t in tf.transforms)
    assert next(t for t in tf.transforms if isinstance(t, T.RandomResizedCrop)).scale == (0.5, 1.0)


def test_builtin_vocabulary_still_works_with_the_released_tokenizer():
    tok = WordPieceTokenizer(builtin_char_vocab(), context_length=47, padding="longest", caption_cleaning="xvlm",
                             max_words=30)
    assert tok(["Hi!"]).shape == (1, 4)  # [CLS] h ##i [SEP]
    with pytest.raises(ConfigError, match="text_cfg.padding"):
        WordPieceTokenizer(padding="left")
    with pytest.raises(ConfigError, match="caption_cleaning"):
        WordPieceTokenizer(caption_cleaning="blip")
