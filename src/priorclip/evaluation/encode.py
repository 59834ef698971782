"""Encode a captioned dataset with a model and score retrieval (what `priorclip evaluate` and the
trainer's validation both run, so a number printed during training is the number `evaluate` gives).

* Images are read once each ("images" view of the dataset), through DataLoader workers.
* Each distinct caption string is encoded once and the result shared by its copies: identical
  captions then get bit-identical embeddings, so exact ties stay exact (see docs/EVALUATION.md).
* Always fp32 under `torch.inference_mode`, model in eval mode (restored afterwards), with the
  model's inference speed-ups on (`optimize_for_inference`: the frozen prior with BatchNorm
  folded and channels_last; embeddings within ~1e-7; switched back off afterwards if it was off).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from priorclip.errors import DataError
from priorclip.models.inference import inference_optimizations


class _ImagesOnly(Dataset):
    """(image tensor, image id) per image; avoids collating strings and lists in every batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        return sample["image"], sample["image_id"]


def images_view(dataset, transform):
    """A copy of `dataset` yielding one item per image, with `transform` if it has none, and
    unreadable images raised (dropping a test image would silently change the metrics)."""
    view = copy.copy(dataset)
    view.mode = "images"
    view.on_error = "raise"
    if view.transforms is None:
        view.transforms = transform
    return view


def _encode_images(model, images, normalize=True):
    try:
        return model.encode_image(images, normalize=normalize)
    except TypeError:  # models whose encode_image has no `normalize` (always unit length)
        return model.encode_image(images)


def _encode_texts(model, tokens, normalize=True):
    try:
        return model.encode_text(tokens, normalize=normalize)
    except TypeError:
        return model.encode_text(tokens)


def encode_texts(model, texts: Sequence[str], batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Unit-length fp32 embeddings of `texts` (one row per text); each distinct string encoded once."""
    unique: dict[str, int] = {}
    index = [unique.setdefault(t, len(unique)) for t in texts]
    distinct = list(unique)
    out = []
    for start in range(0, len(distinct), batch_size):
        tokens = model.tokenize(distinct[start:start + batch_size]).to(device)
        out.append(_encode_texts(model, tokens).float())
    feats = torch.cat(out) if out else torch.empty(0, model.embed_dim)
    return torch.nn.functional.normalize(feats, dim=-1)[torch.as_tensor(index, dtype=torch.long, device=feats.device)]


def encode_dataset(model, dataset, batch_size: int = 64, device="cpu", workers: int = 0, image_encoder=None):
    """-> (image_features [N_img, D], text_features [N_txt, D], text_to_image [N_txt]) on the CPU.

    `dataset` is a `priorclip.data` caption dataset (any mode: its images view is used). Text
    order is `dataset.all_captions`; image order is image id order. `image_encoder(images,
    image_ids)`, when given, replaces `model.encode_image` (the trainer's reuses the frozen prior's
    output on the same images across validations).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    view = images_view(dataset, model.image_transform(train=False))
    loader = DataLoader(_ImagesOnly(view), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False), inference_optimizations(model):
            feats, ids = [], []
            for images, image_ids in loader:
                images = images.to(device, non_blocking=True).float()
                out = image_encoder(images, image_ids) if image_encoder is not None else _encode_images(model, images)
                feats.append(out.float().cpu())
                ids.append(image_ids)
            image_features = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
            order = torch.cat(ids)
            if not torch.equal(order, torch.arange(len(order))):
                raise DataError(f"{dataset!r}: images came back out of order; cannot align ground truth")
            text_features = encode_texts(model, dataset.all_captions, batch_size=max(batch_size, 64), device=device).cpu()
    finally:
        model.train(was_training)
    return image_features, text_features, torch.as_tensor(dataset.text_to_image, dtype=torch.long)


def evaluate_model(model, dataset, batch_size: int = 64, device="cpu", workers: int = 0,
                   ks: Sequence[int] = (1, 5, 10), positives: str = "index", return_scores: bool = False,
                   image_encoder=None):
    """Encode `dataset` and return `recall_report` (every tie rule, tie statistics) plus counts;
    with `return_scores`, `(report, scores)` so per-query dumps reuse the images x texts matrix."""
    from priorclip.evaluation.metrics import recall_report, similarity_matrix

    image_features, text_features, text_to_image = encode_dataset(model, dataset, batch_size, device, workers,
                                                                  image_encoder)
    scores = similarity_matrix(image_features, text_features)
    report = recall_report(scores, text_to_image, captions=dataset.all_captions, ks=ks, positives=positives)
    report["model"] = getattr(model, "model_name", type(model).__name__)
    report["split"] = getattr(dataset, "split", None)
    return (report, scores) if return_scores else report
