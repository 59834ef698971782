"""Closed-domain PriorCLIP (the PIR lineage, paper Sec. 3.2-3.3) and its dual-encoder baseline.

Image side: vision tokens (global + patches) -> `vision_proj`; prior feature -> `conv_proj` (the
instruction); Spatial-PAE filters the tokens by their belief w.r.t. the instruction and refines
them. Text side: BERT tokens -> `text_proj` -> Temporal-PAE. The heads are split from the
backbones (`embed_image_tokens`, `embed_text_tokens`) so they can be checked against the released
code on backbone outputs, and so frozen-backbone features can be cached.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .api import RetrievalModelAPI
from .pae import SpatialPAE, TemporalPAE
from .tokenizers import WordPieceTokenizer, tokenizer_options
from .towers import BertTextTower, PriorTower, VisionTokenTower


# text_cfg keys that configure the tokenizer, not BERT
TOKENIZER_KEYS = ("context_length", "padding", "caption_cleaning", "max_words")


class ClosedDualEncoder(RetrievalModelAPI, nn.Module):
    """Baseline: the same backbones, no prior, no PAE: normalize(proj(global token))."""

    architecture = "closed-baseline"

    def __init__(self, config: dict, tokenizer: WordPieceTokenizer | None = None, build_backbones: bool = True):
        super().__init__()
        self.model_config = copy.deepcopy(config)
        self.model_name = config.get("name", self.architecture)
        vcfg, tcfg = config["vision_cfg"], config["text_cfg"]
        self.embed_dim = config["embed_dim"]
        # text_cfg decides how captions are tokenised (length, padding, cleaning); a tokenizer
        # passed in brings its vocabulary
        self.tokenizer = tokenizer or WordPieceTokenizer(**tokenizer_options(tcfg))
        self._configure_inputs()
        if tcfg.get("vocab_size") is None:
            tcfg = {**tcfg, "vocab_size": self.tokenizer.vocab_size}
            self.model_config["text_cfg"]["vocab_size"] = self.tokenizer.vocab_size
        if self.tokenizer.vocab_size > tcfg["vocab_size"]:
            raise ConfigError(f"tokenizer has {self.tokenizer.vocab_size} tokens but text_cfg.vocab_size is "
                              f"{tcfg['vocab_size']}; use a matching vocabulary or set vocab_size")
        vision_width, text_width = vcfg.get("width"), tcfg.get("hidden_size")
        if build_backbones:
            self.visual = VisionTokenTower(vcfg["backbone"], vcfg.get("image_size", 224), **vcfg.get("backbone_kwargs", {}))
            text_kwargs = {k: v for k, v in tcfg.items() if k not in TOKENIZER_KEYS + ("vocab_file",)}
            self.text = BertTextTower(**text_kwargs)
            vision_width, text_width = self.visual.width, self.text.width
        self.vision_proj = nn.Linear(vision_width, self.embed_dim)
        self.text_proj = nn.Linear(text_width, self.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(config.get("temperature", 0.07))))

    def _configure_inputs(self) -> None:
        tcfg = self.model_config["text_cfg"]
        if hasattr(self.tokenizer, "configured"):
            self.tokenizer = self.tokenizer.configured(**tokenizer_options(tcfg))
        if hasattr(self, "text"):  # False: the released PIR code runs BERT unmasked (padding attended)
            self.text.attention_mask = bool(tcfg.get("attention_mask", True))

    # ---- heads on backbone outputs -------------------------------------------------------
    def embed_image_tokens(self, vision_tokens: torch.Tensor, prior_feature: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.vision_proj(vision_tokens[:, 0]), dim=-1)

    def embed_text_tokens(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)

    # ---- open_clip-style API ---------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings; always unit length (the released heads normalise), `normalize` is
        accepted for open_clip compatibility."""
        return self.embed_image_tokens(self.visual(images))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.embed_text_tokens(self.text(tokens))

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> dict:
        out = {"logit_scale": 1.0 / self.temp}
        if images is not None:
            out["image_features"] = self.encode_image(images)
        if tokens is not None:
            out["text_features"] = self.encode_text(tokens)
        return out

    @property
    def temperature(self) -> torch.Tensor:
        return self.temp


class ClosedPriorCLIP(ClosedDualEncoder):
    """Closed-domain PriorCLIP: prior-guided Spatial-PAE on the image side, Temporal-PAE on text."""

    architecture = "closed"

    def __init__(self, config: dict, tokenizer: WordPieceTokenizer | None = None, build_backbones: bool = True):
        super().__init__(config, tokenizer, build_backbones)
        pcfg, pae = config["prior_cfg"], config["pae_cfg"]
        heads, dropout = pae["heads"], pae.get("dropout", 0.0)
        if self.embed_dim % heads:
            raise ConfigError(f"pae_cfg.heads={heads} does not divide embed_dim={self.embed_dim}")
        # ablation switches (paper Table of ablations): without Spatial-PAE the image side is the
        # baseline's (no prior at all), without Temporal-PAE the text side is. Modules are built in
        # the same order as always, so a seed gives the full model the same initial weights.
        self.spatial, self.temporal = pae.get("spatial", True), pae.get("temporal", True)
        if self.spatial:
            prior_width = pcfg.get("width")
            if build_backbones:
                self.prior = PriorTower(pcfg["backbone"], frozen=pcfg.get("frozen", True),
                                        **pcfg.get("backbone_kwargs", {}))
                prior_width = self.prior.width
            self.conv_proj = nn.Linear(prior_width, self.embed_dim)
            self.spatial_pae = SpatialPAE(self.embed_dim, heads, pae["instru_num"], pae["filter_size"], dropout,
                                          belief=pae.get("belief", "hard"),
                                          soft_weighting=pae.get("soft_weighting", "released"),
                                          belief_tokens=pae.get("belief_tokens"))
        if self.temporal:
            self.temporal_pae = TemporalPAE(self.embed_dim, heads, pae["cycle_num"], dropout)
        self.temp2 = nn.Parameter(torch.tensor(float(config.get("temperature_affiliation", 0.07))))
        if not self.spatial:
            return
        if build_backbones and self.spatial_pae.belief == "hard":
            n_tokens = self.visual.num_tokens(config["vision_cfg"].get("image_size", 224))
            scored = min(n_tokens, pae.get("belief_tokens") or n_tokens)
            if pae["filter_size"] > scored:
                raise ConfigError(f"pae_cfg.filter_size={pae['filter_size']} is larger than the {scored} visual tokens "
                                  f"the belief scores; choose filter_size <= {scored}")

    def embed_image_tokens(self, vision_tokens: torch.Tensor, prior_feature: torch.Tensor | None = None) -> torch.Tensor:
        if not self.spatial:
            return super().embed_image_tokens(vision_tokens)
        if prior_feature is None:
            raise ValueError("closed-domain PriorCLIP needs the prior feature of each image")
        tokens = self.vision_proj(vision_tokens)
        instruction = self.conv_proj(prior_feature.flatten(1))  # (B, C, 1, 1) or (B, C); never squeeze the batch
        return self.spatial_pae(tokens, instruction)

    def embed_text_tokens(self, text_tokens: torch.Tensor) -> torch.Tensor:
        if not self.temporal:
            return super().embed_text_tokens(text_tokens)
        return self.temporal_pae(self.text_proj(text_tokens))

    def optimize_for_inference(self, enabled: bool = True, **options) -> ClosedPriorCLIP:
        """Inference copy of the prior (BatchNorm folded, channels_last) under no_grad/inference_mode;
        see `PriorTower.optimize_for_inference`. A no-op for a head-only model (no backbones)."""
        if isinstance(getattr(self, "prior", None), PriorTower):
            self.prior.optimize_for_inference(enabled, **options)
        return self

    @property
    def inference_optimized(self) -> bool:
        prior = getattr(self, "prior", None)
        return isinstance(prior, PriorTower) and prior.inference_optimized

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if not self.spatial:
            return super().encode_image(images)
        return self.embed_image_tokens(self.visual(images), self.prior(images))
