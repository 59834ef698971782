"""Image preprocessing for PriorCLIP: the evaluation transform and the paper's training augmentation.

Evaluation: bicubic resize to `image_size`, tensor, normalise. `resize_mode` "shortest" (ours,
open_clip's): the shorter side to `image_size`, then a centre crop; "squash" (the released PIR
code, issue #15): both sides to `image_size`, no crop. Training (Pan et al., 2024):
RandomResizedCrop(image_size, scale=(0.5, 1)), RandomHorizontalFlip, RandAugment(num_ops=2,
magnitude=7), tensor, normalise; `randaug` "torchvision" (ours: torchvision's 14 ops, magnitude on
its 31-step scale) or "xvlm" (the released PIR code's 10 ops on a 0-10 scale, `xvlm_augment.py`).
Remote-sensing scenes have no canonical "up", so flips/rotations in RandAugment are
label-preserving.

A model's config carries its choices (`image_cfg`: mean, std, resize_mode, aug), so
`transform_from_config` builds the transforms a checkpoint was trained with.

Depends only on torchvision, so the model library stays importable on its own.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# Same values as open_clip.constants (checked by the tests).
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_AUG = {
    "scale": (0.5, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "randaug": "torchvision",  # or "xvlm" (the released PIR code's RandomAugment)
    "randaug_num_ops": 2,
    "randaug_magnitude": 7,  # on the chosen RandAugment's own scale: torchvision 0-30, xvlm 0-10
}
RESIZE_MODES = ("shortest", "squash")
RANDAUGS = ("torchvision", "xvlm")


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def image_transform(
    image_size: int | Sequence[int],
    train: bool = False,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    aug: dict | None = None,
    resize_mode: str = "shortest",
) -> Callable:
    """PIL image -> FloatTensor[3,H,W]. `aug` overrides keys of `DEFAULT_AUG` (train only);
    `randaug_num_ops=0` or `hflip=0` switches that step off. `resize_mode` applies to evaluation.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    normalize = T.Normalize(mean=tuple(mean), std=tuple(std))
    if not train:
        if aug:
            raise ValueError("aug= only applies to the training transform (train=True)")
        resize = [T.Resize(size, interpolation=InterpolationMode.BICUBIC)] if resize_mode == "squash" else \
            [T.Resize(min(size), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size)]
        return T.Compose([_to_rgb, *resize, T.ToTensor(), normalize])
    cfg = dict(DEFAULT_AUG)
    unknown = set(aug or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(aug or {})
    if cfg["randaug"] not in RANDAUGS:
        raise ValueError(f"augmentation option randaug must be one of {RANDAUGS}, got {cfg['randaug']!r}")
    steps: list[Callable] = [
        _to_rgb,
        T.RandomResizedCrop(size, scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]),
                            interpolation=InterpolationMode.BICUBIC),
    ]
    if cfg["hflip"]:
        steps.append(T.RandomHorizontalFlip(p=float(cfg["hflip"])))
    if cfg["randaug_num_ops"] and cfg["randaug"] == "xvlm":
        from .xvlm_augment import XVLMRandomAugment

        steps.append(XVLMRandomAugment(num_ops=int(cfg["randaug_num_ops"]), magnitude=cfg["randaug_magnitude"]))
    elif cfg["randaug_num_ops"]:
        steps.append(T.RandAugment(num_ops=int(cfg["randaug_num_ops"]), magnitude=int(cfg["randaug_magnitude"])))
    steps += [T.ToTensor(), normalize]
    return T.Compose(steps)


def transform_from_config(config: dict, train: bool = False, aug: dict | None = None) -> Callable:
    """The image transform a model config describes: `vision_cfg.image_size` and `image_cfg`'s
    mean, std, resize_mode and aug (the model's own augmentation options, under `aug`'s)."""
    icfg = config.get("image_cfg") or {}
    size = config["vision_cfg"].get("image_size", 224)
    mean, std = icfg.get("mean", OPENAI_DATASET_MEAN), icfg.get("std", OPENAI_DATASET_STD)
    options = {**(icfg.get("aug") or {}), **(aug or {})} if train else None
    return image_transform(size, train=train, mean=mean, std=std, aug=options,
                           resize_mode=icfg.get("resize_mode", "shortest"))
