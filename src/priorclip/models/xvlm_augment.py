"""The released PIR code's RandAugment: X-VLM's `RandomAugment(2, 7, augs=[10 ops])` (issue #15).

Not torchvision's RandAugment (14 ops, magnitude on a 31-step scale, every drawn op applied): the
PIR code, built on X-VLM's data pipeline, draws `num_ops` ops **with replacement** from the ten
below, applies each with probability 0.5, at magnitude `m` on a 0-10 scale. Issue #15 gives the op
set, N=2 and m=7; how `m` maps to each op's argument is our reading of X-VLM's (and ALBEF's, which
it copies) `dataset/randaugment.py`, which the issue does not restate:

| op | argument at magnitude m | at m = 7 |
|---|---|---|
| Identity, AutoContrast, Equalize | none | |
| Brightness, Sharpness | factor m/10 * 1.8 + 0.1 (no random sign: m > 5 always brightens / sharpens) | 1.36 |
| ShearX, ShearY | shear m/10 * 0.3, random sign | +-0.21 |
| TranslateX, TranslateY | m/10 * 10 **pixels** (absolute, whatever the image size), random sign | +-7 px |
| Rotate | m/10 * 30 degrees, random sign | +-21 deg |

Geometric ops fill with grey (128, 128, 128) and sample bilinearly, as X-VLM's cv2.warpAffine
calls do. X-VLM works on numpy arrays through OpenCV; we use PIL (no OpenCV dependency), whose
AutoContrast / Equalize / Brightness are the functions X-VLM's reproduce. Two differences we keep
on purpose: Sharpness clips to 0-255 where X-VLM's float-to-uint8 cast wraps out-of-range values
(an overflow artefact, platform-dependent), and the affine ops may differ by up to half a pixel
(PIL samples at pixel centres, OpenCV at integer coordinates).

Randomness comes from torch's generator (X-VLM uses numpy's), so the trainer's per-sample seeding
(seed, epoch, index) makes each sample's augmentation reproducible.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10
TRANSLATE_PIXELS = 10
FILL = (128, 128, 128)
XVLM_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
            "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _signed(value: float) -> float:
    return -value if torch.rand(()).item() < 0.5 else value


def op_argument(name: str, magnitude: float, sign: float = 1.0) -> float | None:
    """The argument op `name` gets at `magnitude` (0-10 scale), times `sign` for the signed ops."""
    level = magnitude / MAX_LEVEL
    if name in ("Identity", "AutoContrast", "Equalize"):
        return None
    if name in ("Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3
    if name in ("TranslateX", "TranslateY"):
        return sign * level * TRANSLATE_PIXELS
    if name == "Rotate":
        return sign * level * 30
    raise ValueError(f"unknown X-VLM augmentation op {name!r}; known: {XVLM_OPS}")


def apply_op(img: Image.Image, name: str, arg: float | None) -> Image.Image:
    """Apply one op to an RGB image with the argument from `op_argument`."""
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Brightness":
        # X-VLM: a float32 lookup table value * factor, clipped, truncated to uint8
        table = (np.arange(256, dtype=np.float32) * np.float32(arg)).clip(0, 255).astype(np.uint8)
        return img.point(table.tolist() * len(img.getbands()))
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(arg)
    # Affine ops: PIL's data maps an output pixel to its source. X-VLM's cv2 matrices map source to
    # output, so each is inverted here: ShearX [[1, s, 0], [0, 1, 0]] -> source x = x - s*y, etc.
    if name == "ShearX":
        data = (1, -arg, 0, 0, 1, 0)
    elif name == "ShearY":
        data = (1, 0, 0, -arg, 1, 0)
    elif name == "TranslateX":  # content moves left by arg pixels (X-VLM: source x = x + offset)
        data = (1, 0, arg, 0, 1, 0)
    elif name == "TranslateY":
        data = (1, 0, 0, 0, 1, arg)
    elif name == "Rotate":  # counter-clockwise about the centre, as cv2.getRotationMatrix2D
        return img.rotate(arg, resample=Image.Resampling.BILINEAR, fillcolor=FILL)
    else:
        raise ValueError(f"unknown X-VLM augmentation op {name!r}; known: {XVLM_OPS}")
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=FILL)


class XVLMRandomAugment:
    """Draw `num_ops` ops from `ops` (with replacement); apply each with probability `prob`.

    PIL RGB image in, PIL RGB image out (X-VLM returns the numpy array; ToTensor treats both alike).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 7, ops=XVLM_OPS, prob: float = 0.5):
        unknown = sorted(set(ops) - set(XVLM_OPS))
        if unknown:
            raise ValueError(f"unknown X-VLM augmentation op(s) {unknown}; known: {XVLM_OPS}")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"X-VLM augmentation magnitude is on a 0-{MAX_LEVEL} scale, got {magnitude}")
        self.num_ops, self.magnitude, self.ops, self.prob = int(num_ops), float(magnitude), tuple(ops), float(prob)

    def __call__(self, img: Image.Image) -> Image.Image:
        picks = torch.randint(len(self.ops), (self.num_ops,)).tolist()
        for i in picks:
            if torch.rand(()).item() > self.prob:
                continue
            name = self.ops[i]
            arg = op_argument(name, self.magnitude, sign=_signed(1.0))
            img = apply_op(img, name, arg)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, ops={list(self.ops)})"
