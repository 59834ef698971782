"""`data.captions: one`: each image once per epoch with one of its captions, reproducibly."""
import pytest

from priorclip.data.karpathy import KarpathyCaptions
from priorclip.errors import ConfigError
from priorclip.training.data import SeededSamples
from priorclip.training.recipe import recipe_from_dict


def test_one_caption_per_image_is_seeded_and_consistent(tiny_dataset):
    ds = KarpathyCaptions(tiny_dataset, split="train", mode="images", transforms=lambda im: im.size)
    samples = SeededSamples(ds, seed=3, one_caption=True)
    first = [samples[i] for i in range(len(samples))]
    assert len(first) == ds.num_images
    for i, (_, caption, image_id, caption_id, _) in enumerate(first):
        assert image_id == i
        assert caption in ds.image_captions[i]
        assert ds.all_captions[caption_id] == caption and ds.text_to_image[caption_id] == i
    assert [samples[i] for i in range(len(samples))] == first  # same (seed, epoch) -> same captions
    drawn = set()
    for epoch in range(8):
        samples.epoch = epoch
        drawn |= {samples[i][3] for i in range(len(samples))}
    assert len(drawn) > ds.num_images  # other epochs draw other captions


def test_captions_setting_is_validated():
    with pytest.raises(ConfigError, match="data.captions"):
        recipe_from_dict({"data": {"captions": "some"}})
