"""Fixtures for search tests: a tiny deterministic stand-in model and small archives.

The stand-in follows the priorclip.models contract (encode_image/encode_text/tokenize/
image_transform/embed_dim/model_name/model_config) and goes through the same `ModelEncoder`
adapter as real checkpoints, so the index is tested as it runs in production, minus the cost of
a real network. Its image vector depends only on the pixels (4x4 grid of mean colours through a
fixed random projection), so identical images embed identically and a query image finds itself.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from priorclip.search.encoders import ModelEncoder, register_encoder, unregister_encoder

STUB = "stub-encoder"
DIM = 32
UCM_FILES = 30


class StubModel(nn.Module):
    model_name = STUB
    embed_dim = DIM
    model_config = {"name": STUB, "embed_dim": DIM, "kind": "test stand-in"}

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(48, DIM, generator=g), requires_grad=False)
        self.words = nn.Parameter(torch.randn(4096, DIM, generator=g), requires_grad=False)
        self.calls = 0

    def image_transform(self, train: bool = False):
        def transform(image):
            image = image.convert("RGB").resize((32, 32))
            return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return transform

    def encode_image(self, images, normalize=False):
        self.calls += 1
        pooled = nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) - 0.5  # [B,48]
        out = pooled @ self.proj
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def tokenize(self, texts):
        rows = []
        for t in texts:
            ids = [int.from_bytes(hashlib.md5(w.encode()).digest()[:2], "big") % 4096 for w in t.lower().split()][:16]
            rows.append(ids + [0] * (16 - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def encode_text(self, tokens, normalize=False):
        mask = (tokens > 0).float().unsqueeze(-1)
        out = (self.words[tokens] * mask).sum(1) + 1e-3
        return nn.functional.normalize(out, dim=-1) if normalize else out


@pytest.fixture
def stub_encoder():
    """A fresh stand-in encoder, also resolvable by name (`load_encoder("stub-encoder")`), which
    is how the CLI and a loaded index find it."""
    register_encoder(STUB, lambda: ModelEncoder(StubModel()))
    yield ModelEncoder(StubModel())
    unregister_encoder(STUB)


# The vector stores every backend-neutral search test runs on (issue 17.1): the embedded FAISS
# default and Milvus Lite, the in-process Milvus on a file (pymilvus + milvus-lite, an extra).
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pymilvus") is None, reason="pymilvus + milvus-lite not installed"))]


def _lite_file(out: Path) -> str:
    """The Milvus Lite file of the index at `out`: beside it, one per index."""
    return str(Path(out).with_name(Path(out).name + ".milvus.db"))


def backend_spec(backend: str, out: Path, index_type: str = "FLAT") -> dict | None:
    """`build_index`'s `backend` for an index at `out`: None (FAISS) or a Milvus Lite collection in
    a file beside it (exact FLAT unless told, so answers can be compared with FAISS's)."""
    if backend == "faiss":
        return None
    from priorclip.search.backends.milvus_backend import milvus_spec

    return milvus_spec(_lite_file(out), out, index_type=index_type)


def backend_args(backend: str, out: Path) -> list[str]:
    """The same choice as `priorclip index` flags."""
    return [] if backend == "faiss" else ["--backend", "milvus", "--uri", _lite_file(out)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Runs the test once per vector store."""
    return request.param


@pytest.fixture(scope="session")
def ucm_images(ucm_dir) -> list[Path]:
    files = sorted((ucm_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    # every 70th image: spread over all 21 classes (100 consecutive images per class)
    return files[::70][:UCM_FILES]


@pytest.fixture
def archive(tmp_path, ucm_images) -> Path:
    """A folder with ~30 UCM images in two sub-folders."""
    root = tmp_path / "archive"
    for i, f in enumerate(ucm_images):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.name)
    return root


def make_geotiff(path: Path, width: int = 600, height: int = 400, count: int = 3, dtype="uint16",
                 crs="EPSG:32633", origin=(500000.0, 4500000.0), res=10.0, seed=0) -> Path:
    """A small georeferenced scene with smooth structure (so tiles differ from each other)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bands = []
    for b in range(count):
        base = np.sin(xx / (40 + 15 * b)) * np.cos(yy / (55 + 10 * b))
        arr = (base + 1) * (3000 if dtype == "uint16" else 100) + rng.normal(0, 20, (height, width))
        bands.append(arr)
    data = np.clip(np.stack(bands), 0, None).astype(dtype)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
               "tiled": True, "blockxsize": 128, "blockysize": 128}
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(origin[0], origin[1], res, res))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def write_raster(path: Path, data: np.ndarray, *, crs="EPSG:32633", origin=(500000.0, 4500000.0), res=10.0,
                 colorinterp=None, descriptions=None, nodata=None, mask=None, photometric=None) -> Path:
    """A GeoTIFF of `data` [C,H,W] as a vendor would deliver it: colour interpretation names
    (`["blue", "green", "red", "undefined"]`), band descriptions, a nodata value, or an internal
    mask ([H,W], 0 = invalid)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    c, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": data.dtype.name,
               "tiled": True, "blockxsize": 128, "blockysize": 128}
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(origin[0], origin[1], res, res))
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric is not None:
        profile["photometric"] = photometric
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if colorinterp is not None:
                ds.colorinterp = [ColorInterp[n] for n in colorinterp]
            for i, d in enumerate(descriptions or (), 1):
                if d:
                    ds.set_band_description(i, d)
            if mask is not None:
                ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


# `priorclip index` in a child process, with the stand-in encoder registered under its name and
# slowed by SLOW_BATCH_S seconds per batch (environment) so that a kill lands while batches are
# being committed; SEARCH_TESTS names this folder. Run as [sys.executable, "-c", INDEX_CHILD, *argv].
INDEX_CHILD = r"""
import os, sys, time
sys.path.insert(0, os.environ["SEARCH_TESTS"])
from search_support import STUB, StubModel
from priorclip.search.encoders import ModelEncoder, register_encoder

class Slow(ModelEncoder):
    def embed_images(self, batch):
        time.sleep(float(os.environ.get("SLOW_BATCH_S") or 0))
        return super().embed_images(batch)

register_encoder(STUB, lambda: Slow(StubModel()))
from priorclip.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
