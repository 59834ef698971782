"""The encoder an index is built with and queried with.

Search only needs four things from a model: a PIL->tensor transform, batched image and text
embeddings, and a description that says exactly which weights made the vectors (so a query never
mixes models). `Encoder` is that protocol; `ModelEncoder` adapts any model that follows the
`priorclip.models` contract, and `register_encoder` lets other code (a plugin, a test) make a
name resolve to its own encoder without touching the index format.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from priorclip.errors import CheckpointError, ConfigError
from priorclip.model_spec import is_model_name, load_model_spec


@runtime_checkable
class Encoder(Protocol):
    """What indexing and querying need from a model. Vectors come back L2-normalised float32."""

    embed_dim: int

    def transform(self, image) -> Any:  # PIL RGB image -> FloatTensor[3,H,W]
        ...

    def embed_images(self, batch) -> np.ndarray:  # FloatTensor[B,3,H,W] -> [B,D]
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:  # -> [B,D]
        ...

    def describe(self) -> dict:
        """JSON-able identity: name, config, checkpoint path and sha256, embed_dim."""
        ...


_REGISTRY: dict[str, Callable[[], Encoder]] = {}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make `load_encoder(name)` return `factory()`; used by plugins and tests."""
    _REGISTRY[name] = factory


def unregister_encoder(name: str) -> None:
    _REGISTRY.pop(name, None)


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def checkpoint_sha256(directory: str | Path) -> str | None:
    """Hash of a checkpoint directory's files (sorted by name) so an index can tell if its
    weights were replaced after indexing."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class ModelEncoder:
    """Adapter from a `priorclip.models`-style nn.Module to `Encoder`.

    One lock serialises model calls: torch modules are not documented as safe to call from many
    threads at once, and the server runs requests in a thread pool.
    """

    def __init__(self, model, checkpoint: str | None = None, checkpoint_hash: str | None = None,
                 device: str = "cpu", random_weights: bool = False):
        import torch

        self.model = model.eval().to(device)
        optimize = getattr(self.model, "optimize_for_inference", None)
        if callable(optimize):  # the frozen prior with BatchNorm folded, channels_last (docs/PERFORMANCE.md)
            optimize(True)
        self.device = device
        self.checkpoint = checkpoint
        self.checkpoint_hash = checkpoint_hash
        self.random_weights = random_weights  # recorded in index.json: search/serve warn about it
        self.embed_dim = int(model.embed_dim)
        self._transform = model.image_transform(False)
        self._lock = threading.Lock()
        self._torch = torch

    def transform(self, image):
        return self._transform(image)

    def embed_images(self, batch) -> np.ndarray:
        with self._lock, self._torch.inference_mode():
            out = self.model.encode_image(batch.to(self.device), normalize=True)
        return _l2(out.float().cpu().numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._lock, self._torch.inference_mode():
            tokens = self.model.tokenize(list(texts))
            out = self.model.encode_text(tokens.to(self.device), normalize=True)
        return _l2(out.float().cpu().numpy())

    def describe(self) -> dict:
        config = getattr(self.model, "model_config", {}) or {}
        try:
            config = json.loads(json.dumps(config, default=str))
        except (TypeError, ValueError):
            config = {}
        return {
            "name": str(getattr(self.model, "model_name", type(self.model).__name__)),
            "config": config,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_hash,
            "embed_dim": self.embed_dim,
            "random_weights": self.random_weights,
        }


def load_encoder(spec: str, device: str = "cpu", *, random_weights: bool | None = None,
                 warn: bool = True) -> Encoder:
    """Resolve `spec` to an encoder: a registered name, else what `priorclip.model_spec.load_model_spec`
    accepts (a checkpoint directory written by `priorclip train`/`convert`; a model name from
    `priorclip models`, built with seeded random weights, unless `random_weights=False`)."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    path = Path(spec).expanduser()
    try:
        model = load_model_spec(spec, random_weights=random_weights, purpose="indexing/searching with", warn=warn)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:
        raise CheckpointError(f"--model {spec}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    if path.is_dir():
        return ModelEncoder(model, checkpoint=str(path.resolve()), checkpoint_hash=checkpoint_sha256(path), device=device)
    return ModelEncoder(model, device=device, random_weights=True)


def encoder_for_index(model_info: dict, encoder: Encoder | None = None, device: str = "cpu") -> Encoder:
    """Load (or check) the encoder an index was built with; refuse a different one, since vectors
    from two models are not comparable."""
    if encoder is None:
        spec = model_info.get("checkpoint") or model_info.get("spec") or model_info.get("name")
        if not spec:
            raise ConfigError("index.json field model has no checkpoint or name; rebuild the index")
        random_weights = bool(model_info.get("random_weights"))
        if not random_weights and spec not in _REGISTRY and is_model_name(spec):
            raise ConfigError(
                f"index was built from model name {spec!r} with unseeded random weights, which cannot be "
                "loaded again; rebuild it with `priorclip index ... --model CHECKPOINT_DIR` (or "
                "--random-weights for repeatable random weights)")
        encoder = load_encoder(spec, device=device, random_weights=random_weights, warn=False)
    got = encoder.describe()
    if int(got["embed_dim"]) != int(model_info.get("embed_dim", -1)) or got.get("name") != model_info.get("name"):
        raise ConfigError(
            f"index was built with model {model_info.get('name')!r} (dim {model_info.get('embed_dim')}), "
            f"but the query model is {got.get('name')!r} (dim {got['embed_dim']}); query with the same model"
        )
    want_hash = model_info.get("checkpoint_sha256")
    if want_hash and got.get("checkpoint_sha256") and got["checkpoint_sha256"] != want_hash:
        raise CheckpointError(
            f"checkpoint {got.get('checkpoint')} changed since the index was built (sha256 differs); "
            "re-index or restore the original weights"
        )
    return encoder
