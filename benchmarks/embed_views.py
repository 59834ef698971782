"""Real model embeddings at archive scale: many views of the UCM-captions images, for search benchmarks.

An archive index holds tiles: overlapping windows of scenes at one ground resolution, and the same
places again at other dates and zooms. Here each of the 2,100 UCM images gives `--views` such
windows (a random square of 30-100 % of its side at a random place, in one of the 8 flips/90-degree
turns), embedded by a trained checkpoint exactly as `priorclip index` embeds a tile (the
checkpoint's eval transform). Also embedded: every caption (text queries) with its split.

Writes `--out` (npz): `images` [N, D] float32 (L2-normalised), `image_of` (which UCM image each view
is from), `image_split`, `texts` [5 x 2,100, D], `text_image`, `model` (JSON: checkpoint, sha256).
Resumable: views are embedded in chunks kept beside `--out` (a `.parts-...` folder) until the file
is written.

    .venv/bin/python benchmarks/embed_views.py --model runs/ucm_v2/0/priorclip_open/stage2/checkpoints/best

The checkpoint is any `priorclip train` output (benchmarks/ucm_from_scratch/run.py writes the one
above). Hours on two cores at the default 120 views an image (252,000 views; the progress bar shows
the rate); not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4096  # views per resumable part
MIN_SIDE, MAX_SIDE = 0.3, 1.0  # a view's side as a fraction of the image's


def view_boxes(n_images: int, views: int, seed: int) -> np.ndarray:
    """[n_images * views, 5] rows (image, left, top, side as fractions; transpose 0-7): the same
    for a seed, so a resumed run embeds the same views."""
    rng = np.random.default_rng(seed)
    side = rng.uniform(MIN_SIDE, MAX_SIDE, n_images * views)
    left, top = rng.uniform(0, 1, (2, n_images * views)) * (1 - side)
    image = np.repeat(np.arange(n_images), views)
    return np.stack([image, left, top, side, rng.integers(0, 8, n_images * views)], axis=1)


class Views:
    """Dataset of the views: crop, flip/turn, then the encoder's own transform."""

    def __init__(self, paths: list[str], boxes: np.ndarray, transform):
        self.paths, self.boxes, self.transform = paths, boxes, transform

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int):
        from PIL import Image

        image, left, top, side, turn = self.boxes[i]
        with Image.open(self.paths[int(image)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = side * min(w, h)
            view = im.crop((round(left * w), round(top * h), round(left * w + s), round(top * h + s)))
        if int(turn):  # PIL's Transpose values 0-6; 7 = unchanged
            view = view.transpose(int(turn) - 1)
        return self.transform(view)


def embed_views(encoder, paths: list[str], boxes: np.ndarray, parts: Path, batch_size: int, workers: int) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    parts.mkdir(parents=True, exist_ok=True)
    dataset = Views(paths, boxes, encoder.transform)
    chunks = range(0, len(boxes), CHUNK)
    done = sum(min(CHUNK, len(boxes) - c) for c in chunks if (parts / f"{c:09d}.npy").is_file())
    bar = tqdm(total=len(boxes), initial=done, desc="views", unit="view", dynamic_ncols=True, mininterval=2.0)
    for start in chunks:
        part = parts / f"{start:09d}.npy"
        if part.is_file():
            continue
        idx = list(range(start, min(start + CHUNK, len(boxes))))
        loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, num_workers=workers)
        out = []
        with torch.inference_mode():
            for batch in loader:
                out.append(encoder.embed_images(batch))
                bar.update(len(batch))
        tmp = part.with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(out).astype(np.float32))
        os.replace(tmp, part)
    bar.close()
    return np.concatenate([np.load(parts / f"{c:09d}.npy") for c in chunks])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.environ.get("PRIORCLIP_SHARED_DIR", str(ROOT.parent / "shared"))
    ap.add_argument("--model", required=True, help="checkpoint directory (priorclip train output)")
    ap.add_argument("--data", default=f"{shared}/data/ucm-captions", help="Karpathy-layout UCM-captions folder")
    ap.add_argument("--views", type=int, default=120, help="views embedded per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1, help="image decoding processes")
    ap.add_argument("--out", default=str(ROOT / "runs" / "embeddings" / "ucm_views.npz"))
    args = ap.parse_args(argv)

    from priorclip.search.encoders import load_encoder

    out = Path(args.out)
    encoder = load_encoder(args.model)
    model = encoder.describe()
    data = json.loads((Path(args.data) / "dataset.json").read_text())
    paths = [str(Path(args.data) / "images" / im["filename"]) for im in data["images"]]
    boxes = view_boxes(len(paths), args.views, args.seed)
    parts = out.with_name(out.name + f".parts-{(model.get('checkpoint_sha256') or 'model')[:12]}-{args.views}-{args.seed}")
    images = embed_views(encoder, paths, boxes, parts, args.batch_size, args.workers)
    captions = [(i, s["raw"]) for i, im in enumerate(data["images"]) for s in im["sentences"]]
    texts = np.concatenate([encoder.embed_texts([c for _, c in captions[j:j + 512]])
                            for j in range(0, len(captions), 512)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, images=images, image_of=boxes[:, 0].astype(np.int32), boxes=boxes.astype(np.float32),
             image_split=np.array([im["split"] for im in data["images"]]), texts=texts.astype(np.float32),
             text_image=np.array([i for i, _ in captions], np.int32), model=json.dumps(model))
    os.replace(tmp, out)
    shutil.rmtree(parts)  # the file holds every part now
    print(f"{len(images):,} views of {len(paths):,} images and {len(texts):,} captions, {images.shape[1]}-d: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
