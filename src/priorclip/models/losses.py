"""Training losses of PriorCLIP (paper Sec. 3.4) and the VSE baselines.

All take L2-normalised features (N, D). Under torch.distributed they gather features from every
rank with gradients (see `distributed.py`) so the loss is the global-batch loss; `gather=False`
turns that off (e.g. when the caller already gathered).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_no_grad, gather_with_grad


def _maybe_gather(gather: bool, *tensors, labels=()):
    if not gather:
        return (*tensors, *labels)
    return (*(gather_with_grad(t) for t in tensors), *(gather_no_grad(t) for t in labels))


def contrastive_loss(image_features, text_features, temperature, image_ids=None, gather: bool = True):
    """Symmetric InfoNCE on logits I T^T / temperature.

    With `image_ids`, captions of the same image are all positives: the target of row i is uniform
    over every j showing the same image (both directions). Without, the diagonal is the target.
    """
    if image_ids is None:
        image_features, text_features = _maybe_gather(gather, image_features, text_features)
        logits = image_features @ text_features.t() / temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    image_features, text_features, image_ids = _maybe_gather(gather, image_features, text_features, labels=(image_ids,))
    logits = image_features @ text_features.t() / temperature
    positive = (image_ids.unsqueeze(1) == image_ids.unsqueeze(0)).to(logits.dtype)
    target = positive / positive.sum(dim=1, keepdim=True)
    loss_i2t = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_t2i = -(target.t() * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def class_centres(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Row i = mean feature over the items sharing i's label (i's own cluster centre)."""
    same = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(features.dtype)
    return (same @ features) / same.sum(dim=1, keepdim=True)


def affiliation_loss(image_features, text_features, scene_labels, temperature, gather: bool = True):
    """Attribution (affiliation) loss: each item is pulled towards the other modality's centre of
    its scene class: ½[CE_i(<I_i, C^T_j>/t, j=i) + CE_i(<C^I_i, T_j>/t, j=i)].

    Items with a negative label (no scene label) take no part: they are neither anchors nor
    candidates. A batch with no labelled item gives a zero loss that still has a gradient path.
    A class with a single item has itself as centre, which is well defined.
    """
    image_features, text_features, scene_labels = _maybe_gather(gather, image_features, text_features, labels=(scene_labels,))
    keep = scene_labels >= 0
    if not bool(keep.all()):
        if not bool(keep.any()):
            return (image_features.sum() + text_features.sum()) * 0.0
        image_features, text_features, scene_labels = image_features[keep], text_features[keep], scene_labels[keep]
    image_centres = class_centres(image_features, scene_labels)
    text_centres = class_centres(text_features, scene_labels)
    target = torch.arange(image_features.shape[0], device=image_features.device)
    loss_i = F.cross_entropy(image_features @ text_centres.t() / temperature, target)
    loss_t = F.cross_entropy(image_centres @ text_features.t() / temperature, target)
    return 0.5 * (loss_i + loss_t)


def triplet_loss(image_features, text_features, margin: float = 0.2, hardest: bool = False, gather: bool = True):
    """VSE hinge loss on cosine scores, both directions added (VSE++ when `hardest`)."""
    image_features, text_features = _maybe_gather(gather, image_features, text_features)
    scores = image_features @ text_features.t()
    diagonal = scores.diag().view(-1, 1)
    cost_text = (margin + scores - diagonal).clamp(min=0)  # image anchor, caption negatives
    cost_image = (margin + scores - diagonal.t()).clamp(min=0)  # caption anchor, image negatives
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_text, cost_image = cost_text.masked_fill(eye, 0), cost_image.masked_fill(eye, 0)
    if hardest:
        return cost_text.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    return cost_text.sum() + cost_image.sum()


class PriorCLIPLoss(nn.Module):
    """Contrastive loss (multi-positive when image ids are given) + weight x Attribution loss."""

    def __init__(self, affiliation_weight: float = 1.0, multi_positive: bool = True, affiliation_centres: str = "global"):
        """`affiliation_centres`: "global" computes class centres (and candidates) over the batch
        gathered from every process; "local" over each process's own batch, as the released code does
        (it calls the loss on each GPU's features)."""
        super().__init__()
        self.affiliation_weight, self.multi_positive = affiliation_weight, multi_positive
        if affiliation_centres not in ("global", "local"):
            raise ValueError(f"affiliation_centres={affiliation_centres!r}: use global or local")
        self.affiliation_gather = affiliation_centres == "global"

    def forward(self, image_features, text_features, temperature, temperature_affiliation=None,
                image_ids=None, scene_labels=None) -> dict:
        losses = {"contrastive": contrastive_loss(image_features, text_features, temperature,
                                                  image_ids if self.multi_positive else None)}
        if self.affiliation_weight and scene_labels is not None:
            t2 = temperature if temperature_affiliation is None else temperature_affiliation
            losses["affiliation"] = self.affiliation_weight * affiliation_loss(image_features, text_features, scene_labels, t2,
                                                                            gather=self.affiliation_gather)
        losses["total"] = sum(losses.values())
        return losses
