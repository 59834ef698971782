"""image_transform: shapes, normalisation, the paper's augmentation steps."""
from __future__ import annotations

import numpy as np
import open_clip.constants as oc
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from priorclip.models.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform,
)


def test_constants_match_open_clip():
    assert OPENAI_DATASET_MEAN == oc.OPENAI_DATASET_MEAN and OPENAI_DATASET_STD == oc.OPENAI_DATASET_STD
    assert IMAGENET_MEAN == oc.IMAGENET_MEAN and IMAGENET_STD == oc.IMAGENET_STD


def test_eval_transform_shape_and_values():
    tf = image_transform(224)
    x = tf(Image.new("RGB", (300, 200), (255, 255, 255)))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = (1 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    assert torch.allclose(x[:, 100, 100], expected, atol=1e-5)
    # grey input converted; rectangular size; deterministic
    y = image_transform((64, 96), mean=IMAGENET_MEAN, std=IMAGENET_STD)(Image.new("L", (50, 40), 128))
    assert y.shape == (3, 64, 96)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    assert torch.equal(tf(img), tf(img))
    # center crop keeps the centre: a red centre stays red at the output centre
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, 100:200, 0] = 255
    out = image_transform(32, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(a))
    assert out[0].min() > 0.9 and out[1].max() < 0.1


def test_train_transform_paper_augmentation():
    tf = image_transform(64, train=True)
    kinds = [type(t) for t in tf.transforms]
    assert T.RandomResizedCrop in kinds and T.RandomHorizontalFlip in kinds and T.RandAugment in kinds
    rrc = next(t for t in tf.transforms if isinstance(t, T.RandomResizedCrop))
    ra = next(t for t in tf.transforms if isinstance(t, T.RandAugment))
    assert rrc.scale == (0.5, 1.0) and ra.num_ops == 2 and ra.magnitude == 7
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(3)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert not torch.equal(outs[0], outs[1])  # random
    plain = image_transform(64, train=True, aug={"randaug_num_ops": 0, "hflip": 0})
    assert T.RandAugment not in [type(t) for t in plain.transforms]
    with pytest.raises(ValueError, match="unknown augmentation"):
        image_transform(64, train=True, aug={"mixup": 1})
