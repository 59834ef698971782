"""Backbones of the closed-domain models, built from configs with no download.

* `VisionTokenTower`: any timm model (Swin-T by default, a ViT as alternative) returning a global
  token followed by the patch tokens, as the PIR code feeds Spatial-PAE.
* `PriorTower`: the instruction (prior) encoder, a timm ResNet trunk whose pooled feature is the
  visual prior. Frozen by default: then it stays in eval mode (BatchNorm statistics included).
* `BertTextTower`: a transformers `BertModel` built from a config (no pooler, as released).
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from .inference import InferencePriorMixin


def freeze(module: nn.Module, frozen: bool = True) -> None:
    """Stop (or restart) training a tower; a frozen tower is put in eval mode so BatchNorm
    statistics stay fixed (callers keep it there in their own `train()`)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        module.eval()


class VisionTokenTower(nn.Module):
    def __init__(self, backbone: str, image_size: int = 224, **backbone_kwargs):
        super().__init__()
        kwargs = dict(backbone_kwargs)
        if image_size is not None:
            kwargs.setdefault("img_size", image_size)
        self.model = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
        self.width = self.model.num_features
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + N, C): token 0 is the global token."""
        x = self.model.forward_features(images)
        if x.dim() == 4:  # Swin/ConvNets give (B, H, W, C) or (B, C, H, W) maps: pool for the global token
            if x.shape[-1] != self.width:
                x = x.permute(0, 2, 3, 1)
            x = x.flatten(1, 2)
            return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        if self.num_prefix_tokens:  # ViT: the class token is the global token
            return torch.cat([x[:, :1], x[:, self.num_prefix_tokens:]], dim=1)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)

    @torch.no_grad()
    def num_tokens(self, image_size: int) -> int:
        was_training = self.training
        self.eval()
        n = self(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.train(was_training)
        return n


class PriorTower(InferencePriorMixin, nn.Module):
    inference_prior_source = "model"

    def __init__(self, backbone: str = "resnet50", frozen: bool = True, **backbone_kwargs):
        super().__init__()
        self.model = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="avg", **backbone_kwargs)
        self.width = self.model.num_features
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool = True) -> None:
        self.frozen = frozen
        freeze(self.model, frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) pooled prior feature."""
        # the inference copy only under no_grad/inference_mode with the tower in eval mode; a frozen
        # tower inside a training step (grad enabled) keeps the plain path below
        fast = self.inference_prior()
        if fast is not None:
            return fast(images)
        if self.frozen:
            with torch.no_grad():
                return self.model(images)
        return self.model(images)


class BertTextTower(nn.Module):
    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, intermediate_size: int = 3072, max_position_embeddings: int = 512,
                 pad_token_id: int = 0, hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
                 attention_mask: bool = True):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                            max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id,
                            hidden_dropout_prob=hidden_dropout_prob,
                            attention_probs_dropout_prob=attention_probs_dropout_prob)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.width, self.pad_token_id = hidden_size, pad_token_id
        # False reproduces the released PIR code, which runs BERT without a mask (padding attended).
        self.attention_mask = attention_mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids (padding = pad_token_id) -> (B, L, C) last hidden states; token 0 is [CLS]."""
        mask = (tokens != self.pad_token_id).long() if self.attention_mask else None
        return self.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
