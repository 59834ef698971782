"""The loop's training data: which items each rank gets in an epoch and how each is augmented,
both seeded so that a resumed run sees exactly what an uninterrupted one would (see `loop`);
the shard list of `data.shards`; the dataset of a split."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from priorclip.training.distributed import DistInfo
from priorclip.training.recipe import Recipe


class SeededSamples(Dataset):
    """Train items with augmentation randomness drawn from (seed, epoch, index): identical whatever
    the worker count, and reproducible when a resumed epoch skips its first batches."""

    def __init__(self, dataset, seed: int, images_only: bool = False, one_caption: bool = False):
        self.dataset, self.seed, self.epoch, self.images_only = dataset, seed, 0, images_only
        self.one_caption = one_caption  # images-mode dataset: draw one caption per image and epoch
        self._image_to_text = dataset.image_to_text if one_caption else None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        state = torch.get_rng_state()
        torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
        try:
            s = self.dataset[index]
            if self.one_caption:
                j = int(torch.randint(len(s["captions"]), ()))
                s = {**s, "caption": s["captions"][j], "caption_id": self._image_to_text[s["image_id"]][j]}
        finally:
            torch.set_rng_state(state)
        if self.images_only:
            return s["image"], s["label"]
        return s["image"], s["caption"], s["image_id"], s["caption_id"], s["label"]


def collate(items):
    cols = list(zip(*items))
    out = [torch.stack(cols[0])]
    for col in cols[1:]:
        out.append(list(col) if isinstance(col[0], str) else torch.tensor(col, dtype=torch.long))
    return out


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, info: DistInfo) -> list[list[int]]:
    """This rank's batches of epoch `epoch`: a function of (seed, epoch) only; incomplete batch dropped."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n_items), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


def resolve_shards(spec: str | list[str]) -> list[str]:
    """`data.shards` -> shard URLs: brace patterns (`{000000..000099}`), globs, `::`-joined or YAML lists.

    Local paths must exist (a typo would otherwise only show up as warnings from the workers);
    URLs (`pipe:`, `http://`, `s3://`, ...) are passed to webdataset unchecked.
    """
    import glob

    from webdataset.shardlists import expand_urls

    from priorclip.errors import DataError

    urls: list[str] = []
    for item in [spec] if isinstance(spec, str) else spec:
        for url in expand_urls(item.strip()):
            if "://" in url or url.startswith("pipe:"):
                urls.append(url)
            elif any(c in url for c in "*?["):
                found = sorted(glob.glob(os.path.expanduser(url)))
                if not found:
                    raise DataError(f"recipe key 'data.shards': the glob {url!r} matches no file")
                urls.extend(found)
            else:
                path = os.path.expanduser(url)
                if not os.path.isfile(path):
                    raise DataError(f"recipe key 'data.shards': shard {path} does not exist (check the pattern "
                                    f"{item!r})")
                urls.append(path)
    if not urls:
        raise DataError(f"recipe key 'data.shards': {spec!r} names no shard")
    return urls


def shard_keys(data) -> dict:
    """make_shard_pipeline's image_keys / caption_keys from a recipe's data section (defaults unset)."""
    out = {}
    if data.shard_image_keys is not None:
        out["image_keys"] = tuple(data.shard_image_keys)
    if data.shard_caption_keys is not None:
        out["caption_keys"] = tuple(data.shard_caption_keys)
    return out


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, rank, position)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x632BE59BD9B4E019) % (1 << 63)
    return h


def split_dataset(recipe: Recipe, split: str, transforms, mode: str, on_error: str | None = None):
    from priorclip.data.karpathy import KarpathyCaptions

    d = recipe.data
    return KarpathyCaptions(d.path, split=split, transforms=transforms, images_root=d.images_root,
                            labels=d.labels, mode=mode, on_error=on_error)
