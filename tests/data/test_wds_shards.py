"""webdataset shards: write, stream with 2 workers, split by rank, decode errors are skipped."""
from __future__ import annotations

import io
from itertools import islice
import tarfile
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from priorclip.data.shards import dataset_samples, make_shard_pipeline, write_shards
from priorclip.models.transforms import image_transform


def _samples(tmp_path, n=12):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        out.append({"image": p if i % 2 else Image.open(p).convert("RGB"), "caption": f"caption number {i}", "key": f"k{i:03d}"})
    return out


def _tok(texts):
    return torch.tensor([[int(t.split()[-1]), len(t)] for t in texts])


@pytest.fixture
def shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return write_shards(_samples(src), tmp_path / "out", maxcount=4)


def test_write_and_stream_with_two_workers(shards):
    assert len(shards) == 3
    pipe = make_shard_pipeline([str(s) for s in shards], image_transform(16), _tok, batch_size=2,
                               resampled=False, shuffle_buffer=0, partial_batches=True)
    loader = wds.WebLoader(pipe, batch_size=None, num_workers=2)
    ids = []
    for images, tokens in loader:
        assert images.shape[1:] == (3, 16, 16) and tokens.shape[1] == 2
        ids += tokens[:, 0].tolist()
    assert sorted(ids) == list(range(12))  # every sample exactly once across the 2 workers


def test_split_by_rank(shards):
    urls = [str(s) for s in shards]
    got = []
    for rank in range(2):
        pipe = make_shard_pipeline(urls, None, None, batch_size=None, resampled=False, shuffle_buffer=0,
                                   rank=rank, world_size=2)
        got.append(sorted(int(c.split()[-1]) for _, c in pipe))
    assert got[0] == [0, 1, 2, 3, 8, 9, 10, 11] and got[1] == [4, 5, 6, 7]  # shards 0,2 vs shard 1


def test_split_by_rank_from_env(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    pipe = make_shard_pipeline([str(s) for s in shards], None, None, batch_size=None, resampled=False, shuffle_buffer=0)
    assert sorted(int(c.split()[-1]) for _, c in pipe) == [4, 5, 6, 7]


def test_resampled_epoch_and_bad_sample(shards, tmp_path):
    # a shard with one undecodable image and one sample without caption: warned and skipped
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in [("x1.jpg", b"garbage"), ("x1.txt", b"broken"), ("x2.png", b"\x89PNG")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.warns(UserWarning):
        out = list(make_shard_pipeline([str(bad)], None, None, batch_size=None, resampled=False, shuffle_buffer=0))
    assert out == []
    pipe = make_shard_pipeline([str(s) for s in shards] + [str(bad)], image_transform(16), _tok, batch_size=3,
                               resampled=True, seed=1, epoch_samples=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(pipe)
    assert len(batches) == 4 and all(b[0].shape == (3, 3, 16, 16) for b in batches)


@pytest.mark.shared
def test_shards_from_real_dataset(ucm_dir, tmp_path):
    from priorclip.data import KarpathyCaptions

    ds = KarpathyCaptions(ucm_dir, "test", mode="images")
    samples = list(dataset_samples(ds, per="image"))[:5]
    paths = write_shards(samples, tmp_path, maxcount=5)
    assert len(paths) == 1
    out = list(make_shard_pipeline([str(paths[0])], None, None, batch_size=None, resampled=False, shuffle_buffer=0))
    assert [c for _, c in out] == [ds.image_captions[i][0] for i in range(5)]
    assert out[0][0].size == ds[0]["image"].size
    assert np.array_equal(np.asarray(out[0][0]), np.asarray(ds[0]["image"]))  # bytes copied, not re-encoded


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumed_mid_epoch_continues_exactly(shards, workers):
    """Batches from global batch 3 on are the uninterrupted stream's, augmentation included, and the
    skipped samples are never decoded (a resumed loader starts with the right worker)."""
    def augment(image):  # random, like the training augmentation: depends on the torch RNG
        return torch.tensor([float(np.asarray(image).mean()), float(torch.rand(()))])

    def stream(start, n):
        pipe = make_shard_pipeline([str(s) for s in shards], augment, None, batch_size=2, resampled=True, seed=5,
                                   shuffle_buffer=6, start_batch=start, sample_seed=11, rank=0, world_size=1)
        loader = torch.utils.data.DataLoader(pipe.with_epoch(8), batch_size=None, num_workers=workers,
                                             generator=torch.Generator().manual_seed(start))  # worker seeds differ
        return [(images, list(captions)) for images, captions in islice(loader, n)]

    full = stream(0, 7)
    for start in (3, 4):
        resumed = stream(start, 7 - start)
        assert [c for _, c in resumed] == [c for _, c in full[start:]]
        for (a, _), (b, _) in zip(resumed, full[start:]):
            assert torch.equal(a, b)
    assert len({tuple(c) for _, c in full}) > 1 and len({float(a[0, 1]) for a, _ in full}) == 7  # really random


def test_resumed_stream_skips_without_decoding(shards, monkeypatch):
    import priorclip.data.shards as mod

    decoded = []
    real = mod.decode_sample
    monkeypatch.setattr(mod, "decode_sample", lambda s, **kw: decoded.append(s["__key__"]) or real(s, **kw))
    pipe = make_shard_pipeline([str(s) for s in shards], None, None, batch_size=2, resampled=False, shuffle_buffer=0,
                               start_batch=4, rank=0, world_size=1)
    out = [c for _, c in pipe]
    assert len(decoded) == 12 - 8 and len(out) == 2  # 4 batches of 2 skipped as raw tar members


def _foreign_shard(path, image_key, caption_key, name_key=None, n=6):
    """A shard in another layout (e.g. RS5M's img_content / caption / img_name)."""
    rng = np.random.default_rng(1)
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
            sample = {"__key__": f"s{i:04d}", image_key: buf.getvalue(), caption_key: f"an airport number {i}".encode()}
            if name_key:
                sample[name_key] = f"airport_{i}.jpg".encode()
            sink.write(sample)
    return path


def test_rs5m_keys_are_read_and_foreign_layouts_fail_fast(tmp_path):
    from priorclip.data.shards import decode_sample
    from priorclip.errors import DataError

    rs5m = _foreign_shard(tmp_path / "rs5m.tar", "img_content", "caption", "img_name")
    out = list(make_shard_pipeline([str(rs5m)], image_transform(16), None, batch_size=None, resampled=False,
                                   shuffle_buffer=0))
    assert len(out) == 6 and out[0][0].shape == (3, 16, 16) and out[2][1] == "an airport number 2"
    raw = next(iter(wds.DataPipeline(wds.SimpleShardList([str(rs5m)]), wds.tarfile_to_samples())))
    assert decode_sample(raw)["filename"] == "airport_0.jpg"

    # a layout with other keys: the (endless, resampled) stream stops with the keys it found
    other = _foreign_shard(tmp_path / "other.tar", "image", "text")
    with pytest.raises(DataError, match=r"none of the first 4 samples.*keys found: image, text"):
        from priorclip.data import shards as mod

        pipe = wds.DataPipeline(wds.ResampledShards([str(other)], seed=0), wds.tarfile_to_samples(),
                                mod.check_keys(mod.IMAGE_KEYS, mod.CAPTION_KEYS, limit=4))
        list(islice(pipe, 10))  # the misses pass on (the decoder warns about each) until the 4th
    with pytest.raises(DataError, match=r"keys found: image, text.*shard_image_keys"):
        next(iter(make_shard_pipeline([str(other)], None, None, batch_size=2, resampled=True)))
    # ... and is read once its keys are named
    named = list(islice(make_shard_pipeline([str(other)], None, None, batch_size=None, resampled=False, shuffle_buffer=0,
                                            image_keys=["image"], caption_keys=["text"]), 10))
    assert [c for _, c in named] == [f"an airport number {i}" for i in range(6)]


def test_recipe_shard_keys_reach_the_pipeline(tmp_path):
    from priorclip.errors import ConfigError
    from priorclip.training.data import shard_keys
    from priorclip.training.recipe import recipe_from_dict

    base = {"stage": "pretrain", "model": "priorclip-open-small",
            "data": {"shards": str(tmp_path / "x.tar"), "epoch_samples": 10}}
    assert shard_keys(recipe_from_dict(base).data) == {}
    r = recipe_from_dict(base, {"data": {"shard_image_keys": ["image"], "shard_caption_keys": ["text", "txt"]}})
    assert shard_keys(r.data) == {"image_keys": ("image",), "caption_keys": ("text", "txt")}
    with pytest.raises(ConfigError, match="data.shard_image_keys"):
        recipe_from_dict(base, {"data": {"shard_image_keys": []}})
