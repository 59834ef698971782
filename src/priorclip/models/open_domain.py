"""Open-domain PriorCLIP (paper Sec. 3.5): an open_clip CLIP whose ViT is guided by a visual prior.

Built on open_clip's own modules (subclassing its `CLIP`, adding a `ModifiedResNet` prior), with
the released parameter names, so released checkpoints and plain open_clip state dicts load
strictly. encode_image, in the released order:

1. instruction y = vision_proj_res(res_visual(image)), one token of ViT width;
2. x = ViT patch embedding + class token + positional embedding, ln_pre (open_clip `_embeds`);
3. soft belief of every token w.r.t. y (`belief.soft_belief`, setting `soft_weighting`);
4. [y; x] through the transformer (no positional embedding for y), ln_post, token 0, proj.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPVisionCfg
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from ..errors import ConfigError
from .api import RetrievalModelAPI
from .belief import SOFT_WEIGHTINGS, belief_scores, soft_belief
from .inference import InferencePriorMixin
from .tokenizers import ClipTokenizer
from .towers import freeze

# Keys of our vision_cfg that open_clip's CLIPVisionCfg does not know.
PRIOR_KEYS = ("prior_layers", "prior_width", "prior_heads", "soft_weighting", "prior_frozen")


def _split_vision_cfg(vision_cfg: dict) -> tuple[dict, dict]:
    known = set(CLIPVisionCfg.__dataclass_fields__)
    clip_cfg = {k: v for k, v in vision_cfg.items() if k not in PRIOR_KEYS}
    unknown = sorted(set(clip_cfg) - known)
    if unknown:
        raise ConfigError(f"unknown vision_cfg keys {unknown}; open_clip knows {sorted(known)} and PriorCLIP adds {list(PRIOR_KEYS)}")
    return clip_cfg, {k: vision_cfg[k] for k in PRIOR_KEYS if k in vision_cfg}


def prior_tower_kwargs(config: dict) -> dict:
    """ModifiedResNet arguments of an open-domain config's prior (`res_visual`), so the prior stage
    can train the very tower the model will load."""
    vcfg = config["vision_cfg"]
    _, prior = _split_vision_cfg(vcfg)
    width = prior.get("prior_width", 64)
    # open_clip's rule for ResNet towers: heads = width * 32 // head_width
    heads = prior.get("prior_heads") or width * 32 // vcfg.get("head_width", 64)
    return {"layers": list(prior.get("prior_layers", [3, 4, 6, 3])), "output_dim": config["embed_dim"],
            "heads": heads, "image_size": vcfg["image_size"], "width": width}


class _OpenClipAPI(RetrievalModelAPI):
    """Tokenizer, transforms and metadata shared by the open-domain model and its baseline."""

    def _init_api(self, config: dict) -> None:
        self.model_config = copy.deepcopy(config)
        self.model_name = config.get("name", self.architecture)
        self.embed_dim = config["embed_dim"]
        self.tokenizer = ClipTokenizer(config["text_cfg"].get("context_length", 77))

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.logit_scale.exp()


class OpenCLIPBaseline(_OpenClipAPI, CLIP):
    """Plain open_clip CLIP (the stage-1 model and the open-domain ablation baseline)."""

    architecture = "open-baseline"

    def __init__(self, config: dict):
        clip_cfg, _ = _split_vision_cfg(config["vision_cfg"])
        CLIP.__init__(self, embed_dim=config["embed_dim"], vision_cfg=clip_cfg, text_cfg=config["text_cfg"],
                      quick_gelu=config.get("quick_gelu", False))
        self._init_api(config)


class OpenPriorCLIP(InferencePriorMixin, OpenCLIPBaseline):
    """Open-domain PriorCLIP: CLIP ViT + ModifiedResNet prior giving one instruction token."""

    architecture = "open"
    inference_prior_source = "res_visual"

    def __init__(self, config: dict):
        super().__init__(config)
        vcfg = config["vision_cfg"]
        _, prior = _split_vision_cfg(vcfg)
        weighting = prior.get("soft_weighting", "released")
        if weighting not in SOFT_WEIGHTINGS:
            raise ConfigError(f"vision_cfg.soft_weighting={weighting!r}; choose one of {SOFT_WEIGHTINGS}")
        self.soft_weighting = weighting
        self.res_visual = ModifiedResNet(**prior_tower_kwargs(config))
        self.vision_proj_res = nn.Linear(config["embed_dim"], vcfg["width"])
        self.prior_frozen = bool(prior.get("prior_frozen", False))
        if self.prior_frozen:
            self.set_prior_frozen(True)

    def set_prior_frozen(self, frozen: bool = True) -> None:
        """Freeze the ModifiedResNet prior (kept in eval mode so BatchNorm statistics stay fixed)."""
        self.prior_frozen = frozen
        freeze(self.res_visual, frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "prior_frozen", False):
            self.res_visual.eval()
        return self

    def prior_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim): res_visual's output, via the inference copy when allowed."""
        fast = self.inference_prior()
        return fast(images) if fast is not None else self.res_visual(images)

    def instruction_token(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, width): the prior's instruction token (cacheable when frozen)."""
        return self.vision_proj_res(self.prior_features(images))

    def encode_image(self, images: torch.Tensor, normalize: bool = False, instruction: torch.Tensor | None = None):
        if instruction is None:
            instruction = self.instruction_token(images)
        x = self.visual._embeds(images)
        x = soft_belief(x, belief_scores(x, instruction), self.soft_weighting)
        x = torch.cat([instruction.unsqueeze(1).to(x.dtype), x], dim=1)
        x = self.visual.ln_post(self.visual.transformer(x))[:, 0]
        if self.visual.proj is not None:
            x = x @ self.visual.proj
        return F.normalize(x, dim=-1) if normalize else x
