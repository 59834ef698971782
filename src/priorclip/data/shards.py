"""webdataset tar shards for large-scale pre-training (RS5M layout), read and written.

A sample is a group of tar members sharing a key: image bytes under one of `IMAGE_KEYS`
(`jpg/jpeg/png/webp/tif/tiff`, or RS5M's `img_content`), the caption under one of `CAPTION_KEYS`
(`txt`, or RS5M's `caption`), optional metadata under `json` (e.g. `{"filename": ...}`) or RS5M's
`img_name`. Other layouts name their keys (`image_keys=`, `caption_keys=`; recipe keys
`data.shard_image_keys` / `data.shard_caption_keys`). Images are decoded with `image_from_bytes`,
so shards get the same band/scaling policy as files. A broken sample or shard is warned about and
skipped (`wds.warn_and_continue`); but when none of a stream's first `KEY_CHECK_SAMPLES` samples
has the keys, the shards are of another layout and the stream fails at once with the keys it
found (a resampled stream would otherwise skip forever and never yield a batch).

    pipe = make_shard_pipeline("/data/rs5m/{000000..000999}.tar", transforms=model.image_transform(True),
                               tokenize=model.tokenize, batch_size=256, epoch_samples=5_000_000 // world)
    loader = wds.WebLoader(pipe, batch_size=None, num_workers=8)   # yields (images[B,3,H,W], tokens[B,L])
"""
from __future__ import annotations

import io
import json
import logging
import os
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable

import webdataset as wds

from priorclip.data.images import image_from_bytes
from priorclip.errors import DataError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "img_content")
CAPTION_KEYS = ("txt", "caption")
KEY_CHECK_SAMPLES = 64  # samples without the keys, and none with them, before a stream gives up


def _split_by_rank(rank: int, world_size: int):
    def split(src):
        yield from islice(src, rank, None, world_size)

    return split


def stream_worker(offset: int = 0) -> tuple[int, int]:
    """(virtual worker id, worker count) of the calling DataLoader worker.

    A stream resumed at global batch `b` must hand batch `b` to the loader's first worker, since a
    DataLoader takes batches from its workers in turn starting with worker 0. Renumbering the
    workers by `offset = b % workers` makes worker 0 play the part of the worker that produced
    batch `b` in the uninterrupted run; everything seeded per worker uses the virtual id.
    """
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    n = info.num_workers if info is not None else 1
    return ((info.id if info is not None else 0) + offset) % n, n


def _resume_position(start_batch: int, batch_size: int):
    """Number every sample of this worker's stream and drop, before decoding, the samples of the
    batches this worker produced before global batch `start_batch` (they were trained on)."""
    def stage(src):
        worker, n = stream_worker(start_batch)
        skip = len(range(worker, start_batch, n)) * batch_size
        for pos, sample in enumerate(src):
            if pos >= skip:
                sample["__pos__"] = pos
                yield sample

    return stage


def _sample_keys(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def check_keys(image_keys=IMAGE_KEYS, caption_keys=CAPTION_KEYS, limit: int = KEY_CHECK_SAMPLES):
    """Stage: fail fast (DataError naming the keys found) when the first `limit` samples of a
    stream all lack an image key or a caption key; after one good sample, misses are left to the
    decoder (warned and skipped)."""
    def stage(src):
        good, misses, found = False, 0, set()
        for sample in src:
            if not good:
                if any(k in sample for k in image_keys) and any(k in sample for k in caption_keys):
                    good = True
                else:
                    misses += 1
                    found.update(_sample_keys(sample))
                    if misses >= limit:
                        raise DataError(
                            f"{sample.get('__url__', 'shards')}: none of the first {limit} samples has an image "
                            f"(keys {', '.join(image_keys)}) and a caption (keys {', '.join(caption_keys)}); keys "
                            f"found: {', '.join(sorted(found)) or 'none'}. Name this layout's keys with "
                            f"data.shard_image_keys / data.shard_caption_keys (image_keys= / caption_keys=)")
            yield sample

    return stage


def decode_sample(sample: dict[str, Any], image_keys=IMAGE_KEYS, caption_keys=CAPTION_KEYS) -> dict[str, Any]:
    """Raw tar sample -> {"image": PIL RGB, "caption": str, "key": str, "filename": str}."""
    key = sample.get("__key__", "?")
    src = f"{sample.get('__url__', '?')}:{key}"
    ext = next((k for k in image_keys if k in sample), None)
    if ext is None:
        raise DataError(f"{src}: sample has no image (looked for {', '.join(image_keys)}; it has "
                        f"{', '.join(_sample_keys(sample))})")
    cap = next((k for k in caption_keys if k in sample), None)
    if cap is None:
        raise DataError(f"{src}: sample has no caption (looked for {', '.join(caption_keys)}; it has "
                        f"{', '.join(_sample_keys(sample))})")
    filename = f"{key}.{ext}"
    if "img_name" in sample:  # RS5M
        name = sample["img_name"]
        filename = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).strip() or filename
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
            filename = meta.get("filename", meta.get("name", filename)) if isinstance(meta, dict) else filename
        except (ValueError, TypeError):
            pass
    image = image_from_bytes(sample[ext], f"{src}.{ext} ({filename})")
    text = sample[cap]
    caption = text.decode("utf-8").strip() if isinstance(text, bytes) else str(text)
    return {"image": image, "caption": caption, "key": key, "filename": filename, "__pos__": sample.get("__pos__")}


def make_shard_pipeline(
    urls: str | list[str],
    transforms: Callable | None = None,
    tokenize: Callable | None = None,
    batch_size: int | None = 64,
    resampled: bool = True,
    seed: int = 0,
    epoch_samples: int | None = None,
    *,
    shuffle_buffer: int = 1000,
    rank: int | None = None,
    world_size: int | None = None,
    partial_batches: bool = False,
    start_batch: int = 0,
    sample_seed: int | None = None,
    image_keys: Iterable[str] = IMAGE_KEYS,
    caption_keys: Iterable[str] = CAPTION_KEYS,
) -> wds.DataPipeline:
    """A webdataset pipeline yielding `(images, texts)` batches (or single samples if batch_size is None).

    * `resampled=True`: every (rank, worker) draws shards with replacement (wds.ResampledShards,
      seeded from `seed` and the worker identity) -- the open_clip recipe for huge corpora; set
      `epoch_samples` to the number of samples per epoch *per process*.
    * `resampled=False`: each shard is read once per epoch, split first across ranks, then across
      DataLoader workers. Rank/world size come from `rank`/`world_size` if given, else from the
      RANK/WORLD_SIZE environment or torch.distributed (wds.split_by_node).
    * `transforms`: PIL -> tensor; `tokenize`: list[str] -> LongTensor[N,L] (applied per sample).
      Without them images stay PIL and texts stay strings.
    * `sample_seed`: seed torch's RNG before each sample's transforms from (sample_seed, rank,
      worker, position in the worker's stream), so augmentation does not depend on what ran before.
    * `start_batch`: resume inside an epoch. The stream (same `seed`, workers and rank) continues
      at global batch `start_batch` exactly as the uninterrupted one did: the batches already seen
      are skipped as raw tar members (never decoded), and with `sample_seed` their augmentation is
      not needed either. (A skipped sample that would have failed to decode shifts the stream by
      one sample: the only inexactness.)
    * `image_keys` / `caption_keys`: tar member extensions holding the image / caption, first
      found wins (defaults: ours and RS5M's); a stream none of whose first samples has them fails.
    """
    image_keys, caption_keys = tuple(image_keys), tuple(caption_keys)
    if not image_keys or not caption_keys:
        raise DataError("make_shard_pipeline: image_keys and caption_keys must each name at least one key")
    if isinstance(urls, (list, tuple)):
        urls = [str(u) for u in urls]
        if not urls:
            raise DataError("make_shard_pipeline: no shard URLs given")
    if (rank is None) != (world_size is None):
        raise DataError("make_shard_pipeline: give both rank and world_size, or neither")
    if rank is not None and not 0 <= rank < world_size:
        raise DataError(f"make_shard_pipeline: rank {rank} outside world_size {world_size}")

    def to_pair(s):
        if sample_seed is not None and transforms is not None:
            import torch

            torch.manual_seed(wds.utils.make_seed(sample_seed, rank or 0, stream_worker(start_batch)[0], s["__pos__"]))
        img = transforms(s["image"]) if transforms is not None else s["image"]
        txt = tokenize([s["caption"]])[0] if tokenize is not None else s["caption"]
        return img, txt

    def by_virtual_worker(src):
        worker, n = stream_worker(start_batch)
        yield from islice(src, worker, None, n)

    def worker_seed():
        return (rank if rank is not None else wds.utils.pytorch_worker_info()[0]) * 1000 + stream_worker(start_batch)[0]

    stages: list = []
    if resampled:
        stages.append(wds.ResampledShards(urls, seed=seed, deterministic=True, worker_seed=worker_seed))
    else:
        stages.append(wds.SimpleShardList(urls))
        stages.append(_split_by_rank(rank, world_size) if rank is not None else wds.split_by_node)
        stages.append(by_virtual_worker)
    stages.append(wds.tarfile_to_samples(handler=wds.warn_and_continue))
    stages.append(check_keys(image_keys, caption_keys))
    if shuffle_buffer and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    stages.append(_resume_position(start_batch, batch_size or 1))
    stages.append(wds.map(partial(decode_sample, image_keys=image_keys, caption_keys=caption_keys),
                          handler=wds.warn_and_continue))
    stages.append(wds.map(to_pair, handler=wds.warn_and_continue))
    if batch_size:
        stages.append(wds.batched(batch_size, partial=partial_batches))
    pipe = wds.DataPipeline(*stages)
    if epoch_samples:
        n = epoch_samples // batch_size if batch_size else epoch_samples
        pipe = pipe.with_epoch(max(1, n))
    return pipe


def _image_bytes(image, filename: str | None) -> tuple[str, bytes]:
    """(extension key, bytes) for a path, raw bytes or a PIL image (encoded as PNG: lossless)."""
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        ext = p.suffix.lower().lstrip(".") or "jpg"
        return ("jpg" if ext == "jpeg" else "tif" if ext == "tiff" else ext), p.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        ext = Path(filename or "x.jpg").suffix.lower().lstrip(".") or "jpg"
        return ("jpg" if ext == "jpeg" else "tif" if ext == "tiff" else ext), bytes(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "png", buf.getvalue()


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    maxcount: int = 10000,
    pattern: str = "shard-%06d.tar",
    maxsize: float = 3e9,
) -> list[Path]:
    """Write samples `{"image": path|bytes|PIL, "caption": str, optional "filename", "key"}` to tar shards.

    Image files are stored byte for byte (no re-encoding). Returns the shard paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with wds.ShardWriter(str(out / pattern), maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for i, s in enumerate(samples):
            filename = s.get("filename") or (str(s["image"]) if isinstance(s["image"], (str, os.PathLike)) else None)
            ext, data = _image_bytes(s["image"], filename)
            key = s.get("key") or f"{i:09d}"
            sink.write({
                "__key__": key,
                ext: data,
                "txt": s["caption"],
                "json": {"filename": Path(filename).name if filename else f"{key}.{ext}"},
            })
            n += 1
    paths = sorted(out.glob(pattern.replace("%06d", "*")))
    log.info("wrote %d samples to %d shard(s) in %s", n, len(paths), out)
    return paths


def dataset_samples(dataset, per: str = "pair") -> Iterable[dict[str, Any]]:
    """Samples for `write_shards` from a `CaptionDataset` with images: one per caption ("pair"),
    or one per image with its first caption ("image"). Files are copied, not decoded."""
    paths = dataset.paths
    if paths is None:
        raise DataError(f"{dataset!r}: annotation-only dataset, cannot write image shards")
    caps = dataset.image_captions
    for img, (path, name) in enumerate(zip(paths, dataset.images)):
        chosen = caps[img] if per == "pair" else caps[img][:1]
        for j, c in enumerate(chosen or [""]):
            yield {"image": path, "caption": c, "filename": name, "key": f"{img:07d}_{j}"}
