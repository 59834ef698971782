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
        """`aug`: training-augmentation options overriding `transforms.DEFAULT_AUG` (train only)."""
        from .transforms import image_transform

        icfg = self.model_config.get("image_cfg", {})
        return image_transform(self.model_config["vision_cfg"].get("image_size", 224), train=train,
                               mean=icfg.get("mean"), std=icfg.get("std"), aug=aug if train else None)

    def optimize_for_inference(self, enabled: bool = True, **options):
        """Switch on (or off) the model's inference-only speed-ups; a no-op for models without a
        convolutional prior. Subclasses that have one (open and closed PriorCLIP) override this."""
        return self

    @property
    def inference_optimized(self) -> bool:
        return False
