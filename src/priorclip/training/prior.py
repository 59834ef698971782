"""The frozen prior outside the autograd graph: while it is frozen its output for an image never
changes, so the loop and validation run it without gradient (channels_last on CPU) and at most once
per image. Also precise BatchNorm statistics for the prior stage, which a frozen prior later
normalises with."""
from __future__ import annotations

import torch
from torch import nn


def prior_input(images: torch.Tensor) -> torch.Tensor:
    """Images for a convolutional prior: channels_last on CPU, where oneDNN's NHWC kernels run
    resnet10t at 128 px 1.35x faster forward and 1.2x faster forward+backward (docs/TRAINING.md);
    the result differs from NCHW by float rounding only (~1e-7 relative)."""
    if images.device.type == "cpu" and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def frozen_prior(model: nn.Module):
    """The model's prior as a function images -> features when it is frozen (no parameter trains,
    eval mode), else None. Open domain: `res_visual` (before `vision_proj_res`, which may train);
    closed domain: the `prior` tower (before `conv_proj`), fed channels_last on CPU."""
    if hasattr(model, "res_visual") and hasattr(model, "vision_proj_res"):
        if not hasattr(model, "instruction_token") or not getattr(model, "prior_frozen", False):
            return None
        if any(p.requires_grad for p in model.res_visual.parameters()):
            return None
        return model.prior_features  # the inference copy (BatchNorm folded) once optimize_for_inference
    prior = getattr(model, "prior", None)
    if isinstance(prior, nn.Module) and getattr(prior, "frozen", False) \
            and not any(p.requires_grad for p in prior.parameters()):
        return lambda images: prior(prior_input(images))
    return None


class PriorCache:
    """The frozen prior's output per image id (row), filled the first time an image is seen.

    Valid only while the image tensor of an id never changes (no augmentation, or the fixed
    evaluation transform) and the prior is frozen in eval mode (BatchNorm on running statistics):
    then each row is a function of the image alone, and reading it equals recomputing it.
    """

    def __init__(self, n_images: int, device: torch.device):
        self.n, self.device = n_images, device
        self.store: torch.Tensor | None = None
        self.filled = torch.zeros(n_images, dtype=torch.bool, device=device)

    def features(self, prior, images: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """`prior`: images -> features (see `frozen_prior`), run on the ids not seen before."""
        ids = image_ids.to(self.device)
        rows = (~self.filled[ids]).nonzero().squeeze(1)
        if len(rows):
            # an image may occur twice in a batch (two of its captions): run the prior once per id
            uniq, inv = torch.unique(ids[rows], return_inverse=True)
            first = torch.full((len(uniq),), len(rows), device=self.device).scatter_reduce_(
                0, inv, torch.arange(len(rows), device=self.device), "amin")
            with torch.no_grad():
                new = prior(images[rows[first]]).float()
            if self.store is None:
                self.store = torch.zeros(self.n, new.shape[1], dtype=torch.float32, device=self.device)
            self.store[uniq] = new
            self.filled[uniq] = True
        return self.store[ids]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """`a` and `b` hold equal parameters and buffers (e.g. the frozen prior of the trained model
    and of its best checkpoint read back from disk)."""
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def recalibrate_batchnorm(model: nn.Module, inputs) -> list[nn.Module]:
    """Precise BN: every BatchNorm's running statistics recomputed as a plain average over the
    batches `inputs` yields, through `model` in train mode with the current weights (no gradient).
    An exponential average over few training steps still carries the statistics of much earlier
    weights, and eval mode (and a frozen prior downstream) would normalise with those."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return norms
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was)
    return norms
