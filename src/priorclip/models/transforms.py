"""Image preprocessing for PriorCLIP: the evaluation transform and the paper's training augmentation.

Evaluation: bicubic resize of the shorter side to `image_size`, center crop, tensor, normalise
(CLIP's preprocessing). Training (Pan et al., 2024): RandomResizedCrop(image_size, scale=(0.5, 1)),
RandomHorizontalFlip, RandAugment(num_ops=2, magnitude=7), tensor, normalise. Remote-sensing scenes
have no canonical "up", so flips/rotations in RandAugment are label-preserving.

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
    "randaug_num_ops": 2,
    "randaug_magnitude": 7,
}


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def image_transform(
    image_size: int | Sequence[int],
    train: bool = False,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    aug: dict | None = None,
) -> Callable:
    """PIL image -> FloatTensor[3,H,W]. `aug` overrides keys of `DEFAULT_AUG` (train only);
    `randaug_num_ops=0` or `hflip=0` switches that step off.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    normalize = T.Normalize(mean=tuple(mean), std=tuple(std))
    if not train:
        if aug:
            raise ValueError("aug= only applies to the training transform (train=True)")
        return T.Compose([
            _to_rgb,
            T.Resize(min(size), interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            normalize,
        ])
    cfg = dict(DEFAULT_AUG)
    unknown = set(aug or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(aug or {})
    steps: list[Callable] = [
        _to_rgb,
        T.RandomResizedCrop(size, scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]),
                            interpolation=InterpolationMode.BICUBIC),
    ]
    if cfg["hflip"]:
        steps.append(T.RandomHorizontalFlip(p=float(cfg["hflip"])))
    if cfg["randaug_num_ops"]:
        steps.append(T.RandAugment(num_ops=int(cfg["randaug_num_ops"]), magnitude=int(cfg["randaug_magnitude"])))
    steps += [T.ToTensor(), normalize]
    return T.Compose(steps)
