"""Encode a captioned dataset with a model and score retrieval (what `priorclip evaluate` and the
trainer's validation both run, so a number printed during training is the number `evaluate` gives).

* Images are read once each ("images" view of the dataset), through DataLoader workers.
* Each distinct caption string is encoded once and the result shared by its copies: identical
  captions then get bit-identical embeddings, so exact ties stay exact (see docs/EVALUATION.md).
* Always fp32 under `torch.inference_mode`, model in eval mode (restored afterwards), with the
  model's inference speed-ups on (`optimize_for_inference`: the frozen prior with BatchNorm
  folded and channels_last; embeddings within ~1e-7; switched back off afterwards if it was off).
* An unreadable image is an error by default: dropping a test image silently changes the metrics.
  `evaluate_model(skip_unreadable=True)` (what `priorclip evaluate` runs) instead drops the image
  and its captions (they have no correct image left to find) from the evaluation, and lists them
  in the report's `skipped`, so the numbers are recall on the images that were read, and say so.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from priorclip.data.images import _reason
from priorclip.errors import DataError
from priorclip.models.inference import inference_optimizations


class _ImagesOnly(Dataset):
    """(image tensor, image id, None) per image; avoids collating strings and lists in every batch.
    With `skip`, an unreadable image is (None, image id, reason): the reason travels back from
    DataLoader workers in the batch itself."""

    def __init__(self, dataset, skip: bool = False):
        self.dataset = dataset
        self.skip = skip

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            sample = self.dataset[index]
        except DataError as exc:
            if not self.skip or self.dataset.paths is None:  # annotation-only: no image is readable
                raise
            return None, index, _reason(exc, self.dataset.paths[index])
        return sample["image"], sample["image_id"], None


def _collate(batch):
    """-> (images [B,...] or None, image ids [B], [(image id, reason), ...] of unreadable ones)."""
    good = [b for b in batch if b[0] is not None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, torch.tensor([b[1] for b in good], dtype=torch.long), [(b[1], b[2]) for b in batch if b[0] is None]


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


def readable_subset(dataset, skipped_ids) -> tuple[list[int], list[int], list[int]]:
    """What is left of `dataset` without the images `skipped_ids` and their captions:
    -> (kept image ids, kept caption indices into `all_captions`, text_to_image renumbered over
    the kept images)."""
    skipped = {int(i) for i in skipped_ids}
    kept_images = [i for i in range(dataset.num_images) if i not in skipped]
    new_id = {old: new for new, old in enumerate(kept_images)}
    t2i = dataset.text_to_image
    kept_texts = [t for t, i in enumerate(t2i) if i in new_id]
    return kept_images, kept_texts, [new_id[t2i[t]] for t in kept_texts]


def _encode(model, dataset, batch_size, device, workers, image_encoder, skip_unreadable):
    """-> (image features of the readable images, their captions' features, text_to_image over
    them, [(image id, reason), ...] skipped); without `skip_unreadable` an unreadable image raises."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    view = images_view(dataset, model.image_transform(train=False))
    loader = DataLoader(_ImagesOnly(view, skip=skip_unreadable), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False), inference_optimizations(model):
            feats, ids, skipped = [], [], []
            for images, image_ids, bad in loader:
                skipped.extend(bad)
                if images is None:
                    continue
                images = images.to(device, non_blocking=True).float()
                out = image_encoder(images, image_ids) if image_encoder is not None else _encode_images(model, images)
                feats.append(out.float().cpu())
                ids.append(image_ids)
            if not feats:
                raise DataError(f"{dataset!r}: no image could be read ({len(skipped)} unreadable, e.g. "
                                f"{dataset.paths[skipped[0][0]]}: {skipped[0][1]})")
            kept_images, kept_texts, text_to_image = readable_subset(dataset, [i for i, _ in skipped])
            if torch.cat(ids).tolist() != kept_images:
                raise DataError(f"{dataset!r}: images came back out of order; cannot align ground truth")
            image_features = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
            captions = dataset.all_captions
            text_features = encode_texts(model, [captions[t] for t in kept_texts],
                                         batch_size=max(batch_size, 64), device=device).cpu()
    finally:
        model.train(was_training)
    return image_features, text_features, torch.as_tensor(text_to_image, dtype=torch.long), sorted(skipped)


def encode_dataset(model, dataset, batch_size: int = 64, device="cpu", workers: int = 0, image_encoder=None):
    """-> (image_features [N_img, D], text_features [N_txt, D], text_to_image [N_txt]) on the CPU.

    `dataset` is a `priorclip.data` caption dataset (any mode: its images view is used). Text
    order is `dataset.all_captions`; image order is image id order. `image_encoder(images,
    image_ids)`, when given, replaces `model.encode_image` (the trainer's reuses the frozen prior's
    output on the same images across validations). An unreadable image raises its DataError.
    """
    image_features, text_features, text_to_image, _ = _encode(model, dataset, batch_size, device, workers,
                                                              image_encoder, skip_unreadable=False)
    return image_features, text_features, text_to_image


def evaluate_model(model, dataset, batch_size: int = 64, device="cpu", workers: int = 0,
                   ks: Sequence[int] = (1, 5, 10), positives: str = "index", return_scores: bool = False,
                   image_encoder=None, skip_unreadable: bool = False):
    """Encode `dataset` and return `recall_report` (every tie rule, tie statistics) plus counts;
    with `return_scores`, `(report, scores)` so per-query dumps reuse the images x texts matrix.

    `skip_unreadable`: unreadable images and their captions leave the evaluation instead of
    raising; the report's `skipped` lists them ({image_id, filename, path, reason, captions}) and
    `scores` covers what is left (`readable_subset` gives its ids).
    """
    from priorclip.evaluation.metrics import recall_report, similarity_matrix

    image_features, text_features, text_to_image, skipped = _encode(model, dataset, batch_size, device, workers,
                                                                    image_encoder, skip_unreadable)
    _, kept_texts, _ = readable_subset(dataset, [i for i, _ in skipped])
    all_captions = dataset.all_captions
    captions = [all_captions[t] for t in kept_texts]
    scores = similarity_matrix(image_features, text_features)
    report = recall_report(scores, text_to_image, captions=captions, ks=ks, positives=positives)
    report["model"] = getattr(model, "model_name", type(model).__name__)
    report["split"] = getattr(dataset, "split", None)
    if skip_unreadable:
        per_image = dataset.captions_per_image
        names, paths = dataset.images, dataset.paths
        report["skipped"] = [{"image_id": i, "filename": names[i], "path": paths[i], "reason": reason,
                              "captions": per_image[i]} for i, reason in sorted(skipped)]
        report["skipped_rule"] = ("unreadable images and their captions are left out: recall is over the "
                                  f"{dataset.num_images - len(skipped)} readable images and their "
                                  f"{len(captions)} captions")
    return (report, scores) if return_scores else report
