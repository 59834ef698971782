"""What the optimizer step uses in every stage: AdamW's parameter groups, the LR schedule and the
temperature clamp (benchmarks/train_speed.py times the same step)."""
from __future__ import annotations

import math

import torch
from torch import nn

# Parameters without weight decay: biases, norms, temperatures, embeddings (names or 1-D shapes).
_NO_DECAY = ("bias", "norm", "ln_", "bn", "temp", "logit_scale", "embedding", "embeddings", "class_embedding",
             "cls_token", "pos_embed", "relative_position_bias_table", "absolute_pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        low = name.lower()
        (no_decay if p.ndim < 2 or any(t in low for t in _NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(total_steps: int, warmup: int, schedule: str, min_ratio: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1 - min_ratio) * shape
    return f


def clamp_temperatures(model: nn.Module) -> None:
    with torch.no_grad():
        for name in ("temp", "temp2"):  # our clamp (the released PIR code has none): positive, away from 0
            p = getattr(model, name, None)
            if isinstance(p, nn.Parameter):
                p.clamp_(0.001, 0.5)
        if isinstance(getattr(model, "logit_scale", None), nn.Parameter):  # open_clip's clamp
            model.logit_scale.clamp_(0, math.log(100))
