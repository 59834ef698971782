"""What every PriorCLIP model exposes beyond encode_image/encode_text: its tokenizer and transforms."""
from __future__ import annotations

import torch


class RetrievalModelAPI:
    """Mixin: `tokenize(texts)` and `image_transform(train)` from the model's own config, so a
    checkpoint alone is enough to embed images and captions the way it was trained."""

    tokenizer = None
    model_config: dict

    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer(texts)

    def image_transform(self, train: bool = False, aug: dict | None = None):
        """The transform `image_cfg` describes (mean/std, resize_mode, the model's augmentation
        options); `aug` overrides augmentation options on top of those (train only)."""
        from .transforms import transform_from_config

        return transform_from_config(self.model_config, train=train, aug=aug if train else None)

    @property
    def preprocess(self) -> str:
        """The input preset this model's config records ("ours" or "released", see preprocess.py)."""
        from .preprocess import preprocess_of

        return preprocess_of(self.model_config)

    def set_preprocess(self, preset: str):
        """Switch to an input preset (weights untouched) and record it in `model_config`, so a
        checkpoint saved afterwards keeps it."""
        from .preprocess import apply_preprocess

        self.model_config = apply_preprocess(self.model_config, preset)
        self._configure_inputs()
        return self

    def _configure_inputs(self) -> None:
        """Bring the tokenizer and text tower in line with `model_config` (subclasses that have
        tokenizer options override this; image transforms read the config on every call)."""

    def optimize_for_inference(self, enabled: bool = True, **options):
        """Switch on (or off) the model's inference-only speed-ups; a no-op for models without a
        convolutional prior. Subclasses that have one (open and closed PriorCLIP) override this."""
        return self

    @property
    def inference_optimized(self) -> bool:
        return False
